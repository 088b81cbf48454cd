"""TrainConfig: every knob of a distillation (fine-tuning) run, in one dataclass -- the one settings source.

A copy is written as JSON beside every checkpoint and into the output directory, so that a run can be
understood (and resumed) from its files alone.  Every field says why it exists and what its default is for.
The embedded student's ``StudentConfig`` extends this class (its own defaults, same fields), and the CLI and
the pipeline read their defaults from here.  ``to_training_arguments`` maps it onto transformers'
``TrainingArguments``; a *recipe* (YAML or JSON, ``configs/recipes/``) is a dict of these fields, checked for
unknown keys and wrong types by ``from_dict``.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppl_models.errors import BayesTeachError, read_user_text

METHODS = ("qlora", "lora", "full")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Keys train_config.json records beside the fields (what the run resolved), not read back as settings.
RECORDED_KEYS = ("dtype_resolved",)
# The default wall-clock budget of the teaching loop (`distill`) and of the embedded student, in minutes.
DEFAULT_BUDGET_MINUTES = 10.0
# distill's conversations per micro-batch for a --model on a CPU: one.  A step costs about its tokens on a CPU, so
# within distill's wall-clock budget one row per step gives about four times the optimizer steps of TrainConfig's 4
# (enough to leave the warm-up of a small model's run), and no padding to the longest row of a batch.
CPU_BATCH_SIZE = 1


def default_batch_size(on_gpu: bool | None = None) -> int:
    """distill's micro-batch for a --model: TrainConfig's on a GPU, CPU_BATCH_SIZE on a CPU."""
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    return TrainConfig.batch_size if on_gpu else CPU_BATCH_SIZE


class ConfigError(BayesTeachError):
    """A recipe or config has an unknown key, a value of the wrong type, or inconsistent values."""


class OutputDirInUseError(ConfigError, FileExistsError):
    """The output directory already holds another run's checkpoints and the run was not asked to resume it."""

# Fields that decide what a step computes: a resumed run must agree with its checkpoint on these, or the
# "continue where it stopped" promise would be a lie.  (Budget, logging, checkpoint cadence, max_steps and
# epochs may change between sessions.)
RESUME_MUST_MATCH = (
    "method", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "dtype",
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
    "batch_size", "grad_accum_steps", "global_batch_size", "max_length", "seed", "kl_weight",
)


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------------------
    # Local directory or hub id of the causal LM to fine-tune.  train() also accepts an in-memory
    # (model, tokenizer) pair, in which case this records where it came from (informational only).
    model_name_or_path: str = ""
    # "qlora": 4-bit NF4 frozen base + LoRA adapters (least memory, the paper's setting);
    # "lora": LoRA on an unquantised base (no bitsandbytes needed); "full": every weight is trained.
    method: str = "qlora"
    # Precision the base weights are loaded in (and the 4-bit compute dtype): "auto" = bfloat16 on a GPU that
    # supports it and on a CPU with AVX-512 BF16 or AMX (eval.lm.loading.auto_dtype; there LoRA trains
    # faster in less memory, while on an AVX2-only CPU bfloat16 is several times slower: bench_train_throughput.py), float32 otherwise; the choice and
    # its reason go into train_config.json ("dtype_resolved").  float32 keeps tests bit-reproducible.
    dtype: str = "auto"
    # transformers' attention kernel: "sdpa" (torch's scaled_dot_product_attention, fused where available)
    # or "eager".
    attn_implementation: str = "sdpa"

    # --- LoRA ----------------------------------------------------------------------------------------
    # Adapter rank: capacity of the update; 16 is a common QLoRA default that fits tiny and 7B models alike.
    lora_r: int = 16
    # Scale of the update is lora_alpha / lora_r; 2x the rank is the usual choice.
    lora_alpha: int = 32
    # Dropout on the adapter input, a mild regulariser for small SFT datasets.
    lora_dropout: float = 0.05
    # Which layers get adapters.  "all-linear" (every linear layer but the output head) is what QLoRA
    # recommends; a list of module names restricts it.
    lora_target_modules: str | list[str] = "all-linear"

    # --- optimisation --------------------------------------------------------------------------------
    # Peak AdamW learning rate (after warm-up).  2e-4 is the QLoRA default; use ~1e-5 for "full".
    learning_rate: float = 2e-4
    # AdamW decoupled weight decay; 0 because LoRA adapters start at zero and SFT runs are short.
    weight_decay: float = 0.0
    # AdamW moment decay rates and epsilon (PyTorch defaults, listed so a checkpoint records them).
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # Linear warm-up steps before the cosine decay: avoids large first updates from a cold optimizer.
    # transformers' warm-up: the learning rate of step s (0-based) is learning_rate * s / warmup_steps.
    warmup_steps: int = 10
    # Warm-up as a fraction of the run's steps instead (the study: 0.1); overrides warmup_steps when set.
    warmup_ratio: float | None = None
    # The cosine schedule decays to learning_rate * min_lr_ratio at the last step rather than to zero,
    # so a run extended later (larger max_steps on resume) still learns.
    min_lr_ratio: float = 0.1
    # Global-norm gradient clipping: keeps one odd batch from wrecking the adapters.  <= 0 disables it.
    max_grad_norm: float = 1.0

    # --- batches -------------------------------------------------------------------------------------
    # Conversations per forward pass per process (the micro-batch); raise it until memory runs out.
    batch_size: int = 4
    # Micro-batches summed before each optimizer step: effective batch = batch_size * grad_accum_steps *
    # number of processes, without the memory of a big forward pass.
    grad_accum_steps: int = 1
    # Conversations per optimizer step over all processes (the study: 128).  When set, grad_accum_steps is
    # computed from it, batch_size and the number of processes, so the recipe's batch holds on any machine.
    global_batch_size: int | None = None
    # Longest token sequence trained on; longer conversations are cut at the end (and reported), because
    # attention memory grows with length and the paper's dialogues fit comfortably in 2k tokens.
    max_length: int = 2048

    # --- how long ------------------------------------------------------------------------------------
    # Optimizer steps to run.  With epochs also set, training stops at whichever comes first; None means
    # "as many as the epochs take".
    max_steps: int | None = None
    # Passes over the dataset (fractions allowed).  None with max_steps set: loop over the data as often as
    # max_steps needs.  Both None: one epoch.
    epochs: float | None = None
    # Wall-clock budget of this call in minutes: training stops cleanly (and saves) before a step would
    # overrun it, so a job scheduler's time limit never kills a run mid-write.  None: no budget.
    budget_minutes: float | None = None

    # --- what to learn -------------------------------------------------------------------------------
    # Weight of the soft-target term KL(Bayesian posterior predictive || model's distribution over the
    # candidate answers), added to the assistant-token cross-entropy.  0 ignores soft targets (plain SFT
    # on the Bayesian assistant's answers, as in the paper).
    kl_weight: float = 0.0

    # --- reproducibility, checkpoints, outputs -------------------------------------------------------
    # Seeds data order, LoRA initialisation and dropout: same seed + same data -> same losses and weights.
    seed: int = 0
    # Save a resumable checkpoint every this many optimizer steps (0: only at the end of training).
    save_every_steps: int = 100
    # Complete checkpoints kept on disk (oldest deleted first): resumability without filling the disk.
    keep_last_checkpoints: int = 2
    # Log (tensorboard, train_log.jsonl, progress bar) every this many steps.
    log_every_steps: int = 1
    # Where the Trainer reports: "tensorboard" (event files in out_dir/tensorboard), "none", "wandb", ...
    report_to: str = "tensorboard"
    # Also write a merged model (adapters folded into full-precision base weights) for tools that cannot
    # load PEFT adapters.  Costs a full-precision copy of the base model on disk.
    merge_adapter: bool = False
    # Trade compute for memory by recomputing activations in the backward pass (big models on small GPUs;
    # on CPU it also cut LoRA's peak memory on SmolLM2-135M, see the README).
    gradient_checkpointing: bool = False
    # "no", "bf16" or "fp16": autocast with float32 master weights (transformers' bf16/fp16 arguments), for
    # full fine-tuning on accelerators (the study's recipe).  Independent of dtype, the weights' storage type.
    mixed_precision: str = "no"
    # Allow custom modelling code from the hub repo (only for models that need it; it runs their code).
    trust_remote_code: bool = False
    # Where QLoRA keeps the Hugging Face conversion of a GGUF model (transformers cannot quantise a GGUF file):
    # the cache root of eval.lm.convert.cache_root; None: $BAYES_TEACH_CACHE, else ~/.cache/bayes-teach.
    gguf_cache_dir: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}"),
            (self.mixed_precision in ("no", "bf16", "fp16"), f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}"),
            (self.batch_size >= 1 and self.grad_accum_steps >= 1, "batch_size and grad_accum_steps must be >= 1"),
            (self.global_batch_size is None or self.global_batch_size >= 1, "global_batch_size must be >= 1 (or None)"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1 (or None)"),
            (self.epochs is None or self.epochs > 0, "epochs must be > 0 (or None)"),
            (self.budget_minutes is None or self.budget_minutes > 0, f"budget_minutes: the budget must be > 0 minutes, got {self.budget_minutes}"),
            (self.warmup_ratio is None or 0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1) (or None)"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.kl_weight >= 0, "kl_weight must be >= 0"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("; ".join(problems))

    def accumulation_steps(self, num_processes: int) -> int:
        """Micro-batches per optimizer step: grad_accum_steps, or what keeps global_batch_size whatever the
        number of processes (ConfigError if it does not divide)."""
        if self.global_batch_size is None:
            return self.grad_accum_steps
        per_step = self.batch_size * num_processes
        if self.global_batch_size % per_step:
            raise ConfigError(f"global_batch_size {self.global_batch_size} is not a multiple of batch_size "
                              f"{self.batch_size} x {num_processes} process(es)")
        return self.global_batch_size // per_step

    # --- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        """The config of these fields; ConfigError naming ``where`` for an unknown key or a wrong type."""
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        for name, value in values.items():
            if not _has_type(value, hints[name]):
                raise ConfigError(f"{where}: {name} must be {_type_name(hints[name])}, got {value!r}")
        try:
            return cls(**values)
        except ConfigError as error:  # a value out of range: say which file set it
            raise ConfigError(f"{where}: {error}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainConfig":
        try:
            values = json.loads(read_user_text(path, ConfigError))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
        if isinstance(values, dict):
            values = {key: value for key, value in values.items() if key not in RECORDED_KEYS}
        return cls.from_dict(values, str(path))

    @classmethod
    def from_recipe(cls, path: str | Path, **overrides) -> "TrainConfig":
        """A recipe file (YAML or JSON) of fields, then ``overrides`` (the command line's) on top."""
        checked = cls.from_dict(cls.recipe_values(path), str(path))
        return dataclasses.replace(checked, **overrides) if overrides else checked

    @classmethod
    def recipe_values(cls, path: str | Path) -> dict:
        """The fields a recipe file (YAML or JSON) sets, as written (numbers YAML read as strings made numbers),
        without the defaults of those it leaves out; ``from_recipe`` checks them."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            text = read_user_text(path, ConfigError)
            values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
        except (yaml.YAMLError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
        if isinstance(values, dict):  # YAML 1.1 reads 2e-6 (no dot) as a string: take it as the number it is
            hints = typing.get_type_hints(cls)
            values = {k: _yaml_float(v) if hints.get(k) in (float, float | None) else v for k, v in values.items()}
        return values

    def resume_mismatches(self, saved: "TrainConfig") -> list[str]:
        """Fields that differ from a checkpoint's config but must not (see RESUME_MUST_MATCH)."""
        return [
            f"{name}: checkpoint {getattr(saved, name)!r} vs now {getattr(self, name)!r}"
            for name in RESUME_MUST_MATCH
            if getattr(saved, name) != getattr(self, name)
        ]



def _has_type(value, annotation) -> bool:
    """isinstance for the annotations used here: int, float (an int is fine), str, bool, X | None, list[str]."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_has_type(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _yaml_float(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(annotation) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
