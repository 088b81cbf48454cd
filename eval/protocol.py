"""The study's evaluation protocol, played with any assistant.

For each user: one observed dialogue of ``n_rounds`` rounds (the assistant recommends in each round, then
the user reveals their choice), and ``n_heldout`` held-out option sets.  After 0, 1, ..., n_rounds
observed rounds the assistant recommends on every held-out set; its accuracy is the fraction of sets where
its pick equals the user's choice.  The Bayesian assistant's predictions on the same sets are recorded as
the reference for agreement, KL and Brier metrics.  With ``elicit_beliefs`` the assistant is also asked
for its beliefs about the user's preferences after each history length (``eval/beliefs.py``).

The users, their observed dialogues and their held-out sets and choices (``ProtocolData``) are simulated
from the domain (``simulate_protocol_data``) or given as they are, e.g. read from the study's released
files (``eval/study_data.py``); either way the same ``run_protocol`` plays them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ppl_models import Domain, pick_users, simulate_choices, simulate_dialogues
from ppl_models.rng import generator

from .assistants import Assistant, BayesianAssistant, Recommendation, RecommendRequest
from .belief_scale import belief_levels
from .beliefs import BeliefRun, elicit_beliefs as elicit

N_HELDOUT = 100


@dataclass
class EvaluationRun:
    """Everything the metrics need; N users, R rounds, M held-out sets, O options."""

    domain: Domain
    assistant: str
    seed: int
    users: torch.Tensor  # long [N]
    dialogue_options: torch.Tensor  # long [N, R, O, F]: the observed dialogue
    dialogue_choices: torch.Tensor  # long [N, R]
    dialogue_picks: torch.Tensor  # long [N, R]: the assistant's picks during the dialogue
    heldout_options: torch.Tensor  # long [N, M, O, F]
    heldout_choices: torch.Tensor  # long [N, M]
    picks: torch.Tensor  # long [N, R+1, M]: after 0..R observed rounds
    probs: torch.Tensor | None  # [N, R+1, M, O]
    failures: torch.Tensor  # bool [N, R+1, M]: answers naming no option
    reference_probs: torch.Tensor | None  # [N, R+1, M, O]: the Bayesian assistant's posterior predictive
    reference_picks: torch.Tensor | None  # long [N, R+1, M]
    user_domain: Domain  # the domain (and noise model) that simulated the users
    beliefs: BeliefRun | None = None  # stated beliefs after 0..R rounds, when elicited


@dataclass
class ProtocolData:
    """What the assistant is played on: N users, R observed rounds, M held-out sets, O options, F features."""

    users: torch.Tensor  # long [N]: each user's hypothesis index (read by the oracle only)
    dialogue_options: torch.Tensor  # long [N, R, O, F]
    dialogue_choices: torch.Tensor  # long [N, R]
    heldout_options: torch.Tensor  # long [N, M, O, F]
    heldout_choices: torch.Tensor  # long [N, M]


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
    elicit_beliefs: bool = False,
    progress=None,
    data: ProtocolData | None = None,
) -> EvaluationRun:
    """Play the protocol (see module docstring).  ``user_domain`` simulates the users (default: ``domain``,
    e.g. pass a noisy variant to test an assistant against noisy users).  ``users`` (hypothesis indices)
    overrides ``n_users``, e.g. to evaluate on users held out from teaching data.  ``data``: given users,
    dialogues and held-out sets to play instead of simulated ones (``n_users``, ``users`` and ``n_heldout``
    are then not used).  ``elicit_beliefs`` also asks for stated beliefs (one more ``progress`` step;
    BeliefElicitationError, before anything is played, for a domain without per-feature weights).
    ``reference``: also record the Bayesian assistant's predictions (needs exact inference on ``domain``).
    Deterministic given ``seed``."""
    user_domain = user_domain or domain
    if elicit_beliefs:
        belief_levels(domain)  # fail early on a domain whose preferences are not per-feature weights
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
    if elicit_beliefs:
        run.beliefs = elicit(run, assistant, progress)
    return run
