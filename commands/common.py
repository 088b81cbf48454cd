"""What several commands share: the domain options and loading, the prompt-template option, the --dtype
choices, progress bars and one protocol run with its report."""
from __future__ import annotations

import sys

import click

DTYPE_CHOICES = ("auto", "float32", "bfloat16")  # eval.lm.loading.DTYPES' names, without importing torch at start-up
TEACHER_HELP = "bayesian: the Bayesian assistant's picks; oracle: the user's choices; soft: bayesian plus its predictive."


def domain_options(function):
    function = click.option(
        "--user-lapse", type=click.FloatRange(0, 1, max_open=True), default=None,
        help="Probability that a simulated user picks at random (a noisy user); default 0.",
    )(function)
    function = click.option(
        "--user-temperature", type=click.FloatRange(min=0), default=None,
        help="Softmax temperature of a noisy simulated user; 0 (default) is the study's deterministic user.",
    )(function)
    function = click.option(
        "--catalog", type=click.Path(dir_okay=False), default=None,
        help="A product catalogue (CSV or JSONL) for the webshop domain, instead of the built-in one.",
    )(function)
    return click.option(
        "--domain", default="flight", show_default=True,
        help="A built-in domain name (see `domains`) or a user's domain as module:attribute.",
    )(function)


def prompt_template_option(function):
    return click.option(
        "--prompt-template", type=click.Path(dir_okay=False), default=None,
        help="A prompt template JSON file with the wording of every prompt (see eval/text/templates/default.json, the "
             "default); to match the text a model was trained on.",
    )(function)


def cache_dir_option(function):
    return click.option(
        "--cache-dir", type=click.Path(file_okay=False), default=None,
        help="Folder for the cached Hugging Face conversions of GGUF models that 4-bit loading (QLoRA) needs; "
             "default: $BAYES_TEACH_CACHE, else ~/.cache/bayes-teach.",
    )(function)


def load_domain(domain, catalog=None, user_temperature=None, user_lapse=None):
    from ppl_models import get_domain

    if catalog is not None:
        if domain != "webshop":
            raise click.UsageError("--catalog only applies to --domain webshop")
        from ppl_models.domains.webshop import webshop_domain

        loaded = webshop_domain(catalog_path=catalog)
    else:
        loaded = get_domain(domain)
    if user_temperature is not None or user_lapse is not None:
        loaded = loaded.with_user(temperature=user_temperature, lapse=user_lapse)
    return loaded


def progress_bar(total, description):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, file=sys.stderr)


def run_and_report(domain, assistant, n_users, seed, n_heldout, elicit_beliefs=False, users=None, **ids):
    """(the EvaluationRun, its report); ``users``: these user ids instead of ``n_users`` drawn at random."""
    from eval.beliefs import belief_levels, elicit_beliefs as elicit
    from eval.protocol import run_protocol
    from eval.report import build_report

    if elicit_beliefs:
        belief_levels(domain)  # fail before playing on a domain whose preferences are not per-feature weights
    bar = progress_bar(domain.n_rounds + 1 + int(elicit_beliefs), f"{assistant.name} on {domain.name}")
    try:
        run = run_protocol(domain, assistant, n_users=n_users, users=users, seed=seed, n_heldout=n_heldout,
                           progress=bar.update)
        if elicit_beliefs:
            run.beliefs = elicit(run, assistant, bar.update)
    finally:
        bar.close()
    return run, build_report(run, **ids)
