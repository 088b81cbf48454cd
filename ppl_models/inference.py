"""Exact Bayesian inference over a domain's user model, by Pyro's parallel enumeration.

The preference prior is enumerated once per domain (``hypothesis_space``: every latent site of the Pyro
program on its own tensor dimension).  ``infer`` then traces ``user_model`` for a chunk of dialogues with
those enumerated preferences (``observed_trace``), reads off the choice site the likelihood of each observed
choice under every hypothesis, ``[*enum_shape, n_dialogues, n_rounds]``, and runs the forward filter in
probability space: the posterior after round r is the posterior after round r-1 times round r's likelihood,
normalised; the normalisers' logs add up to the log evidence.  Outputs: the posterior after 0, 1, ...,
n_rounds rounds, each latent site's posterior marginal, and the posterior predictive over each round's
options given the rounds before it.  ``predict`` gives the posterior predictive over any new option sets.
Both work in chunks of dialogues sized so that each chunk's intermediate tensors stay in the CPU's cache,
so memory stays bounded for any batch.

Deterministic users give a likelihood of 1/(number of tied best options) or 0: a choice that no hypothesis
with prior mass explains raises ``ImpossibleChoiceError`` naming the dialogue and round (a noisy user model
absorbs such choices instead).
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import torch

from . import memory
from .domain import CHOICE_SITE, Domain
from .errors import BayesTeachError
from .hypotheses import HypothesisSpace, hypothesis_space, observed_trace

# Numbers per likelihood tensor of a chunk (hypotheses x dialogues x rounds x options): about 4 MB of float32
# utilities, so that a chunk's intermediates stay in the CPU's caches (memory traffic, not arithmetic, is the
# cost), while the fixed cost of each chunk (the Pyro trace, a few dozen torch calls) stays small.
DEFAULT_MAX_ELEMENTS = 1 << 20


_PYRO_LOCK = threading.Lock()
# Below this evidence the running products of likelihoods may have reached float64's subnormal range
# (2^-1022): such chunks are redone with a normalisation every round.
_SAFE_EVIDENCE = 2.0 ** -900


class ImpossibleChoiceError(BayesTeachError):
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
    posterior: torch.Tensor | None  # [D, R+1, H] float64 probabilities after 0..R rounds (None unless kept)
    marginals: dict  # site -> [D, R+1, K]
    predictive: torch.Tensor | None  # [D, R, O]: round r's options given rounds < r
    log_evidence: torch.Tensor  # [D, R+1]: log p(choices of rounds < r)

    @functools.cached_property
    def log_posterior(self) -> torch.Tensor | None:
        """``log(posterior)`` (``-inf`` where a hypothesis is ruled out), computed on first use."""
        return None if self.posterior is None else self.posterior.log()


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


def _hypotheses_last(tensor: torch.Tensor, space: HypothesisSpace, batch_shape: tuple) -> torch.Tensor:
    """A choice-site tensor ``[*enum_shape, *batch_shape]`` (or broadcastable to it) as
    ``[*batch_shape, H]``: a view when its memory already holds the hypotheses innermost (utilities from
    ``linear_utility``), else a copy."""
    n_enum = len(space.enum_shape)
    tensor = tensor.reshape((1,) * (n_enum + len(batch_shape) - tensor.dim()) + tuple(tensor.shape))
    tensor = tensor.expand(space.enum_shape + tuple(batch_shape))
    order = tuple(range(n_enum, tensor.dim())) + tuple(range(n_enum))
    return tensor.permute(order).reshape(tuple(batch_shape) + (space.size,))


def _choice_site(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor):
    """The choice site's distribution (batch ``[*enum_shape, d, R]``) and observed value, from one trace."""
    with _PYRO_LOCK:  # Pyro's stack of effect handlers is global, not per thread
        site = observed_trace(domain, option_index, choices).nodes[CHOICE_SITE]
    return site["fn"], site["value"]


def _option_probs(fn) -> torch.Tensor:
    """p(each option) under every hypothesis: ``[*enum_shape, d, R, O]``."""
    probs = getattr(fn, "probs", None)
    return probs() if callable(probs) else fn.log_probs().exp()


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
    impossible: str = "raise",
) -> PosteriorResult:
    """Posterior over preference hypotheses after each round of each dialogue.

    ``option_index``: long ``[D, R, O, F]`` value indices; ``choices``: long ``[D, R]`` (0-based).
    ``keep_posterior``: keep ``posterior`` ``[D, R+1, H]`` (float64 probabilities; ``log_posterior`` is
    its log, computed on first use); ``marginals``: each latent site's marginal; ``predictive``: each
    round's predictive.  ``max_elements``: the chunk size, in likelihood numbers (``H * d * R * O``).
    Chunks run on two threads when ``torch.get_num_threads() >= 2`` (see ``_run_chunks``); ``progress``,
    an optional callable given the number of dialogues finished by each chunk, is then called from those
    threads (one call at a time).  ``impossible``: "raise" (ImpossibleChoiceError for a choice no hypothesis
    explains) or "keep": the dialogue's posterior is then empty from that round on (its rows NaN, its
    ``log_evidence`` not finite), e.g. for real people's choices under a deterministic user model.
    """
    if impossible not in ("raise", "keep"):
        raise ValueError(f"impossible must be 'raise' or 'keep', not {impossible!r}")
    _check_inputs(domain, option_index, choices)
    space = hypothesis_space(domain)
    n_dialogues, n_rounds = choices.shape
    n_hypotheses = space.size
    # The outputs are preallocated and filled chunk by chunk (no parts to concatenate: half the memory);
    # the posterior is written straight into its slice of the output.
    states = (n_dialogues, n_rounds + 1)
    log_evidence = torch.empty(states, dtype=torch.float64)
    memory.warm_allocator()
    posterior = memory.empty(states + (n_hypotheses,), torch.float64) if keep_posterior else None
    marginal_out = {
        site: torch.empty(states + (space.site_sizes[site],), dtype=torch.float64) for site in space.sites
    } if marginals else {}
    predictive_out = torch.empty((n_dialogues, n_rounds, domain.n_options), dtype=torch.float64) if predictive else None
    prior = space.prior  # [H] float64

    def run_chunk(start: int, stop: int) -> None:
        n = stop - start
        if keep_posterior:
            post = posterior[start:stop]  # [n, R+1, H]: written in place
        else:
            post = torch.empty((n, n_rounds + 1, n_hypotheses), dtype=torch.float64)
        evidence = log_evidence[start:stop]
        post[:, 0] = prior
        evidence[:, 0] = 0.0
        if n_rounds:
            fn, value = _choice_site(domain, option_index[start:stop], choices[start:stop])
            _forward(fn, value, space, post, evidence)
            if impossible == "raise":
                _raise_if_impossible(evidence, choices[start:stop], start)
        if marginals:
            for site in space.sites:
                marginal_out[site][start:stop] = space.marginal_last(post, site)
        if predictive and n_rounds:
            option_probs = _option_probs(fn)  # [*enum, n, R, O]
            before = post[:, :n_rounds]  # [n, R, H]: the posterior before each round
            for o in range(domain.n_options):
                probs = _hypotheses_last(option_probs[..., o], space, (n, n_rounds))  # [n, R, H]
                predictive_out[start:stop, :, o] = torch.linalg.vecdot(before, probs.to(torch.float64))

    per_dialogue = n_hypotheses * n_rounds * domain.n_options
    _run_chunks(run_chunk, _chunks(n_dialogues, per_dialogue, max_elements), progress)
    return PosteriorResult(
        space=space,
        posterior=posterior,
        marginals=marginal_out,
        predictive=predictive_out,
        log_evidence=log_evidence,
    )


def _run_chunks(run_chunk, chunks: list, progress=None) -> None:
    """``run_chunk(start, stop)`` for every chunk, on two threads when torch may use two or more.

    Each thread takes the next chunk as it finishes one, with half of torch's intra-op threads (one each on
    two cores).  On a few cores this beats splitting every operation across the cores: no synchronisation
    per operation, one chunk's Pyro trace overlaps another's arithmetic, and when another process takes a
    core only one thread waits (OpenMP-split operations then wait on the busy core at every operation, chunk
    threads run about as fast as one core).  The gain on two idle cores is modest, since every torch call
    hands Python's GIL over (benchmarks/bench_inference.py measures one thread against two).  An error is raised for the
    first chunk (in order) that fails, as a sequential run would raise it.
    """
    torch_threads = torch.get_num_threads()
    workers = min(2, torch_threads, len(chunks))
    if workers <= 1:
        for start, stop in chunks:
            run_chunk(start, stop)
            if progress is not None:
                progress(stop - start)
        return
    lock = threading.Lock()
    state = {"next": 0, "failed": None}  # the next chunk to take; (index, error) of the first that failed

    def worker() -> None:
        torch.set_num_threads(torch_threads // workers)  # this thread's own (OpenMP settings are per thread)
        while True:
            with lock:
                index = state["next"]
                if index >= len(chunks) or (state["failed"] is not None and index > state["failed"][0]):
                    return
                state["next"] += 1
            try:
                run_chunk(*chunks[index])
                if progress is not None:
                    with lock:
                        progress(chunks[index][1] - chunks[index][0])
            except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
                with lock:
                    if state["failed"] is None or index < state["failed"][0]:
                        state["failed"] = (index, error)

    pool = [threading.Thread(target=worker, name=f"ppl_models.infer-{i}", daemon=True) for i in range(workers)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        torch.set_num_threads(torch_threads)  # the workers' calls also changed torch's default for new threads
    if state["failed"] is not None:
        raise state["failed"][1]


def _forward(fn, value, space: HypothesisSpace, post: torch.Tensor, evidence: torch.Tensor) -> None:
    """The forward filter: fill ``post[:, 1:]`` ``[n, R, H]`` and ``evidence[:, 1:]`` given ``post[:, 0]``.

    With the distribution's ``likelihood`` (UtilityChoice): in probability space, the prior times the
    running product of the rounds' likelihoods, each round then divided by its sum (the evidence).  Where a
    sum comes out 0 or so small that the products may have lost precision (an impossible choice, or a noisy
    user's likelihoods over very many rounds), or without ``likelihood``: again from ``log_prob``, each
    round normalised before the next and its log-likelihoods shifted by their largest value over the
    hypotheses still possible, which cannot underflow.  An impossible choice leaves a non-finite evidence.
    """
    n, n_rounds = post.shape[0], post.shape[1] - 1
    likelihood = getattr(fn, "likelihood", None)
    if callable(likelihood):
        joint = post[:, 1:]  # [n, R, H]
        joint.copy_(_hypotheses_last(likelihood(value), space, (n, n_rounds)))  # to float64
        rows = post.unbind(1)
        for r in range(n_rounds):  # in place: cheaper than products into a third tensor
            rows[r + 1].mul_(rows[r])  # p(h, choices of rounds <= r)
        totals = joint.sum(-1, keepdim=True)  # p(choices of rounds <= r), [n, R, 1]
        if bool(totals.amin() > _SAFE_EVIDENCE):
            joint.mul_(totals.reciprocal_())
            torch.log(totals.squeeze_(-1), out=evidence[:, 1:]).neg_()  # log(1 / total) = -log(total)
            return
    log_lik = _hypotheses_last(fn.log_prob(value), space, (n, n_rounds))  # [n, R, H]
    for r in range(n_rounds):
        before, now = post[:, r], post[:, r + 1]
        torch.sub(log_lik[:, r], 0.0, out=now)  # float64 copy
        shift = now.masked_fill(before == 0, -math.inf).amax(-1, keepdim=True)
        shift.masked_fill_(~torch.isfinite(shift), 0.0)
        now.sub_(shift).exp_().mul_(before)
        total = now.sum(-1, keepdim=True)
        now.div_(total)
        torch.add(evidence[:, r], total[:, 0].log().add_(shift[:, 0]), out=evidence[:, r + 1])


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


def _raise_if_impossible(log_evidence: torch.Tensor, choices: torch.Tensor, offset: int) -> None:
    impossible = ~torch.isfinite(log_evidence)  # [d, R+1]; column r = after r rounds
    if impossible.any():
        dialogue, after_rounds = (int(v) for v in torch.nonzero(impossible)[0])
        first_round = int(torch.nonzero(impossible[dialogue])[0])
        raise ImpossibleChoiceError(offset + dialogue, first_round - 1, int(choices[dialogue, first_round - 1]))


def predict(
    domain: Domain,
    log_posterior,
    option_index: torch.Tensor,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """Posterior predictive over new option sets.

    ``log_posterior``: ``[D, S, H]`` (S posterior states per dialogue, e.g. after 0..R rounds), or a
    ``PosteriorResult`` with its posterior kept (its probabilities are used as they are: no log and exp);
    ``option_index``: long ``[D, M, O, F]`` (M option sets per dialogue).  Returns ``[D, S, M, O]``:
    the probability that the user picks each option of each set, under each posterior state.
    """
    space = hypothesis_space(domain)
    n_dialogues, n_sets = option_index.shape[:2]
    in_log_space = not isinstance(log_posterior, PosteriorResult)
    states = log_posterior if in_log_space else log_posterior.posterior
    if states is None:
        raise ValueError("the PosteriorResult has no posterior: run infer with keep_posterior=True")
    if states.dim() != 3 or states.shape[0] != n_dialogues or states.shape[-1] != space.size:
        raise ValueError(f"log_posterior must be [{n_dialogues}, S, {space.size}], got {tuple(states.shape)}")
    dummy_choices = torch.zeros(n_dialogues, n_sets, dtype=torch.long)
    out = torch.empty((n_dialogues, states.shape[1], n_sets, domain.n_options), dtype=torch.float64)
    for start, stop in _chunks(n_dialogues, space.size * n_sets * domain.n_options, max_elements):
        n = stop - start
        fn, _ = _choice_site(domain, option_index[start:stop], dummy_choices[start:stop])
        option_probs = _option_probs(fn)  # [*enum, n, M, O]
        posterior = states[start:stop].to(torch.float64, copy=in_log_space)  # a copy to exp: the caller's stays
        if in_log_space:
            posterior = _exp_(posterior)
        for o in range(domain.n_options):
            probs = _hypotheses_last(option_probs[..., o], space, (n, n_sets)).to(torch.float64)  # [n, M, H]
            torch.bmm(posterior, probs.transpose(1, 2), out=out[start:stop, :, :, o])
    return out
