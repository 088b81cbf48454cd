"""The whole teaching loop, in named stages: teaching data, the student before training, training, the
student after training, and the references (Bayesian assistant, random) on the same held-out users.

    run_distill(DistillSettings(domain="hotel", teacher="bayesian", out_dir="runs/hotel"))

``out_dir`` receives ``data/`` (JSONL + manifest), ``train/`` (checkpoints, logs, the adapter or model),
``report.json`` (the student after training, with the other curves under ``extra``) and ``accuracy.png``; with
``eval_domains`` also ``eval/<domain>/report.json``, ``transfer.json`` and ``transfer.png`` (``distill/transfer.py``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.assistants import BayesianAssistant, RandomAssistant
from eval.design import DEFAULT_LM_CANDIDATES
from eval.text.dialogue import load_template
from eval.lm import load_causal_lm, prepare_loaded_lm
from eval.lm.loading import auto_dtype, dtype_from_name
from eval.lm.assistant import LMAssistant
from eval.lm.designer import DESIGNER_RULES
from eval.lm.threads import choose_cpu_threads
from eval.runner import evaluate_users
from eval.report import build_report, format_table, plot_reports, save_report
from eval.student_card import read_student_card
from ppl_models import get_domain

from distill.teaching_data import (
    EMBEDDED_DIALOGUES_PER_USER, STUDY_DIALOGUES_PER_USER, TEACHING_DESIGNS, write_teaching_set,
)
from distill.training.config import DEFAULT_BUDGET_MINUTES, ConfigError, TrainConfig, default_batch_size
from distill.transfer import eval_domains_for, evaluate_domains, write_transfer


TASKS = ("recommend", "design")
# The evaluation of the study: 100 held-out users, 20 option sets per user and round (``--eval-users``, ``--heldout``).
STUDY_EVAL_USERS = 100
STUDY_HELDOUT = 20
# A --model's evaluation on a machine without a CUDA GPU, where what it is not given defaults to these: the
# study's size scores 12,000 prompts of up to 900 tokens before training and again after, hours on a CPU,
# while these keep the whole default run (data, conversion, both evaluations, the 10-minute training budget)
# near half an hour for a 135M model on two cores.  More users rather than more option sets per user: the
# intervals are over users, and one user's option sets share that user's preferences, so another user narrows
# them more than another set of the same user.
CPU_MODEL_EVAL_USERS = 20
CPU_MODEL_HELDOUT = 5


@dataclass
class DistillSettings:
    domain: str = "hotel"
    teacher: str = "bayesian"  # bayesian | oracle | soft (the design task: bayesian | soft)
    # recommend: the study's task (run_distill); design: choosing which option set to show among n_candidates
    # labelled sets (distill.design_pipeline.run_design_distill)
    task: str = "recommend"
    n_candidates: int = DEFAULT_LM_CANDIDATES  # the design task: candidate sets a round
    # The design task's rule (eval.lm.designer): entropy (taught the recommendation task, it shows the set whose
    # choice it is least sure of: the information gain for users who choose deterministically) or label (taught
    # the Bayesian designer's pick among labelled sets, it names one).  Entropy by default: the embedded student
    # taught the label rule designs no better than random (see docs/guide/active_elicitation.md).
    designer: str = "entropy"
    # With the entropy rule: how the teaching dialogues' option sets are chosen (teaching_data.TEACHING_DESIGNS).
    # random (the study's teaching dialogues) by default: a designed set is one whose answer is nearly a coin
    # flip, so dialogues of designed sets only (active) teach with a weaker signal, and a student taught on them
    # can stall at its starting loss for thousands of steps.
    teach_design: str = "random"
    model: str | None = None  # a Hugging Face causal LM; None = the embedded student
    method: str = "qlora"  # for --model: qlora | lora | full
    budget_minutes: float = DEFAULT_BUDGET_MINUTES  # training wall-clock budget (math.inf: none)
    # Optimizer steps to train for instead of filling the budget (the schedule then follows the steps): equal
    # compute on a machine whose speed varies, e.g. to compare teachers at a fixed budget of steps.
    max_steps: int | None = None
    # For --model: precision of the weights in training and in evaluation ("auto": bfloat16 on a GPU that has it
    # and on a CPU with AVX-512 BF16 or AMX, float32 elsewhere), and activation recomputation in training (less memory, ~30-40% more compute).
    dtype: str = "auto"
    # None: on for a --model taught soft targets, off otherwise (uses_gradient_checkpointing)
    gradient_checkpointing: bool | None = None
    # For --model: conversations per micro-batch; None: 4 on a GPU, 1 on a CPU (config.default_batch_size).
    batch_size: int | None = None
    out_dir: str = "runs/distill"
    seed: int = 0
    # Dialogues per teaching user.  None: STUDY_DIALOGUES_PER_USER for a --model (every prefix an example),
    # EMBEDDED_DIALOGUES_PER_USER for the embedded student (whole dialogues only; see teaching_data).
    n_dialogues: int | None = None
    # Rounds per teaching dialogue.  None: the domain's (5, as in the study) for a --model; one more for the
    # embedded student.  Evaluation asks for a recommendation after 0..5 observed rounds, so the last question
    # is a 6th round; a from-scratch student never taught one answers it unreliably (see experiments/README.md).
    teach_rounds: int | None = None
    # Users held out of the teaching data for evaluation, and held-out option sets per evaluation user and round.
    # None: the study's (STUDY_EVAL_USERS x STUDY_HELDOUT), or for a --model on a machine without a CUDA GPU the
    # CPU's (evaluation_size).
    n_eval_users: int | None = None
    n_heldout: int | None = None
    max_train_users: int | None = None  # cap on teaching users (quick runs)
    resume: bool = False
    kl_weight: float | None = None  # None: teaching_kl_weight's default
    eval_before: bool = True
    prompt_template: str | None = None  # a prompt template JSON file (eval/text/prompt_template.py); None: the default
    # Domains to evaluate the model on before and after teaching ("hotel,webshop"; the teaching domain
    # is always included): OUT/eval/<domain>/report.json, OUT/transfer.json and .png (distill/transfer.py).
    # Empty: the teaching domain only, no transfer outputs.  The embedded student accepts its own domain only.
    eval_domains: str = ""
    # For a GGUF --model with QLoRA: the cache root of its Hugging Face conversion (eval.lm.convert); None:
    # $BAYES_TEACH_CACHE, else ~/.cache/bayes-teach.
    gguf_cache_dir: str | None = None

    @property
    def uses_gradient_checkpointing(self) -> bool:
        """``gradient_checkpointing``, else on for a --model with soft targets: each soft target adds one row per
        candidate answer, a copy of its conversation so far, so a soft example is a batch of about 16 rows of up
        to ~900 tokens; their activations outgrow 24 GB for a 135M model, recomputed they take ~4 GB."""
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return self.model is not None and self.teaching_kl_weight > 0

    @property
    def teaching_kl_weight(self) -> float:
        """The KL loss's weight on soft targets: ``kl_weight``, else 1.0 with the soft teacher and 0 otherwise."""
        if self.kl_weight is not None:
            return self.kl_weight
        return 1.0 if self.teacher == "soft" else 0.0

    def __post_init__(self) -> None:
        if not self.budget_minutes > 0:
            raise ConfigError(f"budget_minutes: the budget must be > 0 minutes, got {self.budget_minutes}")
        if self.model is None and (self.dtype != "auto" or self.gradient_checkpointing or self.batch_size is not None):
            raise ConfigError("dtype, gradient checkpointing and batch size apply to --model; the embedded student "
                              "trains in float32 with its own batches")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.teach_design not in TEACHING_DESIGNS:
            raise ConfigError(f"unknown teaching design {self.teach_design!r}; choose from {', '.join(TEACHING_DESIGNS)}")
        if self.designer not in DESIGNER_RULES:
            raise ConfigError(f"unknown designer {self.designer!r}; choose from {', '.join(DESIGNER_RULES)}")
        if self.task == "design" and self.n_candidates < 2:
            raise ConfigError(f"the design task needs at least 2 candidate sets a round, got {self.n_candidates}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")


def evaluation_size(settings: DistillSettings, on_gpu: bool | None = None) -> tuple[int, int, str | None]:
    """(evaluation users, held-out sets per user and round, a line saying why when the CPU's sizes replace the
    study's): explicit values win; a --model on a machine without a CUDA GPU gets CPU_MODEL_EVAL_USERS x
    CPU_MODEL_HELDOUT for what is not given; everything else the study's."""
    if on_gpu is None:
        on_gpu = torch.cuda.is_available()
    users, heldout = settings.n_eval_users, settings.n_heldout
    if settings.model is None or on_gpu or (users is not None and heldout is not None):
        return (STUDY_EVAL_USERS if users is None else users), (STUDY_HELDOUT if heldout is None else heldout), None
    users = CPU_MODEL_EVAL_USERS if users is None else users
    heldout = CPU_MODEL_HELDOUT if heldout is None else heldout
    return users, heldout, (f"on a CPU, --model is evaluated on {users} users x {heldout} held-out sets (the study: "
                            f"--eval-users {STUDY_EVAL_USERS} --heldout {STUDY_HELDOUT})")


def _evaluate(domain, assistant, users, settings: DistillSettings, label: str, log):
    start = time.perf_counter()
    run = evaluate_users(domain, assistant, users, settings.seed, settings.n_heldout)  # evaluate's path (eval/runner)
    report = build_report(run, extra={"label": label})
    log(f"evaluated {label} in {time.perf_counter() - start:.0f} s")
    return report


def write_recommendation_set(settings: DistillSettings, domain, out_dir, template, n_rounds: int | None = None,
                             design: str = "random") -> dict:
    """The recommendation task's teaching set for ``settings``' student in ``out_dir`` (its manifest): whole
    dialogues only, EMBEDDED_DIALOGUES_PER_USER a user, for the embedded student; every prefix of
    STUDY_DIALOGUES_PER_USER a user for a --model (``settings.n_dialogues`` wins)."""
    embedded = settings.model is None
    n_dialogues = settings.n_dialogues or (EMBEDDED_DIALOGUES_PER_USER if embedded else STUDY_DIALOGUES_PER_USER)
    return write_teaching_set(
        domain, settings.teacher, out_dir, n_dialogues=n_dialogues,
        n_eval_users=settings.n_eval_users, seed=settings.seed, max_train_users=settings.max_train_users,
        prefixes="longest" if embedded else "all", n_rounds=n_rounds, template=template,
        design=design, n_candidates=settings.n_candidates,
    )


def run_distill(settings: DistillSettings, log=print) -> dict:
    """Run the loop; returns the final report (also written to ``out_dir/report.json``).  The design task has
    its own loop, ``distill.design_pipeline.run_design_distill``."""
    if settings.task != "recommend":
        raise ConfigError(f"run_distill teaches the recommendation task; task {settings.task!r} runs with "
                          "distill.design_pipeline.run_design_distill")
    domain = get_domain(settings.domain)
    template = load_template(settings.prompt_template)  # checked before any work
    settings = with_evaluation_size(settings, log)
    eval_domains = eval_domains_for(settings.domain, settings.eval_domains, embedded=settings.model is None)  # fails now
    others, before_elsewhere = eval_domains[1:], {}  # the transfer domains, and the model before teaching there
    out = Path(settings.out_dir)

    # ---- 1. teaching data (users held out for evaluation never appear) -----------------------------
    embedded = settings.model is None
    teach_rounds = settings.teach_rounds or (domain.n_rounds + 1 if embedded else domain.n_rounds)
    manifest = write_recommendation_set(settings, domain, out / "data", template, n_rounds=teach_rounds)
    data_path = out / "data" / f"train-{settings.teacher}.jsonl"
    eval_users = torch.tensor(manifest["eval_users"], dtype=torch.long)
    log(f"teaching data: {manifest['counts']['examples']} examples ({teach_rounds}-round dialogues) from "
        f"{manifest['counts']['train_users']} users -> {data_path}")

    # ---- 2. the student, before training ------------------------------------------------------------
    reports = {}
    device, dtype = evaluation_placement(settings)
    if settings.model is None:
        from distill.student.model import StudentConfig, build_student

        student_config = dataclasses.replace(StudentConfig(), kl_weight=settings.teaching_kl_weight)

        if settings.eval_before:
            model, tokenizer = build_student(domain, student_config, seed=settings.seed, template=template)
            before = LMAssistant(prepare_loaded_lm(model, tokenizer, "embedded-student"), name="student (before)",
                                 template=template)
            reports["before"] = _evaluate(domain, before, eval_users, settings, "student before", log)
    elif settings.eval_before:
        before = LMAssistant(load_model_before(settings, device, dtype, log), name="student (before)", template=template)
        reports["before"] = _evaluate(domain, before, eval_users, settings, "student before", log)
        before_elsewhere = evaluate_domains(before, others, settings.n_eval_users, settings.n_heldout, settings.seed,
                                            "student before", log, model=settings.model)

    # ---- 3. training --------------------------------------------------------------------------------
    before = None  # training gets the memory: a GPU holds the model once
    result, after_lm = train_and_load(settings, domain, data_path, out / "train", device, dtype, template, log,
                                      student_config if settings.model is None else None)
    log(f"trained: {result.summary()}")

    # ---- 4. the student after training, and the references -----------------------------------------
    if settings.model is not None and not settings.eval_before:
        choose_cpu_threads(after_lm.model, log)
    after = LMAssistant(after_lm, name="student (after)", template=template)
    after_run = evaluate_users(domain, after, eval_users, settings.seed, settings.n_heldout)
    reports["bayesian"] = _evaluate(domain, BayesianAssistant(), eval_users, settings, "bayesian assistant", log)
    reports["random"] = _evaluate(domain, RandomAssistant(), eval_users, settings, "random", log)
    after_elsewhere = evaluate_domains(after, others, settings.n_eval_users, settings.n_heldout, settings.seed,
                                       f"student after ({settings.teacher} teaching)", log, model=settings.model)
    summary = training_summary(result)
    final = build_report(
        after_run, model=settings.model or "embedded-student", adapter=None,
        mode="score", extra={"label": f"student after ({settings.teacher} teaching)", "settings": dataclasses.asdict(settings),
                             "manifest": {k: manifest[k] for k in ("counts", "files", "seed", "teacher", "n_rounds")},
                             "training": summary,
                             "curves": {name: r["metrics"] for name, r in reports.items()}},
    )

    # ---- 5. save and show ---------------------------------------------------------------------------
    final["prompt_template"] = template.summary()
    save_report(final, out / "report.json")
    references = [reports[k] for k in ("before", "bayesian", "random") if k in reports]
    plot_reports([final], out / "accuracy.png", references=references, title=f"{domain.name}: {settings.teacher}-taught student")
    columns = {}
    if "before" in reports:
        columns["student before"] = reports["before"]["accuracy"]
    columns["student after"] = final["accuracy"]
    columns["bayesian"] = reports["bayesian"]["accuracy"]
    columns["random"] = reports["random"]["accuracy"]
    columns["after: agree w/ bayes"] = final["metrics"]["agreement_with_bayesian"]["mean"]
    log("accuracy % on held-out users after each observed round")
    log(format_table(columns, final["rounds"]))
    log(f"report: {out / 'report.json'}\nplot: {out / 'accuracy.png'}")
    if eval_domains:
        write_transfer(out, domain.name, settings.teacher, {**reports, "after": final}, others, before_elsewhere,
                       after_elsewhere, settings.n_eval_users, settings.n_heldout, settings.seed, log,
                       settings=dataclasses.asdict(settings))
    return final


def with_evaluation_size(settings: DistillSettings, log) -> DistillSettings:
    """``settings`` with the evaluation size filled in (``evaluation_size``; report.json records it), saying
    why when the CPU's size replaces the study's."""
    n_eval_users, n_heldout, why = evaluation_size(settings)
    if why:
        log(why)
    return dataclasses.replace(settings, n_eval_users=n_eval_users, n_heldout=n_heldout)


def evaluation_placement(settings: DistillSettings) -> tuple[str, torch.dtype]:
    """(device, dtype) of the evaluations: a --model on a CUDA GPU when there is one (as evaluate runs it), else
    the CPU, and the embedded student on the CPU; in --dtype, whose auto is ``auto_dtype``'s choice there (the
    precision training resolves it to on that device)."""
    device = "cuda" if settings.model is not None and torch.cuda.is_available() else "cpu"
    return device, auto_dtype(device)[0] if settings.dtype == "auto" else dtype_from_name(settings.dtype)


def load_model_before(settings: DistillSettings, device: str, dtype, log):
    """The --model as it is before teaching (in 4 bits for QLoRA) on ``device``, with the CPU's thread count
    chosen on it for this evaluation, training and the evaluation after (``choose_cpu_threads`` leaves a model
    on a GPU alone)."""
    lm = load_causal_lm(settings.model, load_in_4bit=settings.method == "qlora", device=device, dtype=dtype,
                        cache_dir=settings.gguf_cache_dir, log=log)
    choose_cpu_threads(lm.model, log)
    return lm


def train_and_load(settings: DistillSettings, domain, data_path, train_dir, device: str, dtype, template, log,
                   student_config=None):
    """Train the embedded student (``student_config``) or the --model on ``data_path`` into ``train_dir``;
    returns (the TrainResult, the taught model loaded for evaluation: a --model on ``device`` in ``dtype``)."""
    if settings.model is None:
        from distill.student.model import train_student
        from distill.student.tokenizer import adopt_saved_template

        result = train_student(domain, data_path, train_dir, budget_minutes=settings.budget_minutes,
                               max_steps=settings.max_steps, config=student_config, seed=settings.seed,
                               resume=settings.resume, template=template)
        after_lm = load_causal_lm(str(train_dir / "model"))
        # the template this run built (as evaluate --model does for a saved student): rendered without the sandbox
        card = read_student_card(train_dir / "model") or {}
        adopt_saved_template(after_lm.tokenizer, domain, card.get("chat_template_options"), template)
        return result, after_lm
    if settings.gradient_checkpointing is None and settings.uses_gradient_checkpointing:
        log("gradient checkpointing: on (each soft target adds a row per candidate answer to the batch; "
            "--no-gradient-checkpointing turns it off)")
    config = TrainConfig(model_name_or_path=settings.model, method=settings.method, epochs=1.0,
                         batch_size=settings.batch_size or default_batch_size(),
                         max_steps=settings.max_steps, dtype=settings.dtype,
                         gradient_checkpointing=settings.uses_gradient_checkpointing,
                         budget_minutes=None if math.isinf(settings.budget_minutes) else settings.budget_minutes,
                         kl_weight=settings.teaching_kl_weight, seed=settings.seed, gguf_cache_dir=settings.gguf_cache_dir)
    result = _train_hf(config, data_path, train_dir, settings.resume)
    if settings.method == "full":
        return result, load_causal_lm(str(train_dir / "model"), device=device, dtype=dtype)
    return result, load_causal_lm(settings.model, adapter=str(train_dir / "adapter"), load_in_4bit=settings.method == "qlora",
                                  device=device, dtype=dtype, cache_dir=settings.gguf_cache_dir, log=log)


def _train_hf(config: TrainConfig, data_path, train_dir, resume: bool):
    from distill.training.trainer import train

    return train(config, data_path, train_dir, resume=resume)


def training_summary(result) -> dict:
    """A training result's scalar fields, for a report."""
    if dataclasses.is_dataclass(result):
        return {k: v for k, v in dataclasses.asdict(result).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {"result": str(result)}
