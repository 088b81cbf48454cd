"""Exact Bayesian inference over a domain's user model, by Pyro's parallel enumeration.

``infer`` traces ``user_model`` under ``poutine.enum`` for a chunk of dialogues, reads the choice site's
log-likelihood over the whole enumerated hypothesis space ``[H, n_dialogues, n_rounds]``, and accumulates
it over rounds: the posterior after 0, 1, ..., n_rounds rounds, each latent site's posterior marginal, and
the posterior predictive over each round's options given the rounds before it.  ``predict`` gives the
posterior predictive over any new option sets.  Both work in chunks of dialogues sized so that no tensor
holds more than ``max_elements`` numbers, so memory stays bounded for any batch.

Deterministic users give a 0/1 likelihood: a choice that no hypothesis with prior mass explains raises
``ImpossibleChoiceError`` naming the dialogue and round (a noisy user model absorbs such choices instead).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .domain import CHOICE_SITE, Domain
from .hypotheses import HypothesisSpace, as_enum_batch, enum_ndim, enumerated_trace, hypothesis_space

DEFAULT_MAX_ELEMENTS = 1 << 23  # numbers per intermediate tensor (32 MB of float32)


class ImpossibleChoiceError(ValueError):
    """An observed choice has zero probability under every hypothesis of the model."""

    def __init__(self, dialogue: int, round_: int, choice: int):
        self.dialogue, self.round, self.choice = dialogue, round_, choice
        super().__init__(
            f"dialogue {dialogue}, round {round_ + 1}: no preference hypothesis explains choosing option "
            f"{choice + 1} (together with the earlier rounds); a deterministic user cannot have made this "
            "choice. Use a noisy user model (temperature > 0 or lapse > 0) for data from real people."
        )


@dataclass
class PosteriorResult:
    """Exact posterior quantities for a batch of dialogues (``D`` dialogues, ``R`` rounds)."""

    space: HypothesisSpace
    log_posterior: torch.Tensor | None  # [D, R+1, H]: after 0..R rounds (None unless kept)
    marginals: dict  # site -> [D, R+1, K]
    predictive: torch.Tensor | None  # [D, R, O]: round r's options given rounds < r
    log_evidence: torch.Tensor  # [D, R+1]: log p(choices of rounds < r)


def _check_inputs(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor | None):
    if option_index.dim() != 4 or option_index.shape[-2:] != (domain.n_options, len(domain.features)):
        raise ValueError(
            f"options must be [n_dialogues, n_rounds, {domain.n_options}, {len(domain.features)}] value "
            f"indices, got {tuple(option_index.shape)}"
        )
    if choices is not None:
        if choices.shape != option_index.shape[:2]:
            raise ValueError(f"choices must be [n_dialogues, n_rounds], got {tuple(choices.shape)}")
        if choices.numel() and (choices.min() < 0 or choices.max() >= domain.n_options):
            raise ValueError(f"choices must lie in 0..{domain.n_options - 1}")


def _chunks(n_items: int, per_item: int, max_elements: int):
    step = max(1, max_elements // max(per_item, 1))
    return [(start, min(start + step, n_items)) for start in range(0, n_items, step)]


def choice_log_likelihood(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor, all_options=False):
    """The choice site's log-likelihood under every hypothesis, from one enumerated trace.

    Returns ``[H, D, R]`` (the observed choices), or ``[H, D, R, O]`` (every option) with ``all_options``.
    """
    observed, every_option = _log_likelihoods(
        domain, option_index, choices, observed=not all_options, all_options=all_options
    )
    return every_option if all_options else observed


def _log_likelihoods(domain: Domain, option_index, choices, *, observed=True, all_options=False):
    """``(log p(observed choice) [H, D, R], log p(each option) [H, D, R, O])``, both from one enumerated
    trace (``infer`` with ``predictive`` needs both); either is None unless asked for."""
    space = hypothesis_space(domain)
    n_dialogues, n_rounds = option_index.shape[:2]
    observed_shape = (space.size, n_dialogues, n_rounds)
    if n_rounds == 0:  # nothing observed yet: Pyro plates cannot be empty, and there is nothing to trace
        return (
            torch.zeros(observed_shape) if observed else None,
            torch.zeros(observed_shape + (domain.n_options,)) if all_options else None,
        )
    trace = enumerated_trace(domain, option_index, choices)
    fn = trace.nodes[CHOICE_SITE]["fn"]
    n_enum = enum_ndim(trace)
    log_lik = log_probs = None
    if observed:
        log_lik = as_enum_batch(fn.log_prob(trace.nodes[CHOICE_SITE]["value"]), n_enum)  # [enum..., D, R]
        log_lik = log_lik.expand(space.enum_shape + observed_shape[1:]).reshape(observed_shape)
    if all_options:
        log_probs = fn.log_probs()  # [enum..., D, R, O]
        extra = n_enum + 3 - log_probs.dim()
        log_probs = log_probs.reshape((1,) * extra + tuple(log_probs.shape))
        shape = space.enum_shape + (n_dialogues, n_rounds, domain.n_options)
        log_probs = log_probs.expand(shape).reshape((space.size,) + shape[n_enum:])
    return log_lik, log_probs


def infer(
    domain: Domain,
    option_index: torch.Tensor,
    choices: torch.Tensor,
    *,
    keep_posterior: bool = True,
    marginals: bool = True,
    predictive: bool = False,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    progress=None,
) -> PosteriorResult:
    """Posterior over preference hypotheses after each round of each dialogue.

    ``option_index``: long ``[D, R, O, F]`` value indices; ``choices``: long ``[D, R]`` (0-based).
    ``progress``: an optional callable given the number of dialogues finished by each chunk.
    """
    _check_inputs(domain, option_index, choices)
    space = hypothesis_space(domain)
    n_dialogues, n_rounds = choices.shape
    n_hypotheses = space.size
    per_dialogue = n_hypotheses * n_rounds * domain.n_options
    # The outputs are preallocated and filled chunk by chunk (no parts to concatenate: half the memory).
    states = (n_dialogues, n_rounds + 1)
    log_evidence = torch.empty(states, dtype=torch.float64)
    log_posterior = torch.empty(states + (n_hypotheses,), dtype=torch.float64) if keep_posterior else None
    marginal_out = {
        site: torch.empty(states + (space.site_sizes[site],), dtype=torch.float64) for site in space.sites
    } if marginals else {}
    predictive_out = torch.empty((n_dialogues, n_rounds, domain.n_options), dtype=torch.float64) if predictive else None
    prior = space.log_prior.double()[:, None]  # [H, 1]
    workspace = _Workspace()  # float64 scratch tensors reused from chunk to chunk (fresh ones page-fault)
    for start, stop in _chunks(n_dialogues, per_dialogue, max_elements):
        log_lik, option_log_probs = _log_likelihoods(
            domain, option_index[start:stop], choices[start:stop], all_options=predictive
        )  # [H, d, R] (and [H, d, R, O])
        # Utilities are float32; the evidence accumulates in float64 so posteriors are exact to ~1e-12.
        # log p(h) + log p(choices of rounds < r | h) for r = 0..R, built in place: [H, d, R+1]
        shape = (n_hypotheses, stop - start, n_rounds + 1)
        log_joint = workspace.get("joint", shape)
        log_joint[..., 0] = prior
        torch.cumsum(log_lik, -1, dtype=torch.float64, out=log_joint[..., 1:]).add_(prior[..., None])
        evidence = _logsumexp(log_joint, 0, workspace.get("diff", shape), workspace.get("scratch", shape))
        _raise_if_impossible(evidence, choices[start:stop], start)
        log_evidence[start:stop] = evidence
        log_post = log_joint.sub_(evidence)  # [H, d, R+1], in place
        if keep_posterior:  # [H, d, R+1] -> [d, R+1, H] (a permuted copy: torch runs it on every thread)
            log_posterior[start:stop].copy_(log_post.permute(1, 2, 0))
        if marginals or predictive:
            post = _exp_(log_post, workspace.get("scratch", shape))  # in place: log_post is not needed again
        if marginals:
            for site in space.sites:
                marginal_out[site][start:stop] = space.marginal(post, site)
        if predictive:
            option_probs = _exp_(option_log_probs.to(torch.float64, copy=True))  # [H, d, R, O]
            predictive_out[start:stop] = torch.einsum("hdr,hdro->dro", post[..., :n_rounds], option_probs)
        if progress is not None:
            progress(stop - start)
    return PosteriorResult(
        space=space,
        log_posterior=log_posterior,
        marginals=marginal_out,
        predictive=predictive_out,
        log_evidence=log_evidence,
    )


class _Workspace:
    """Named float64 scratch tensors for ``infer``'s chunks, allocated once at the largest chunk's size."""

    def __init__(self):
        self.buffers = {}

    def get(self, name: str, shape: tuple) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[name] = torch.empty(size, dtype=torch.float64)
        return buffer[:size].view(shape)


# torch.exp is slow where its result underflows (below about -87 in float32, -708 in float64, and at -inf:
# a hypothesis the data rule out, most of them after a few rounds); _exp_ gives the same values without it.
_EXP_UNDERFLOW = {torch.float32: -87.0, torch.float64: -708.0}


def _exp_(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``x.exp_()``, bit for bit, fast when much of ``x`` is ``-inf``; ``scratch``: an optional tensor
    of x's shape and dtype to work in."""
    low = _EXP_UNDERFLOW.get(x.dtype)
    if low is None or x.numel() == 0:
        return x.exp_()
    scratch = torch.empty_like(x) if scratch is None else scratch
    if torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0, out=scratch).amin() < low:
        return x.exp_()  # finite values whose exp underflows (to subnormals): the exact slow path
    # every finite value is >= low: exp of the clamped value, times 0 at -inf and 1 elsewhere
    ones = torch.clamp(x, low - 1.0, low, out=scratch).sub_(low - 1.0)
    return x.clamp_(min=low).exp_().mul_(ones)


def _logsumexp(x: torch.Tensor, dim: int, diff: torch.Tensor | None = None, scratch: torch.Tensor | None = None):
    """``torch.logsumexp(x, dim)``, bit for bit (ATen's steps), with the fast ``_exp_`` and ``_amax0``;
    ``diff`` and ``scratch``: optional tensors of x's shape and dtype to work in."""
    maxes = _amax0(x, keepdim=True) if dim == 0 else x.amax(dim, keepdim=True)
    maxes_squeezed = maxes.squeeze(dim)
    maxes_squeezed.masked_fill_(maxes_squeezed.abs() == math.inf, 0)
    return _exp_(torch.sub(x, maxes, out=diff), scratch).sum(dim).log_().add_(maxes_squeezed)


def _amax0(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """``x.amax(0)``.  torch reduces a long leading dimension slowly when little lies behind it (a chunk of
    one dialogue of a large hypothesis space: ``[390625, 1, 6]``), so fold it in two: ``[a, b * rest]``
    then ``[b, rest]``.  The maximum does not depend on the order; a zero maximum (whose sign could) is
    taken the plain way."""
    n = x.shape[0]
    rest = x.numel() // max(n, 1)
    a = _fold(n) if x.is_contiguous() and rest < 512 else 1
    if a == 1:
        return x.amax(0, keepdim=keepdim)
    folded = x.view(a, -1).amax(0).view((n // a,) + x.shape[1:]).amax(0, keepdim=keepdim)
    return x.amax(0, keepdim=keepdim) if bool((folded == 0).any()) else folded


@functools.lru_cache(maxsize=None)
def _fold(n: int) -> int:
    """The divisor of ``n`` nearest below its square root (1 when n is prime or small)."""
    if n < 4096:
        return 1
    return next(a for a in range(math.isqrt(n), 0, -1) if n % a == 0)


def _raise_if_impossible(log_evidence: torch.Tensor, choices: torch.Tensor, offset: int) -> None:
    impossible = ~torch.isfinite(log_evidence)  # [d, R+1]; column r = after r rounds
    if impossible.any():
        dialogue, after_rounds = (int(v) for v in torch.nonzero(impossible)[0])
        first_round = int(torch.nonzero(impossible[dialogue])[0])
        raise ImpossibleChoiceError(offset + dialogue, first_round - 1, int(choices[dialogue, first_round - 1]))


def predict(
    domain: Domain,
    log_posterior: torch.Tensor,
    option_index: torch.Tensor,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """Posterior predictive over new option sets.

    ``log_posterior``: ``[D, S, H]`` (S posterior states per dialogue, e.g. after 0..R rounds);
    ``option_index``: long ``[D, M, O, F]`` (M option sets per dialogue).  Returns ``[D, S, M, O]``:
    the probability that the user picks each option of each set, under each posterior state.
    """
    space = hypothesis_space(domain)
    n_dialogues, n_sets = option_index.shape[:2]
    if log_posterior.shape[0] != n_dialogues or log_posterior.shape[-1] != space.size:
        raise ValueError(f"log_posterior must be [{n_dialogues}, S, {space.size}], got {tuple(log_posterior.shape)}")
    dummy_choices = torch.zeros(n_dialogues, n_sets, dtype=torch.long)
    parts = []
    for start, stop in _chunks(n_dialogues, space.size * n_sets * domain.n_options, max_elements):
        option_probs = _exp_(
            choice_log_likelihood(
                domain, option_index[start:stop], dummy_choices[start:stop], all_options=True
            ).to(torch.float64, copy=True)
        )  # [H, d, M, O]
        posterior = _exp_(log_posterior[start:stop].to(torch.float64, copy=True))  # a copy: the caller's stays
        parts.append(torch.einsum("dsh,hdmo->dsmo", posterior, option_probs))
    return torch.cat(parts)
