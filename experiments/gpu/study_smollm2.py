"""The study-scale SmolLM2 experiment in one script, for one lent GPU (and, as a dry run, for a CPU).

    python experiments/gpu/study_smollm2.py --model /tmp/gpu/smollm2.gguf --out $OUT/study      # on the GPU
    python experiments/gpu/study_smollm2.py --dry-run --out /tmp/dry                             # CPU, tiny model

Stages, each a ``cli.py`` command (quoted with its wall time in ``results.json``):

1. teaching sets on flight at the study's scale: 624 users x 10 dialogues = 6,240 dialogues per teacher
   (``make-data --eval-users 0 --dialogues 10``, every prefix an example, as in the study), one for the
   Bayesian assistant's picks and one for the users' own choices (oracle);
2. LoRA on SmolLM2-135M-Instruct for each teacher (``train --method lora --dtype auto --max-steps``,
   975 steps of 32 = one epoch of the 31,200 examples, a 2.5-minute budget as a backstop);
3. evaluation (``evaluate``, score mode) of the released model, the Bayesian-taught and the oracle-taught
   one on flight and on hotel (transfer), each with 95% bootstrap intervals per round, beside the Bayesian
   assistant and random on the same users.

The evaluation users are drawn by the seed from the whole prior's support: the teaching set uses every
user (the study's 6,240 dialogues), so the users are not held out of teaching; their held-out option sets
and choices are new draws.  Under ``torchrun`` (``--processes N``) evaluations are data-parallel.

``--dry-run``: the same stages on a random-weight tiny Llama built on the spot (tests/tiny_lm.py) at a tiny
scale, on whatever device there is; the test suite runs it (tests/test_gpu_script.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = str(REPO_ROOT / "cli.py")
TEACHERS = ("bayesian", "oracle")
STUDY = {"dialogues": 10, "max_steps": 975, "batch_size": 32, "budget": 2.5, "users": 100, "heldout": 20}
DRY = {"dialogues": 1, "max_steps": 2, "batch_size": 2, "budget": 2.0, "users": 2, "heldout": 1}


def tiny_model(folder: Path) -> str:
    import importlib.util  # tests/ is not a package: the builder is loaded by path

    spec = importlib.util.spec_from_file_location("tiny_lm", REPO_ROOT / "tests" / "tiny_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.save_tiny_lm(folder))


def environment() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("torch", "transformers", "peft", "accelerate", "pyro", "gguf"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    import torch

    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_stage(name: str, arguments: list[str], log: list, launcher: list[str] = ()) -> float:
    command = [sys.executable, *launcher, CLI, *arguments]
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seconds = round(time.perf_counter() - start, 1)
    log.append({"stage": name, "command": " ".join(command[1:]), "seconds": seconds, "exit_code": result.returncode,
                "stderr_tail": result.stderr[-1500:] if result.returncode else ""})
    print(f"[{name}] {seconds} s, exit {result.returncode}", flush=True)
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr, flush=True)
    return seconds


def summary(report_path: Path) -> dict | None:
    if not report_path.exists():
        return None
    report = json.loads(report_path.read_text())
    metrics = report["metrics"]
    return {"accuracy": report["accuracy"], "ci95": report["ci95"],
            "agreement_with_bayesian": metrics.get("agreement_with_bayesian", {}).get("mean"),
            "n_users": report["n_users"], "n_heldout": report["n_heldout"], "dtype": report["extra"].get("dtype")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="The pretrained LM: a GGUF file, a folder, or smollm2.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for every stage's output and results.json.")
    parser.add_argument("--dry-run", action="store_true", help="A tiny random model at a tiny scale (CPU check).")
    parser.add_argument("--processes", type=int, default=1, help="Evaluation processes (torchrun) on this machine.")
    parser.add_argument("--transfer", default="hotel", help="The transfer domain evaluated beside flight.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for data, training and evaluation.")
    args = parser.parse_args(argv)
    scale = DRY if args.dry_run else STUDY
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(out / "tiny-model") if args.dry_run else args.model
    started = time.perf_counter()
    log: list = []
    results = {"what": __doc__.split("\n\n")[0], "settings": {**scale, **vars(args), "out": str(out), "model": model},
               "environment": environment(), "stages": log, "reports": {}}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes)] if args.processes > 1 else []
    for teacher in TEACHERS:
        run_stage(f"data-{teacher}", ["make-data", "--domain", "flight", "--teacher", teacher, "--dialogues",
                                      str(scale["dialogues"]), "--eval-users", "0", "--seed", str(args.seed),
                                      "--out", str(out / f"data-{teacher}")], log)
    for teacher in TEACHERS:
        run_stage(f"train-{teacher}", ["train", "--data", str(out / f"data-{teacher}" / f"train-{teacher}.jsonl"),
                                       "--model", model, "--method", "lora", "--dtype", "auto", "--max-steps",
                                       str(scale["max_steps"]), "--batch-size", str(scale["batch_size"]), "--budget",
                                       str(scale["budget"]), "--seed", str(args.seed), "--out", str(out / f"train-{teacher}")], log)
    models = {"released": [], **{f"{t}-taught": ["--adapter", str(out / f"train-{t}" / "adapter")] for t in TEACHERS}}
    for domain in ("flight", args.transfer):
        for label, extra in models.items():
            target = out / f"eval-{label}-{domain}"
            run_stage(f"eval-{label}-{domain}", ["evaluate", "--domain", domain, "--model", model, *extra, "--users",
                                                 str(scale["users"]), "--heldout", str(scale["heldout"]), "--dtype", "auto",
                                                 "--seed", str(args.seed), "--out", str(target)], log, launcher)
            results["reports"][f"{label}/{domain}"] = summary(target / "report.json")
        for assistant in ("bayesian", "random"):
            target = out / f"eval-{assistant}-{domain}"
            run_stage(f"eval-{assistant}-{domain}", ["evaluate", "--domain", domain, "--assistant", assistant, "--users",
                                                     str(scale["users"]), "--heldout", str(scale["heldout"]), "--seed",
                                                     str(args.seed), "--no-elicit-beliefs", "--out", str(target)], log)
            results["reports"][f"{assistant}/{domain}"] = summary(target / "report.json")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["failed_stages"] = [entry["stage"] for entry in log if entry["exit_code"]]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({key: results[key] for key in ("total_seconds", "failed_stages")}), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["failed_stages"] else 0)
