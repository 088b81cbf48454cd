"""The transfer table: one model before and after teaching on one domain, evaluated on several domains, beside
the Bayesian assistant and random on the same users.

    table = build_transfer_table({"flight": {"before": r, "after": r, "bayesian": r, "random": r},
                                  "hotel": {...}}, teaching_domain="flight", teacher="bayesian")
    print(format_transfer_table(table)); plot_transfer_table(table, "runs/x/transfer.png")

Schema (``"schema": "bayes-teach/transfer/v1"``)::

    {"schema", "teaching_domain", "teacher", "domains": [teaching domain first, ...],
     "rows": ["before", "after", "bayesian", "random"] (those present),
     "labels": {row: text},
     "cells": {row: {domain: {"final": float, "final_ci95": [lo, hi], "round1": float, "round1_ci95": [lo, hi],
                              "agreement_final": float | None, "n_users": int, "n_heldout": int}}},
     "reports": {domain: path of that domain's report.json, when written},
     "settings": {...} (the run's settings, when given)}

"final" is the accuracy after the last observed round, "round1" after one observed round (the study's two
numbers per model); each is a mean over users with its 95% bootstrap interval, copied from the reports.
"""
from __future__ import annotations

from pathlib import Path

SCHEMA = "bayes-teach/transfer/v1"
ROWS = ("before", "after", "bayesian", "random")
ROW_LABELS = {"before": "model before", "after": "model after", "bayesian": "Bayesian assistant", "random": "random"}


def _cell(report: dict) -> dict:
    """The transfer-table numbers of one report."""
    accuracy = report["metrics"]["accuracy"]
    agreement = report["metrics"].get("agreement_with_bayesian", {}).get("mean")
    round1 = 1 if len(report["rounds"]) > 1 else 0
    return {
        "final": accuracy["mean"][-1], "final_ci95": list(accuracy["ci95"][-1]),
        "round1": accuracy["mean"][round1], "round1_ci95": list(accuracy["ci95"][round1]),
        "agreement_final": None if agreement is None else agreement[-1],
        "n_users": report["n_users"], "n_heldout": report["n_heldout"],
    }


def build_transfer_table(reports: dict, teaching_domain: str, teacher: str, report_paths: dict | None = None,
                         settings: dict | None = None) -> dict:
    """The transfer table (schema above) of ``reports``: domain -> {row: report}, rows among ROWS (a row
    missing from a domain leaves its cell out); ``settings``: what produced it, recorded as given."""
    if teaching_domain not in reports:
        raise ValueError(f"the teaching domain {teaching_domain!r} has no reports")
    domains = [teaching_domain] + [name for name in reports if name != teaching_domain]
    rows = [row for row in ROWS if any(row in reports[name] for name in domains)]
    cells = {row: {name: _cell(reports[name][row]) for name in domains if row in reports[name]} for row in rows}
    return {
        "schema": SCHEMA, "teaching_domain": teaching_domain, "teacher": teacher, "domains": domains, "rows": rows,
        "labels": {row: ROW_LABELS[row] for row in rows}, "cells": cells,
        "reports": {name: str(path) for name, path in (report_paths or {}).items()},
        "settings": settings or {},
    }


def format_transfer_table(table: dict) -> str:
    """Rows = models, columns = domains; each cell "round 1 -> final accuracy % [final's 95% CI]"."""
    domains = table["domains"]
    headers = ["accuracy %, round 1 -> final [ci95]"] + [
        name + (" (taught)" if name == table["teaching_domain"] else "") for name in domains
    ]
    lines = []
    for row in table["rows"]:
        cells = [table["labels"][row]]
        for name in domains:
            cell = table["cells"][row].get(name)
            cells.append("-" if cell is None else
                         f"{100 * cell['round1']:.1f} -> {100 * cell['final']:.1f} "
                         f"[{100 * cell['final_ci95'][0]:.1f}, {100 * cell['final_ci95'][1]:.1f}]")
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    text = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for line in lines:
        text.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return "\n".join(text)


def plot_transfer_table(table: dict, out) -> Path:
    """Grouped bars: per domain, each row's final-round accuracy with its 95% CI as an error bar, and its
    round-1 accuracy as a hollow marker.  Saved as a PNG at ``out``."""
    import matplotlib.pyplot as plt

    domains, rows = table["domains"], table["rows"]
    width = 0.8 / max(1, len(rows))
    figure, axes = plt.subplots(figsize=(max(4.8, 1.9 * len(domains) + 2), 4.2))
    for k, row in enumerate(rows):
        xs, finals, errors, round1s = [], [], [[], []], []
        for d, name in enumerate(domains):
            cell = table["cells"][row].get(name)
            if cell is None:
                continue
            xs.append(d - 0.4 + width * (k + 0.5))
            finals.append(100 * cell["final"])
            errors[0].append(100 * (cell["final"] - cell["final_ci95"][0]))
            errors[1].append(100 * (cell["final_ci95"][1] - cell["final"]))
            round1s.append(100 * cell["round1"])
        bars = axes.bar(xs, finals, width * 0.9, yerr=errors, capsize=3, label=table["labels"][row],
                        hatch="//" if row in ("bayesian", "random") else None, alpha=0.85)
        axes.plot(xs, round1s, "o", markerfacecolor="none", color=bars.patches[0].get_facecolor() if bars.patches else None,
                  markeredgecolor="black", markersize=5)
    axes.plot([], [], "o", markerfacecolor="none", markeredgecolor="black", label="after round 1")
    axes.set_xticks(range(len(domains)))
    axes.set_xticklabels([name + ("\n(taught)" if name == table["teaching_domain"] else "") for name in domains])
    axes.set_ylabel("accuracy after the final round (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"transfer: taught on {table['teaching_domain']} ({table['teacher']} teacher)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(5, len(rows) + 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    from eval.io_utils import atomic_save_figure

    atomic_save_figure(figure, out, dpi=120)
    plt.close(figure)
    return out
