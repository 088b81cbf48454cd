"""The study's evaluation protocol, played with any assistant.

For each user: one observed dialogue of ``n_rounds`` rounds (the assistant recommends in each round, then
the user reveals their choice), and ``n_heldout`` held-out option sets.  After 0, 1, ..., n_rounds
observed rounds the assistant recommends on every held-out set; its accuracy is the fraction of sets where
its pick equals the user's choice.  The Bayesian assistant's predictions on the same sets are recorded as
the reference for agreement, KL and Brier metrics.  With ``elicit_beliefs`` the assistant is also asked
for its beliefs about the user's preferences after each history length (``eval/beliefs/elicitation.py``).

The users, their observed dialogues and their held-out sets and choices (``ProtocolData``) are simulated
from the domain (``simulate_protocol_data``) or given as they are, e.g. read from the study's released
files (``eval/study/released.py``); either way the same ``run_protocol`` plays them.
"""
from __future__ import annotations

import torch

from ppl_models import Domain, pick_users, simulate_choices, simulate_dialogues
from ppl_models.rng import generator

from eval.assistants import Assistant, BayesianAssistant
from eval.records import N_HELDOUT, EvaluationRun, ProtocolData, Recommendation, RecommendRequest  # noqa: F401  (re-exported)

def simulate_protocol_data(domain: Domain, users: torch.Tensor, seed: int, n_heldout: int = N_HELDOUT,
                           user_domain: Domain | None = None) -> ProtocolData:
    """Simulated dialogues and held-out sets for ``users``, their choices drawn from ``user_domain``
    (default ``domain``).  Deterministic given ``seed``."""
    user_domain = user_domain or domain
    observed = simulate_dialogues(user_domain, users, 1, seed, stream="observed")
    heldout_options = domain.draw_options(generator(seed, "heldout", "options"), (len(users), n_heldout))
    heldout_choices = simulate_choices(user_domain, users, heldout_options, generator(seed, "heldout", "choices"))
    return ProtocolData(users, observed.option_index, observed.choices, heldout_options, heldout_choices)


def play_dialogues(assistant: Assistant, domain: Domain, options, choices, users, seed: int, progress=None):
    """The assistant's pick in each round given the rounds before it: long [N, R]."""
    picks = torch.zeros_like(choices)
    for r in range(choices.shape[1]):
        request = RecommendRequest(
            domain, options[:, :r], picks[:, :r], choices[:, :r], options[:, r : r + 1], seed * 100 + r, users
        )
        picks[:, r] = assistant.recommend(request).picks[:, 0]
        if progress is not None:
            progress(1)
    return picks


def _stack(recommendations: list[Recommendation]):
    picks = torch.stack([rec.picks for rec in recommendations], dim=1)
    probs = None
    if all(rec.probs is not None for rec in recommendations):
        probs = torch.stack([rec.probs for rec in recommendations], dim=1)
    failures = torch.stack(
        [rec.failures if rec.failures is not None else torch.zeros_like(rec.picks, dtype=torch.bool) for rec in recommendations],
        dim=1,
    )
    return picks, probs, failures


def run_protocol(
    domain: Domain,
    assistant: Assistant,
    *,
    n_users: int | None = None,
    users: torch.Tensor | None = None,
    seed: int = 0,
    n_heldout: int = N_HELDOUT,
    user_domain: Domain | None = None,
    reference: bool = True,
    progress=None,
    data: ProtocolData | None = None,
) -> EvaluationRun:
    """Play the protocol (see module docstring).  ``user_domain`` simulates the users (default: ``domain``,
    e.g. pass a noisy variant to test an assistant against noisy users).  ``users`` (hypothesis indices)
    overrides ``n_users``, e.g. to evaluate on users held out from teaching data.  ``data``: given users,
    dialogues and held-out sets to play instead of simulated ones (``n_users``, ``users`` and ``n_heldout``
    are then not used).  Stated beliefs are asked afterwards, by the caller, with
    ``eval.beliefs.elicit_beliefs(run, assistant)``.
    ``reference``: also record the Bayesian assistant's predictions (needs exact inference on ``domain``).
    Deterministic given ``seed``."""
    user_domain = user_domain or domain
    if data is None:
        users = pick_users(domain, n_users, seed) if users is None else users
        data = simulate_protocol_data(domain, users, seed, n_heldout, user_domain)
    users, heldout_options, heldout_choices = data.users, data.heldout_options, data.heldout_choices

    dialogue_picks = play_dialogues(
        assistant, domain, data.dialogue_options, data.dialogue_choices, users, seed, progress
    )
    request = RecommendRequest(
        domain, data.dialogue_options, dialogue_picks, data.dialogue_choices, heldout_options, seed, users
    )
    picks, probs, failures = _stack(assistant.recommend_after_each_round(request))
    if progress is not None:
        progress(1)
    reference_probs = reference_picks = None
    if reference:
        bayesian = assistant if isinstance(assistant, BayesianAssistant) else BayesianAssistant()
        reference_picks, reference_probs, _ = (
            (picks, probs, None) if bayesian is assistant else _stack(bayesian.recommend_after_each_round(request))
        )
    run = EvaluationRun(
        domain, assistant.name, seed, users, data.dialogue_options, data.dialogue_choices, dialogue_picks,
        heldout_options, heldout_choices, picks, probs, failures, reference_probs, reference_picks, user_domain,
    )
    return run
