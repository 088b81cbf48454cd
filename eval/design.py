"""Designers: who chooses the option sets of the observed rounds.

``random`` is the study's protocol: each round's options are drawn from the domain at random
(``simulate_protocol_data``).  ``active`` is a Bayesian designer: in each round it draws ``n_candidates``
option sets from the domain (seeded, each user their own), and shows the one with the highest exact
expected information gain about the user's preferences given the rounds so far
(``ppl_models.expected_information_gain``; ties broken at random, seeded); the user then chooses as always.
``lm`` is a language model as designer (``eval.lm.designer.LMDesigner``): shown the rounds so far and
``n_candidates`` labelled sets (e.g. 4), it names the one to show; its choice is scored by the exact gain as a
fraction of the best candidate's (a set drawn at random expects the mean candidate's fraction).
Since each round's set depends on the user's earlier choices, the dialogues are simulated round by round.
The held-out sets and the users' choices on them are the random design's, so both designs are scored on the
same sets.  Either way the information gain (nats) of each round's shown set is recorded (``DesignRecord``),
and any assistant, a language model included, plays the resulting dialogues through ``run_protocol``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ppl_models import Domain, current_posterior, expected_information_gain, hypothesis_space, pick_users, simulate_choices
from ppl_models.errors import BayesTeachError
from ppl_models.rng import generator

from eval.assistants import Assistant
from eval.protocol import run_protocol, simulate_protocol_data
from eval.records import N_HELDOUT, EvaluationRun, ProtocolData

DESIGNS = ("random", "active", "lm")  # lm: a language model chooses among the candidates (eval.lm.designer)
DEFAULT_CANDIDATES = 100
DEFAULT_LM_CANDIDATES = 4  # labelled sets an LM designer reads in one prompt (design lm, teaching data)
# Candidates whose gains differ by less are tied and drawn at random.  The gains are float64 sums of float32
# choice probabilities (1/3 is rounded), so equivalent sets can differ by a few 1e-9: such near-ties are
# decided by that rounding, deterministically, which leaves the design seeded and reproducible.
GAIN_TIE_TOLERANCE = 1e-9


class DesignError(BayesTeachError):
    """A design that cannot run: unknown, a number of candidates below 1, or data it cannot design."""


@dataclass
class DesignRecord:
    """How the observed rounds' option sets were chosen, and what each was expected to teach."""

    design: str  # "random", "active" or "lm"
    n_candidates: int | None  # candidates per round (active, lm), None for random
    information_gain: torch.Tensor  # float64 [N, R]: each round's shown set, given the rounds before it
    candidate_gain: torch.Tensor | None = None  # float64 [N, R]: the mean over the round's candidates (active, lm)
    best_gain: torch.Tensor | None = None  # float64 [N, R]: the round's most informative candidate's gain
    designer: str | None = None  # who chose among the candidates (lm: the model's name)
    failures: torch.Tensor | None = None  # bool [N, R]: an LM designer's answers that named no set
    choice_probs: torch.Tensor | None = None  # [N, R, C]: a score-mode LM designer's distribution over the sets
    picks: torch.Tensor | None = None  # long [N, R]: the index of the candidate shown in each round (active, lm)
    # kept on request (active_dialogues(keep_candidates=True)), e.g. for teaching data; None otherwise
    candidates: torch.Tensor | None = None  # long [N, R, C, O, F]: every round's candidate sets
    candidate_gains: torch.Tensor | None = None  # float64 [N, R, C]: their exact gains given the rounds before

    def fraction_of_best(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(the shown set's gain / the best candidate's, a set drawn at random's expected fraction: the mean
        candidate's / the best's), float64 [N, R] each; NaN where no candidate teaches anything."""
        if self.best_gain is None or self.candidate_gain is None:
            return None
        best = torch.where(self.best_gain > GAIN_TIE_TOLERANCE, self.best_gain, float("nan"))
        return self.information_gain / best, self.candidate_gain / best


def check_design(design: str, n_candidates: int | None, domain: Domain | None = None, study_data: bool = False,
                 has_model: bool = True) -> None:
    """Refuse, before any work, a design that cannot run (one ``DesignError`` naming why)."""
    if design not in DESIGNS:
        raise DesignError(f"unknown design {design!r}; choose from {', '.join(DESIGNS)}")
    if n_candidates is not None and n_candidates < 1:
        raise DesignError(f"--candidates must be at least 1, got {n_candidates}")
    if design == "lm" and not has_model:
        raise DesignError("--design lm needs a language model to design (evaluate --model M --design lm)")
    if design in ("active", "lm"):
        if study_data:
            raise DesignError(f"--design {design} cannot replay released files: their observed option sets are fixed "
                              "(use it with simulated users)")
        if domain is not None:
            hypothesis_space(domain)  # a domain without an enumerable prior raises its DomainError here


def pick_most_informative(gain: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The index of the highest gain in each row of ``gain`` [N, C], ties (within ``GAIN_TIE_TOLERANCE``)
    broken uniformly at random; a row of NaN (an empty posterior) picks uniformly at random."""
    gain = gain.nan_to_num(nan=0.0)
    is_best = gain >= gain.amax(-1, keepdim=True) - GAIN_TIE_TOLERANCE
    noise = torch.rand(gain.shape, generator=gen)
    return torch.where(is_best, noise, -1.0).argmax(-1)


def shown_set_gain(domain: Domain, options: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
    """The information gain (nats) of each round's shown set given the rounds before it: float64 [N, R]."""
    n_rounds = choices.shape[1]
    gains = [expected_information_gain(domain, options[:, r : r + 1], options[:, :r], choices[:, :r])[:, 0]
             for r in range(n_rounds)]
    return torch.stack(gains, dim=1) if gains else torch.zeros((choices.shape[0], 0), dtype=torch.float64)


def active_dialogues(domain: Domain, users: torch.Tensor, seed: int, n_candidates: int = DEFAULT_CANDIDATES,
                     user_domain: Domain | None = None, progress=None, designer=None, stream: str = "design",
                     keep_candidates: bool = False):
    """Observed dialogues chosen round by round among ``n_candidates`` sets per user (see the module
    docstring).  ``designer``: None for the Bayesian designer (the most informative candidate), or an object
    with ``choose(domain, history_options, history_choices, candidates, generator) -> DesignChoice`` (an
    ``eval.lm.designer.LMDesigner``).  ``domain`` is the designer's model of the user (the exact gains);
    ``user_domain`` (default ``domain``) makes the choices.  ``stream``: the name of the random streams of the
    candidates, tie-breaks and choices ("design" in evaluation; teaching data uses its own, so that its
    dialogues are independent of evaluation's).  The record holds the index of each round's shown
    candidate; with ``keep_candidates`` also every round's candidates and their gains.  Returns (option_index [N, R, O, F], choices
    [N, R], the ``DesignRecord``)."""
    user_domain = user_domain or domain
    n_users, n_rounds = len(users), domain.n_rounds
    options = torch.empty((n_users, n_rounds, domain.n_options, len(domain.features)), dtype=torch.long)
    choices = torch.empty((n_users, n_rounds), dtype=torch.long)
    gain, mean_gain, best_gain = (torch.empty((n_users, n_rounds), dtype=torch.float64) for _ in range(3))
    failures = torch.zeros((n_users, n_rounds), dtype=torch.bool)
    probs = [] if designer is not None else None
    kept_candidates, kept_gains, kept_picks = [], [], []
    posterior = None  # the prior
    rows = torch.arange(n_users)
    for r in range(n_rounds):
        candidates = domain.draw_options(generator(seed, stream, "candidates", r), (n_users, n_candidates))
        if posterior is None:
            gains = expected_information_gain(domain, candidates)
        else:
            gains = expected_information_gain(domain, candidates, posterior=posterior)
        gen = generator(seed, stream, "tiebreak", r)
        if designer is None:
            pick = pick_most_informative(gains, gen)
        else:
            choice = designer.choose(domain, options[:, :r], choices[:, :r], candidates, gen)
            pick = choice.picks
            if choice.failures is not None:
                failures[:, r] = choice.failures
            if probs is not None and choice.probs is not None:
                probs.append(choice.probs)
        options[:, r] = candidates[rows, pick]
        kept_picks.append(pick)
        if keep_candidates:
            kept_candidates.append(candidates)
            kept_gains.append(gains)
        gain[:, r] = gains[rows, pick]
        mean_gain[:, r] = gains.mean(-1)
        best_gain[:, r] = gains.amax(-1)
        choices[:, r] = simulate_choices(user_domain, users, options[:, r : r + 1],
                                         generator(seed, stream, "choices", r))[:, 0]
        posterior = current_posterior(domain, options[:, : r + 1], choices[:, : r + 1])
        if progress is not None:
            progress(1)
    record = DesignRecord(
        "active" if designer is None else "lm", n_candidates, gain, mean_gain, best_gain,
        designer="bayesian" if designer is None else designer.name,
        failures=failures if designer is not None else None,
        choice_probs=torch.stack(probs, dim=1) if probs else None,
        picks=_stack_rounds(kept_picks, (n_users, 0), torch.long),
    )
    if keep_candidates:
        record.candidates = _stack_rounds(kept_candidates, (n_users, 0, n_candidates, *options.shape[2:]), torch.long)
        record.candidate_gains = _stack_rounds(kept_gains, (n_users, 0, n_candidates), torch.float64)
    return options, choices, record


def _stack_rounds(per_round: list[torch.Tensor], empty_shape: tuple, dtype) -> torch.Tensor:
    """The rounds' tensors stacked on dimension 1 (an empty tensor of ``empty_shape`` for no rounds)."""
    return torch.stack(per_round, dim=1).to(dtype) if per_round else torch.empty(empty_shape, dtype=dtype)


def designed_protocol_data(domain: Domain, users: torch.Tensor, seed: int, design: str = "random",
                           n_candidates: int = DEFAULT_CANDIDATES, n_heldout: int = N_HELDOUT,
                           user_domain: Domain | None = None, progress=None,
                           designer=None) -> tuple[ProtocolData, DesignRecord]:
    """The protocol's data under ``design`` and its ``DesignRecord``; the held-out sets and choices are the
    random design's (``simulate_protocol_data``) either way.  ``designer``: the LM designer of design "lm"."""
    check_design(design, n_candidates, has_model=designer is not None)
    data = simulate_protocol_data(domain, users, seed, n_heldout, user_domain)
    if design == "random":
        return data, DesignRecord("random", None, shown_set_gain(domain, data.dialogue_options, data.dialogue_choices))
    options, choices, record = active_dialogues(domain, users, seed, n_candidates, user_domain, progress,
                                                designer if design == "lm" else None)
    return ProtocolData(users, options, choices, data.heldout_options, data.heldout_choices), record


def run_designed_protocol(domain: Domain, assistant: Assistant, *, design: str = "random",
                          n_candidates: int = DEFAULT_CANDIDATES, n_users: int | None = None,
                          users: torch.Tensor | None = None, seed: int = 0, n_heldout: int = N_HELDOUT,
                          user_domain: Domain | None = None, progress=None, designer=None,
                          **protocol_options) -> EvaluationRun:
    """``run_protocol`` on dialogues whose observed option sets ``design`` chose (``designer``: the LM
    designer of design "lm"); the run's ``design`` holds the ``DesignRecord``."""
    users = pick_users(domain, n_users, seed) if users is None else users
    data, record = designed_protocol_data(domain, users, seed, design, n_candidates, n_heldout, user_domain, progress,
                                          designer)
    run = run_protocol(domain, assistant, seed=seed, user_domain=user_domain, progress=progress, data=data,
                       **protocol_options)
    run.design = record
    return run
