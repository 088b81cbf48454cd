"""Can the embedded student be taught to design (issue 24's target: at least 0.8 of the Bayesian designer's
information gain per round, at a stated budget)?

    python experiments/design_student.py --work /work/ds [--domain flight] \
        [--runs bayesian:10,soft:10,bayesian:30] [--parallel 3] [--out experiments/results/design_student.json]
    python experiments/design_student.py --work /work/dse --runs soft:10:entropy,soft:30:entropy --parallel 2 \
        --extra-seeds 1,2,3,4 --out experiments/results/design_student_entropy.json

One stage per run TEACHER:MINUTES[:RULE[:DIALOGUES]]: ``distill --task design --teacher T --budget B --designer
RULE [--teach-design DIALOGUES]`` (RULE label, the default, or entropy; DIALOGUES active or random, with the
entropy rule; the default settings otherwise: 100 held-out users, 20 held-out sets, 4 candidate
sets a round, seed 0), run by ``stage_runner`` (resumable; each command and wall time recorded).  With
``--extra-seeds``, each taught student also designs on the same held-out users with those evaluation seeds (other
candidates and choices): ``pooled`` gives its fraction per round over every seed's dialogues, 0 included, with
95% intervals over dialogues.  With an entropy run, ``entropy_rule_with_the_bayesian_predictive``: the entropy
rule reading the exact Bayesian predictive on the same users, the most a student taught the predictive can
reach.  The JSON keeps, per teacher and per round
shown, the student's shown set's gain as a % of the best candidate's before and after teaching (95% intervals
over users), a set drawn at random from the student's candidates (expected), the Bayesian assistant's accuracy
on the dialogues each designer made, the training summary (steps, loss, peak RSS) and the command.  Beside
them, ``history_free_designer``: a designer that ignores the rounds so far and shows the candidate with the
highest gain under the prior, on the same held-out users and candidates: how far a student gets that has not
learned to read the history.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from stage_runner import Stage, print_plan, results_header, run_stages, write_json

from distill.teaching_data import split_users
from eval.assistants import BayesianAssistant
from eval.design import DEFAULT_LM_CANDIDATES, pick_most_informative, run_designed_protocol
from eval.lm.designer import DesignChoice, EntropyDesigner, LMDesigner
from eval.report import build_report
from ppl_models import expected_information_gain, get_domain


class PriorGainDesigner:
    """Shows the candidate with the highest information gain under the prior, whatever the rounds so far."""

    name = "history-free (prior gain)"

    def choose(self, domain, history_options, history_choices, candidates, gen: torch.Generator) -> DesignChoice:
        return DesignChoice(pick_most_informative(expected_information_gain(domain, candidates), gen))


def history_free_designer(domain_name: str, n_eval_users: int = 100, seed: int = 0) -> dict:
    """PriorGainDesigner's gain as a % of the best candidate's, per round, on distill's held-out users."""
    domain = get_domain(domain_name)
    _, users = split_users(domain, n_eval_users, seed)
    run = run_designed_protocol(domain, BayesianAssistant(), design="lm", designer=PriorGainDesigner(),
                                n_candidates=DEFAULT_LM_CANDIDATES, users=users, seed=seed)
    design = build_report(run)["design"]
    return {"fraction_of_best_gain_percent": percent(design["fraction_of_best_gain"]["mean"]),
            "random_designer_expected_percent": percent(design["random_fraction_of_best_gain"]["mean"])}


def pooled_fractions(domain_name: str, model_dir: Path, rule: str, seeds: list[int], n_eval_users: int = 100) -> dict:
    """The taught student ``model_dir`` as designer (``rule``) on distill's held-out users with each evaluation
    seed: its shown set's gain as a % of the best candidate's per round, pooled over seeds (95% normal
    intervals over dialogues), beside the random designer's expected fraction on the same candidates."""
    from eval.lm import load_causal_lm
    from eval.lm.assistant import LMAssistant

    domain = get_domain(domain_name)
    _, users = split_users(domain, n_eval_users, 0)
    lm = load_causal_lm(str(model_dir))
    shown, random_pick = [], []
    for seed in seeds:
        designer = EntropyDesigner(LMAssistant(lm)) if rule == "entropy" else LMDesigner(lm)
        run = run_designed_protocol(domain, BayesianAssistant(), design="lm", designer=designer,
                                    n_candidates=DEFAULT_LM_CANDIDATES, users=users, seed=seed, n_heldout=1)
        fraction, random_fraction = run.design.fraction_of_best()
        shown.append(fraction)
        random_pick.append(random_fraction)
    result = {"seeds": seeds, "dialogues": len(users) * len(seeds)}
    for name, values in (("student_after", torch.cat(shown)), ("random_designer_expected", torch.cat(random_pick))):
        means, intervals = [], []
        for r in range(values.shape[1]):
            column = values[:, r][~values[:, r].isnan()]
            mean, half = column.mean().item(), 1.96 * column.std().item() / len(column) ** 0.5
            means.append(round(100 * mean, 1))
            intervals.append([round(100 * (mean - half), 1), round(100 * (mean + half), 1)])
        result[f"{name}_percent"] = means
        result[f"{name}_ci95_percent"] = intervals
    result["target_met_every_round"] = all(v >= 80 for v in result["student_after_percent"])
    return result


class BayesianPredictiveAsLM(BayesianAssistant):
    """The Bayesian assistant in a score-mode LM's place: the entropy rule with the exact predictive."""

    mode, name = "score", "bayesian predictive"


def entropy_rule_ceiling(domain_name: str, n_eval_users: int = 100, seed: int = 0) -> dict:
    """The entropy rule (EntropyDesigner) reading the Bayesian predictive, on distill's held-out users: what a
    student that had learned the predictive exactly would score."""
    domain = get_domain(domain_name)
    _, users = split_users(domain, n_eval_users, seed)
    run = run_designed_protocol(domain, BayesianAssistant(), design="lm",
                                designer=EntropyDesigner(BayesianPredictiveAsLM()),
                                n_candidates=DEFAULT_LM_CANDIDATES, users=users, seed=seed, n_heldout=1)
    design = build_report(run)["design"]
    return {"fraction_of_best_gain_percent": percent(design["fraction_of_best_gain"]["mean"]),
            "random_designer_expected_percent": percent(design["random_fraction_of_best_gain"]["mean"])}


def loss_curve(train_dir: Path, window: int = 400) -> list:
    """[first step, mean training loss] per ``window`` steps of a run's train_log.jsonl: when it left its
    starting loss, if it did."""
    rows = [json.loads(line) for line in (train_dir / "train_log.jsonl").open()]
    rows = [row for row in rows if "loss" in row and "step" in row]
    curve = []
    for start in range(0, rows[-1]["step"] + 1 if rows else 0, window):
        chunk = [row["loss"] for row in rows if start <= row["step"] < start + window]
        if chunk:
            curve.append([start, round(sum(chunk) / len(chunk), 3)])
    return curve


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
                        help="Comma-separated TEACHER:MINUTES[:RULE[:DIALOGUES]] runs (teacher bayesian, soft or, with "
                             "the entropy rule, oracle; training budget in minutes; designer rule label or entropy; "
                             "the entropy rule's teaching dialogues, active or random).")
    parser.add_argument("--extra-seeds", default="",
                        help="Comma-separated evaluation seeds on which each taught student also designs (pooled with seed 0).")
    parser.add_argument("--parallel", type=int, default=3, help="Runs at once (the budgets are wall-clock minutes).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per run.")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/design_student.json"),
                        help="The results JSON.")
    parser.add_argument("--stopped", default="",
                        help="Comma-separated NAME=COMMAND of runs in --work stopped by hand: their loss curves are kept.")
    parser.add_argument("--dry-run", action="store_true", help="Print each stage's command and whether it is done.")
    args = parser.parse_args()
    runs = [run.split(":") for run in args.runs.split(",") if run]
    runs = [(parts[0], float(parts[1]), parts[2] if len(parts) > 2 else "label", parts[3] if len(parts) > 3 else "")
            for parts in runs]
    names = [f"{teacher}-{minutes:g}min" + ("" if rule == "label" else f"-{rule}") + (f"-{teach}" if teach else "")
             for teacher, minutes, rule, teach in runs]
    stages = [Stage(name, ["distill", "--domain", args.domain, "--task", "design", "--teacher", teacher,
                           "--budget", f"{minutes:g}", "--designer", rule,
                           *(["--teach-design", teach] if teach else []), "--out", str(args.work / name)],
                    args.work / name / "report.json")
              for name, (teacher, minutes, rule, teach) in zip(names, runs)]
    if args.dry_run:
        print_plan(stages)
        return
    record = run_stages(stages, args.work, parallel=args.parallel, threads=args.threads)
    results = results_header("design_student", args)
    results["runs"] = {name: {**summary(args.work / name / "report.json"), "command": record[name]["command"],
                              "wall_s": record[name]["wall_s"],
                              **({"note": record[name]["note"]} if "note" in record[name] else {})}
                       for name in names}
    for name in names:
        results["runs"][name]["loss_per_400_steps"] = loss_curve(args.work / name / "train")
    stopped = dict(item.split("=", 1) for item in args.stopped.split(",") if item)
    if stopped:
        results["stopped_by_hand"] = {name: {"command": command, "loss_per_400_steps": loss_curve(args.work / name / "train")}
                                      for name, command in stopped.items()}
    extra_seeds = [int(seed) for seed in args.extra_seeds.split(",") if seed]
    if extra_seeds:
        for name, (_, _, rule, _) in zip(names, runs):
            results["runs"][name]["pooled"] = pooled_fractions(args.domain, args.work / name / "train" / "model", rule,
                                                               [0, *extra_seeds])
    results["history_free_designer"] = history_free_designer(args.domain)
    if any(run[2] == "entropy" for run in runs):
        results["entropy_rule_with_the_bayesian_predictive"] = entropy_rule_ceiling(args.domain)
    write_json(results, args.out)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
