"""What an assistant's stated beliefs are, and which domains they can be asked about.

Belief elicitation asks, for each feature, "how much do I prefer a higher <feature>?" on the 5-point scale
of ``dialogue_text.BELIEF_SCALE``.  Scale point n (1..5) means the n-th of the feature's weight levels in
ascending order: for the linear domains (flight, hotel, flight2..8) the levels -1, -0.5, 0, 0.5, 1 of
``ppl_models.linear.WEIGHT_LEVELS``.  A domain is elicitable when every feature has a latent site
(``domain.feature_sites``) whose labels (``domain.site_labels``) are 5 numeric weight levels, and its utility
is the linear ``weights . normalised features`` (so stated weights imply picks).  Webshop's latent sites are
goals, not per-feature weights: it is not elicitable.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from ppl_models import Domain
from ppl_models.errors import BayesTeachError
from ppl_models.linear import linear_utility

from eval.text.dialogue import BELIEF_SCALE

N_SCALE_POINTS = len(BELIEF_SCALE)


class BeliefElicitationError(BayesTeachError):
    """The domain's preferences are not per-feature weights, so beliefs cannot be asked on the scale."""


def belief_sites(domain: Domain) -> list[str]:
    """The latent site of each feature's weight, in feature order; raises BeliefElicitationError naming
    why when the domain is not elicitable (see the module docstring)."""
    belief_levels(domain)
    return [domain.feature_sites[name] for name in domain.feature_names]


def belief_levels(domain: Domain) -> torch.Tensor:
    """The weight level of each scale point for each feature: float64 [F, 5], ascending along the scale."""
    where = f"domain {domain.name!r}"
    reason = None
    rows = []
    for name in domain.feature_names:
        site = domain.feature_sites.get(name)
        labels = domain.site_labels.get(site) if site is not None else None
        if site is None:
            reason = f"feature {name!r} has no latent weight site (feature_sites)"
        elif labels is None or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in labels):
            reason = f"the labels of site {site!r} are not numeric weight levels"
        elif len(labels) != N_SCALE_POINTS or list(labels) != sorted(labels):
            reason = f"site {site!r} has {len(labels)} levels; the scale needs {N_SCALE_POINTS} ascending ones"
        if reason:
            break
        rows.append([float(v) for v in labels])
    if reason is None and domain.utility is not linear_utility:
        reason = "its utility is not the linear weights . features"
    if reason is not None:
        raise BeliefElicitationError(
            f"cannot elicit beliefs on {where}: its preferences are not per-feature weights ({reason}); "
            "belief elicitation needs a linear domain such as flight or hotel"
        )
    return torch.tensor(rows, dtype=torch.float64)


def is_elicitable(domain: Domain) -> bool:
    try:
        belief_levels(domain)
    except BeliefElicitationError:
        return False
    return True


@dataclass
class StatedBeliefs:
    """An assistant's answers to the belief questions of ``D`` dialogues about ``F`` features.

    ``level_probs[d, f]`` is its distribution over the 5 scale points (one-hot for a single stated answer,
    a row of NaN where the answer named no point); ``distribution`` says whether the rows are genuine
    beliefs (scored probabilities, posteriors, a known truth) rather than one decoded answer each."""

    level_probs: torch.Tensor  # float64 [D, F, 5]
    failures: torch.Tensor | None = None  # bool [D, F]: answers that named no scale point
    distribution: bool = True

    @classmethod
    def from_points(cls, points: torch.Tensor, distribution: bool = False) -> "StatedBeliefs":
        """One stated scale point per question, long [D, F] (0-based; -1 = no answer)."""
        failed = points < 0
        probs = torch.nn.functional.one_hot(points.clamp_min(0), N_SCALE_POINTS).double()
        probs[failed] = float("nan")
        return cls(probs, failed, distribution)

    def failed(self) -> torch.Tensor:
        """bool [D, F]."""
        if self.failures is not None:
            return self.failures
        return torch.zeros(self.level_probs.shape[:2], dtype=torch.bool)


def expected_weights(level_probs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Expected weight per feature: level_probs [..., F, 5] x levels [F, 5] -> [..., F] (NaN stays NaN)."""
    return (level_probs.double() * levels).sum(-1)
