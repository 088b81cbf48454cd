"""Commands that look at a domain and its exact Bayesian assistant: ``domains``, ``simulate``, ``posterior``."""
from __future__ import annotations

import json

import click

from commands.common import (
    MAX_HELDOUT, OutputPath, check_design_options, design_options, domain_options, load_domain, run_and_report,
)


@click.command()
def domains():
    """List the built-in domains and their features."""
    from ppl_models import domain_names, get_domain, hypothesis_space

    for name in domain_names():
        try:
            domain = get_domain(name)
        except Exception as error:  # one broken domain should not hide the others
            click.echo(f"{name}: unavailable ({error})")
            continue
        n_hypotheses = int(len(hypothesis_space(domain).support))
        click.echo(f"{name}: {domain.description} ({n_hypotheses} users, {domain.n_options} options x {domain.n_rounds} rounds)")
        for feature in domain.features:
            values = [feature.text(i) for i in range(len(feature.values))]
            shown = " | ".join(values) if len(values) <= 5 else f"{values[0]} | {values[1]} | ... | {values[-1]}"
            click.echo(f"    {feature.name} ({len(values)} values): {shown}")


@click.command()
@domain_options
@click.option("--assistant", type=click.Choice(["bayesian", "oracle", "random", "cheapest"]), default="bayesian",
              show_default=True, help="Which assistant plays the dialogues.")
@click.option("--users", "n_users", type=click.IntRange(min=1), default=None,
              help="How many users to simulate (drawn at random from the prior's support); default: all of them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for users, options and choices.")
@click.option("--heldout", type=click.IntRange(1, MAX_HELDOUT), default=100, show_default=True,
              help="Held-out option sets per user for the accuracy after each round.")
@design_options
@click.option("--out", type=OutputPath("file"), default=None, help="Write the JSON report to this file.")
def simulate(domain, catalog, user_temperature, user_lapse, assistant, n_users, seed, heldout, design, n_candidates, out):
    """Simulate users talking to an assistant and print its per-round accuracy.

    Follows the study's protocol: after 0..5 observed rounds the assistant recommends on held-out option
    sets; accuracy is the fraction it gets right, with 95% bootstrap intervals over users.  With --design
    active the observed rounds' option sets are chosen by exact expected information gain; the table shows
    each round's gain (nats) beside the accuracy.
    """
    from eval.assistants import make_assistant
    from eval.report import run_table, save_report

    check_design_options(design, n_candidates)
    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    check_design_options(design, n_candidates, loaded)
    _, report = run_and_report(loaded, make_assistant(assistant), n_users, seed, heldout, design=design,
                               n_candidates=n_candidates)
    click.echo(f"{assistant} assistant on {loaded.name}, {report['n_users']} users, seed {seed}")
    click.echo(run_table(report))
    if out:
        click.echo(f"report: {save_report(report, out)}")


@click.command()
@domain_options
@click.option("--dialogue", "dialogue_path", required=True, type=click.Path(dir_okay=False),
              help="A dialogue as JSON: {\"rounds\": [{\"options\": [{feature: value, ...}, ...], \"choice\": N}]} (N from 1).")
@click.option("--json", "json_out", type=OutputPath("file"), default=None,
              help="Also write the marginals after each round to this JSON file.")
def posterior(domain, catalog, user_temperature, user_lapse, dialogue_path, json_out):
    """Show each feature's posterior marginal after each round of a dialogue."""
    from eval.dialogue_io import read_dialogue
    from ppl_models import infer

    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    option_index, choices = read_dialogue(loaded, dialogue_path)
    result = infer(loaded, option_index[None], choices[None], keep_posterior=False)
    summary = []
    for r in range(choices.shape[0] + 1):
        rows = {}
        for site, marginal in result.marginals.items():
            labels = loaded.site_labels.get(site, list(range(marginal.shape[-1])))
            rows[site] = {str(label): round(float(p), 6) for label, p in zip(labels, marginal[0, r])}
        summary.append({"after_rounds": r, "marginals": rows})
        click.echo(f"after {r} round{'s' if r != 1 else ''}:")
        for site, probs in rows.items():
            cells = "  ".join(f"{label:>5}: {p:.3f}" for label, p in probs.items())
            click.echo(f"  {site:<36} {cells}")
    if json_out:
        from eval.io_utils import atomic_write_text

        atomic_write_text(json_out, json.dumps({"domain": loaded.name, "rounds": summary}, indent=2) + "\n")
        click.echo(f"marginals: {json_out}")
