"""``distill --task design``: teach a student to choose what to ask, and measure it as a designer.

    run_design_distill(DistillSettings(domain="flight", task="design", out_dir="runs/flight-design"))

The stages are ``run_distill``'s: the teaching set, the student as designer before training, training, the
student after training, and the references on the same held-out users.  Two rules (``settings.designer``,
``eval.lm.designer``):

* ``label``: the teaching set is the Bayesian designer's pick among ``n_candidates`` labelled sets, or its
  information-gain distribution (``distill.design_data``); the student reads the rounds so far and the
  labelled sets and names one (``LMDesigner``);
* ``entropy`` (the default): the teaching set is the recommendation task's (``distill.teaching_data``), on
  the study's random dialogues (``teach_design`` "random") or on dialogues the Bayesian designer made
  ("active"); the soft teacher teaches the Bayesian predictive itself; the student is asked which option the
  user will choose in each candidate set, and the set it is least sure of is shown (``EntropyDesigner``).

A designer plays each held-out user's observed rounds (``eval.design``): every round it chooses among
``n_candidates`` sets drawn from the domain; that set is shown and the simulated user chooses.  It is scored
per round by its set's exact information gain as a fraction of the best candidate's: 1.0 is the Bayesian
designer (the most informative candidate), and a set drawn at random from the same candidates expects the mean
candidate's fraction (the random designer).  Beside it, the Bayesian assistant's
accuracy on the held-out sets after the dialogues each designer made.

``out_dir`` receives ``data/``, ``train/``, ``report.json`` (the student after training; the other designers
under ``extra.designers``) and ``design.png``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from eval.assistants import BayesianAssistant
from eval.design import run_designed_protocol
from eval.lm import prepare_loaded_lm
from eval.lm.assistant import LMAssistant
from eval.lm.designer import EntropyDesigner, LMDesigner
from eval.report import build_report, format_table, plot_reports, save_report
from eval.text.dialogue import load_template
from ppl_models import get_domain

from distill.design_data import write_design_set
from distill.pipeline import (
    evaluation_placement, load_model_before, train_and_load, training_summary, with_evaluation_size,
    write_recommendation_set,
)
from distill.teaching_data import STUDY_DIALOGUES_PER_USER
from distill.training.config import ConfigError


COLLAPSE_SHARE = 0.9  # a designer that shows one label this often, whatever the sets, is flagged in the table


def _designer_report(domain, designer, design: str, users, settings, label: str, log) -> dict:
    """The Bayesian assistant on dialogues ``designer`` (an LMDesigner; None with design "active" or "random")
    made for ``users``, as a report with its design section."""
    start = time.perf_counter()
    run = run_designed_protocol(domain, BayesianAssistant(), design=design, n_candidates=settings.n_candidates,
                                users=users, seed=settings.seed, n_heldout=settings.n_heldout, designer=designer)
    report = build_report(run, extra={"label": label})
    log(f"evaluated {label} in {time.perf_counter() - start:.0f} s")
    return report


def make_designer(lm, settings, template, label: str):
    """The student ``lm`` (a LoadedLM) as designer under ``settings.designer``'s rule."""
    if settings.designer == "entropy":
        return EntropyDesigner(LMAssistant(lm, name=label, template=template))
    return LMDesigner(lm, template=template)


def write_teaching_data(domain, settings, out: Path, template) -> tuple[dict, Path, str]:
    """The design rule's teaching set in ``out``: (manifest, data file, a line saying what it holds)."""
    if settings.designer == "entropy":
        manifest = write_recommendation_set(settings, domain, out, template, design=settings.teach_design)
        what = f"{settings.teacher} recommendations on " + (
            f"Bayesian-designed dialogues ({settings.n_candidates} candidate sets a round)"
            if settings.teach_design == "active" else "dialogues of random option sets")
    else:
        manifest = write_design_set(domain, settings.teacher, out,
                                    n_dialogues=settings.n_dialogues or STUDY_DIALOGUES_PER_USER,
                                    n_eval_users=settings.n_eval_users, seed=settings.seed,
                                    n_candidates=settings.n_candidates, max_train_users=settings.max_train_users,
                                    template=template)
        what = f"the {settings.teacher} designer's picks among {settings.n_candidates} labelled sets a round"
    data_path = out / next(iter(manifest["files"]))
    return manifest, data_path, (f"design teaching data: {manifest['counts']['examples']} examples, {what}, from "
                                 f"{manifest['counts']['train_users']} users -> {data_path}")


def run_design_distill(settings, log=print) -> dict:
    """Run the design loop for ``settings`` (a ``distill.pipeline.DistillSettings`` with task "design");
    returns the final report (also written to ``out_dir/report.json``)."""
    domain = get_domain(settings.domain)
    template = load_template(settings.prompt_template)
    settings = with_evaluation_size(settings, log)
    if settings.eval_domains:
        raise ConfigError("--eval-domains is for the recommendation task; a designer is evaluated on its own domain")
    out = Path(settings.out_dir)

    # ---- 1. teaching data (users held out for evaluation never appear) -------------------------------
    manifest, data_path, line = write_teaching_data(domain, settings, out / "data", template)
    users = torch.tensor(manifest["eval_users"], dtype=torch.long)
    log(line)

    # ---- 2. the student as designer, before training, and training ---------------------------------
    reports = {}
    device, dtype = evaluation_placement(settings)
    student_config = None
    if settings.model is None:
        from distill.student.model import StudentConfig, build_student

        student_config = dataclasses.replace(StudentConfig(), kl_weight=settings.teaching_kl_weight,
                                             design_prompts=settings.designer == "label")
        if settings.eval_before:
            model, tokenizer = build_student(domain, student_config, seed=settings.seed, template=template)
            before = make_designer(prepare_loaded_lm(model, tokenizer, "embedded-student"), settings, template,
                                   "student (before)")
            reports["before"] = _designer_report(domain, before, "lm", users, settings, "student before", log)
    elif settings.eval_before:
        before = make_designer(load_model_before(settings, device, dtype, log), settings, template, "student (before)")
        reports["before"] = _designer_report(domain, before, "lm", users, settings, "student before", log)
    before = None  # training gets the memory: a GPU holds the model once
    result, after_lm = train_and_load(settings, domain, data_path, out / "train", device, dtype, template, log,
                                      student_config)
    log(f"trained: {result.summary()}")

    # ---- 3. the student after training, and the references ------------------------------------------
    label = f"student after ({settings.teacher} teaching)"
    final = _designer_report(domain, make_designer(after_lm, settings, template, "student (after)"), "lm", users,
                             settings, label, log)
    reports["bayesian"] = _designer_report(domain, None, "active", users, settings, "bayesian designer", log)
    reports["random"] = _designer_report(domain, None, "random", users, settings, "random designer", log)
    final.update(model=settings.model or "embedded-student", task="design", prompt_template=template.summary())
    final["extra"].update(
        settings=dataclasses.asdict(settings), training=training_summary(result),
        manifest={k: manifest[k] for k in ("task", "counts", "files", "seed", "teacher", "n_candidates", "design")
                  if k in manifest},
        designer=settings.designer,
        designers={name: {"label": r["extra"]["label"], "design": r["design"], "accuracy": r["accuracy"]}
                   for name, r in reports.items()},
    )
    save_report(final, out / "report.json")
    plot_design(final, reports, out / "design.png",
                title=f"{domain.name}: {settings.teacher}-taught designer ({settings.designer} rule)")

    # ---- 4. show ------------------------------------------------------------------------------------
    log(design_tables(final, reports))
    log(f"report: {out / 'report.json'}\nplot: {out / 'design.png'}")
    return final


def design_tables(final: dict, reports: dict) -> str:
    """Two tables: each designer's shown set's gain as a % of the best candidate's, per round shown; and the
    Bayesian assistant's accuracy on the dialogues each designer made, per observed round."""
    fraction = {}
    if "before" in reports:
        fraction["student before"] = reports["before"]["design"]["fraction_of_best_gain"]["mean"]
    fraction["student after"] = final["design"]["fraction_of_best_gain"]["mean"]
    fraction["bayesian designer"] = reports["bayesian"]["design"]["fraction_of_best_gain"]["mean"]
    fraction["random designer"] = final["design"]["random_fraction_of_best_gain"]["mean"]
    accuracy = {"student before": reports["before"]["accuracy"]} if "before" in reports else {}
    accuracy.update({"student after": final["accuracy"], "bayesian designer": reports["bayesian"]["accuracy"],
                     "random designer": reports["random"]["accuracy"]})
    design = final["design"]
    counts = design["picks_per_label"]
    labels = ", ".join(f"set {k + 1} {count}" for k, count in enumerate(counts))
    one_label = max(counts) >= COLLAPSE_SHARE * sum(counts)
    return "\n".join([
        f"information gain of the shown set, % of the best of {design['candidates']} candidates, per round shown",
        format_table(fraction, design["rounds_shown"]),
        f"the student after showed {labels} times" + (
            " (one label nearly always: it does not tell the sets apart)" if one_label else ""),
        "the Bayesian assistant's accuracy % on held-out sets after the dialogues each designer made",
        format_table(accuracy, final["rounds"]),
    ])


def plot_design(final: dict, reports: dict, out, title: str) -> None:
    """design.png: left, each designer's gain as a % of the best candidate's per round shown (95% CI bands);
    right, the Bayesian assistant's accuracy on the dialogues each designer made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = [("student before", reports.get("before"), "fraction_of_best_gain", "-o"),
              ("student after", final, "fraction_of_best_gain", "-o"),
              ("bayesian designer", reports["bayesian"], "fraction_of_best_gain", "--"),
              ("random designer (expected)", final, "random_fraction_of_best_gain", "--")]
    for name, report, key, style in curves:
        if report is None:
            continue
        values, rounds = report["design"][key], report["design"]["rounds_shown"]
        line = left.plot(rounds, [100 * v for v in values["mean"]], style, label=name, markersize=4)[0]
        left.fill_between(rounds, [100 * lo for lo, _ in values["ci95"]], [100 * hi for _, hi in values["ci95"]],
                          color=line.get_color(), alpha=0.15, linewidth=0)
    left.set_xlabel("round shown")
    left.set_ylabel("information gain, % of the best candidate's")
    left.set_xticks(final["design"]["rounds_shown"])
    left.set_title("the designer's choice")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    def designed_by(report):  # the accuracy only: the gains are the left panel's
        metrics = {key: value for key, value in report["metrics"].items() if key != "information_gain"}
        return dict(report, metrics=metrics, extra={**report["extra"], "label": f"designed by {report['extra']['label']}"})

    plot_reports([designed_by(r) for r in (reports.get("before"), final) if r is not None], right,
                 references=[designed_by(reports[k]) for k in ("bayesian", "random")],
                 title="the Bayesian assistant on those dialogues")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
