"""Per-round metrics of an ``EvaluationRun``, each with a 95% bootstrap confidence interval over users.

Every metric is first computed per user and round (``[N, R+1]``), then averaged over users; the interval
resamples users with replacement.  A NaN marks a user-round where a metric is undefined (a belief metric
with no answered question): it is left out of the means, and a round with no value at all reports None.
"""
from __future__ import annotations

import torch

from ppl_models.rng import generator

from eval.beliefs.elicitation import per_user_belief_metrics
from eval.protocol import EvaluationRun

PROBABILITY_FLOOR = 1e-6  # log-loss and KL clamp the assistant's probabilities here (a 0 would be infinite)
N_BOOTSTRAP = 2000


def bootstrap_ci(per_user: torch.Tensor, seed: int = 0, n_bootstrap: int = N_BOOTSTRAP, level: float = 0.95):
    """Percentile bootstrap interval of the mean over users: ``per_user`` [N, K] -> (lo [K], hi [K])."""
    per_user = per_user.double()
    n_users = per_user.shape[0]
    draws = torch.randint(n_users, (n_bootstrap, n_users), generator=generator(seed, "bootstrap"))
    alpha = (1.0 - level) / 2
    if per_user.isnan().any():  # undefined user-rounds are left out of each resample's mean
        means = per_user[draws].nanmean(dim=1)  # [n_bootstrap, K]
        return torch.nanquantile(means, alpha, dim=0), torch.nanquantile(means, 1 - alpha, dim=0)
    means = per_user[draws].mean(dim=1)  # [n_bootstrap, K]
    return torch.quantile(means, alpha, dim=0), torch.quantile(means, 1 - alpha, dim=0)


def summarise(per_user: torch.Tensor, seed: int = 0) -> dict:
    """{"mean": [K], "ci95": [[lo, hi], ...]} for a per-user metric [N, K] (None where all NaN)."""
    lo, hi = bootstrap_ci(per_user, seed)
    per_user = per_user.double()
    mean = per_user.nanmean(0) if per_user.isnan().any() else per_user.mean(0)
    return {
        "mean": [None if v.isnan() else round(float(v), 6) for v in mean],
        "ci95": [None if v.isnan() else [round(float(a), 6), round(float(b), 6)] for v, a, b in zip(mean, lo, hi)],
    }


def per_user_metrics(run: EvaluationRun) -> dict:
    """Each metric per user and round: name -> [N, R+1]."""
    choices = run.heldout_choices.unsqueeze(1)  # [N, 1, M]
    metrics = {"accuracy": (run.picks == choices).double().mean(-1)}
    metrics["failure_rate"] = run.failures.double().mean(-1)
    if run.reference_picks is not None:
        metrics["agreement_with_bayesian"] = (run.picks == run.reference_picks).double().mean(-1)
    if run.probs is not None:
        probs = run.probs.double().clamp_min(PROBABILITY_FLOOR)
        chosen = probs.gather(-1, choices.expand(run.picks.shape).unsqueeze(-1))[..., 0]
        metrics["log_loss"] = (-chosen.log()).mean(-1)
        if run.reference_probs is not None:
            reference = run.reference_probs.double()
            terms = torch.where(reference > 0, reference * (reference.clamp_min(1e-300).log() - probs.log()), 0.0)
            metrics["kl_from_bayesian"] = terms.sum(-1).mean(-1)
            metrics["brier_vs_bayesian"] = ((run.probs.double() - reference) ** 2).sum(-1).mean(-1)
    if run.beliefs is not None:
        metrics.update(per_user_belief_metrics(run))
    if run.design is not None:  # round r's shown set sits beside the accuracy after r rounds (none before round 1)
        gain = run.design.information_gain
        metrics["information_gain"] = torch.cat([torch.full_like(gain[:, :1], float("nan")), gain], dim=1)
    return metrics


def summarise_run(run: EvaluationRun) -> dict:
    """Every metric of a run: name -> {"mean": [R+1], "ci95": [[lo, hi], ...]}."""
    return {name: summarise(values, run.seed) for name, values in per_user_metrics(run).items()}
