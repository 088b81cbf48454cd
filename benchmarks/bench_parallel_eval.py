"""Benchmark: data-parallel evaluation on CPU, against one process, in one run.

Three ways to run the same `cli.py evaluate` (SmolLM2 by default, flight, `--users 4 --heldout 10`):

* ``one_process_1_thread``: one process, OMP_NUM_THREADS=1 (the baseline);
* ``one_process_2_threads``: one process, OMP_NUM_THREADS=2 (both cores to one process);
* ``two_processes``: ``python -m torch.distributed.run --standalone --nproc_per_node 2`` (gloo), one thread each.

For each: the wall time of the command, the evaluation's own time (the progress bar's elapsed at the end:
after the model is loaded, until rank 0 has every chunk), prompts per wall-second (the protocol's prompts:
R dialogue rounds + M x (R+1) held-out sets per user, ``eval.runner.prompts_per_user``) and the ETA the bar
showed over time against the real remaining time (``eta``: the largest relative error once a tenth of the
prompts were done, up to 90%, and samples).  The reports must be equal (``reports_equal``: everything but
creation time and the processes record; floats to 1e-5 across thread counts, whose sums round differently).
Target (issue 23): two processes >= 1.6x the prompts per wall-second of one single-threaded process.  The
CPU kind (model name, cores, avx512_bf16 / amx_bf16) and the load average before and after go in the JSON:
on a machine shared with other work the numbers move with the load.

    python benchmarks/bench_parallel_eval.py                      # SmolLM2, --users 4 --heldout 10
    python benchmarks/bench_parallel_eval.py --model tiny --users 3 --heldout 2   # a quick check, tiny random LM
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "parallel_eval.json"
TARGET_SPEEDUP = 1.6
# one refresh of evaluate's bar: "... 117/260 [02:10<02:40, 1.1prompt/s ..." (n/total [elapsed<remaining, rate
# in prompts); other bars (transformers' GGUF loading) count other units and are left out
BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<(?:(?:(\d+):)?(\d+):(\d+)|\?)[^\]]*prompt")


def cpu_kind() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {"model": model, "logical_cpus": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def bar_samples(stderr: str) -> list[tuple[float, int, int, float | None]]:
    """(elapsed s, prompts done, total, remaining s or None) of every bar refresh in ``stderr``."""
    samples = []
    for match in BAR.finditer(stderr):
        n, total, eh, em, es, rh, rm, rs = match.groups()
        elapsed = int(eh or 0) * 3600 + int(em) * 60 + int(es)
        remaining = None if rm is None else int(rh or 0) * 3600 + int(rm) * 60 + int(rs)
        samples.append((float(elapsed), int(n), int(total), None if remaining is None else float(remaining)))
    return samples


def eta_accuracy(samples, start_fraction: float = 0.1, stop_fraction: float = 0.9) -> dict:
    """How right the shown remaining time was: for each refresh with between ``start_fraction`` and
    ``stop_fraction`` of the prompts done, |shown - actual remaining| / actual remaining, where the actual
    remaining time is the last refresh's elapsed minus this one's."""
    if not samples:
        return {"samples": 0}
    end = max(s[0] for s in samples)
    errors, kept = [], []
    for elapsed, n, total, remaining in samples:
        actual = end - elapsed
        if remaining is None or not start_fraction * total <= n <= stop_fraction * total or actual <= 0:
            continue
        errors.append(abs(remaining - actual) / actual)
        kept.append([elapsed, n, total, remaining, actual])
    thinned = {tuple(k[:2]): k for k in kept}  # one sample per (second, count)
    return {"window": [start_fraction, stop_fraction], "samples": len(errors),
            "max_relative_error": max(errors) if errors else None,
            "median_relative_error": sorted(errors)[len(errors) // 2] if errors else None,
            "within_20_percent": bool(errors) and max(errors) <= 0.2,
            "elapsed_done_total_shown_actual": list(thinned.values())[:: max(1, len(thinned) // 200)]}


def run_config(name: str, evaluate_args: list[str], out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    if name == "two_processes":
        env["OMP_NUM_THREADS"] = "1"
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        env["OMP_NUM_THREADS"] = "2" if name == "one_process_2_threads" else "1"
        launcher = []
    command = [sys.executable, *launcher, str(REPO_ROOT / "cli.py"), "evaluate", *evaluate_args, "--out", str(out)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")
    samples = bar_samples(result.stderr)
    report = json.loads((out / "report.json").read_text())
    prompts = samples[-1][2] if samples else None
    evaluation_s = samples[-1][0] if samples else None
    return {"command": " ".join(["OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"], "python", *command[1:]]),
            "wall_s": round(wall, 1), "evaluation_s": evaluation_s, "prompts": prompts,
            "prompts_per_wall_s": round(prompts / wall, 4) if prompts else None,
            "prompts_per_evaluation_s": round(prompts / evaluation_s, 4) if prompts and evaluation_s else None,
            "eta": eta_accuracy(samples), "report": report}


def comparable(report: dict) -> dict:
    report = dict(report, extra={k: v for k, v in report.get("extra", {}).items() if k != "processes"})
    report.pop("created", None)
    return report


def max_difference(a, b) -> float:
    """The largest difference between two reports' numbers (inf if their structure differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return max([max_difference(a[k], b[k]) for k in a] or [0.0]) if a.keys() == b.keys() else float("inf")
    if isinstance(a, list) and isinstance(b, list):
        return max([max_difference(x, y) for x, y in zip(a, b)] or [0.0]) if len(a) == len(b) else float("inf")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b)
    return 0.0 if a == b else float("inf")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny (a random-weight Llama built here) or a model path.")
    parser.add_argument("--users", type=int, default=4, help="Users evaluated.")
    parser.add_argument("--heldout", type=int, default=10, help="Held-out sets per user.")
    parser.add_argument("--domain", default="flight", help="Domain evaluated.")
    parser.add_argument("--dtype", default="auto", help="evaluate's --dtype.")
    parser.add_argument("--configs", default="one_process_1_thread,two_processes,one_process_2_threads",
                        help="Which configurations to run, comma-separated, in this order.")
    parser.add_argument("--output", default=str(RESULTS), help="Where the JSON goes.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "tiny":
            import importlib.util  # the tests' tiny model builder (tests/ is not a package: loaded by path)

            spec = importlib.util.spec_from_file_location("tiny_lm", REPO_ROOT / "tests" / "tiny_lm.py")
            tiny_lm = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(tiny_lm)

            model = str(tiny_lm.save_tiny_lm(Path(tmp) / "tiny"))
        evaluate_args = ["--model", model, "--domain", args.domain, "--users", str(args.users), "--heldout",
                         str(args.heldout), "--dtype", args.dtype]
        machine = {"cpu": cpu_kind(), "load_average_before": os.getloadavg(), "python": platform.python_version()}
        runs = {}
        for name in args.configs.split(","):
            print(f"running {name} ...", flush=True)
            runs[name] = run_config(name, evaluate_args, Path(tmp) / name)
            print(f"  {runs[name]['wall_s']} s wall, {runs[name]['prompts_per_wall_s']} prompts/s", flush=True)
        machine["load_average_after"] = os.getloadavg()
    reports = {name: comparable(run.pop("report")) for name, run in runs.items()}
    base = reports.get("one_process_1_thread")
    equality = {name: {"equal": report == base, "max_difference": max_difference(report, base)}
                for name, report in reports.items() if base is not None and name != "one_process_1_thread"}
    result = {"what": __doc__.split("\n\n")[0], "settings": vars(args), "machine": machine, "runs": runs,
              "reports_equal_to_one_process_1_thread": equality}
    if base is not None and "two_processes" in runs:
        speedup = runs["two_processes"]["prompts_per_wall_s"] / runs["one_process_1_thread"]["prompts_per_wall_s"]
        result["two_processes_speedup"] = round(speedup, 3)
        result["meets_target"] = speedup >= TARGET_SPEEDUP and equality["two_processes"]["max_difference"] <= 1e-5
    if base is not None and "one_process_2_threads" in runs:
        result["two_threads_speedup"] = round(runs["one_process_2_threads"]["prompts_per_wall_s"]
                                              / runs["one_process_1_thread"]["prompts_per_wall_s"], 3)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "what")}, indent=2))
    return result


if __name__ == "__main__":
    main()
