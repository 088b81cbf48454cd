"""Bayesian vs oracle teaching of a real pretrained LM on CPU, with transfer: the study's headline, measured.

    python experiments/real_lm_teaching.py [--model smollm2] [--budget 45] [--users 12] [--heldout 10] \
        [--work runs/real_lm_teaching] [--parallel 2 --threads 1]

Three models: the LM as released, taught on the Bayesian assistant's picks, and taught on the users' own
choices (oracle), by LoRA (``--method full``: full fine-tuning, the study's method); the same flight teaching dialogues for both teachers (same users, options and choices:
only the assistant turns differ), the same budget and settings.  Each is evaluated in score mode on flight
(the users the teaching sets held out, ``evaluate --users-of``) and on hotel (transfer: no hotel was taught),
beside the Bayesian assistant and random on the same users and held-out sets.  Every step is a ``cli.py``
command run as a resumable stage (experiments/stage_runner.py); the JSON quotes each command and its wall time.

Settings, and why: teaching dialogues are whole 5-round dialogues (``--prefixes longest``: every assistant
turn is learnt from one example, a fifth of the text of every-prefix examples, which matters at ~70 tokens/s);
float32 without gradient checkpointing, batch 2, when the CPU lacks bf16 instructions (bf16 runs ~6x slower
than float32 there; checkpointing trades ~40% speed for memory that 2 runs x ~7 GB do not need); the
learning-rate schedule spans ``--max-steps`` and the budget stops the run.  Writes
experiments/results/real_lm_teaching.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from stage_runner import REPO_ROOT, Stage, print_plan, results_header, round_metrics, run_stages, write_json  # noqa: E402

RESULTS = REPO_ROOT / "experiments" / "results" / "real_lm_teaching.json"
TEACHERS = ("bayesian", "oracle")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="the pretrained LM (anything --model accepts)")
    parser.add_argument("--domain", default="flight", help="the teaching domain")
    parser.add_argument("--transfer", default="hotel", help="comma-separated domains to evaluate transfer on")
    parser.add_argument("--budget", type=float, default=45.0, help="training minutes per teacher")
    parser.add_argument("--max-steps", type=int, default=150, help="the schedule's length (the budget may stop earlier)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--method", default="lora", choices=["lora", "qlora", "full"],
                        help="what trains (the study: full fine-tuning)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's 2e-4)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--dialogues", type=int, default=2, help="teaching dialogues per teaching user")
    parser.add_argument("--users", type=int, default=12, help="evaluation users per domain")
    parser.add_argument("--heldout", type=int, default=10, help="held-out option sets per user and round")
    parser.add_argument("--transfer-users", type=int, default=None, help="evaluation users on the transfer domains "
                        "(default: --users)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2, help="stages run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "real_lm_teaching")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip", default="", help="comma-separated stages not to run (e.g. eval-oracle-hotel when "
                        "time is short); their rows are left out of the JSON unless their output exists")
    parser.add_argument("--dry-run", action="store_true", help="print the stages' commands and whether each is done")
    return parser.parse_args(argv)


def build_stages(args) -> tuple[list[Stage], dict]:
    """The stages, and the evaluation rows: {row name: (stage name, domain, label)}."""
    work, stages, rows = args.work, [], {}
    for teacher in TEACHERS:
        data = work / f"data-{teacher}"
        stages.append(Stage(f"data-{teacher}", ["make-data", "--domain", args.domain, "--teacher", teacher,
                                                "--dialogues", str(args.dialogues), "--prefixes", "longest",
                                                "--seed", str(args.seed), "--out", str(data)], data / "manifest.json"))
        train = ["train", "--data", str(data / f"train-{teacher}.jsonl"), "--model", args.model, "--method", args.method,
                 "--dtype", args.dtype,
                 "--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing",
                 "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--budget", str(args.budget),
                 "--seed", str(args.seed), "--out", str(work / f"train-{teacher}")]
        if args.lr is not None:
            train[-2:-2] = ["--lr", str(args.lr)]
        stages.append(Stage(f"train-{teacher}", train, work / f"train-{teacher}" / "summary.json", [f"data-{teacher}"]))
    domains = [args.domain] + [d for d in args.transfer.split(",") if d and d != args.domain]
    for domain in domains:
        # the teaching domain: the users both teaching sets held out (the same split); elsewhere: users at random
        n_users = args.users if domain == args.domain else (args.transfer_users or args.users)
        users = ["--users", str(n_users), "--heldout", str(args.heldout), "--seed", str(args.seed)]
        if domain == args.domain:
            users += ["--users-of", str(work / "data-bayesian")]
        after = ["data-bayesian"] if domain == args.domain else []
        for name in ("released",) + TEACHERS:
            out = work / f"eval-{name}-{domain}"
            if name == "released":
                model = ["--model", args.model]
            elif args.method == "full":  # the whole fine-tuned model is saved
                model = ["--model", str(work / f"train-{name}" / "model")]
            else:
                model = ["--model", args.model, "--adapter", str(work / f"train-{name}" / "adapter")]
            argv = ["evaluate", "--domain", domain, *model, *users, "--out", str(out)]
            stages.append(Stage(f"eval-{name}-{domain}", argv, out / "report.json",
                                after + ([f"train-{name}"] if name != "released" else [])))
            rows[f"{name}/{domain}"] = (f"eval-{name}-{domain}", domain, out)
        for assistant in ("bayesian", "random"):
            out = work / f"ref-{assistant}-{domain}"
            stages.append(Stage(f"ref-{assistant}-{domain}", ["evaluate", "--domain", domain, "--assistant", assistant,
                                                              *users, "--no-elicit-beliefs", "--out", str(out)],
                                out / "report.json", after))
            rows[f"{assistant} assistant/{domain}"] = (f"ref-{assistant}-{domain}", domain, out)
    # cheap reference stages first, then the long ones in dependency order
    stages.sort(key=lambda s: (not s.name.startswith(("data", "ref")), not s.name.startswith("train")))
    return stages, rows


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def collect(args, record: dict, rows: dict) -> dict:
    results = {**results_header("real_lm_teaching", args), "training": {}, "rows": {}, "comparisons": {}}
    for teacher in TEACHERS:
        summary_path = args.work / f"train-{teacher}" / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            log_path = args.work / f"train-{teacher}" / "train_log.jsonl"
            log = [json.loads(line) for line in log_path.read_text().splitlines() if '"loss"' in line] \
                if log_path.exists() else []
            losses = [entry["loss"] for entry in log]
            # the loss on the option number alone, averaged over windows of 10 steps: where the pick starts to move
            choice_losses = [entry.get("choice_loss") for entry in log]
            windows = [choice_losses[i:i + 10] for i in range(0, len(choice_losses), 10)]
            results["training"][teacher] = {
                "command": record.get(f"train-{teacher}", {}).get("command"),
                **{k: summary.get(k) for k in ("steps", "max_steps", "stop_reason", "tokens", "tokens_per_s",
                                               "wall_seconds", "peak_rss_mb", "num_examples", "global_batch")},
                "loss_first_10": sum(losses[:10]) / max(1, len(losses[:10])) if losses else None,
                "loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None,
                "choice_loss_per_10_steps": [round(sum(w) / len(w), 3) for w in windows if None not in w]}
    for row, (stage, domain, out) in rows.items():
        if (out / "report.json").exists():
            entry = record.get(stage, {})
            results["rows"][row] = {"domain": domain, "command": entry.get("command"), "wall_s": entry.get("wall_s"),
                                    **round_metrics(out / "report.json")}
    for domain in {d for _, d, _ in rows.values()}:
        final = {name.split("/")[0]: r for name, r in results["rows"].items() if r["domain"] == domain}
        pairs = [("bayesian", "released"), ("bayesian", "oracle"), ("oracle", "released")]
        for a, b in pairs:
            if a in final and b in final:
                ra, rb = final[a], final[b]
                results["comparisons"][f"{domain}: {a}-taught vs {'as released' if b == 'released' else b + '-taught'}"] = {
                    "accuracy_difference_per_round": [round(x - y, 1) for x, y in zip(ra["accuracy"], rb["accuracy"])],
                    "final_round": {a: ra["accuracy"][-1], b: rb["accuracy"][-1],
                                    "ci95": {a: ra["accuracy_ci95"][-1], b: rb["accuracy_ci95"][-1]},
                                    "intervals_overlap": overlap(ra["accuracy_ci95"][-1], rb["accuracy_ci95"][-1])}}
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    stages, rows = build_stages(args)
    if args.dry_run:
        return print_plan(stages)
    skipped = set(args.skip.split(","))
    record = run_stages([s for s in stages if s.name not in skipped], args.work, parallel=args.parallel,
                        threads=args.threads)
    results = collect(args, record, rows)
    write_json(results, args.out)
    print(json.dumps(results["comparisons"], indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
