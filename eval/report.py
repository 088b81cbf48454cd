"""Reports: one JSON schema for every run (so runs can be compared and overlaid), a table and plots.

Schema (``"schema": "bayes-teach/report/v1"``)::

    {"schema", "created", "domain", "assistant", "model", "adapter", "mode", "n_users", "n_heldout",
     "seed", "user_model": {"temperature", "lapse"}, "versions": {package: version},
     "rounds": [0, 1, ..., R],                 # observed rounds before the held-out predictions
     "accuracy": [R+1 floats], "ci95": [[lo, hi], ...],      # accuracy, repeated at top level
     "metrics": {name: {"mean": [R+1], "ci95": [[lo, hi], ...]}},   # accuracy, agreement_with_bayesian,
                                                   # failure_rate, log_loss, kl_from_bayesian, brier_vs_bayesian, ...
     "failures": {"unparseable_answers": int, "unparseable_belief_answers": int (with beliefs)},
     "beliefs": {"elicited", "scale", "levels", "distribution", "questions"},   # only when elicited
     "study_data": {"kind", "files", "users", "exact_bayesian_assistant", "empty_posterior", "notes"},
     "design": {"design", "candidates", "rounds_shown", "information_gain_nats", "total_information_gain_nats",
                "candidate_mean_gain_nats", "best_candidate_gain_nats", "fraction_of_best_gain",
                "random_fraction_of_best_gain", "picks_per_label", "designer" (active, lm),
                "unparseable_design_answers" (lm)},
                                                   # simulated dialogues: who chose the shown sets
                                                   # only for a replay of released files (eval/study/replay.py)
     "extra": {...}}                              # anything a command adds (e.g. training summaries)

With belief elicitation (``eval/beliefs/elicitation.py``) ``metrics`` also holds ``belief_error``, ``belief_tv``
(distributions only), ``belief_sign_agreement``, ``implied_accuracy``, ``consistency`` and
``belief_failure_rate``; a round where a metric is undefined for every user has ``null`` mean and interval.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
from pathlib import Path

from eval.io_utils import atomic_save_figure, atomic_write_text
from ppl_models.errors import BayesTeachError, read_user_text

from eval.beliefs.elicitation import belief_report
from eval.metrics import summarise_run
from eval.protocol import EvaluationRun

SCHEMA = "bayes-teach/report/v1"
NATS_METRICS = ("information_gain",)  # per-round metrics in nats, drawn as they are (the others are fractions, drawn as %)
VERSIONED_PACKAGES = ("bayes-teach", "torch", "pyro-ppl", "transformers", "peft", "bitsandbytes", "numpy")


def package_versions() -> dict:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_report(run: EvaluationRun, *, model=None, adapter=None, mode=None, extra_metrics=None, extra=None) -> dict:
    """The report of an evaluation run (see the module docstring for the schema)."""
    metrics = summarise_run(run)
    metrics.update(extra_metrics or {})
    n_rounds = run.picks.shape[1] - 1
    failures = {"unparseable_answers": int(run.failures.sum())}
    if run.beliefs is not None:
        failures["unparseable_belief_answers"] = int(run.beliefs.failures.sum())
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "domain": run.domain.name,
        "assistant": run.assistant,
        "model": model,
        "adapter": adapter,
        "mode": mode,
        "n_users": int(len(run.users)),
        "n_heldout": int(run.heldout_choices.shape[1]),
        "seed": run.seed,
        "user_model": {"temperature": run.user_domain.temperature, "lapse": run.user_domain.lapse},
        "versions": package_versions(),
        "rounds": list(range(n_rounds + 1)),
        "accuracy": metrics["accuracy"]["mean"],
        "ci95": metrics["accuracy"]["ci95"],
        "metrics": metrics,
        "failures": failures,
        "extra": extra or {},
    }
    if run.beliefs is not None:
        report["beliefs"] = belief_report(run)
    if run.design is not None:
        report["design"] = design_report(run)
    return report


def design_report(run: EvaluationRun) -> dict:
    """Who chose the observed option sets and the information gain (nats) of each round's shown set given
    the rounds before it (``rounds_shown``: 1..R), per-user means with 95% intervals; for the active design
    also the mean gain of the round's candidates (what a set drawn at random from them would gain)."""
    from eval.metrics import summarise

    record = run.design
    out = {
        "design": record.design,
        "candidates": record.n_candidates,
        "rounds_shown": list(range(1, record.information_gain.shape[1] + 1)),
        "information_gain_nats": summarise(record.information_gain, run.seed),
        "total_information_gain_nats": summarise(record.information_gain.sum(1, keepdim=True), run.seed),
    }
    if record.candidate_gain is not None:
        out["candidate_mean_gain_nats"] = summarise(record.candidate_gain, run.seed)
    if record.best_gain is not None:
        out["best_candidate_gain_nats"] = summarise(record.best_gain, run.seed)
    fractions = record.fraction_of_best()
    if fractions is not None:  # 1.0 = the Bayesian designer's pick; a set drawn at random expects the second
        out["fraction_of_best_gain"] = summarise(fractions[0], run.seed)
        out["random_fraction_of_best_gain"] = summarise(fractions[1], run.seed)
    if record.picks is not None and record.n_candidates:  # how often each label was shown: a designer that
        # names one label whatever the sets has not learned to tell them apart
        out["picks_per_label"] = record.picks.flatten().bincount(minlength=record.n_candidates).tolist()
    if record.designer is not None:
        out["designer"] = record.designer
    if record.failures is not None:
        out["unparseable_design_answers"] = int(record.failures.sum())
    return out


def save_report(report: dict, path) -> Path:
    """Write ``report`` as JSON atomically (a temp file, then rename)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")  # serialised first: a failure leaves the old file
    return path


def load_report(path, metric: str | None = None) -> dict:
    """A report.json written by ``save_report``, checked as far as it is read (``plot_reports``, ``run_table``);
    with ``metric``, the report must have that metric to plot.  A file that is not one raises BayesTeachError
    naming the file and the key."""
    path = Path(path)
    try:
        report = json.loads(read_user_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"no report at {path}") from None
    except json.JSONDecodeError as error:
        raise BayesTeachError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(report, dict) or "accuracy" not in report or "rounds" not in report:
        raise BayesTeachError(f"{path} is not a bayes-teach report (no 'accuracy'/'rounds')")
    _check_report(report, path, metric)
    return report


def _is_number(value, none_ok: bool = False) -> bool:
    return (value is None and none_ok) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_report(report: dict, path: Path, metric: str | None) -> None:
    def fail(problem: str):
        raise BayesTeachError(f"{path}: {problem}")

    rounds = report["rounds"]
    if not isinstance(rounds, list) or not rounds or not all(_is_number(r) and r == int(r) for r in rounds):
        fail("'rounds' must be a list of round numbers")
    n = len(rounds)
    if not isinstance(report["accuracy"], list) or len(report["accuracy"]) != n or \
            not all(_is_number(a, none_ok=True) for a in report["accuracy"]):
        fail(f"'accuracy' must be {n} numbers, one per round")
    for key in ("metrics", "extra"):
        if key in report and not isinstance(report[key], dict):
            fail(f"{key!r} must be an object")
    metrics = report.get("metrics", {})
    if metric is not None and metric not in metrics:
        fail(f"no metric {metric!r}; it has: {', '.join(sorted(map(str, metrics))) or 'none'}")
    for name in [metric] if metric is not None else []:
        values = metrics[name]
        mean, ci = (values.get("mean"), values.get("ci95")) if isinstance(values, dict) else (None, None)
        if not isinstance(mean, list) or len(mean) != n or not all(_is_number(v, none_ok=True) for v in mean):
            fail(f"metrics.{name}.mean must be {n} numbers, one per round")
        if not isinstance(ci, list) or len(ci) != n or not all(
                c is None or (isinstance(c, list) and len(c) == 2 and all(_is_number(v) for v in c)) for c in ci):
            fail(f"metrics.{name}.ci95 must be {n} [low, high] pairs (or null), one per round")
    label = report.get("extra", {}).get("label")
    if label is not None and not isinstance(label, str):
        fail("extra.label must be text")


def report_label(report: dict) -> str:
    if report.get("model"):
        label = Path(str(report["model"])).name or str(report["model"])
        if report.get("adapter"):
            label += f" + {Path(str(report['adapter'])).name}"
        return report.get("extra", {}).get("label", label)
    return report.get("extra", {}).get("label", report.get("assistant", "?"))


def format_table(columns: dict, rounds, raw=()) -> str:
    """A per-round table: ``columns`` maps a header to per-round values in [0, 1] (shown as %), except the
    headers in ``raw``, shown as they are (3 decimals)."""
    headers = ["round"] + list(columns)
    widths = [max(5, len(h)) for h in headers]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    for i, r in enumerate(rounds):
        cells = [str(r)] + [
            "-" if values is None or values[i] is None else f"{values[i]:.3f}" if header in raw else f"{100 * values[i]:.1f}"
            for header, values in columns.items()
        ]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def run_table(report: dict) -> str:
    """The on-screen table of one report: accuracy with its CI, and agreement with the Bayesian assistant."""
    metrics = report["metrics"]
    columns = {
        "accuracy %": report["accuracy"],
        "ci95 low": [lo for lo, _ in report["ci95"]],
        "ci95 high": [hi for _, hi in report["ci95"]],
    }
    if "agreement_with_bayesian" in metrics:
        columns["agree w/ bayes %"] = metrics["agreement_with_bayesian"]["mean"]
    raw = ()
    if "information_gain" in metrics:  # the gain of round r's shown set, beside the accuracy after r rounds
        columns["gain of round (nats)"] = metrics["information_gain"]["mean"]
        raw = ("gain of round (nats)",)
    table = format_table(columns, report["rounds"], raw=raw)
    if "design" in report:
        design = report["design"]
        table = (f"design: {design['design']}" + (f", best of {design['candidates']} candidates a round" if design.get("candidates") else "")
                 + "\n" + table)
    if "belief_error" in metrics:
        table += "\n\nstated beliefs (error: mean |stated - posterior-mean weight|):\n" + belief_table(report)
    return table


def belief_table(report: dict) -> str:
    """The per-round belief metrics of a report with elicited beliefs."""
    metrics = report["metrics"]
    error = metrics["belief_error"]
    columns = {
        "belief error": error["mean"],
        "ci95 low": [None if c is None else c[0] for c in error["ci95"]],
        "ci95 high": [None if c is None else c[1] for c in error["ci95"]],
        "sign agree %": metrics["belief_sign_agreement"]["mean"],
        "implied acc %": metrics["implied_accuracy"]["mean"],
        "consistency %": metrics["consistency"]["mean"],
    }
    if any(metrics["belief_failure_rate"]["mean"]):
        columns["failed %"] = metrics["belief_failure_rate"]["mean"]
    return format_table(columns, report["rounds"], raw=("belief error", "ci95 low", "ci95 high"))


def plot_reports(reports, out=None, metric: str = "accuracy", references=None, title=None):
    """Overlay ``metric`` against round for several reports, with 95% CI bands.

    ``references``: optional reports drawn dashed (the Bayesian assistant and random, as in the study's
    figures).  ``out``: a path to save a PNG, or a matplotlib Axes to draw on.  Returns the figure."""
    import matplotlib.pyplot as plt

    if out is None or isinstance(out, (str, Path)):
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
    else:
        axes, figure = out, out.figure
    scale = 1 if metric in NATS_METRICS else 100
    for report, style in [(r, "-o") for r in reports] + [(r, "--") for r in (references or [])]:
        values = report["metrics"].get(metric)
        if values is None:
            continue
        rounds, nan = report["rounds"], float("nan")
        mean = [nan if v is None else scale * v for v in values["mean"]]
        ci = [(nan, nan) if c is None else c for c in values["ci95"]]
        line = axes.plot(rounds, mean, style, label=report_label(report), markersize=4)[0]
        axes.fill_between(
            rounds, [scale * lo for lo, _ in ci], [scale * hi for _, hi in ci],
            color=line.get_color(), alpha=0.15, linewidth=0,
        )
    gains = [(r, r["metrics"]["information_gain"]) for r in reports if "information_gain" in r["metrics"]]
    if metric == "accuracy" and gains:  # each round's shown set's information gain, on a second axis
        twin = axes.twinx()
        for report, values in gains:
            rounds = report["rounds"]
            twin.plot(rounds, [float("nan") if v is None else v for v in values["mean"]], ":s", markersize=3,
                      label=f"{report_label(report)}: information gain")
        twin.set_ylabel("information gain of the round's set (nats)")
        twin.set_ylim(bottom=0)
        twin.legend(fontsize=7, loc="lower right")
    axes.set_xlabel("observed rounds")
    axes.set_ylabel(f"{metric.replace('_', ' ')} ({'nats' if metric in NATS_METRICS else '%'})")
    axes.set_xticks(reports[0]["rounds"] if reports else [])
    axes.set_title(title or f"{metric.replace('_', ' ')} on held-out option sets")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        atomic_save_figure(figure, out, dpi=120)
        plt.close(figure)
    return figure
