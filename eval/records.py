"""The records through which assistants, back-ends, the protocol and the metrics meet.

An assistant sees a ``RecommendRequest`` (the dialogue so far and new option sets, batched over dialogues)
and answers with a ``Recommendation``.  The protocol plays ``ProtocolData`` (users, dialogues, held-out
sets) and returns an ``EvaluationRun``, which the metrics, beliefs and reports read.  This module is a leaf
of ``eval``: everything else may import it, it imports only ``ppl_models``.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import torch

from ppl_models import Domain

N_HELDOUT = 100  # held-out option sets per user, as in the study


@dataclass
class RecommendRequest:
    """What an assistant sees: ``D`` dialogues with ``r`` rounds played, and ``M`` new option sets each."""

    domain: Domain
    history_options: torch.Tensor  # long [D, r, O, F]
    history_picks: torch.Tensor  # long [D, r]: the assistant's own earlier picks
    history_choices: torch.Tensor  # long [D, r]: the user's choices (revealed after each round)
    option_sets: torch.Tensor  # long [D, M, O, F]: the option sets to recommend on
    seed: int = 0  # for seeded tie-breaking
    users: torch.Tensor | None = None  # long [D]: privileged, read only by the oracle

    @property
    def n_rounds_seen(self) -> int:
        return int(self.history_choices.shape[1])


@dataclass
class Recommendation:
    probs: torch.Tensor | None  # [D, M, O]: the assistant's probability over options (None if it has none)
    picks: torch.Tensor  # long [D, M]
    failures: torch.Tensor | None = None  # bool [D, M]: answers that named no option (counted wrong)


# Which rows of the whole evaluation's users the batch being played holds: (start, stop, total), or None
# for the whole batch.  Set by ``user_rows`` (eval/runner plays users in chunks and over processes).
_USER_ROWS: contextvars.ContextVar = contextvars.ContextVar("user_rows", default=None)


@contextlib.contextmanager
def user_rows(start: int, stop: int, total: int):
    """Within this block, batches hold users ``start:stop`` of ``total``: ``pick_argmax`` draws its tie-breaking
    noise for all ``total`` users and keeps these rows, so that a chunk of users (or a process holding some of
    them) breaks every tie exactly as one batch of all users would."""
    if not 0 <= start < stop <= total:
        raise ValueError(f"bad user rows {start}:{stop} of {total}")
    token = _USER_ROWS.set((start, stop, total))
    try:
        yield
    finally:
        _USER_ROWS.reset(token)


def pick_argmax(probs: torch.Tensor, gen: torch.Generator, tolerance: float = 5e-7) -> torch.Tensor:
    """The most probable option, ties broken uniformly at random with ``gen``: long [...].

    ``tolerance``: options within it of the best count as tied.  Exact inference accumulates in float32
    (rounding ~1e-8), so exact ties must not be decided by rounding; distinct predictive probabilities differ
    by at least 1 / (number of hypotheses), 2.6e-6 for the largest built-in domain (8-feature flight).
    Inside ``user_rows`` the first dimension of ``probs`` must be those users."""
    rows = _USER_ROWS.get()
    if rows is None:
        noise = torch.rand(probs.shape, generator=gen)
    else:
        start, stop, total = rows
        if probs.shape[0] != stop - start:
            raise ValueError(f"pick_argmax inside user_rows({start}, {stop}, {total}) got {probs.shape[0]} rows")
        noise = torch.rand((total, *probs.shape[1:]), generator=gen)[start:stop]
    is_best = probs >= probs.amax(-1, keepdim=True) - tolerance
    return torch.where(is_best, noise, -1.0).argmax(-1)


def truncate_request(request: RecommendRequest, k: int) -> RecommendRequest:
    """The request with only the first ``k`` rounds of its history (and its seed for round k)."""
    return RecommendRequest(
        request.domain,
        request.history_options[:, :k],
        request.history_picks[:, :k],
        request.history_choices[:, :k],
        request.option_sets,
        request.seed * 1000 + k,
        request.users,
    )


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
    beliefs: object | None = None  # an eval.beliefs.BeliefRun: stated beliefs after 0..R rounds, when elicited
    design: object | None = None  # an eval.design.DesignRecord: who chose the observed sets, their information gain


@dataclass
class ProtocolData:
    """What the assistant is played on: N users, R observed rounds, M held-out sets, O options, F features."""

    users: torch.Tensor  # long [N]: each user's hypothesis index (read by the oracle only)
    dialogue_options: torch.Tensor  # long [N, R, O, F]
    dialogue_choices: torch.Tensor  # long [N, R]
    heldout_options: torch.Tensor  # long [N, M, O, F]
    heldout_choices: torch.Tensor  # long [N, M]
