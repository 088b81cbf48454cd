"""Transfer in the teaching loop: the taught model evaluated before and after teaching on other domains too,
one report per domain and a transfer table (``eval/transfer_report.py``).

``run_distill`` calls, in order: ``eval_domains_for`` (before any work: unknown domains and the embedded
student's refusal), ``evaluate_domains`` (the model before teaching, then after, on each other domain) and
``write_transfer`` (OUT/eval/<domain>/report.json and accuracy.png, OUT/transfer.json, OUT/transfer.png).

On a domain other than the teaching one the evaluation users are drawn from the whole prior's support
(``pick_users`` with the run's seed): none of them was taught there.  On the teaching domain they are the
users held out of the teaching set, as in the run's own report.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from eval.assistants import BayesianAssistant, RandomAssistant
from eval.runner import evaluate_users
from eval.report import build_report, plot_reports, save_report
from eval.student_card import StudentDomainError
from eval.transfer_report import build_transfer_table, format_transfer_table, plot_transfer_table
from ppl_models import get_domain, pick_users

EMBEDDED_TRANSFER_REFUSAL = (
    "the embedded student cannot be evaluated on {others} (taught on {domain}): its tokenizer and option-line "
    "embeddings are fixed features of {domain}'s own values, so on another domain it would either read a renamed "
    "copy of the same task (the same embeddings under other names) or words it has never seen; teach a pretrained "
    "model with --model to measure transfer"
)


def parse_domain_list(text) -> list[str]:
    """Domain names from "a,b" (or a list of names), stripped, empties and repeats dropped, order kept."""
    names = text.split(",") if isinstance(text, str) else list(text or [])
    return list(dict.fromkeys(name.strip() for name in names if name and name.strip()))


def eval_domains_for(teaching_domain: str, eval_domains, embedded: bool) -> list[str]:
    """The domains to evaluate on (as given: names or module:attribute), the teaching domain first (always
    included, once); every one is loaded now, so an
    unknown one fails before any work (UnknownDomainError, a ValueError).  With the embedded student any domain
    other than the teaching one is a StudentDomainError saying why and pointing to --model.  Empty ``eval_domains``:
    [] (no transfer outputs)."""
    names = parse_domain_list(eval_domains)
    if not names:
        return []
    domains = [get_domain(name) for name in names]  # raises on an unknown name
    teaching = get_domain(teaching_domain)
    others = {d.name: name for d, name in zip(domains, names) if d.name != teaching.name}  # name -> how it was given
    if embedded and others:
        raise StudentDomainError(EMBEDDED_TRANSFER_REFUSAL.format(others=", ".join(others), domain=teaching.name))
    return [teaching_domain] + list(others.values())


def evaluate_domains(assistant, domain_names, n_users: int, n_heldout: int, seed: int, label: str, log,
                     model: str | None = None) -> dict:
    """{domain name: report} of ``assistant`` on each domain in ``domain_names`` (names or module:attribute; users
    from ``pick_users``, see the module docstring)."""
    reports = {}
    for spec in domain_names:
        domain = get_domain(spec)
        name = domain.name
        start = time.perf_counter()
        users = pick_users(domain, n_users, seed)
        run = evaluate_users(domain, assistant, users, seed, n_heldout)  # evaluate's path (eval/runner)
        reports[name] = build_report(run, model=model, mode="score" if model else None, extra={"label": label})
        log(f"evaluated {label} on {name} in {time.perf_counter() - start:.0f} s")
    return reports


def write_transfer(out_dir, teaching_domain: str, teacher: str, teaching_reports: dict, other_domains: list,
                   before: dict, after: dict, n_users: int, n_heldout: int, seed: int, log,
                   settings: dict | None = None) -> dict:
    """Write every domain's report and the transfer table; returns the table.

    ``teaching_domain``: its name; ``teaching_reports``: the run's own reports there ({"after", "bayesian",
    "random", and "before" when evaluated}); ``other_domains``: the other domains (names, module:attribute or
    Domain objects); ``before``/``after``: {domain name: report} on them (``evaluate_domains``).  The
    Bayesian assistant and random are evaluated here on the other domains' users.  ``settings`` (the run's)
    is recorded in transfer.json."""
    out = Path(out_dir)
    per_domain = {teaching_domain: dict(teaching_reports)}
    for domain in [get_domain(spec) for spec in other_domains]:
        name = domain.name
        per_domain[name] = {"after": after[name]}
        if name in before:
            per_domain[name]["before"] = before[name]
        for row, assistant in (("bayesian", BayesianAssistant()), ("random", RandomAssistant())):
            per_domain[name][row] = evaluate_domains(assistant, [domain], n_users, n_heldout, seed, assistant.name,
                                                     log)[name]
    paths = {}
    for name, rows in per_domain.items():
        report = dict(rows["after"])
        report["extra"] = {**report.get("extra", {}), "taught_on": teaching_domain, "teacher": teacher,
                           "curves": {row: r["metrics"] for row, r in rows.items() if row != "after"}}
        paths[name] = save_report(report, out / "eval" / name / "report.json")
        references = [rows[row] for row in ("before", "bayesian", "random") if row in rows]
        plot_reports([report], out / "eval" / name / "accuracy.png", references=references,
                     title=f"{name}: taught on {teaching_domain} ({teacher})")
    table = build_transfer_table(per_domain, teaching_domain, teacher, paths, settings)
    from eval.io_utils import atomic_write_text

    atomic_write_text(out / "transfer.json", json.dumps(table, indent=2) + "\n")
    plot_transfer_table(table, out / "transfer.png")
    log(format_transfer_table(table))
    log(f"transfer: {out / 'transfer.json'}, {out / 'transfer.png'}; per domain: {out / 'eval'}/<domain>/report.json")
    return table
