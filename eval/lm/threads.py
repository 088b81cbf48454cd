"""How many torch threads a causal LM runs with on a CPU: the faster of one thread and torch's default, timed.

A forward of a small model on a CPU is hundreds of short parallel regions (norms, rotary embeddings, casts,
4-bit matmuls); in each, torch's intra-op threads wait for one another.  On idle cores more threads win, but
when other jobs share the cores a thread that waits for a descheduled sibling loses a scheduler slice per
region, and the default thread count can be several times slower than one thread.  So, as the embedded
student's calibration does for training (``distill.student.model.calibrate``), the forward is timed at both
counts and the faster one kept, more threads having to win clearly (by ``MORE_THREADS_MARGIN``): their speed
is the first to collapse when other jobs start.  A thread count the user set (``OMP_NUM_THREADS``) is kept.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

# More threads are kept only when they time at least this many times faster than one thread.
MORE_THREADS_MARGIN = 1.25
PROBE_TOKENS = 256  # the timed forward: about a third of a flight prompt, long enough for the matmuls to count
PROBE_REPEATS = 3  # timed forwards per thread count (after one warm-up forward); the median counts


def _forward_seconds(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(input_ids=input_ids, use_cache=False)
        return time.perf_counter() - start


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def choose_cpu_threads(model: torch.nn.Module, log: Callable[[str], None] | None = None,
                       tokens: int = PROBE_TOKENS, repeats: int = PROBE_REPEATS) -> int:
    """Set torch's thread count for ``model`` on a CPU to the faster of 1 and the current default (see the
    module docstring) and return it; says what it timed through ``log``.  Leaves the count alone (and returns
    it) for a model on a GPU, with one thread already, or when $OMP_NUM_THREADS is set."""
    default = torch.get_num_threads()
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or default <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return default
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1000)
    input_ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    _forward_seconds(model, input_ids)  # warms caches and kernels up (and a 4-bit layer's repacked weights)
    seconds = {1: _median([_forward_seconds(model, input_ids) for _ in range(repeats)])}
    torch.set_num_threads(default)
    times = []
    for _ in range(repeats):
        times.append(_forward_seconds(model, input_ids))
        if times[-1] >= 2 * seconds[1]:  # clearly slower already: more forwards would only cost time
            break
    seconds[default] = _median(times)
    chosen = default if seconds[default] * MORE_THREADS_MARGIN <= seconds[1] else 1
    torch.set_num_threads(chosen)
    if log is not None:
        log(f"torch threads: {chosen} (a {tokens}-token forward took {seconds[1]:.2f} s on 1 thread, "
            f"{seconds[default]:.2f} s on {default}; more threads must be {MORE_THREADS_MARGIN}x faster; "
            "OMP_NUM_THREADS overrides)")
    return chosen
