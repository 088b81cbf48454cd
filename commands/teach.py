"""Commands that teach: ``make-data`` (a teaching set), ``train`` (a model on it) and ``distill`` (the whole
loop: data, training, evaluation before and after, transfer)."""
from __future__ import annotations

import math
from pathlib import Path

import click

from commands.common import DEFAULT_LM_CANDIDATES, MAX_DIALOGUES, MAX_HELDOUT, MAX_ROUNDS, DTYPE_CHOICES, TEACHER_HELP, TRAINING_SEED, OutputPath, cache_dir_option, check_resume, domain_options, refuse_unused, load_domain, prompt_template_option, relaunch_if_asked



@click.command("make-data")
@domain_options
@click.option("--task", type=click.Choice(["recommend", "design"]), default="recommend", show_default=True,
              help="What the examples teach: recommend (which option the user will like best, given the rounds so far) "
                   "or design (which of --candidates labelled option sets to show the user next; the answer is the "
                   "Bayesian designer's, the set of highest expected information gain).")
@click.option("--teacher", type=click.Choice(["bayesian", "oracle", "soft"]), default="bayesian", show_default=True, help=TEACHER_HELP)
@click.option("--dialogues", type=click.IntRange(1, MAX_DIALOGUES), default=10, show_default=True, help="Simulated dialogues per teaching user.")
@click.option("--eval-users", type=click.IntRange(min=0), default=100, show_default=True,
              help="Users held out of the teaching data for evaluation (listed in the manifest).")
@click.option("--prefixes", type=click.Choice(["all", "longest"]), default="all", show_default=True,
              help="all: every prefix of a dialogue is an example (the study); longest: one example per whole dialogue "
                   "(the same assistant turns for a trainer that learns every turn, a fifth of the text).")
@click.option("--rounds", type=click.IntRange(1, MAX_ROUNDS), default=None,
              help="Rounds per teaching dialogue (default: the domain's, 5, as in the study).")
@click.option("--candidates", "n_candidates", type=click.IntRange(min=2), default=None,
              help=f"With --task design: labelled option sets in each example's prompt, among which the designer "
                   f"picks (default {DEFAULT_LM_CANDIDATES}, as an LM designer is shown; at least 2, or there is no choice).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; the same seed gives byte-identical files.")
@prompt_template_option
@click.option("--out", "out_dir", required=True, type=OutputPath("dir"), help="Directory for the JSONL file and manifest.json.")
def make_data(domain, catalog, user_temperature, user_lapse, task, teacher, dialogues, eval_users, prefixes, rounds,
              n_candidates, seed, prompt_template, out_dir):
    """Write a teaching set: every prefix of every simulated dialogue as a chat example (JSONL); with --task
    design, every round of dialogues the Bayesian designer chose, answered by the set it showed."""
    if task == "design":
        from distill.design_data import check_design_teacher

        refuse_unused([("prefixes", "--prefixes")], "with --task design (every round of a dialogue is one example)")
        check_design_teacher(teacher)  # oracle: one line, before any work
    else:
        refuse_unused([("n_candidates", "--candidates")], "with --task recommend (it sets the design task's choice)")
    from eval.text.dialogue import load_template

    template = load_template(prompt_template)
    loaded = load_domain(domain, catalog, user_temperature, user_lapse)
    if task == "design":
        from distill.design_data import write_design_set

        n_candidates = DEFAULT_LM_CANDIDATES if n_candidates is None else n_candidates
        manifest = write_design_set(loaded, teacher, out_dir, n_dialogues=dialogues, n_eval_users=eval_users, seed=seed,
                                    n_candidates=n_candidates, n_rounds=rounds, template=template)
        what = f"design examples ({teacher} designer, {n_candidates} candidates)"
    else:
        from distill.teaching_data import write_teaching_set

        manifest = write_teaching_set(loaded, teacher, out_dir, n_dialogues=dialogues, n_eval_users=eval_users, seed=seed,
                                      prefixes=prefixes, n_rounds=rounds, template=template)
        what = f"examples ({teacher})"
    click.echo(f"{manifest['counts']['examples']} {what} from {manifest['counts']['train_users']} users -> {out_dir}")


@click.command()
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
@cache_dir_option
@click.option("--accelerate-config", type=click.Path(dir_okay=False), default=None,
              help="Run this command under `accelerate launch --config_file FILE` (configs/accelerate/ddp.yaml, fsdp.yaml, "
                   "zero3.yaml); the file is checked first.")
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint in --out.")
@click.option("--seed", type=TRAINING_SEED, default=None, help="Seed for initialisation and data order (default 0).")
@click.option("--prompt-template", type=click.Path(dir_okay=False), default=None,
              help="With no --model: the prompt template the teaching set was written with (the embedded student's "
                   "tokenizer is made for its text); default: the one its manifest.json records, else the default.")
@click.option("--out", "out_dir", required=True, type=OutputPath("dir"), help="Directory for checkpoints, logs and the adapter or model.")
def train(data_path, model, domain, recipe, method, dtype, gradient_checkpointing, epochs, max_steps, learning_rate,
          batch_size, kl_weight, budget_minutes, merge, cache_dir, accelerate_config, resume, seed, prompt_template, out_dir):
    """Fine-tune a model on a teaching set (QLoRA by default; `accelerate launch` or --accelerate-config for several GPUs)."""
    import os

    from distill.training.chat_dataset import load_chat_jsonl

    load_chat_jsonl(data_path)  # a bad line is one error now, not a traceback after the model is built
    check_resume(resume, Path(out_dir) / "checkpoints")
    if model is not None and domain is not None:
        raise click.UsageError("--domain is for the embedded student (no --model); a --model learns the teaching set's text as it is")
    if model is None:
        refuse_unused([("merge", "--merge"), ("cache_dir", "--cache-dir")], "for the embedded student (no adapter to merge; it saves the whole model)")
    relaunch_if_asked(accelerate_config, "train")
    overrides = {key: value for key, value in dict(
        method=method, dtype=dtype, gradient_checkpointing=gradient_checkpointing, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, kl_weight=kl_weight, budget_minutes=budget_minutes,
        merge_adapter=merge, seed=seed, gguf_cache_dir=cache_dir).items() if value is not None}
    if model is None:
        if domain is None:
            raise click.UsageError("give --model, or --domain for the embedded student")
        from distill.student.model import StudentConfig, train_student
        from distill.teaching_data import teaching_set_task, teaching_set_template

        template = teaching_set_template(data_path, prompt_template)
        if teaching_set_task(data_path) == "design":  # the student's tokenizer must read designers' prompts
            overrides["design_prompts"] = True
        config = StudentConfig.from_recipe(recipe, **overrides) if recipe else StudentConfig(**overrides)
        # as distill: with a step count and no budget given (here or in the recipe), the steps end the run and
        # shape the schedule, instead of the default 10 minutes' clock
        budget_given = budget_minutes is not None or (recipe and "budget_minutes" in StudentConfig.recipe_values(recipe))
        budget = math.inf if config.max_steps and not budget_given else None
        result = train_student(load_domain(domain), data_path, out_dir, budget_minutes=budget, config=config,
                               seed=config.seed, resume=resume, max_steps=config.max_steps, template=template)
    else:
        if prompt_template:
            raise click.UsageError("--prompt-template is for the embedded student; a --model reads the teaching set's text as it is")
        from distill.training.trainer import train as run_training
        from distill.training.config import TrainConfig

        overrides["model_name_or_path"] = model
        config = TrainConfig.from_recipe(recipe, **overrides) if recipe else TrainConfig(**overrides)
        result = run_training(config, data_path, out_dir, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per process
        click.echo(f"trained: {result.summary()}")


@click.command()
@click.option("--domain", default="hotel", show_default=True, help="A built-in domain name or module:attribute.")
@click.option("--task", type=click.Choice(["recommend", "design"]), default="recommend", show_default=True,
              help="recommend: teach the Bayesian assistant's recommendations (the study); design: teach the student to "
                   "choose which option set to show, among --candidates sets (see --designer), and evaluate it as a "
                   "designer (its set's information gain as a fraction of the best candidate's).")
@click.option("--teacher", type=click.Choice(["bayesian", "oracle", "soft"]), default="bayesian", show_default=True, help=TEACHER_HELP)
@click.option("--candidates", "n_candidates", type=click.IntRange(min=2), default=None,
              help=f"With --task design: candidate sets the designer chooses among each round (default "
                   f"{DEFAULT_LM_CANDIDATES}, what evaluate --design lm shows).")
@click.option("--designer", type=click.Choice(["entropy", "label"]), default=None,
              help="With --task design, how the student chooses: entropy (it is taught the recommendation task and "
                   "shows the candidate set on which it is least sure of the user's choice: for users who choose "
                   "deterministically, that entropy is the set's information gain; the default) or label (it is shown "
                   "the candidates as labelled sets and names one, taught the Bayesian designer's picks).")
@click.option("--teach-design", type=click.Choice(["random", "active"]), default=None,
              help="With --designer entropy, how the teaching dialogues' option sets are chosen: random (the study's "
                   "teaching dialogues; the default) or active (the Bayesian designer's pick among --candidates sets "
                   "a round, the dialogues the student will design).")
@click.option("--model", default=None, help="A causal LM to teach (local path or hub id); omit for the embedded small student.")
@click.option("--method", type=click.Choice(["qlora", "lora", "full"]), default="qlora", show_default=True, help="How --model is fine-tuned.")
@click.option("--budget", "budget_minutes", type=float, default=None,
              help="Training time budget in minutes (must be > 0; default 10, distill.training.config.DEFAULT_BUDGET_MINUTES, "
                   "or none with --max-steps).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Train for this many optimizer steps instead of filling the clock (the schedule follows the steps): "
                   "equal compute whatever else runs on the machine, e.g. to compare teachers; --budget still caps it.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="Precision of --model's weights in training and evaluation; auto is bfloat16 on a GPU and on a CPU with AVX-512 BF16 or AMX, float32 elsewhere (the choice is printed and recorded).")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Recompute --model's activations in the backward pass: less memory, about a third more compute "
                   "(default: on with --teacher soft, whose soft targets add a row per candidate answer to each "
                   "conversation, off otherwise).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Conversations per micro-batch for --model (default: 4 on a GPU; 1 on a CPU, where a step costs "
                   "about its tokens, so that the budget holds more optimizer steps).")
@click.option("--eval-users", type=click.IntRange(min=1), default=None,
              help="Users held out of teaching for evaluation (default: 100, as in the study; 20 for a --model on a "
                   "machine without a CUDA GPU, where the study's evaluation takes hours).")
@click.option("--heldout", type=click.IntRange(1, MAX_HELDOUT), default=None,
              help="Held-out option sets per evaluation user and round (default: 20, as in the study; 5 for a --model "
                   "on a machine without a CUDA GPU).")
@click.option("--dialogues", type=click.IntRange(1, MAX_DIALOGUES), default=None,
              help="Simulated dialogues per teaching user (default: 10, every prefix an example, as in the study, for "
                   "--model; 100 whole dialogues for the embedded student, which memorises fewer; with --task design 10 "
                   "for either, every round an example, except the embedded student with --designer entropy, 100).")
@click.option("--teach-rounds", type=click.IntRange(1, MAX_ROUNDS), default=None,
              help="Rounds per teaching dialogue (default: 5, as in the study, for --model; 6 for the embedded student, "
                   "so that the question after round 5, which evaluation asks, is taught too).")
@click.option("--seed", type=TRAINING_SEED, default=0, show_default=True, help="Seed for data, training and evaluation.")
@click.option("--resume", is_flag=True, help="Resume an interrupted training run in --out.")
@cache_dir_option
@click.option("--eval-domains", default="",
              help="Comma-separated domains to evaluate the model on before and after teaching, e.g. hotel,webshop (the "
                   "teaching domain is always included): one report per domain and a transfer table and plot. The "
                   "embedded student accepts its own domain only.")
@prompt_template_option
@click.option("--out", "out_dir", default=None, type=OutputPath("dir"), help="Output directory (default: runs/<domain>-<teacher>).")
def distill(domain, task, teacher, n_candidates, designer, teach_design, model, method, budget_minutes, max_steps, dtype, gradient_checkpointing, batch_size, eval_users, heldout,
            dialogues, teach_rounds, seed, resume, cache_dir, eval_domains, prompt_template, out_dir):
    """Teach a student the Bayesian strategy: data, training, and evaluation before and after.

    Prints a per-round table (student before, student after, Bayesian assistant, random) and writes
    DIR/data, DIR/train, DIR/report.json and DIR/accuracy.png.  With --eval-domains also DIR/eval/<domain>/report.json
    for every domain, DIR/transfer.json and DIR/transfer.png (rows: model before, model after, Bayesian assistant,
    random; columns: domains).

    With --task design the student learns to choose which option set to show among --candidates sets (with
    --designer entropy, the default, by its own predicted choice on each set, taught the recommendation task; with
    --designer label, by naming a labelled set as the Bayesian designer does): it prints, per round, the information gain of the set each designer showed as a
    % of the best candidate's (student before, student after, Bayesian designer, random designer) and the
    Bayesian assistant's accuracy on the dialogues each designed, and writes DIR/report.json and DIR/design.png
    (default DIR: runs/<domain>-<teacher>-design).
    """
    from distill.pipeline import DistillSettings, run_distill
    from distill.training.config import DEFAULT_BUDGET_MINUTES

    default_out = f"runs/{domain}-{teacher}" + ("-design" if task == "design" else "")
    check_resume(resume, Path(out_dir or default_out) / "train" / "checkpoints")
    if designer == "label" or task != "design":
        refuse_unused([("teach_design", "--teach-design")], "without --task design --designer entropy (it chooses the "
                      "dialogues the entropy rule's recommendation examples are taken from)")
    if task == "design":
        if teacher == "oracle" and designer == "label":
            raise click.UsageError("--task design has no oracle teacher for the label designer: the users' choices say "
                                   "nothing about which set to show (use --teacher bayesian or soft, or --designer entropy)")
        refuse_unused([("teach_rounds", "--teach-rounds"), ("eval_domains", "--eval-domains")],
                      "with --task design (the designer is taught and evaluated on the domain's rounds, in its own domain)")
    else:
        refuse_unused([("n_candidates", "--candidates"), ("designer", "--designer")],
                      "with --task recommend (candidate sets and designers are the design task's)")
    if model is None:
        refuse_unused([("method", "--method"), ("dtype", "--dtype"), ("gradient_checkpointing", "--gradient-checkpointing"),
                       ("batch_size", "--batch-size"), ("cache_dir", "--cache-dir")],
                      "for the embedded student (they set how a --model is trained)")

    if budget_minutes is None:  # with --max-steps the steps end the run, not the clock
        budget_minutes = math.inf if max_steps else DEFAULT_BUDGET_MINUTES
    settings = DistillSettings(domain=domain, task=task, n_candidates=n_candidates or DEFAULT_LM_CANDIDATES,
                               designer=designer or "entropy", teach_design=teach_design or "random",
                               teacher=teacher, model=model, method=method, budget_minutes=budget_minutes,
                               max_steps=max_steps, dtype=dtype, gradient_checkpointing=gradient_checkpointing, batch_size=batch_size,
                               out_dir=out_dir or default_out, seed=seed, n_eval_users=eval_users,
                               n_heldout=heldout, n_dialogues=dialogues, teach_rounds=teach_rounds, resume=resume,
                               prompt_template=prompt_template, eval_domains=eval_domains, gguf_cache_dir=cache_dir)
    if task == "design":
        from distill.design_pipeline import run_design_distill

        run_design_distill(settings, log=click.echo)
    else:
        run_distill(settings, log=click.echo)
