"""Can the embedded student be taught to design (issue 24's target: at least 0.8 of the Bayesian designer's
information gain per round, at a stated budget)?

    python experiments/design_student.py --work /work/ds [--domain flight] \
        [--runs bayesian:10,soft:10,bayesian:30] [--parallel 3] [--out experiments/results/design_student.json]

One stage per run TEACHER:MINUTES: ``distill --task design --teacher T --budget B`` (the default settings otherwise: 100
held-out users, 20 held-out sets, 4 candidate sets a round, 10 dialogues per teaching user, seed 0), run by
``stage_runner`` (resumable; each command and wall time recorded).  The JSON keeps, per teacher and per round
shown, the student's shown set's gain as a % of the best candidate's before and after teaching (95% intervals
over users), a set drawn at random from the student's candidates (expected), the Bayesian assistant's accuracy
on the dialogues each designer made, the training summary (steps, loss, peak RSS) and the command.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stage_runner import Stage, print_plan, results_header, run_stages, write_json


def percent(values) -> list:
    return [None if v is None else round(100 * v, 1) for v in values]


def summary(report_path: Path) -> dict:
    """The designers' fractions and accuracies from a ``distill --task design`` report."""
    report = json.loads(report_path.read_text())
    designers = report["extra"]["designers"]
    fraction = {
        "student_before": designers["before"]["design"]["fraction_of_best_gain"],
        "student_after": report["design"]["fraction_of_best_gain"],
        "random_designer_expected": report["design"]["random_fraction_of_best_gain"],
    }
    training = report["extra"]["training"]
    return {
        "rounds_shown": report["design"]["rounds_shown"],
        "fraction_of_best_gain_percent": {name: percent(values["mean"]) for name, values in fraction.items()},
        "fraction_ci95_percent": {name: [percent(pair) for pair in values["ci95"]] for name, values in fraction.items()},
        "target_met_every_round": all(v >= 0.8 for v in fraction["student_after"]["mean"]),
        "accuracy_after_dialogues_designed_by_percent": {
            "student_before": percent(designers["before"]["accuracy"]), "student_after": percent(report["accuracy"]),
            "bayesian_designer": percent(designers["bayesian"]["accuracy"]),
            "random_designer": percent(designers["random"]["accuracy"]),
        },
        "training": {key: training[key] for key in ("steps", "stop_reason", "tokens", "tokens_per_s", "peak_rss_mb")
                     if key in training},
        "n_users": report["n_users"], "n_heldout": report["n_heldout"], "candidates": report["design"]["candidates"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the runs (data, models, logs).")
    parser.add_argument("--domain", default="flight", help="The domain to teach designing in.")
    parser.add_argument("--runs", default="bayesian:10,soft:10,bayesian:30",
                        help="Comma-separated TEACHER:MINUTES runs (teacher bayesian or soft, training budget in minutes).")
    parser.add_argument("--parallel", type=int, default=3, help="Runs at once (the budgets are wall-clock minutes).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per run.")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/design_student.json"),
                        help="The results JSON.")
    parser.add_argument("--dry-run", action="store_true", help="Print each stage's command and whether it is done.")
    args = parser.parse_args()
    runs = [(run.split(":")[0], float(run.split(":")[1])) for run in args.runs.split(",") if run]
    names = [f"{teacher}-{minutes:g}min" for teacher, minutes in runs]
    stages = [Stage(name, ["distill", "--domain", args.domain, "--task", "design", "--teacher", teacher,
                           "--budget", f"{minutes:g}", "--out", str(args.work / name)], args.work / name / "report.json")
              for name, (teacher, minutes) in zip(names, runs)]
    if args.dry_run:
        print_plan(stages)
        return
    record = run_stages(stages, args.work, parallel=args.parallel, threads=args.threads)
    results = results_header("design_student", args)
    results["runs"] = {name: {**summary(args.work / name / "report.json"), "command": record[name]["command"],
                              "wall_s": record[name]["wall_s"]} for name in names}
    write_json(results, args.out)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
