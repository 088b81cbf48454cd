"""Exact expected information gain of candidate option sets: how much showing a set is expected to teach
about the user's preferences.

For a user whose preferences ``h`` have posterior ``p(h | history)`` and a candidate option set ``s``, the
information gain is the mutual information between the user's next choice ``y`` and ``h``::

    I(s) = H[p(y | s, history)] - sum_h p(h | history) H[p(y | s, h)]

with ``p(y | s, history) = sum_h p(h | history) p(y | s, h)`` the posterior predictive, in nats.  Both terms
come from the same enumeration as ``infer``: one trace of ``user_model`` with the candidates as the rounds of
each dialogue gives ``p(y | s, h)`` for every hypothesis (the choice rule's ``probs``) and its entropy (the
choice rule's ``entropy``: for the deterministic user a table over the number of tied options, with or
without a lapse; for a noisy user ``-sum p log p``); the sums over hypotheses are matrix products with the
posterior.  The deterministic user's choice carries no noise, so there ``I(s)`` is the entropy of the
predictive: the set whose outcome is least predictable teaches most.

Candidates are either each user's own (``[N, C, O, F]``: a trace per chunk of users, sized like ``infer``'s
chunks) or one pool shared by all users (``[C, O, F]``: one trace, then two matrix products over all users).
"""
from __future__ import annotations

import torch

from .domain import Domain
from .hypotheses import hypothesis_space
from .inference import DEFAULT_MAX_ELEMENTS, _chunks, _choice_site, _hypotheses_last, _run_chunks, infer

POSTERIOR_BYTES = 256 << 20  # posteriors held at once while reading the current one off a history


def current_posterior(domain: Domain, history_options: torch.Tensor, history_choices: torch.Tensor) -> torch.Tensor:
    """``p(h | history)`` after all the rounds of each dialogue: float64 ``[N, H]`` (NaN rows where no
    hypothesis explains the choices).  In groups of dialogues whose posteriors after every round fit in
    ``POSTERIOR_BYTES``."""
    space = hypothesis_space(domain)
    n_dialogues, n_rounds = history_choices.shape
    if n_rounds == 0:
        return space.prior.expand(n_dialogues, space.size).clone()
    out = torch.empty((n_dialogues, space.size), dtype=torch.float64)
    step = max(1, POSTERIOR_BYTES // ((n_rounds + 1) * space.size * 8))
    for start in range(0, n_dialogues, step):
        part = slice(start, start + step)
        result = infer(domain, history_options[part], history_choices[part], marginals=False, impossible="keep")
        out[part] = result.posterior[:, -1]
    return out


def expected_information_gain(
    domain: Domain,
    candidates: torch.Tensor,
    history_options: torch.Tensor | None = None,
    history_choices: torch.Tensor | None = None,
    *,
    posterior: torch.Tensor | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """The expected information gain (nats) of each candidate option set for each user: float64 ``[N, C]``.

    ``candidates``: long ``[N, C, O, F]`` (each user's own C sets) or ``[C, O, F]`` (one pool for every
    user).  The users' beliefs: ``posterior`` (float64 ``[N, H]`` probabilities over the domain's
    hypotheses), or the history ``history_options`` ``[N, r, O, F]`` and ``history_choices`` ``[N, r]``
    (r may be 0), or neither: the prior (N = 1 for a shared pool).  A user whose posterior is empty (NaN)
    gets NaN.  ``max_elements``: the chunk size, in choice-probability numbers (``H * users * C * O``).
    """
    space = hypothesis_space(domain)
    shared = candidates.dim() == 3
    if candidates.dim() not in (3, 4) or candidates.shape[-2:] != (domain.n_options, len(domain.features)):
        raise ValueError(f"candidates must be [N, C, {domain.n_options}, {len(domain.features)}] or "
                         f"[C, {domain.n_options}, {len(domain.features)}], got {tuple(candidates.shape)}")
    if posterior is None:
        if history_options is not None:
            posterior = current_posterior(domain, history_options, history_choices)
        else:
            n_users = 1 if shared else candidates.shape[0]
            posterior = space.prior.expand(n_users, space.size)
    posterior = posterior.to(torch.float64)
    if posterior.dim() != 2 or posterior.shape[1] != space.size:
        raise ValueError(f"posterior must be [N, {space.size}], got {tuple(posterior.shape)}")
    n_users = posterior.shape[0]
    if not shared and candidates.shape[0] != n_users:
        raise ValueError(f"{candidates.shape[0]} users' candidates for {n_users} posteriors")
    if shared:
        predictive, conditional = _shared_terms(domain, space, candidates, posterior, max_elements)
    else:
        predictive, conditional = _per_user_terms(domain, space, candidates, posterior, max_elements)
    entropy = -torch.special.xlogy(predictive, predictive).sum(-1)  # H[p(y | s, history)], [N, C]
    return (entropy - conditional).clamp_min_(0.0)  # >= 0 up to rounding


def _per_user_terms(domain, space, candidates, posterior, max_elements):
    """The predictive ``[N, C, O]`` and the expected conditional entropy ``[N, C]``, chunk by chunk of users
    (on two threads where torch may use two, as ``infer``'s chunks)."""
    n_users, n_sets, n_options = candidates.shape[:3]
    predictive = torch.empty((n_users, n_sets, n_options), dtype=torch.float64)
    conditional = torch.empty((n_users, n_sets), dtype=torch.float64)
    dummy = torch.zeros((n_users, n_sets), dtype=torch.long)

    def run_chunk(start: int, stop: int) -> None:
        n = stop - start
        fn, _ = _choice_site(domain, candidates[start:stop], dummy[start:stop])
        weights = posterior[start:stop].unsqueeze(-1)  # [n, H, 1]
        option_probs, entropy = fn.probs_and_entropy()  # [*enum, n, C, O], [*enum, n, C]
        entropy = _hypotheses_last(entropy, space, (n, n_sets))  # [n, C, H]
        torch.bmm(entropy, weights, out=conditional[start:stop].unsqueeze(-1))
        for o in range(n_options):
            probs = _hypotheses_last(option_probs[..., o], space, (n, n_sets)).to(torch.float64)  # [n, C, H]
            torch.bmm(probs, weights, out=predictive[start:stop, :, o].unsqueeze(-1))

    _run_chunks(run_chunk, _chunks(n_users, space.size * n_sets * n_options, max_elements))
    return predictive, conditional


def _shared_terms(domain, space, candidates, posterior, max_elements):
    """As ``_per_user_terms`` for one pool of candidates ``[C, O, F]`` shared by every user: one table of
    ``p(y | s, h)`` and its entropies, then matrix products with all the posteriors."""
    n_sets, n_options = candidates.shape[:2]
    probs = torch.empty((n_sets, n_options, space.size), dtype=torch.float64)
    entropies = torch.empty((n_sets, space.size), dtype=torch.float64)
    for start, stop in _chunks(n_sets, space.size * n_options, max_elements):
        part = candidates[start:stop].unsqueeze(0)  # one dialogue whose rounds are the candidates
        fn, _ = _choice_site(domain, part, torch.zeros(part.shape[:2], dtype=torch.long))
        option_probs, entropy = fn.probs_and_entropy()
        entropies[start:stop] = _hypotheses_last(entropy, space, (1, stop - start))[0]
        for o in range(n_options):
            probs[start:stop, o] = _hypotheses_last(option_probs[..., o], space, (1, stop - start))[0]
    empty = posterior.isnan().any(-1, keepdim=True)  # NaN rows stay NaN through the products below
    weights = posterior.nan_to_num(0.0)
    predictive = (weights @ probs.reshape(n_sets * n_options, space.size).T).reshape(-1, n_sets, n_options)
    conditional = weights @ entropies.T
    return predictive.masked_fill_(empty.unsqueeze(-1), float("nan")), conditional.masked_fill_(empty, float("nan"))
