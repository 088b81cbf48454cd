"""What several commands share: the domain options and loading, the prompt-template option, the --dtype
choices, progress bars and one protocol run with its report."""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import click

CLI_SCRIPT = Path(__file__).resolve().parents[1] / "cli.py"  # what `accelerate launch` runs

DTYPE_CHOICES = ("auto", "float32", "bfloat16")  # eval.lm.loading.DTYPES' names, without importing torch at start-up
# Upper bounds of the counts whose tensors grow with them: far above any use (the study: 100 held-out sets, 10
# dialogues per user, 5 rounds), and low enough that a typo is one error line instead of an allocation failure.
MAX_HELDOUT = 10_000
MAX_DIALOGUES = 10_000
MAX_ROUNDS = 50
# numpy's seed (transformers.set_seed seeds it with the training seed) is 0 to 2**32 - 1
TRAINING_SEED = click.IntRange(0, 2**32 - 1)
TEACHER_HELP = "bayesian: the Bayesian assistant's picks; oracle: the user's choices; soft: bayesian plus its predictive."


class OutputPath(click.Path):
    """A path the command writes: a file (``kind="file"``) or a folder it fills (``kind="dir"``).  Checked when
    the command line is parsed, before any work: every existing ancestor must be a folder, an existing path must
    be of the right kind, and the nearest existing folder must take a new file (a probe file, so that what the
    operating system allows is what counts: permission bits do not stop root, a read-only mount does)."""

    def __init__(self, kind: str = "file"):
        if kind not in ("file", "dir"):
            raise ValueError(f"kind must be file or dir, not {kind!r}")
        super().__init__(file_okay=kind == "file", dir_okay=kind == "dir")
        self.kind = kind

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        problem = output_path_problem(Path(value), self.kind)
        if problem:
            self.fail(f"{value}: {problem}", param, ctx)
        return value


def output_path_problem(path: Path, kind: str) -> str | None:
    """Why ``path`` cannot be written as a ``kind`` ("file" or "dir"), or None."""
    if path.exists():
        if kind == "dir" and not path.is_dir():
            return "is a file, not a folder"
        if kind == "file" and path.is_dir():
            return "is a folder, not a file"
        folder = path if kind == "dir" else path.parent
    else:
        folder = next((parent for parent in path.parents if parent.exists()), Path("."))
        if not folder.is_dir():
            return f"{folder} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror or error})"
    return None


class FiniteFloat(click.types.FloatParamType):
    """A float that is a number: click's FLOAT takes "nan" and "inf", which no option of ours means."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without "nan" (it compares false with both bounds, so the range lets it through) or
    an infinity."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class NonEmptyString(click.types.StringParamType):
    """Text that is not empty: an empty --model or --domain names nothing (and an empty --model used to read as
    no --model at all)."""

    def convert(self, value, param, ctx):
        text = super().convert(value, param, ctx)
        if not text.strip():
            self.fail("is empty; give a value or leave the option out", param, ctx)
        return text


def checked_parameters(command: click.Command) -> click.Command:
    """``command`` with every float option and argument refusing nan and infinities (FiniteFloat,
    FiniteFloatRange), and every free-text option whose default is not empty text refusing empty text
    (NonEmptyString), so that a new option is covered without anyone remembering to."""
    for param in command.params:
        kind = param.type
        if type(kind) is click.types.StringParamType and param.default != "":
            param.type = NonEmptyString()
            continue
        if isinstance(kind, click.FloatRange) and not isinstance(kind, FiniteFloatRange):
            param.type = FiniteFloatRange(kind.min, kind.max, min_open=kind.min_open, max_open=kind.max_open,
                                          clamp=kind.clamp)
        elif isinstance(kind, click.types.FloatParamType) and not isinstance(kind, FiniteFloat):
            param.type = FiniteFloat()
    return command


def explicit(ctx: click.Context, name: str) -> bool:
    """Whether the parameter ``name`` was given on the command line (or by an environment variable), not
    left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP)


def refuse_unused(options: list[tuple[str, str]], reason: str) -> None:
    """A usage error naming each of ``options`` ((parameter name, flag)) that the user gave although it changes
    nothing ``reason`` (e.g. "without --model"): an option that asks for something says when it cannot do it."""
    ctx = click.get_current_context()
    given = [flag for name, flag in options if explicit(ctx, name)]
    if given:
        raise click.UsageError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} nothing {reason}")


def check_resume(resume: bool, checkpoints_dir, fresh_flag: str = "leave out --resume") -> None:
    """``--resume`` with nothing to resume is refused (one line naming the flag and what starts fresh), instead
    of a fresh run that the user did not ask for."""
    from eval.io_utils import last_complete_checkpoint
    from ppl_models.errors import BayesTeachError

    if resume and last_complete_checkpoint(checkpoints_dir) is None:
        raise BayesTeachError(f"--resume: nothing to resume: no complete checkpoint in {checkpoints_dir}; "
                              f"{fresh_flag} to start a fresh run")


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
DEFAULT_LM_CANDIDATES = 4  # eval.design.DEFAULT_LM_CANDIDATES: labelled sets an LM designer reads in one prompt


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
    function = click.option(
        "--designer", "designer_rule", type=click.Choice(["label", "entropy"]), default=None,
        help="With --design lm, how --model chooses: label (shown the rounds so far and --candidates labelled sets, "
             "it names one; the default) or entropy (asked which option the user will choose in each candidate set, "
             "it shows the set its answer is least sure of; score mode only).",
    )(function)
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


def run_and_report(domain, assistant, n_users, seed, n_heldout, elicit_beliefs=False, users=None, design="random",
                   n_candidates=None, designer=None, **ids):
    """(the EvaluationRun, its report) in this process, with a progress bar weighted by prompts (eval/runner);
    ``users``: these user ids instead of ``n_users`` drawn at random; ``design``, ``n_candidates``,
    ``designer``: who chooses the observed option sets (``eval.design``; the designed dialogues are made
    first, round by round, then played like any others)."""
    from ppl_models import pick_users

    from eval.beliefs import belief_levels, belief_sites
    from eval.design import designed_protocol_data
    from eval.report import build_report
    from eval.runner import ProgressMeter, play_users, prompts_per_user

    if elicit_beliefs:
        belief_levels(domain)  # fail before playing on a domain whose preferences are not per-feature weights
    users = pick_users(domain, n_users, seed) if users is None else users
    data, record = designed_protocol_data(domain, users, seed, design, n_candidates or DEFAULT_CANDIDATES, n_heldout,
                                          designer=designer)
    steps = prompts_per_user(domain.n_rounds, n_heldout, len(belief_sites(domain)) if elicit_beliefs else 0)
    progress = ProgressMeter(f"{assistant.name} on {domain.name}", len(users), steps)
    try:
        run = play_users(domain, assistant, data, seed, elicit_beliefs=elicit_beliefs, progress=progress)
        run.design = record
    finally:
        progress.close()
    return run, build_report(run, **ids)


def relaunch_if_asked(accelerate_config, command: str) -> None:
    """Under ``--accelerate-config FILE`` and not yet launched: check FILE, then run this command again under
    ``accelerate launch`` and exit with its code."""
    import os

    if accelerate_config is None or "LOCAL_RANK" in os.environ:
        return
    from distill.training.launch import check_accelerate_config, relaunch, without_option

    check_accelerate_config(accelerate_config)
    arguments = sys.argv[sys.argv.index(command) + 1:]
    sys.exit(relaunch(accelerate_config, str(CLI_SCRIPT), [command, *without_option(arguments, "--accelerate-config")]))
