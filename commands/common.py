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


DEFAULT_CANDIDATES = 100  # eval.design.DEFAULT_CANDIDATES, without importing torch at start-up
DEFAULT_LM_CANDIDATES = 4  # labelled sets an LM designer reads in one prompt


def design_options(function, lm: bool = False):
    function = click.option(
        "--candidates", "n_candidates", type=int, default=None,
        help=f"How many option sets are drawn from the domain in each round for the designer to choose among "
             f"(default {DEFAULT_CANDIDATES}" + (f"; {DEFAULT_LM_CANDIDATES} with --design lm, one labelled set each" if lm else "")
             + ").",
    )(function)
    lm_help = (" or lm (the language model given by --model is shown the rounds so far and --candidates labelled sets, "
               "and names the one to show; --assistant, default bayesian, then recommends)") if lm else ""
    return click.option(
        "--design", default="random", show_default=True,
        help="Who chooses each observed round's option set: random (drawn at random, the study's protocol)"
             + (", " if lm else " or ") + "active (the Bayesian designer: the candidate with the highest exact expected "
             f"information gain about the user, given the rounds so far){lm_help}. The held-out sets are the same "
             "either way.",
    )(function)


def lm_design_options(function):
    return design_options(function, lm=True)


def check_design_options(design, n_candidates, domain=None, study_data=False, has_model=False):
    """Refuse an unknown design, --candidates below 1, or a design that cannot run here: one line, exit 2."""
    from eval.design import check_design

    check_design(design, n_candidates, domain, study_data, has_model)


def prompt_template_option(function):
    return click.option(
        "--prompt-template", type=click.Path(dir_okay=False), default=None,
        help="A prompt template JSON file with the wording of every prompt (see eval/text/templates/default.json, the "
             "default); to match the text a model was trained on.",
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


def run_and_report(domain, assistant, n_users, seed, n_heldout, elicit_beliefs=False, users=None, design="random",
                   n_candidates=None, designer=None, **ids):
    """(the EvaluationRun, its report); ``users``: these user ids instead of ``n_users`` drawn at random;
    ``design``, ``n_candidates``, ``designer``: who chooses the observed option sets (``eval.design``)."""
    from eval.beliefs import belief_levels, elicit_beliefs as elicit
    from eval.design import run_designed_protocol
    from eval.report import build_report

    if elicit_beliefs:
        belief_levels(domain)  # fail before playing on a domain whose preferences are not per-feature weights
    steps = domain.n_rounds * (1 + int(design != "random")) + 1 + int(elicit_beliefs)
    bar = progress_bar(steps, f"{assistant.name} on {domain.name}")
    try:
        run = run_designed_protocol(domain, assistant, design=design, n_candidates=n_candidates or DEFAULT_CANDIDATES,
                                    n_users=n_users, users=users, seed=seed, n_heldout=n_heldout, progress=bar.update,
                                    designer=designer)
        if elicit_beliefs:
            run.beliefs = elicit(run, assistant, bar.update)
    finally:
        bar.close()
    return run, build_report(run, **ids)
