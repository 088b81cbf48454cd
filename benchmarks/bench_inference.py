"""Benchmark: exact inference through the Pyro model against a hand-vectorized torch computation, on CPU.

Four measurements.  In ``study`` and ``throughput`` every method runs in the same process on the same data,
alternating, ``--repeats`` times (the fastest and the median wall time are kept), and the largest difference
between the posteriors is recorded:

* ``study``: the study-size teaching set, flight (4 features, 625 hypotheses), 624 users x 10 dialogues x
  5 rounds, the posterior after every round: ``infer`` with its defaults (posterior [6240, 6, 625] and
  every site's marginal) and with ``marginals=False``.  Target (a): <= 2 s.
* ``throughput``: ``--batch`` flight dialogues x 5 rounds (rounded up to a multiple of the 624 users).  Timed:
  from option indices ``[N, 5, 3, 4]`` and choices ``[N, 5]`` to the float64 posterior after 0..5 rounds of
  every dialogue, ``[N, 6, 625]``, in memory (``infer(..., marginals=False)``: its ``posterior``).  Rate =
  user-rounds (N x 5 observed choices) per wall second, fastest repeat.  Targets: (b) >= 1,000,000
  user-rounds/s; (c) the Pyro path no slower than 1.5x the hand-vectorized one.  The Pyro path and
  ``hand_tuned`` are also timed on one thread (``pyro_1_thread``, ``hand_tuned_1_thread``).
* ``memory``: what the output alone costs: first writes to a fresh ``[N, 6, 625]`` float64 tensor (page
  faults, on 4 KiB and on huge pages), and a second write (memory bandwidth).
* ``scaling``: flight with F = 2..8 features (5^F hypotheses), ``--scaling-dialogues`` dialogues x 5 rounds,
  posterior kept; one child process per (F, method) so that its peak resident memory is its own (VmHWM;
  ``resource.getrusage`` is recorded too).  Target (d): peak memory < 4 GB at 8 features.

The hand-vectorized baselines use nothing from the package's inference: the weight matrix ``[H, F]`` of every
hypothesis, utilities by one matmul (the products w*x are exact, so these equal the model's feature-by-feature
sums bit for bit), the deterministic argmax likelihood with UtilityChoice's tie rule and tolerance (options
within 1e-6 of the best are tied; the chosen one gets 1/n_tied, or 0), then the posterior after each round:

* ``hand_posterior`` (``hand``, the ratio target's baseline): the straightforward way: tie counts as bool and
  uint8 tensors, a cumulative product over rounds in float64, times the prior, normalised;
* ``hand_log_posterior`` (``hand_log``): the same in log space (float32 log-likelihoods, float64
  accumulation, logsumexp), the numerics the package used before it moved to probability space;
* ``hand_tuned_posterior`` (``hand_tuned``): the package's own techniques by hand (tie counts in float32,
  the running product in place in the output, one normalisation, the output on huge pages, the same chunk
  size and the same two chunk threads), to separate the cost of the Pyro machinery from the numerics.

The package's likelihoods are float32 (1/3 is rounded) and the straightforward baselines' float64, so they
agree to ~1e-8.

    .venv/bin/python benchmarks/bench_inference.py                 # full run, about a minute
    .venv/bin/python benchmarks/bench_inference.py --quick         # smaller batches, one repeat: ~20 s
    .venv/bin/python benchmarks/bench_inference.py --threads 1     # steadier when other jobs share the cores

Writes benchmarks/results/inference.json (``--output``) and prints a summary.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from ppl_models import all_users, get_domain, infer, memory, pick_users, simulate_dialogues  # noqa: E402
from ppl_models.domains.flight import flight_domain  # noqa: E402
from ppl_models.linear import WEIGHT_LEVELS  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "inference.json"
TIE_TOLERANCE = 1e-6  # UtilityChoice's
STUDY_TARGET_S = 2.0
THROUGHPUT_TARGET = 1_000_000  # user-rounds per second
RATIO_TARGET = 1.5  # Pyro path / hand-vectorized
MEMORY_TARGET_GB = 4.0
HAND_MAX_ELEMENTS = 1 << 20  # utilities per chunk of the hand-vectorized computation


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, one repeat (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the targets are for 2 cores)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 5, quick 1)")
    parser.add_argument("--batch", type=int, default=None, help="throughput dialogues (default 20000, quick 4000)")
    parser.add_argument("--scaling-dialogues", type=int, default=None, help="dialogues per feature count (default 32, quick 4)")
    parser.add_argument("--max-features", type=int, default=8, help="largest feature count in the scaling run")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: study,throughput,memory,scaling")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("FEATURES", "DIALOGUES", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.batch = args.batch or (4000 if args.quick else 20000)
    args.scaling_dialogues = args.scaling_dialogues or (4 if args.quick else 32)
    return args


# -- the hand-vectorized posterior ---------------------------------------------------------------------------
def weight_matrix(n_features: int) -> torch.Tensor:
    """Every weight vector, ``[5^F, F]`` float32, in Pyro's enumeration order (feature 0 varies fastest)."""
    rows = [tuple(reversed(levels)) for levels in itertools.product(WEIGHT_LEVELS, repeat=n_features)]
    return torch.tensor(rows, dtype=torch.float32)


def hand_posterior(values: torch.Tensor, choices: torch.Tensor, weights: torch.Tensor,
                   max_elements: int = HAND_MAX_ELEMENTS) -> torch.Tensor:
    """p(h | choices of rounds < r) for r = 0..R: ``[N, R+1, H]`` float64.

    ``values``: normalised option features ``[N, R, O, F]``; ``choices``: long ``[N, R]``; ``weights``:
    ``[H, F]``.  The prior is uniform over every weight vector but the all-zero one.
    """
    n_dialogues, n_rounds, n_options, _ = values.shape
    n_hypotheses = weights.shape[0]
    prior = weights.ne(0).any(1).double()
    prior /= prior.sum()
    weights_t = weights.t().contiguous()  # [F, H]
    chose = [choices == option for option in range(n_options)]  # bool [N, R] each
    out = torch.empty(n_dialogues, n_rounds + 1, n_hypotheses, dtype=torch.float64)
    step = max(1, max_elements // (n_rounds * n_options * n_hypotheses))
    for start in range(0, n_dialogues, step):
        stop = min(start + step, n_dialogues)
        utility = values[start:stop] @ weights_t  # [n, R, O, H]
        threshold = utility.amax(2).sub_(TIE_TOLERANCE)  # [n, R, H]
        is_best = utility >= threshold.unsqueeze(2)  # [n, R, O, H]
        n_best = is_best.view(torch.uint8).sum(2, dtype=torch.uint8)  # [n, R, H]
        chosen_is_best = is_best[:, :, 0] & chose[0][start:stop, :, None]
        for option in range(1, n_options):
            chosen_is_best |= is_best[:, :, option] & chose[option][start:stop, :, None]
        likelihood = chosen_is_best.view(torch.uint8).double().div_(n_best.double())  # [n, R, H]
        post = out[start:stop]
        post[:, 0] = prior
        torch.cumprod(likelihood, 1, out=post[:, 1:])
        post[:, 1:] *= prior
        post /= post.sum(-1, keepdim=True)
    return out


def hand_log_posterior(values: torch.Tensor, choices: torch.Tensor, weights: torch.Tensor,
                       max_elements: int = HAND_MAX_ELEMENTS) -> torch.Tensor:
    """The same posterior as ``hand_posterior``, but in the package's numerics: float32 log-likelihoods
    (-log n_tied, or -inf), accumulated over rounds in float64, normalised by ``torch.logsumexp``.  Returns
    the log posterior ``[N, R+1, H]`` float64, in the layout ``infer`` returns."""
    n_dialogues, n_rounds, n_options, _ = values.shape
    n_hypotheses = weights.shape[0]
    log_prior = weights.ne(0).any(1).double().log()
    log_prior -= torch.logsumexp(log_prior, 0)
    minus_log = torch.cat([torch.tensor([-float("inf")]), -torch.arange(1, n_options + 1, dtype=torch.float32).log()])
    weights_t = weights.t().contiguous()
    chose = [choices == option for option in range(n_options)]
    out = torch.empty(n_dialogues, n_rounds + 1, n_hypotheses, dtype=torch.float64)
    step = max(1, max_elements // (n_rounds * n_options * n_hypotheses))
    for start in range(0, n_dialogues, step):
        stop = min(start + step, n_dialogues)
        utility = values[start:stop] @ weights_t  # [n, R, O, H]
        threshold = utility.amax(2).sub_(TIE_TOLERANCE)
        is_best = utility >= threshold.unsqueeze(2)
        n_best = is_best.view(torch.uint8).sum(2, dtype=torch.uint8)
        chosen_is_best = is_best[:, :, 0] & chose[0][start:stop, :, None]
        for option in range(1, n_options):
            chosen_is_best |= is_best[:, :, option] & chose[option][start:stop, :, None]
        log_lik = minus_log[(n_best * chosen_is_best).long()]  # [n, R, H] float32
        joint = out[start:stop]
        joint[:, 0] = log_prior
        torch.cumsum(log_lik, 1, dtype=torch.float64, out=joint[:, 1:])
        joint[:, 1:] += log_prior
        joint -= torch.logsumexp(joint, -1, keepdim=True)
    return out


def hand_tuned_posterior(values: torch.Tensor, choices: torch.Tensor, weights: torch.Tensor,
                         max_elements: int = HAND_MAX_ELEMENTS) -> torch.Tensor:
    """The same posterior as ``hand_posterior``, with the techniques the package uses (see the module
    docstring): float32 tie counts (``torch.ge`` into float32, sums, a division; 1/3 rounded to float32), the
    running product over rounds in place in the float64 output, one normalisation per round's sums, the
    output on huge pages, and chunks shared by two threads (each with its own single torch thread)."""
    n_dialogues, n_rounds, n_options, n_features = values.shape
    n_hypotheses = weights.shape[0]
    prior = weights.ne(0).any(1).double()
    prior /= prior.sum()
    weights_t = weights.t().contiguous()  # [F, H]
    by_option = values.permute(2, 0, 1, 3).contiguous()  # [O, N, R, F]
    chose = torch.nn.functional.one_hot(choices, n_options).float().unsqueeze(-1).unbind(2)  # [N, R, 1] each
    out = memory.empty((n_dialogues, n_rounds + 1, n_hypotheses), torch.float64)
    step = max(1, max_elements // (n_rounds * n_options * n_hypotheses))
    chunks = [(start, min(start + step, n_dialogues)) for start in range(0, n_dialogues, step)]

    def run(start, stop):
        n = stop - start
        utility = (by_option[:, start:stop].reshape(-1, n_features) @ weights_t).view(n_options, n, n_rounds, n_hypotheses)
        threshold = torch.maximum(utility[0], utility[1])
        for option in range(2, n_options):
            torch.maximum(threshold, utility[option], out=threshold)
        threshold.sub_(TIE_TOLERANCE)
        n_best = torch.ge(utility[0], threshold, out=torch.empty_like(threshold))
        chosen_is_best = n_best * chose[0][start:stop]
        is_best = torch.empty_like(threshold)
        for option in range(1, n_options):
            torch.ge(utility[option], threshold, out=is_best)
            n_best += is_best
            chosen_is_best.addcmul_(is_best, chose[option][start:stop])
        post = out[start:stop]
        post[:, 0] = prior
        post[:, 1:] = chosen_is_best.div_(n_best)
        rows = post.unbind(1)
        for r in range(n_rounds):
            rows[r + 1].mul_(rows[r])
        post[:, 1:].mul_(post[:, 1:].sum(-1, keepdim=True).reciprocal_())

    threads = min(2, torch.get_num_threads(), len(chunks))
    if threads == 1:
        for chunk in chunks:
            run(*chunk)
        return out
    torch_threads = torch.get_num_threads()

    def worker(index):
        torch.set_num_threads(torch_threads // threads)
        for chunk in chunks[index::threads]:
            run(*chunk)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    torch.set_num_threads(torch_threads)
    return out


def with_threads(function, threads: int):
    """``function`` run with ``threads`` torch threads, then the setting restored."""
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return function()
        finally:
            torch.set_num_threads(before)
    return run


# -- timing helpers ------------------------------------------------------------------------------------------
def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def compare(functions: dict, repeats: int):
    """Run each function ``repeats`` times, alternating; returns per-name timing stats and the last results."""
    times = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    results = {}
    for name, function in functions.items():  # warm-up (hypothesis space, allocator, thread pool)
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            results[name] = None  # free the previous result before the next run
            wall, cpu_s, results[name] = timed(function)
            times[name].append(wall)
            cpu[name].append(cpu_s)
    stats = {
        name: {
            "min_s": min(times[name]),
            "median_s": statistics.median(times[name]),
            "cpu_median_s": statistics.median(cpu[name]),
            "runs_s": [round(t, 4) for t in times[name]],
        }
        for name in functions
    }
    return stats, results


def max_abs_diff(posterior: torch.Tensor, other: torch.Tensor) -> float:
    return float((posterior - other).abs().max())


def flight_inputs(domain, dialogues):
    return domain.options(dialogues.option_index).value, dialogues.choices


# -- sections ------------------------------------------------------------------------------------------------
def study_section(args) -> dict:
    domain = get_domain("flight")
    dialogues = simulate_dialogues(domain, all_users(domain), 10, seed=0)
    values, choices = flight_inputs(domain, dialogues)
    weights = weight_matrix(4)
    functions = {
        "pyro_default": lambda: infer(domain, dialogues.option_index, choices),
        "pyro_posterior_only": lambda: infer(domain, dialogues.option_index, choices, marginals=False),
        "hand": lambda: hand_posterior(values, choices, weights),
    }
    stats, results = compare(functions, args.repeats)
    n_dialogues, n_rounds = choices.shape
    return {
        "what": "flight, 624 users x 10 dialogues x 5 rounds; posterior after 0..5 rounds of every dialogue. "
                "pyro_default = infer() with its defaults (posterior [6240, 6, 625] and every site's "
                "marginal); pyro_posterior_only = marginals=False; hand = hand_posterior (posterior only)",
        "dialogues": n_dialogues,
        "rounds": n_rounds,
        "user_rounds": n_dialogues * n_rounds,
        "timings": stats,
        "pyro_default_over_hand": stats["pyro_default"]["min_s"] / stats["hand"]["min_s"],
        "pyro_posterior_only_over_hand": stats["pyro_posterior_only"]["min_s"] / stats["hand"]["min_s"],
        "max_abs_diff_posterior": max_abs_diff(results["pyro_default"].posterior, results["hand"]),
        "target_s": STUDY_TARGET_S,
        "meets_target": stats["pyro_default"]["min_s"] <= STUDY_TARGET_S,
    }


def throughput_section(args) -> dict:
    domain = get_domain("flight")
    users = all_users(domain)
    per_user = max(1, -(-args.batch // len(users)))
    dialogues = simulate_dialogues(domain, users, per_user, seed=1)
    values, choices = flight_inputs(domain, dialogues)
    weights = weight_matrix(4)
    pyro = lambda: infer(domain, dialogues.option_index, choices, marginals=False)  # noqa: E731
    tuned = lambda: hand_tuned_posterior(values, choices, weights)  # noqa: E731
    functions = {
        "pyro": pyro,
        "hand": lambda: hand_posterior(values, choices, weights),
        "hand_log": lambda: hand_log_posterior(values, choices, weights),
        "hand_tuned": tuned,
    }
    if args.threads > 1:
        functions.update(pyro_1_thread=with_threads(pyro, 1), hand_tuned_1_thread=with_threads(tuned, 1))
    stats, results = compare(functions, args.repeats)
    n_dialogues, n_rounds = choices.shape
    user_rounds = n_dialogues * n_rounds
    for name in stats:
        stats[name]["user_rounds_per_s"] = user_rounds / stats[name]["min_s"]
        stats[name]["user_rounds_per_s_median"] = user_rounds / stats[name]["median_s"]
    ratio = stats["pyro"]["min_s"] / stats["hand"]["min_s"]
    posterior = results["pyro"].posterior
    out = {
        "what": "flight (4 features, 625 hypotheses), N dialogues x 5 rounds; timed from option indices "
                "[N, 5, 3, 4] and choices [N, 5] to the float64 posterior after 0..5 rounds of every dialogue, "
                "[N, 6, 625], in memory (pyro: infer(..., keep_posterior=True, marginals=False), its posterior). "
                "A user-round = one observed choice; rate = N*5 / wall seconds (fastest of the repeats). "
                "hand = hand_posterior (straightforward, probability space; the ratio target's baseline); "
                "hand_log = hand_log_posterior (log space); hand_tuned = hand_tuned_posterior (the package's "
                "techniques by hand); *_1_thread: the same on one torch thread",
        "dialogues": n_dialogues,
        "rounds": n_rounds,
        "user_rounds": user_rounds,
        "timings": stats,
        "pyro_over_hand": ratio,
        "pyro_over_hand_log": stats["pyro"]["min_s"] / stats["hand_log"]["min_s"],
        "pyro_over_hand_tuned": stats["pyro"]["min_s"] / stats["hand_tuned"]["min_s"],
        "max_abs_diff_posterior": max_abs_diff(posterior, results["hand"]),
        "max_abs_diff_posterior_hand_log": max_abs_diff(posterior, results["hand_log"].exp()),
        "max_abs_diff_posterior_hand_tuned": max_abs_diff(posterior, results["hand_tuned"]),
        "target_user_rounds_per_s": THROUGHPUT_TARGET,
        "meets_throughput_target": stats["pyro"]["user_rounds_per_s"] >= THROUGHPUT_TARGET,
        "target_ratio": RATIO_TARGET,
        "meets_ratio_target": ratio <= RATIO_TARGET,
    }
    if "pyro_1_thread" in stats:
        out["pyro_two_threads_speedup"] = stats["pyro_1_thread"]["min_s"] / stats["pyro"]["min_s"]
        out["hand_tuned_two_threads_speedup"] = stats["hand_tuned_1_thread"]["min_s"] / stats["hand_tuned"]["min_s"]
    return out


def memory_section(args) -> dict:
    """The output's own cost: first writes to a fresh posterior-sized tensor, chunk by chunk as inference
    writes it (page faults: the kernel maps and zeroes each page), on 4 KiB pages and on huge pages
    (``ppl_models.memory.empty``), and a second write of the same tensor (memory bandwidth)."""
    n_dialogues = 624 * max(1, -(-args.batch // 624))
    shape, step = (n_dialogues, 6, 625), 111
    allocate = {"first_write_4k_pages": lambda: torch.empty(shape, dtype=torch.float64),
                "first_write_huge_pages": lambda: memory.empty(shape, torch.float64)}
    runs = {name: [] for name in list(allocate) + ["second_write"]}
    for _ in range(max(3, args.repeats)):
        for name, new in allocate.items():
            tensor = new()
            started = time.perf_counter()
            for start in range(0, n_dialogues, step):
                tensor[start:start + step].fill_(1.0)
            runs[name].append(time.perf_counter() - started)
            if name == "first_write_huge_pages":
                started = time.perf_counter()
                tensor.fill_(2.0)
                runs["second_write"].append(time.perf_counter() - started)
            del tensor
    nbytes = math.prod(shape) * 8
    return {
        "what": f"a [{n_dialogues}, 6, 625] float64 tensor ({nbytes / 1e6:.0f} MB, the throughput section's output): "
                "time to write it first (chunks of 111 dialogues, as infer does) on 4 KiB pages and on huge pages, "
                "and to write it again; fastest of the runs (the first huge-page run of a process can be much "
                "slower: the kernel or the hypervisor backs fresh memory)",
        "bytes": nbytes,
        "min_s": {name: min(times) for name, times in runs.items()},
        "runs_s": {name: [round(t, 4) for t in times] for name, times in runs.items()},
        "second_write_gb_per_s": nbytes / min(runs["second_write"]) / 1e9,
    }


def output_ceiling(through: dict, mem: dict) -> dict:
    """The most user-rounds per second any method could reach while writing the throughput section's output
    (the float64 posterior after every round) to fresh memory: its user-rounds over the time the memory
    section took just to write a tensor of that size the first time (no inference at all), and over the
    time of a second write (memory already mapped: the bandwidth alone)."""
    user_rounds = through["user_rounds"]
    times = mem["min_s"]
    fresh_memory_cap = user_rounds / times["first_write_huge_pages"]
    return {
        "what": "throughput.user_rounds / memory.min_s: the rate at which writing the [N, 6, 625] float64 output "
                "alone, with no inference, would already take all the time (first write: fresh memory, as "
                "infer allocates it; second write: memory bandwidth only)",
        "first_write_huge_pages_user_rounds_per_s": fresh_memory_cap,
        "first_write_4k_pages_user_rounds_per_s": user_rounds / times["first_write_4k_pages"],
        "second_write_user_rounds_per_s": user_rounds / times["second_write"],
        "pyro_share_of_first_write_ceiling": through["timings"]["pyro"]["user_rounds_per_s"] / fresh_memory_cap,
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM of /proc/self/status where there is one (Linux), else
    ``getrusage``'s ru_maxrss.  On Linux ru_maxrss also counts the parent's resident memory at the fork that
    started this child (it survives the exec), so VmHWM is the child's own peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def scaling_child(n_features: int, n_dialogues: int, method: str, threads: int, repeats: int) -> dict:
    """One (feature count, method) measurement; runs in its own process (see scaling_section).  The timed
    run is repeated up to ``repeats`` times (fewer once 5 s are spent) and the fastest kept."""
    torch.set_num_threads(threads)
    domain = flight_domain(n_features)
    users = pick_users(domain, n_dialogues, seed=0)
    dialogues = simulate_dialogues(domain, users, 1, seed=0)
    values, choices = flight_inputs(domain, dialogues)
    weights = weight_matrix(n_features)
    runs = {
        "pyro": lambda: infer(domain, dialogues.option_index, choices, marginals=False),
        "pyro_marginals": lambda: infer(domain, dialogues.option_index, choices),
        "hand": lambda: hand_posterior(values, choices, weights),
    }
    run = runs[method]
    if method.startswith("pyro"):
        infer(domain, dialogues.option_index[:1], choices[:1])  # warm-up: the hypothesis space
    rss_before = peak_rss_bytes()
    walls, cpus, result, started = [], [], None, time.perf_counter()
    while len(walls) < repeats and (not walls or time.perf_counter() - started < 5.0):
        result = None  # free the previous run's output first
        wall, cpu, result = timed(run)
        walls.append(wall)
        cpus.append(cpu)
    peak = peak_rss_bytes()
    posterior = result if method == "hand" else result.posterior
    out = {
        "features": n_features,
        "hypotheses": 5 ** n_features,
        "dialogues": n_dialogues,
        "user_rounds": n_dialogues * choices.shape[1],
        "wall_s": min(walls),
        "wall_runs_s": [round(w, 4) for w in walls],
        "cpu_s": min(cpus),
        "peak_rss_bytes": peak,
        "peak_rss_before_run_bytes": rss_before,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "output_bytes": posterior.numel() * posterior.element_size(),
    }
    if method == "pyro":  # agreement on this run's data, checked in the child (no need to ship tensors)
        result = None
        out["max_abs_diff_posterior"] = max_abs_diff(run().posterior, hand_posterior(values, choices, weights))
    return out


SCALING_METHODS = ("pyro", "pyro_marginals", "hand")


def scaling_section(args) -> dict:
    rows = []
    for n_features in range(2, args.max_features + 1):
        for method in SCALING_METHODS:
            command = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
                       "--child", str(n_features), str(args.scaling_dialogues), method]
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(completed.stdout.strip().splitlines()[-1])
            row["method"] = method
            rows.append(row)
            print(f"  scaling: {n_features} features, {method}: {row['wall_s']:.3f} s, "
                  f"peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    by = {(r["method"], r["features"]): r for r in rows}
    for r in rows:
        r["wall_per_user_round_s"] = r["wall_s"] / r["user_rounds"]
        r["wall_per_hypothesis_round_ns"] = 1e9 * r["wall_s"] / (r["user_rounds"] * r["hypotheses"])
        r["time_vs_2_features"] = r["wall_s"] / by[(r["method"], 2)]["wall_s"]
        r["hypotheses_vs_2_features"] = r["hypotheses"] / 25
        r["peak_rss_vs_2_features"] = r["peak_rss_bytes"] / by[(r["method"], 2)]["peak_rss_bytes"]
    features = sorted({r["features"] for r in rows})
    ratios = {f: by[("pyro", f)]["wall_s"] / by[("hand", f)]["wall_s"] for f in features}
    largest = max(features)
    peak_8 = max(by[(m, 8)]["peak_rss_bytes"] for m in SCALING_METHODS if m.startswith("pyro")) if largest >= 8 else None
    return {
        "what": "flight with F = 2..8 features (5^F hypotheses), the same dialogues for every method, the posterior "
                "after every round kept in memory. pyro = infer(..., marginals=False) (like for like with hand); "
                "pyro_marginals = infer() defaults (every site's marginal too); hand = hand_posterior. One child "
                "process per (F, method); wall_s = fastest of up to --repeats runs; peak_rss_bytes = the child's "
                "VmHWM (its own peak resident memory, warm-up and all runs included; ru_maxrss from getrusage is "
                "recorded too, but on Linux it also counts the parent's memory at the fork)",
        "rows": rows,
        "pyro_over_hand_by_features": ratios,
        "target_peak_gb_at_8_features": MEMORY_TARGET_GB,
        "peak_rss_gb_at_8_features": None if peak_8 is None else peak_8 / 1e9,
        "meets_memory_target": peak_8 is not None and peak_8 < MEMORY_TARGET_GB * 1e9,
    }


def machine_info(args) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "load_average_at_start": os.getloadavg(),
    }


def summary(report: dict) -> str:
    lines = [f"exact inference benchmark ({report['machine']['torch_threads']} threads, load average at start "
             f"{report['machine']['load_average_at_start'][0]:.1f})"]
    study = report.get("study")
    if study:
        t = study["timings"]
        lines.append(
            f"(a) study set, {study['dialogues']} dialogues x {study['rounds']} rounds: pyro defaults "
            f"{t['pyro_default']['min_s']:.3f} s (median {t['pyro_default']['median_s']:.3f}), posterior only "
            f"{t['pyro_posterior_only']['min_s']:.3f} s, hand {t['hand']['min_s']:.3f} s; target <= "
            f"{study['target_s']} s: {'met' if study['meets_target'] else 'MISSED'}; max |diff| "
            f"{study['max_abs_diff_posterior']:.1e}"
        )
    through = report.get("throughput")
    if through:
        t = through["timings"]
        lines.append(
            f"(b) throughput, {through['dialogues']} dialogues: pyro {t['pyro']['user_rounds_per_s']:,.0f} "
            f"user-rounds/s ({t['pyro']['min_s']:.3f} s), hand {t['hand']['user_rounds_per_s']:,.0f} "
            f"({t['hand']['min_s']:.3f} s), hand_log {t['hand_log']['user_rounds_per_s']:,.0f} "
            f"({t['hand_log']['min_s']:.3f} s), hand_tuned {t['hand_tuned']['user_rounds_per_s']:,.0f} "
            f"({t['hand_tuned']['min_s']:.3f} s); target >= {THROUGHPUT_TARGET:,}: "
            f"{'met' if through['meets_throughput_target'] else 'MISSED'}"
        )
        if "pyro_1_thread" in t:
            lines.append(
                f"    one thread: pyro {t['pyro_1_thread']['user_rounds_per_s']:,.0f} user-rounds/s "
                f"({t['pyro_1_thread']['min_s']:.3f} s), hand_tuned {t['hand_tuned_1_thread']['user_rounds_per_s']:,.0f} "
                f"({t['hand_tuned_1_thread']['min_s']:.3f} s); two threads speed pyro up "
                f"{through['pyro_two_threads_speedup']:.2f}x, hand_tuned {through['hand_tuned_two_threads_speedup']:.2f}x"
            )
        lines.append(
            f"(c) pyro / hand = {through['pyro_over_hand']:.2f} (target <= {RATIO_TARGET}: "
            f"{'met' if through['meets_ratio_target'] else 'MISSED'}); max |diff| {through['max_abs_diff_posterior']:.1e}; "
            f"pyro / hand_log = {through['pyro_over_hand_log']:.2f} (max |diff| "
            f"{through['max_abs_diff_posterior_hand_log']:.1e}); pyro / hand_tuned = "
            f"{through['pyro_over_hand_tuned']:.2f} (max |diff| {through['max_abs_diff_posterior_hand_tuned']:.1e})"
        )
    mem = report.get("memory")
    if mem:
        m = mem["min_s"]
        lines.append(
            f"    the output alone ({mem['bytes'] / 1e6:.0f} MB): first write {m['first_write_4k_pages']:.3f} s on 4 KiB "
            f"pages, {m['first_write_huge_pages']:.3f} s on huge pages; second write {m['second_write']:.3f} s "
            f"({mem['second_write_gb_per_s']:.0f} GB/s)"
        )
    ceiling = report.get("output_ceiling")
    if ceiling:
        lines.append(
            f"    so writing the output alone caps any method at {ceiling['first_write_huge_pages_user_rounds_per_s']:,.0f} "
            f"user-rounds/s in fresh memory ({ceiling['first_write_4k_pages_user_rounds_per_s']:,.0f} on 4 KiB pages; "
            f"{ceiling['second_write_user_rounds_per_s']:,.0f} rewriting mapped memory); pyro reaches "
            f"{100 * ceiling['pyro_share_of_first_write_ceiling']:.0f}% of the fresh-memory cap"
        )
    scaling = report.get("scaling")
    if scaling:
        lines.append(f"(d) scaling, {scaling['rows'][0]['dialogues']} dialogues x 5 rounds per feature count "
                     "(time and peak RSS, and their ratios to 2 features):")
        lines.append("    F  hypotheses  method          wall s   x(F=2)  ns/hyp-round  peak RSS GiB  x(F=2)  pyro/hand")
        for r in scaling["rows"]:
            ratio = scaling["pyro_over_hand_by_features"][r["features"]] if r["method"] == "pyro" else None
            lines.append(
                f"    {r['features']}  {r['hypotheses']:>10,}  {r['method']:<14}  {r['wall_s']:7.3f}  "
                f"{r['time_vs_2_features']:7.1f}  {r['wall_per_hypothesis_round_ns']:12.2f}  "
                f"{r['peak_rss_bytes'] / 2**30:12.2f}  {r['peak_rss_vs_2_features']:6.1f}  "
                f"{'' if ratio is None else f'{ratio:.2f}'}"
            )
        peak = scaling["peak_rss_gb_at_8_features"]
        lines.append(f"    peak memory < {MEMORY_TARGET_GB} GB at 8 features: "
                     f"{'met' if scaling['meets_memory_target'] else 'MISSED'}"
                     + ("" if peak is None else f" ({peak:.2f} GB = {peak * 1e9 / 2**30:.2f} GiB, the larger pyro run)"))
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        n_features, n_dialogues, method = int(args.child[0]), int(args.child[1]), args.child[2]
        print(json.dumps(scaling_child(n_features, n_dialogues, method, args.threads, args.repeats)))
        return
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    report = {"machine": machine_info(args), "quick": args.quick, "repeats": args.repeats}
    sections = (("scaling", scaling_section), ("study", study_section), ("throughput", throughput_section),
                ("memory", memory_section))
    for name, section in sections:
        if name in skip:
            continue
        print(f"running {name} ...", flush=True)
        report[name] = section(args)
        report[name]["load_average_after"] = os.getloadavg()
    if "throughput" in report and "memory" in report:
        report["output_ceiling"] = output_ceiling(report["throughput"], report["memory"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
