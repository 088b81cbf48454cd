"""Assistants: anything that, given a dialogue so far and new option sets, recommends an option.

Every assistant (Bayesian, oracle, random, cheapest, a Hugging Face LM) meets the protocol through one small
request record, ``RecommendRequest``, and answers with a ``Recommendation`` (a probability over the options
where the assistant has one, and a pick).  Asked about the user's preferences instead (belief elicitation,
``eval/beliefs/elicitation.py``), an assistant answers the same request's history with ``StatedBeliefs``: a distribution
over the 5-point scale per feature.  All tensors are batched over dialogues.
"""
from __future__ import annotations

import torch

from ppl_models import Domain, hypothesis_space, infer, predict, user_choice_log_probs
from ppl_models.errors import BayesTeachError
from ppl_models.rng import generator

from eval.beliefs.scale import N_SCALE_POINTS, StatedBeliefs, belief_sites
from eval.records import Recommendation, RecommendRequest, pick_argmax, truncate_request  # noqa: F401  (re-exported)


class Assistant:
    """Base class.  ``recommend`` is the interface; ``recommend_after_each_round`` may be overridden for
    assistants that can score all history lengths at once (the Bayesian assistant does)."""

    name = "assistant"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        raise NotImplementedError

    def recommend_after_each_round(self, request: RecommendRequest) -> list[Recommendation]:
        """Recommendations on ``request.option_sets`` after 0, 1, ..., r rounds of the history."""
        out = []
        for k in range(request.n_rounds_seen + 1):
            out.append(self.recommend(truncate_request(request, k)))
        return out

    def state_beliefs(self, request: RecommendRequest) -> StatedBeliefs:
        """The assistant's estimate of each user's preference on each feature after the request's history
        (``request.option_sets`` are not used).  Raises BeliefElicitationError for domains without
        per-feature weights (``belief_scale.belief_sites``)."""
        raise NotImplementedError(f"the {self.name} assistant cannot state beliefs")

    def state_beliefs_after_each_round(self, request: RecommendRequest) -> list[StatedBeliefs]:
        """Stated beliefs after 0, 1, ..., r rounds of the history."""
        return [self.state_beliefs(truncate_request(request, k)) for k in range(request.n_rounds_seen + 1)]


def abstain_where_empty(probs: torch.Tensor, picks: torch.Tensor) -> Recommendation:
    """A recommendation from a posterior predictive ``probs`` [D, M, O] that is NaN where the posterior is
    empty (choices no hypothesis explains): there the assistant has no answer (pick -1, counted wrong and as
    a failure) and its probabilities are uniform (so log-loss stays finite)."""
    empty = probs.isnan().any(-1)  # [D, M]
    if not empty.any():
        return Recommendation(probs, picks)
    probs = torch.where(empty.unsqueeze(-1), torch.full_like(probs, 1.0 / probs.shape[-1]), probs)
    return Recommendation(probs, torch.where(empty, -1, picks), empty)


class BayesianAssistant(Assistant):
    """Recommends the option with the highest posterior predictive probability under exact inference.

    ``model_domain`` is the assistant's model of the user (default: the request's domain); it may differ
    from the simulated users' (e.g. a noise-tolerant assistant for noisy users).  Where the user's choices
    empty its posterior (real people under a deterministic user model), it abstains (``abstain_where_empty``)."""

    name = "bayesian"
    POSTERIOR_BYTES = 256 << 20  # the posteriors held at once

    def __init__(self, model_domain: Domain | None = None):
        self.model_domain = model_domain

    def _probs_after_each_round(self, request: RecommendRequest) -> torch.Tensor:
        """[D, r+1, M, O], NaN where the posterior is empty; in groups of dialogues whose float64 posteriors
        ([d, r+1, H]) fit in POSTERIOR_BYTES (flight8: 390,625 hypotheses, 18.75 MB per dialogue of 5 rounds)."""
        domain = self.model_domain or request.domain
        n_dialogues, n_states = request.history_choices.shape[0], request.n_rounds_seen + 1
        per_dialogue = n_states * hypothesis_space(domain).size * 8
        step = max(1, self.POSTERIOR_BYTES // per_dialogue)
        parts = []
        for start in range(0, max(n_dialogues, 1), step):
            part = slice(start, start + step)
            posterior = infer(domain, request.history_options[part], request.history_choices[part], marginals=False,
                              impossible="keep")
            parts.append(predict(domain, posterior, request.option_sets[part]))
        return torch.cat(parts)

    def recommend(self, request: RecommendRequest) -> Recommendation:
        probs = self._probs_after_each_round(request)[:, -1]
        return abstain_where_empty(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))

    def recommend_after_each_round(self, request: RecommendRequest) -> list[Recommendation]:
        probs = self._probs_after_each_round(request)
        return [
            abstain_where_empty(probs[:, k], pick_argmax(probs[:, k], generator(request.seed * 1000 + k, "tiebreak", self.name)))
            for k in range(probs.shape[1])
        ]

    def state_beliefs_after_each_round(self, request: RecommendRequest) -> list[StatedBeliefs]:
        """The exact posterior marginal of each feature's weight site, after 0..r rounds."""
        domain = self.model_domain or request.domain
        sites = belief_sites(domain)
        marginals = infer(domain, request.history_options, request.history_choices, keep_posterior=False).marginals
        probs = torch.stack([marginals[site] for site in sites], dim=2)  # [D, r+1, F, 5]
        return [StatedBeliefs(probs[:, k]) for k in range(probs.shape[1])]

    def state_beliefs(self, request: RecommendRequest) -> StatedBeliefs:
        return self.state_beliefs_after_each_round(request)[-1]


class OracleAssistant(Assistant):
    """Knows each user's true preferences: recommends the user's own most likely choice."""

    name = "oracle"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        if request.users is None:
            raise ValueError("the oracle assistant needs the users' identities (request.users)")
        probs = user_choice_log_probs(request.domain, request.users, request.option_sets).exp()
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))

    def state_beliefs(self, request: RecommendRequest) -> StatedBeliefs:
        """The users' true weights, with certainty."""
        if request.users is None:
            raise ValueError("the oracle assistant needs the users' identities (request.users)")
        values = hypothesis_space(request.domain).site_values
        points = torch.stack([values[site][request.users] for site in belief_sites(request.domain)], dim=1)
        return StatedBeliefs.from_points(points, distribution=True)  # [D, F, 5]


class RandomAssistant(Assistant):
    """Picks uniformly at random."""

    name = "random"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        n_dialogues, n_sets, n_options = request.option_sets.shape[:3]
        probs = torch.full((n_dialogues, n_sets, n_options), 1.0 / n_options)
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))

    def state_beliefs(self, request: RecommendRequest) -> StatedBeliefs:
        """Uniform over the scale for every feature."""
        n_features = len(belief_sites(request.domain))
        shape = (request.history_choices.shape[0], n_features, N_SCALE_POINTS)
        return StatedBeliefs(torch.full(shape, 1.0 / N_SCALE_POINTS, dtype=torch.float64))


class CheapestAssistant(Assistant):
    """The study's heuristic: always recommend the cheapest option (ties split evenly)."""

    name = "cheapest"

    def recommend(self, request: RecommendRequest) -> Recommendation:
        domain = request.domain
        if domain.price_feature is None:
            raise BayesTeachError(f"domain {domain.name!r} has no price feature, so 'cheapest' is undefined")
        column = domain.feature_names.index(domain.price_feature)
        prices = torch.tensor(domain.features[column].normalised)[request.option_sets[..., column]]  # [D, M, O]
        is_cheapest = prices <= prices.amin(-1, keepdim=True) + 1e-9
        probs = is_cheapest.float() / is_cheapest.sum(-1, keepdim=True)
        return Recommendation(probs, pick_argmax(probs, generator(request.seed, "tiebreak", self.name)))

    def state_beliefs(self, request: RecommendRequest) -> StatedBeliefs:
        """Its rule as beliefs: strongly prefer a lower price, indifferent to everything else."""
        domain = request.domain
        belief_sites(domain)
        if domain.price_feature is None:
            raise BayesTeachError(f"domain {domain.name!r} has no price feature, so 'cheapest' is undefined")
        points = torch.full((request.history_choices.shape[0], len(domain.features)), N_SCALE_POINTS // 2)
        points[:, domain.feature_names.index(domain.price_feature)] = 0
        return StatedBeliefs.from_points(points, distribution=True)


BUILTIN_ASSISTANTS = {
    "bayesian": BayesianAssistant,
    "oracle": OracleAssistant,
    "random": RandomAssistant,
    "cheapest": CheapestAssistant,
}


def make_assistant(name: str) -> Assistant:
    if name not in BUILTIN_ASSISTANTS:
        raise BayesTeachError(f"unknown assistant {name!r}; choose from {', '.join(BUILTIN_ASSISTANTS)}")
    return BUILTIN_ASSISTANTS[name]()
