"""Belief elicitation in the study's protocol: stated beliefs against the Bayesian posterior, and the picks
they imply.

After 0, 1, ..., R observed rounds of each user's dialogue (the same users, dialogues, assistant picks and
held-out sets as the recommendations of ``run_protocol``, so everything compares like with like), the
assistant is asked for each feature how much the user prefers a higher value, on the 5-point scale of
``belief_scale`` (one question per feature and history length, not per held-out set).  Its answer is a
distribution over the feature's weight levels; its stated belief is the expected weight.  Per user and
round (``[N, R+1]``):

* ``belief_error``: mean over features of |stated expected weight - Bayesian posterior-mean weight|;
* ``belief_tv``: mean over features of the total-variation distance between the stated distribution and
  the posterior marginal (only for assistants whose answers are distributions, not decoded text);
* ``belief_sign_agreement``: fraction of features where the signs (-, 0, +) of the two agree;
* ``implied_accuracy``: the stated expected weights as the user's weight vector give, through the
  domain's utility, a pick on each held-out set (argmax; ties within the users' tie tolerance broken by a
  seeded draw): the fraction equal to the user's choice;
* ``consistency``: the fraction of held-out sets where that implied pick equals the assistant's direct pick;
* ``belief_failure_rate``: the fraction of questions whose answer named no scale point.

A question whose answer failed has no stated belief: the feature-averaged metrics average over the
answered features (a user-round with none is left out of the mean over users), and the implied pick of a
user-round with any failed answer is undefined (-1: counted wrong, and inconsistent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ppl_models import Domain, infer
from ppl_models.choice import TIE_TOLERANCE
from ppl_models.rng import generator

from eval.records import EvaluationRun, RecommendRequest, pick_argmax
from eval.beliefs.scale import belief_levels, belief_sites, expected_weights
from eval.text.dialogue import BELIEF_SCALE


SIGN_TOLERANCE = 1e-6  # |weight| below this counts as 0 for sign agreement


@dataclass
class BeliefRun:
    """Stated beliefs of N users after 0..R rounds about F features, with the Bayesian reference."""

    levels: torch.Tensor  # float64 [F, 5]: the weight level of each scale point
    stated_probs: torch.Tensor  # float64 [N, R+1, F, 5]: NaN rows where the answer failed
    failures: torch.Tensor  # bool [N, R+1, F]
    distribution: bool  # the stated rows are distributions (not one decoded answer each)
    posterior_probs: torch.Tensor  # float64 [N, R+1, F, 5]: the Bayesian posterior marginal of each weight
    implied_picks: torch.Tensor  # long [N, R+1, M]: -1 where a failed answer leaves the pick undefined

    @property
    def stated_weights(self) -> torch.Tensor:
        """float64 [N, R+1, F] (NaN where failed)."""
        return expected_weights(self.stated_probs, self.levels)

    @property
    def posterior_weights(self) -> torch.Tensor:
        """float64 [N, R+1, F]: the posterior-mean weights."""
        return expected_weights(self.posterior_probs, self.levels)


def posterior_belief_probs(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
    """The exact posterior marginal of each feature's weight after 0..R rounds: float64 [N, R+1, F, 5]."""
    marginals = infer(domain, option_index, choices, keep_posterior=False).marginals
    return torch.stack([marginals[site] for site in belief_sites(domain)], dim=2)


def implied_picks(domain: Domain, weights: torch.Tensor, option_sets: torch.Tensor, seed: int, name: str = "implied"):
    """The pick each stated weight vector implies on each option set, through ``domain.utility``.

    ``weights``: [N, S, F] (S belief states; NaN = unanswered); ``option_sets``: long [N, M, O, F].
    Returns long [N, S, M]; -1 for a state with any NaN weight.  Ties (within the users' tie tolerance)
    are broken by the seeded stream ``tiebreak/<name>`` of state k, like the assistants' own ties.
    """
    options = domain.options(option_sets)
    n_users, n_states, _ = weights.shape
    picks = []
    for k in range(n_states):
        state = torch.nan_to_num(weights[:, k].float(), nan=0.0)  # [N, F]
        utility = domain.utility([state[:, f, None] for f in range(state.shape[1])], options)  # [N, M, O]
        pick = pick_argmax(utility, generator(seed * 1000 + k, "tiebreak", name), tolerance=TIE_TOLERANCE)
        picks.append(torch.where(weights[:, k].isnan().any(-1, keepdim=True), -1, pick))
    return torch.stack(picks, dim=1)


def elicit_beliefs(run: EvaluationRun, assistant, progress=None) -> BeliefRun:
    """Ask ``assistant`` for its beliefs after each history length of ``run``'s dialogues (its own picks in
    the history), and compute the Bayesian reference and the implied picks on ``run``'s held-out sets."""
    domain = run.domain
    levels = belief_levels(domain)  # raises BeliefElicitationError for domains without per-feature weights
    request = RecommendRequest(
        domain, run.dialogue_options, run.dialogue_picks, run.dialogue_choices, run.heldout_options, run.seed, run.users
    )
    answers = assistant.state_beliefs_after_each_round(request)
    stated = torch.stack([a.level_probs.double() for a in answers], dim=1)  # [N, R+1, F, 5]
    failures = torch.stack([a.failed() for a in answers], dim=1)  # [N, R+1, F]
    stated[failures] = float("nan")
    posterior = posterior_belief_probs(domain, run.dialogue_options, run.dialogue_choices)
    picks = implied_picks(domain, expected_weights(stated, levels), run.heldout_options, run.seed, f"implied:{assistant.name}")
    if progress is not None:
        progress(1)
    distribution = all(a.distribution for a in answers)
    return BeliefRun(levels, stated, failures, distribution, posterior, picks)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < SIGN_TOLERANCE, 0.0, torch.sign(x))


def per_user_belief_metrics(run: EvaluationRun) -> dict:
    """The belief metrics of the module docstring, per user and round: name -> [N, R+1] (NaN where a
    user-round has no answered question)."""
    beliefs = run.beliefs
    stated, posterior = beliefs.stated_weights, beliefs.posterior_weights  # [N, R+1, F]
    answered = ~beliefs.failures
    metrics = {"belief_error": (stated - posterior).abs().nanmean(-1)}
    if beliefs.distribution:
        tv = 0.5 * (beliefs.stated_probs - beliefs.posterior_probs).abs().sum(-1)  # [N, R+1, F]
        metrics["belief_tv"] = tv.nanmean(-1)
    agree = (_sign(stated) == _sign(posterior)).double()
    metrics["belief_sign_agreement"] = torch.where(answered, agree, float("nan")).nanmean(-1)
    implied = beliefs.implied_picks
    metrics["implied_accuracy"] = (implied == run.heldout_choices.unsqueeze(1)).double().mean(-1)
    metrics["consistency"] = ((implied == run.picks) & (implied >= 0)).double().mean(-1)
    metrics["belief_failure_rate"] = beliefs.failures.double().mean(-1)
    return metrics


def belief_report(run: EvaluationRun) -> dict:
    """The ``beliefs`` section of a report: what was asked, and how the scale maps to weights."""
    beliefs = run.beliefs
    return {
        "elicited": True,
        "scale": {str(point): words for point, words in enumerate(BELIEF_SCALE, start=1)},
        "levels": {name: beliefs.levels[f].tolist() for f, name in enumerate(run.domain.feature_names)},
        "distribution": beliefs.distribution,
        "questions": int(beliefs.failures.numel()),
    }


def plot_beliefs(run: EvaluationRun, report: dict, out) -> None:
    """DIR/beliefs.png: stated against posterior-mean weight per (user, feature) after 0, 1 and R rounds,
    and the belief metrics per round with their 95% intervals."""
    import matplotlib.pyplot as plt

    beliefs = run.beliefs
    stated, posterior = beliefs.stated_weights, beliefs.posterior_weights
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    last = stated.shape[1] - 1
    for k in sorted({0, min(1, last), last}):
        label = f"after {k} round{'' if k == 1 else 's'}"
        left.scatter(posterior[:, k].flatten(), stated[:, k].flatten(), s=9, alpha=0.5, label=label)
    low, high = float(beliefs.levels.min()), float(beliefs.levels.max())
    left.plot([low, high], [low, high], "k--", linewidth=0.8)
    left.set_xlabel("Bayesian posterior-mean weight")
    left.set_ylabel("stated expected weight")
    left.set_title("stated beliefs per user and feature")
    left.legend(fontsize=8)
    rounds, metrics = report["rounds"], report["metrics"]
    for name in ("belief_error", "belief_sign_agreement", "implied_accuracy", "consistency"):
        if name not in metrics:
            continue
        mean = [float("nan") if v is None else v for v in metrics[name]["mean"]]
        line = right.plot(rounds, mean, "-o", markersize=4, label=name.replace("_", " "))[0]
        ci = [(float("nan"), float("nan")) if c is None else c for c in metrics[name]["ci95"]]
        right.fill_between(rounds, [lo for lo, _ in ci], [hi for _, hi in ci], color=line.get_color(), alpha=0.15, linewidth=0)
    right.set_xlabel("observed rounds")
    right.set_xticks(rounds)
    right.set_title("belief metrics (error in weight units; the rest fractions)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    figure.tight_layout()
    from eval.io_utils import atomic_save_figure

    atomic_save_figure(figure, out, dpi=110)
    plt.close(figure)
