"""What `python cli.py distill --domain flight --model smollm2` costs as written, with its defaults, on this CPU.

Runs exactly that command (under ``/usr/bin/time -v``) in the current folder, which should be a fresh clone
(the run writes ``runs/flight-bayesian``), prints its output as it comes and keeps it in ``--log``; samples the
load average every 30 s (other jobs may share the cores); then writes ``--out``: wall time, peak RSS, exit
status, the per-stage lines distill printed, the accuracy per round (student before and after, Bayesian
assistant, random) from the run's report.json, the settings the run resolved, whether the GGUF conversion
cache held SmolLM2's entry before the run, and the CPU.

    python experiments/distill_cpu_default.py --out experiments/results/distill_smollm2_cpu_default.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

COMMAND = ["python", "cli.py", "distill", "--domain", "flight", "--model", "smollm2"]
REPORT = Path("runs/flight-bayesian/report.json")
STAGE_LINES = ("on a CPU, --model is evaluated", "torch threads:", "teaching data:", "converting", "using the conversion",
               "evaluated ", "dtype:", "trained:")


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flagged = sum("avx512_bf16" in line for line in text.splitlines())  # grep -c avx512_bf16 /proc/cpuinfo
    return {"model": model.group(1) if model else platform.processor(), "cores": os.cpu_count(),
            "grep_c_avx512_bf16": flagged, "avx512_bf16": flagged > 0}


def gguf_cache_state() -> dict:
    from eval.lm.convert import cache_root, entry_problem, file_sha256
    from eval.lm.loading import pretrained_source

    folder, extra = pretrained_source("smollm2")
    sha256 = file_sha256(Path(folder) / extra["gguf_file"])
    entry = cache_root() / "gguf-hf" / sha256
    return {"entry": str(entry), "warm": entry_problem(entry, sha256) is None}


def time_v(log_text: str) -> dict:
    fields = {"wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)",
              "max_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)", "user_s": r"User time \(seconds\): (\S+)",
              "system_s": r"System time \(seconds\): (\S+)", "cpu_percent": r"Percent of CPU this job got: (\d+)%",
              "exit_status": r"Exit status: (\d+)"}
    found = {k: (m.group(1) if (m := re.search(pattern, log_text)) else None) for k, pattern in fields.items()}
    parts = [float(p) for p in (found["wall"] or "0").split(":")]
    wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"wall_s": round(wall_s, 1), "wall": found["wall"], "peak_rss_mb": int(found["max_rss_kb"] or 0) // 1024,
            "user_cpu_s": float(found["user_s"] or 0), "system_cpu_s": float(found["system_s"] or 0),
            "cpu_percent": int(found["cpu_percent"] or 0), "exit_status": int(found["exit_status"] or -1)}


def summarise(report: dict) -> dict:
    """What the run's report.json says: the settings it resolved, its training, and accuracy in % per round."""
    curves = report["extra"]["curves"]

    def percent(values):
        return [round(100 * v, 1) for v in values] if values is not None else None

    return {
        "settings": report["extra"]["settings"], "training": report["extra"]["training"],
        "n_users": report["n_users"], "n_heldout": report["n_heldout"], "rounds": report["rounds"],
        "accuracy_percent": {"student before": percent(curves.get("before", {}).get("accuracy", {}).get("mean")),
                             "student after": percent(report["metrics"]["accuracy"]["mean"]),
                             "bayesian": percent(curves["bayesian"]["accuracy"]["mean"]),
                             "random": percent(curves["random"]["accuracy"]["mean"])},
        "student_after_accuracy_95_interval_percent": [percent(pair) for pair in report["metrics"]["accuracy"]["ci95"]],
        "student_after_agreement_with_bayesian_percent": percent(report["metrics"]["agreement_with_bayesian"]["mean"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="The JSON file to write.")
    parser.add_argument("--log", default="distill-cpu-default.log", help="Where the run's output is kept.")
    args = parser.parse_args()
    if REPORT.exists():
        sys.exit(f"{REPORT} exists: run this in a fresh clone, where distill starts from nothing")
    cache = gguf_cache_state()
    load = [(0.0, os.getloadavg())]
    start, done = time.monotonic(), threading.Event()

    def sample():
        while not done.wait(30):
            load.append((round(time.monotonic() - start), os.getloadavg()))

    threading.Thread(target=sample, daemon=True).start()
    lines = []
    with subprocess.Popen(["/usr/bin/time", "-v", *COMMAND], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process, open(args.log, "w") as log:
        for line in process.stdout:
            stamped = f"{time.monotonic() - start:8.1f} {line}"
            sys.stdout.write(stamped)
            log.write(stamped)
            lines.append((round(time.monotonic() - start, 1), line.rstrip("\n")))
    done.set()
    load.append((round(time.monotonic() - start), os.getloadavg()))
    text = "\n".join(line for _, line in lines)
    result = {
        "command": " ".join(COMMAND), "run_with": "/usr/bin/time -v, from a fresh clone, the project's venv active",
        "recorded_by": "python experiments/distill_cpu_default.py --out experiments/results/distill_smollm2_cpu_default.json",
        "cpu": cpu_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gguf_cache_before_the_run": cache, **time_v(text),
        "load_average_1_5_15_min": [{"at_s": t, "load": [round(x, 2) for x in v]} for t, v in load],
        "stage_lines": [{"at_s": t, "line": line[:300]} for t, line in lines
                        if line.startswith(STAGE_LINES) or "needs a Hugging Face folder" in line],
    }
    if REPORT.exists():
        result.update(summarise(json.loads(REPORT.read_text())))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
