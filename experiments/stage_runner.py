"""Long experiments as resumable stages of ``cli.py`` commands (teacher_budgets.py, real_lm_teaching.py).

A stage is one CLI command and the file that says it finished.  ``run_stages`` runs the missing ones, at most
``parallel`` at a time (each with ``threads`` torch threads), and records every stage's exact command, wall
time, exit code and log file in ``WORK/stages.json``, so an interrupted experiment (or one split across
sessions) picks up where it stopped and its results JSON can quote each command and its time.  A stage whose
output exists but which this runner did not record (run by hand with the same command) is kept, its wall time
``null``.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    name: str
    args: list[str]  # cli.py arguments
    done: Path  # the file whose existence means the stage finished
    after: list[str] = field(default_factory=list)  # stages that must finish first

    def command(self) -> str:
        return "python cli.py " + shlex.join(self.args)


def machine() -> dict:
    """What the timings depend on: CPU model, cores, and whether the CPU has bf16 instructions."""
    flags, model = "", platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = line
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": " avx512_bf16" in flags,
            "amx_bf16": " amx_bf16" in flags, "python": platform.python_version()}


class AdoptedProcess:
    """A stage started by another runner (its ``logs/NAME.pid`` names a live process): waited for, not rerun."""

    def __init__(self, pid: int, done: Path):
        self.pid, self.done, self.returncode = pid, done, None

    def poll(self):
        if Path(f"/proc/{self.pid}").exists():
            return None
        self.returncode = 0 if self.done.exists() else 1
        return self.returncode


def _adopt(pid_path: Path, done: Path):
    """(process, start time) of a live stage another runner started, else None."""
    try:
        pid, started = pid_path.read_text().split()
    except (OSError, ValueError):
        return None
    return (AdoptedProcess(int(pid), done), float(started)) if Path(f"/proc/{pid}").exists() else None


def run_stages(stages: list[Stage], work: Path, parallel: int = 1, threads: int = 2, log=print) -> dict:
    """Run every stage whose ``done`` file is missing; returns the record {name: {command, wall_s, rc, log}}."""
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "stages.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for stage in stages:
        if stage.done.exists() and stage.name not in record:
            record[stage.name] = {"command": stage.command(), "wall_s": None, "rc": 0, "log": None,
                                  "note": "output found, run outside this runner"}
    pending = [s for s in stages if not s.done.exists()]
    running: dict[str, tuple[subprocess.Popen, float, Stage]] = {}
    for stage in list(pending):  # started by an earlier runner that was stopped: wait for it
        adopted = _adopt(work / "logs" / f"{stage.name}.pid", stage.done)
        if adopted:
            pending.remove(stage)
            running[stage.name] = (*adopted, stage)
            log(f"[{time.strftime('%H:%M:%S')}] waiting for {stage.name} (pid {adopted[0].pid}, started elsewhere)")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO_ROOT))
    while pending or running:
        finished = {name for name, entry in record.items() if entry.get("rc") == 0}
        ready = [s for s in pending if all(a in finished for a in s.after)]
        while ready and len(running) < parallel:
            stage = ready.pop(0)
            pending.remove(stage)
            log_path = work / "logs" / f"{stage.name}.log"
            log_path.parent.mkdir(exist_ok=True)
            log(f"[{time.strftime('%H:%M:%S')}] start {stage.name}: {stage.command()}")
            process = subprocess.Popen([sys.executable, str(REPO_ROOT / "cli.py"), *stage.args], cwd=REPO_ROOT,
                                       env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
            running[stage.name] = (process, time.time(), stage)
            (work / "logs" / f"{stage.name}.pid").write_text(f"{process.pid} {time.time()}\n")
        if not running:
            blocked = ", ".join(s.name for s in pending)
            raise RuntimeError(f"stages blocked by a failed stage: {blocked} (see {work / 'logs'})")
        time.sleep(2)
        for name, (process, start, stage) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            wall = time.time() - start
            record[name] = {"command": stage.command(), "wall_s": round(wall, 1), "rc": process.returncode,
                            "log": str(work / "logs" / f"{name}.log")}
            record_path.write_text(json.dumps(record, indent=2) + "\n")
            log(f"[{time.strftime('%H:%M:%S')}] {name}: exit {process.returncode} after {wall / 60:.1f} min")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def print_plan(stages: list[Stage]) -> None:
    """``--dry-run``: each stage's command and whether it is done."""
    width = max(len(stage.name) for stage in stages) + 2
    for stage in stages:
        print(f"{'done' if stage.done.exists() else 'todo'}  {stage.name:{width}s}{stage.command()}")


def results_header(benchmark: str, args) -> dict:
    """The fields every teaching experiment's JSON opens with: its name, when, the machine and the settings."""
    return {"benchmark": benchmark, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def round_metrics(report_path: Path) -> dict:
    """Accuracy and agreement with the Bayesian assistant per round (in %), with 95% intervals over users."""
    report = json.loads(report_path.read_text())
    percent = lambda values: [round(100 * v, 1) for v in values]  # noqa: E731
    out = {"accuracy": percent(report["accuracy"]), "accuracy_ci95": [percent(pair) for pair in report["ci95"]],
           "n_users": report["n_users"], "n_heldout": report["n_heldout"]}
    agreement = report.get("metrics", {}).get("agreement_with_bayesian")
    if agreement:
        out["agreement_with_bayesian"] = percent(agreement["mean"])
        out["agreement_ci95"] = [percent(pair) for pair in agreement["ci95"]]
    return out
