"""How fast each teacher teaches the embedded student: Bayesian vs oracle at equal budgets of optimizer steps.

    python experiments/teacher_budgets.py [--domain hotel] [--bayesian-steps 500,1500] [--oracle-steps 500,1500] \
        [--work runs/teacher_budgets] [--parallel 2 --threads 1]

Resumable stages (experiments/stage_runner.py) of ``cli.py`` commands, seed 0:

* ``data-T``: ``make-data --domain D --teacher T --dialogues 100 --rounds 6 --prefixes longest`` once per teacher
  (what ``distill`` writes for the embedded student; --rounds is the domain's + 1),
* ``T-N-train``: ``train --data WORK/data-T/train-T.jsonl --domain D --max-steps N --out WORK/T-N/train``,
* ``T-N``: ``evaluate --model WORK/T-N/train/model --users-of WORK/data-T --heldout 20 --out WORK/T-N``: the
  100 users the teaching set holds out x 20 held-out sets, exactly distill's evaluation after training,
* ``ref-bayesian``, ``ref-random``: the Bayesian assistant and random on the same users and sets.

(Points measured before this layout were one ``distill --max-steps N`` each, same data, training and evaluation,
plus an evaluation before training; their output has the same layout, so they are kept as they are and the
JSON quotes the command that made them.)  Budgets are in steps, not minutes, so that points measured while
other jobs share the CPU are comparable: the student sees the same number of examples whatever the machine's
speed.  For each point the JSON holds the accuracy and agreement with the Bayesian assistant after each
round, and the loss curve's plateau: the first step at which the mean training loss over the last 50 steps
falls 0.01 below ln 3, i.e. where the student starts to use what it reads.  Writes
experiments/results/teacher_budgets.json and a plot (accuracy after the last round against steps, per teacher;
loss curves) beside it.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


from stage_runner import REPO_ROOT, Stage, print_plan, results_header, round_metrics, run_stages, write_json  # noqa: E402

RESULTS = REPO_ROOT / "experiments" / "results" / "teacher_budgets.json"
PLATEAU_WINDOW = 50
PLATEAU_DROP = 0.01


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="hotel")
    parser.add_argument("--bayesian-steps", default="500,1500",
                        help="comma-separated step budgets, each N (batches of the student's 32 dialogues) or NxB "
                             "(N steps of B dialogues)")
    parser.add_argument("--oracle-steps", default="500,1500", help="as --bayesian-steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "teacher_budgets")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dry-run", action="store_true", help="print the runs' commands and whether each is done")
    return parser.parse_args(argv)


def plateau_exit(log: list[tuple[int, float]]) -> int | None:
    """The first logged step at which the mean loss of the entries logged in the last PLATEAU_WINDOW steps is
    PLATEAU_DROP below ln 3 (``log``: (step, loss) pairs, as train_log.jsonl records them every few steps)."""
    for step, _ in log:
        window = [loss for logged, loss in log if step - PLATEAU_WINDOW < logged <= step]
        if sum(window) / len(window) < math.log(3) - PLATEAU_DROP:
            return step
    return None


STUDENT_BATCH = 32  # StudentConfig.batch_size


def parse_point(name: str) -> tuple[str, int, int]:
    """(teacher, steps, dialogues a step) of a point named "oracle-8000" or "oracle-800x128"."""
    teacher, budget = name.split("-", 1)
    steps, _, batch = budget.partition("x")
    return teacher, int(steps), int(batch or STUDENT_BATCH)


def build_stages(args) -> list[Stage]:
    from ppl_models import get_domain

    rounds = get_domain(args.domain).n_rounds + 1  # the embedded student is also taught the round evaluation asks
    seed = ["--seed", str(args.seed)]
    stages, points = [], []
    for teacher, budgets in (("bayesian", args.bayesian_steps), ("oracle", args.oracle_steps)):
        steps_list = [s.strip() for s in budgets.split(",") if s.strip()]
        if not steps_list:
            continue
        data = args.work / f"data-{teacher}"
        stages.append(Stage(f"data-{teacher}", ["make-data", "--domain", args.domain, "--teacher", teacher,
                                                 "--dialogues", "100", "--rounds", str(rounds), "--prefixes", "longest",
                                                 *seed, "--out", str(data)], data / "manifest.json"))
        for budget in steps_list:
            name = f"{teacher}-{budget}"
            _, steps, batch = parse_point(name)
            out = args.work / name
            batch_args = ["--batch-size", str(batch)] if batch != STUDENT_BATCH else []
            stages.append(Stage(f"{name}-train",
                                ["train", "--data", str(data / f"train-{teacher}.jsonl"), "--domain", args.domain,
                                 "--max-steps", str(steps), *batch_args, *seed, "--out", str(out / "train")],
                                out / "train" / "model" / "COMPLETE", after=[f"data-{teacher}"]))
            points.append(Stage(name, ["evaluate", "--domain", args.domain, "--model",
                                       str(out / "train" / "model"), "--users-of", str(data),
                                       "--heldout", "20", *seed, "--out", str(out)],
                                out / "report.json", after=[f"{name}-train"]))
    if points:  # the same held-out users whatever the teacher: the first teaching set's
        data_stage = stages[0]
        for assistant in ("bayesian", "random"):
            stages.append(Stage(f"ref-{assistant}", ["evaluate", "--domain", args.domain, "--assistant", assistant,
                                                     "--users-of", str(data_stage.done.parent), "--heldout", "20", *seed,
                                                     "--out", str(args.work / f"ref-{assistant}")],
                                args.work / f"ref-{assistant}" / "report.json", after=[data_stage.name]))
    # the longest first: it sets the wall time
    return stages + sorted(points, key=lambda s: -parse_point(s.name)[1])


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) for every logged step of the run's training."""
    log_path = run_dir / "train" / "train_log.jsonl"
    if not log_path.exists():
        return []
    return [(entry["step"], entry["loss"]) for entry in map(json.loads, log_path.read_text().splitlines())
            if "loss" in entry]


def collect(args, stages: list[Stage], record: dict) -> dict:
    results = {**results_header("teacher_budgets", args), "ln3": math.log(3), "references": {}, "runs": {}}
    for stage in stages:
        if not stage.done.exists() or stage.name.startswith("data-") or stage.name.endswith("-train"):
            continue
        if stage.name.startswith("ref-"):
            results["references"][stage.name[len("ref-"):]] = {**round_metrics(stage.done),
                                                               "command": record.get(stage.name, {}).get("command")}
            continue
        run_dir = stage.done.parent
        report = json.loads(stage.done.read_text())
        losses = read_losses(run_dir)
        evaluated, trained = record.get(stage.name, {}), record.get(f"{stage.name}-train", {})
        if (evaluated.get("command") or "").startswith("python cli.py distill"):  # a point of the one-command layout
            commands, wall = [evaluated["command"]], evaluated.get("wall_s")
        else:
            commands = [c for c in (trained.get("command"), evaluated.get("command")) if c]
            walls = [trained.get("wall_s"), evaluated.get("wall_s")]
            wall = sum(walls) if None not in walls else None  # None: a stage run outside the runner
        if trained.get("note"):  # trained outside the runner: its own wall time is in its summary.json
            entry_note = f"training: {trained['note']}"
        else:
            entry_note = None
        summary_path = run_dir / "train" / "summary.json"
        teacher, steps, batch = parse_point(stage.name)
        entry = {"teacher": teacher, "steps": steps, "batch_size": batch, "dialogues": steps * batch,
                 "commands": commands, "wall_s": wall,
                 "student": round_metrics(stage.done),
                 "training": json.loads(summary_path.read_text()) if summary_path.exists() else None,
                 "loss_every_100_steps": [[step, round(loss, 4)] for step, loss in losses if step % 100 == 0],
                 "loss_last_100_steps": _mean([loss for step, loss in losses if step > losses[-1][0] - 100])
                 if losses else None,
                 "plateau_exit_step": plateau_exit(losses)}
        if entry_note:
            entry["note"] = entry_note
        results["runs"][stage.name] = entry
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def plot(results: dict, work: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    # near ln 3 at the plateau's scale: where a curve leaves it is invisible on the whole loss range
    zoom = right.inset_axes([0.45, 0.45, 0.5, 0.33])
    for teacher, colour in (("bayesian", "tab:blue"), ("oracle", "tab:orange")):
        for batch, style in ((STUDENT_BATCH, "-"), *((b, "--") for b in sorted({r["batch_size"] for r in
                                                                              results["runs"].values()} - {STUDENT_BATCH}))):
            runs = sorted((name, r) for name, r in results["runs"].items()
                          if r["teacher"] == teacher and r["batch_size"] == batch)
            runs.sort(key=lambda item: item[1]["steps"])
            if not runs:
                continue
            label = f"{teacher}" + ("" if batch == STUDENT_BATCH else f", batch {batch}")
            left.plot([r["dialogues"] / 1000 for _, r in runs], [r["student"]["accuracy"][-1] for _, r in runs], "o" + style,
                      color=colour, label=f"{label}-taught")
            name, longest = runs[-1]
            losses = read_losses(work / name)
            running = [_mean([loss for logged, loss in losses if step - PLATEAU_WINDOW < logged <= step])
                       for step, _ in losses]
            seen = [step * batch / 1000 for step, _ in losses]
            right.plot(seen, running, style, color=colour, label=f"{label} ({longest['steps']} steps)")
            zoom.plot(seen, running, style, color=colour)
            if longest["plateau_exit_step"] is not None:
                zoom.axvline(longest["plateau_exit_step"] * batch / 1000, color=colour, linestyle=":")
    left.axhline(100 / 3, color="grey", linestyle="--", label="chance")
    left.set_xlabel("dialogues seen in training (thousands)")
    left.set_ylabel("accuracy after the last round (%)")
    left.legend()
    right.axhline(math.log(3), color="grey", linestyle="--", label="ln 3")
    right.set_xlabel("dialogues seen in training (thousands)")
    right.set_ylabel(f"training loss (mean over {PLATEAU_WINDOW} steps)")
    right.set_ylim(0, 2)
    right.legend(loc="lower right")
    zoom.axhline(math.log(3), color="grey", linestyle="--")
    zoom.set_ylim(math.log(3) - 0.04, math.log(3) + 0.015)
    zoom.set_title(f"near ln 3 (dotted: leaves it, {PLATEAU_DROP} below)", fontsize=8)
    zoom.tick_params(labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    stages = build_stages(args)
    if args.dry_run:
        return print_plan(stages)
    record = run_stages(stages, args.work, parallel=args.parallel, threads=args.threads)
    results = collect(args, stages, record)
    write_json(results, args.out)
    plot(results, args.work, args.out.with_suffix(".png"))
    for name, run in results["runs"].items():
        print(f"{name:16s} accuracy {run['student']['accuracy']} plateau exit {run['plateau_exit_step']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
