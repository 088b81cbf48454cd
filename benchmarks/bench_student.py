"""Throughput and peak memory of training the embedded default student (distill/student/model.py) on CPU.

    python benchmarks/bench_student.py [--domain hotel] [--steps 30] [--users 60] [--out results/student.json]
    python benchmarks/bench_student.py --steps 200 --baseline-root /tmp/old-checkout --repeats 2

With ``--baseline-root`` (another checkout of this project, e.g. ``git archive <commit> | tar -x -C DIR``) the
benchmark runs there and here alternately, ``--repeats`` times each, each run in a fresh process, and writes
both sets and the ratio of the median seconds per step (this engine / the baseline's): a comparison in the
same run on a machine whose load drifts.

Writes a small teaching set (bayesian teacher, whole dialogues of one round more than the domain's, as the
distill pipeline gives the embedded student) to a temporary directory, trains the default StudentConfig for
``--steps`` optimizer steps with distill.student.model.train_student, prints one JSON line and writes it to
``--out``: steps, tokens/s, seconds per step, peak RSS memory, torch threads chosen by the calibration,
tokenising time per dialogue, and the first/last losses.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import torch  # noqa: E402

from distill.student.model import StudentConfig, train_student  # noqa: E402
from distill.teaching_data import write_teaching_set  # noqa: E402
from ppl_models import get_domain  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="hotel")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--users", type=int, default=60, help="teaching users (10 dialogues each)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "student.json"))
    parser.add_argument("--baseline-root", default=None, help="another checkout to compare with, alternately")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine with --baseline-root")
    args = parser.parse_args(argv)
    if args.baseline_root:
        return compare(args)
    domain = get_domain(args.domain)
    config = StudentConfig()
    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
        write_teaching_set(domain, "bayesian", Path(tmp) / "data", n_dialogues=10, n_eval_users=10,
                           max_train_users=args.users, prefixes="longest", n_rounds=domain.n_rounds + 1)
        start = time.perf_counter()
        result = train_student(domain, Path(tmp) / "data" / "train-bayesian.jsonl", Path(tmp) / "run",
                               budget_minutes=30, config=config, max_steps=args.steps)
        wall = time.perf_counter() - start
        plan = json.loads((Path(tmp) / "run" / "student_plan.json").read_text())
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    record = {
        "domain": args.domain, "steps": result.steps, "batch_size": config.batch_size,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "seconds_per_step": round(summary["train_seconds"] / max(1, result.steps_this_run), 3),
        "calibrated_seconds_per_step": round(plan["seconds_per_step"], 3), "threads": plan["threads"],
        "tokenize_ms_per_dialogue": round(1000 * plan["tokenize_seconds_per_example"], 2),
        "peak_rss_mb": round(result.peak_rss_mb, 1), "wall_s": round(wall, 1),
        "first_loss": round(result.losses[0], 4), "last_loss": round(result.losses[-1], 4),
        "parameters": sum(p.numel() for p in result.model.parameters()), "torch": torch.__version__,
    }
    print(json.dumps(record))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


def compare(args) -> dict:
    """Alternate fresh-process runs of the baseline checkout and of this one; medians and their ratio."""
    runs = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="bench-student-cmp-") as tmp:
        for r in range(args.repeats):
            for name, root in (("baseline", Path(args.baseline_root)), ("this", Path(__file__).resolve().parents[1])):
                out = Path(tmp) / f"{name}-{r}.json"
                subprocess.run([sys.executable, str(root / "benchmarks" / "bench_student.py"), "--domain", args.domain,
                                "--steps", str(args.steps), "--users", str(args.users), "--out", str(out)],
                               cwd=root, check=True, stderr=subprocess.DEVNULL)
                runs[name].append(json.loads(out.read_text()))
    median = {name: statistics.median(r["seconds_per_step"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    # wall_s (the whole train_student call, same steps) is the fair one: engines may time a "step" differently
    record = {"baseline_root": args.baseline_root, "runs": runs, "median_seconds_per_step": median,
              "seconds_per_step_ratio_this_over_baseline": median["this"] / median["baseline"],
              "median_wall_s": wall, "wall_ratio_this_over_baseline": wall["this"] / wall["baseline"]}
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
