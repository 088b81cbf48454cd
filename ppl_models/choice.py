"""The user's choice rule as a Pyro distribution over option indices.

``UtilityChoice(utility, temperature, lapse)`` is a distribution over ``{0, ..., n_options-1}`` whose batch
shape is ``utility.shape[:-1]``:

* ``temperature == 0`` (the study's deterministic user): the user takes the highest-utility option; options
  whose utility is within ``tie_tolerance`` of the best are tied and taken with equal probability, so the
  likelihood of an observed choice is 1/(number tied) if it is among the best and 0 otherwise;
* ``temperature > 0``: softmax of utility / temperature (a noisy user);
* ``lapse > 0``: with probability ``lapse`` the user picks uniformly at random instead.

Both the simulated users and the exact inference use this one object, so they cannot disagree about ties.
"""
from __future__ import annotations

import functools
import math

import torch
from pyro.distributions import TorchDistribution, constraints

TIE_TOLERANCE = 1e-6


class UtilityChoice(TorchDistribution):
    """A choice among options driven by their utilities (see module docstring)."""

    arg_constraints = {}
    has_enumerate_support = True

    def __init__(self, utility, temperature=0.0, lapse=0.0, tie_tolerance=TIE_TOLERANCE, validate_args=None):
        self.utility = utility  # [..., n_options]
        self.temperature = float(temperature)
        self.lapse = float(lapse)
        self.tie_tolerance = float(tie_tolerance)
        self.n_options = utility.shape[-1]
        super().__init__(batch_shape=utility.shape[:-1], event_shape=(), validate_args=False)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.n_options - 1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        utility = self.utility.expand(batch_shape + (self.n_options,))
        return UtilityChoice(utility, self.temperature, self.lapse, self.tie_tolerance)

    def _apply_lapse(self, log_probs):
        """Mix in a uniform lapse: p = (1 - lapse) p + lapse / n_options, elementwise in log space."""
        if self.lapse == 0.0:
            return log_probs
        uniform = math.log(self.lapse / self.n_options)
        return torch.logaddexp(log_probs + math.log1p(-self.lapse), torch.full_like(log_probs, uniform))

    def log_probs(self):
        """Log-probability of every option: [..., n_options]."""
        if self.temperature > 0:
            return self._apply_lapse(torch.log_softmax(self.utility / self.temperature, dim=-1))
        is_best = self.utility >= (self.utility.amax(-1, keepdim=True) - self.tie_tolerance)  # [..., n_options]
        n_best = _count(is_best, keepdim=True)
        return self._apply_lapse(self._minus_log_count(n_best * is_best))

    def log_prob(self, value):
        """Log-probability of the chosen option ``value`` (long, broadcastable to the batch shape)."""
        if self.temperature > 0:
            chosen = self.utility.gather(-1, _index(value, self.utility))[..., 0]
            log_probs = chosen / self.temperature - torch.logsumexp(self.utility / self.temperature, -1)
            return self._apply_lapse(log_probs)
        # Deterministic: the hot path of exact inference, so no [..., n_options] float table and no
        # torch.where: count the tied-best options in uint8, mark whether the chosen one is among them,
        # and read -log(count) (or -inf) off a small table.
        threshold = self.utility.amax(-1).sub_(self.tie_tolerance)  # best - tolerance, [...]
        is_best = self.utility >= threshold.unsqueeze(-1)  # [..., n_options]
        return self._apply_lapse(self._minus_log_count(_count(is_best) * _chosen(is_best, value)))

    def likelihood(self, value):
        """``p(value)``, the probability of the chosen option, in probability space: the hot path of exact
        inference (``infer`` multiplies it into the posterior round by round, with no exp or log).

        The deterministic user's probability is 1/(number tied) or 0, as float32 (1/3 is off by 3e-8, as
        ``exp`` of the float32 ``log_prob`` is; with a lapse: mixed with the uniform in float32); a noisy
        user's is ``exp(log_prob)`` in float64.  The result has the batch
        shape and, like every elementwise result, the memory layout of ``utility``: a utility stored
        option-major with the enumerated hypotheses innermost (``linear_utility``) gives a likelihood whose
        hypotheses are contiguous, the layout ``infer`` writes its posterior in.  Counting is done in float
        (``torch.ge`` into a float32 tensor, sums, a division), which torch vectorises several times better
        than comparisons into bool, ``torch.where`` or a table lookup.
        """
        if self.temperature > 0:
            return self.log_prob(value).to(torch.float64).exp_()
        options, threshold = self._tie_threshold()
        dtype = threshold.dtype if threshold.is_floating_point() else torch.float32
        chose = torch.nn.functional.one_hot(torch.as_tensor(value, device=self.utility.device).long(), self.n_options)
        chose = chose.to(dtype).unbind(-1)  # whether option o was chosen, [...] each (the plates' shape)
        n_best = torch.ge(options[0], threshold, out=torch.empty_like(threshold, dtype=dtype))
        chosen_is_best = n_best * chose[0]
        is_best = torch.empty_like(n_best)
        for o in range(1, self.n_options):
            torch.ge(options[o], threshold, out=is_best)
            n_best += is_best
            chosen_is_best.addcmul_(is_best, chose[o])
        probs = chosen_is_best.div_(n_best)  # n_best >= 1: the best option is always among the best
        if self.lapse > 0:
            probs.mul_(1.0 - self.lapse).add_(self.lapse / self.n_options)
        return probs

    def _tie_threshold(self):
        """(the options' utilities, each [...]; best - tolerance, [...]): option by option, without the
        [..., n_options] temporaries of ``amax`` (this runs on the largest tensors of information gain)."""
        options = self.utility.unbind(-1)
        threshold = torch.maximum(options[0], options[1])
        for option in options[2:]:
            torch.maximum(threshold, option, out=threshold)
        return options, threshold.sub_(self.tie_tolerance)  # best - tolerance, as in log_prob

    def probs(self):
        """Probability of every option: ``[..., n_options]`` (float32; float64 for a noisy user)."""
        return self.probs_and_entropy(with_entropy=False)[0]

    def probs_and_entropy(self, with_entropy: bool = True):
        """``(probs(), entropy())`` from one pass over the utilities (see ``entropy``; None without
        ``with_entropy``).

        The deterministic user's probabilities are 1/(number tied) for the tied-best options and 0 for the
        others (float32, mixed with the lapse); they are written option by option into a tensor of the
        utility's memory layout (option-major from ``linear_utility``), so every step is elementwise over
        contiguous blocks instead of a reduction over a strided last dimension."""
        if self.temperature > 0:
            if not with_entropy:
                return self.log_probs().to(torch.float64).exp_(), None
            return self._softmax_probs_and_entropy()
        options, threshold = self._tie_threshold()
        dtype = threshold.dtype if threshold.is_floating_point() else torch.float32
        probs = torch.empty_like(self.utility, dtype=dtype)  # the utility's layout
        is_best = probs.unbind(-1)
        n_best = torch.ge(options[0], threshold, out=is_best[0]).clone()
        for o in range(1, self.n_options):
            n_best += torch.ge(options[o], threshold, out=is_best[o])
        count = n_best.to(torch.int32) if with_entropy else None
        probs.div_(n_best.unsqueeze(-1))  # n_best >= 1: the best option is always among the best
        if self.lapse > 0:
            probs.mul_(1.0 - self.lapse).add_(self.lapse / self.n_options)
        if not with_entropy:
            return probs, None
        table = _entropy_table(self.n_options, self.lapse)
        return probs, table.index_select(0, count.reshape(-1)).reshape(count.shape)

    def _softmax_probs_and_entropy(self):
        """A noisy user's probabilities and entropy in float64, option by option in the utility's layout
        (elementwise over contiguous blocks where the utility is option-major): with ``z_o = u_o / T``,
        ``m = max_o z_o`` and ``Z = sum_o exp(z_o - m)``, ``p_o = exp(z_o - m) / Z`` and, without a lapse,
        ``H = log Z - sum_o p_o (z_o - m)``; with one, ``-sum_o p'_o log p'_o`` of the mixed ``p'``."""
        probs = torch.empty_like(self.utility, dtype=torch.float64)
        shifted = [option.to(torch.float64).div_(self.temperature) for option in self.utility.unbind(-1)]
        top = shifted[0].clone()
        for z in shifted[1:]:
            torch.maximum(top, z, out=top)
        for z in shifted:
            z.sub_(top)  # z_o - m <= 0
        exps = probs.unbind(-1)
        total = torch.exp(shifted[0], out=exps[0]).clone()
        for z, e in zip(shifted[1:], exps[1:]):
            total += torch.exp(z, out=e)
        probs.div_(total.unsqueeze(-1))
        if self.lapse == 0.0:
            entropy = total.log_()
            for z, p in zip(shifted, exps):
                entropy.addcmul_(p, z, value=-1.0)
            return probs, entropy
        probs.mul_(1.0 - self.lapse).add_(self.lapse / self.n_options)
        entropy = torch.zeros_like(total)
        for p in exps:
            entropy.sub_(torch.special.xlogy(p, p))
        return probs, entropy

    def entropy(self):
        """The entropy (nats) of the choice under each batch element: ``[...]``, float64.

        Deterministic user: the ``k`` options tied for best are taken with probability ``(1 - lapse) / k +
        lapse / n_options`` each and the others with ``lapse / n_options``, so the entropy depends only on
        ``k`` and is read off a table of ``n_options + 1`` entries (no logarithm per element); a noisy
        user's is ``-sum p log p`` over the options."""
        return self.probs_and_entropy()[1]

    def _minus_log_count(self, count):
        """``-log(count)`` for counts of tied options (uint8), with ``-inf`` for a count of 0."""
        table = _minus_log_table(self.n_options, self.utility.dtype, self.utility.device)
        return table.index_select(0, count.reshape(-1).int()).reshape(count.shape)

    def sample(self, sample_shape=torch.Size(), generator=None):
        probs = self.log_probs().exp()
        flat = probs.reshape(-1, self.n_options)
        draws = torch.multinomial(flat, 1, generator=generator)[:, 0]
        draws = draws.reshape(self.batch_shape)
        return draws.expand(torch.Size(sample_shape) + self.batch_shape)

    def enumerate_support(self, expand=True):
        values = torch.arange(self.n_options, device=self.utility.device)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values


def _index(value, utility):
    """``value`` expanded (a view, no copy) to utility's batch shape, with a trailing singleton for gather."""
    value = torch.as_tensor(value, device=utility.device).long()
    return value.expand(utility.shape[:-1]).unsqueeze(-1)


def _count(is_best, keepdim=False):
    """How many options are tied for best: ``is_best.sum(-1)`` as uint8 (int32 beyond 255 options)."""
    if is_best.shape[-1] < 256:  # bool -> uint8 is a free view, and uint8 sums are fast
        return is_best.view(torch.uint8).sum(-1, keepdim=keepdim, dtype=torch.uint8)
    return is_best.sum(-1, keepdim=keepdim, dtype=torch.int32)


def _chosen(is_best, value):
    """Whether the chosen option ``value`` is among the best: bool ``[...]``.  For a few options a loop of
    elementwise tests is much cheaper than ``gather`` with an index expanded over the batch."""
    value = torch.as_tensor(value, device=is_best.device)
    n_options = is_best.shape[-1]
    if n_options > 8:
        return is_best.gather(-1, _index(value, is_best))[..., 0]
    value = value.expand(is_best.shape[:-1])
    chosen = is_best[..., 0] & (value == 0)
    for option in range(1, n_options):
        chosen |= is_best[..., option] & (value == option)
    return chosen


@functools.lru_cache(maxsize=None)
def _minus_log_table(n_options, dtype, device):
    """``[-inf, -log 1, -log 2, ..., -log n_options]``: entry k is the log-probability of each of k tied
    options (entry 0: an option that is not among the best).  The logs come from ``torch.log`` on a
    tensor long enough for its vectorised path, the path the whole-batch ``-torch.log(n_best)`` took."""
    counts = torch.arange(1, n_options + 1, dtype=dtype, device=device)
    logs = torch.log(counts.repeat(max(1, -(-64 // n_options))))[:n_options]
    return torch.cat([torch.full((1,), -math.inf, dtype=dtype, device=device), -logs])


@functools.lru_cache(maxsize=None)
def _entropy_table(n_options, lapse):
    """Entry k (1..n_options): the entropy of a deterministic choice with k options tied for best, mixed
    with a uniform lapse; entry 0 is unused (the best option is always among the best)."""
    entropies = [0.0]
    for k in range(1, n_options + 1):
        tied = (1.0 - lapse) / k + lapse / n_options
        other = lapse / n_options
        terms = k * tied * math.log(tied) + ((n_options - k) * other * math.log(other) if other > 0 else 0.0)
        entropies.append(-terms)
    return torch.tensor(entropies, dtype=torch.float64)
