"""TrainConfig: every knob of a distillation (fine-tuning) run, in one dataclass.

A copy is written as JSON beside every checkpoint and into the output directory, so that a run can be
understood (and resumed) from its files alone.  Every field says why it exists and what its default is for.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("qlora", "lora", "full")

# Fields that decide what a step computes: a resumed run must agree with its checkpoint on these, or the
# "continue where it stopped" promise would be a lie.  (Budget, logging, checkpoint cadence, max_steps and
# epochs may change between sessions.)
RESUME_MUST_MATCH = (
    "method", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "dtype",
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
    "batch_size", "grad_accum_steps", "max_length", "seed", "shuffle", "kl_weight",
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
    # supports it, float32 otherwise (CPU: bf16 matmuls are slow there and hurt determinism tests).
    dtype: str = "auto"

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
    warmup_steps: int = 10
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
    # Longest token sequence trained on; longer conversations are cut at the end (and reported), because
    # attention memory grows with length and the paper's dialogues fit comfortably in 2k tokens.
    max_length: int = 2048
    # Reshuffle the conversations each epoch (seeded); False keeps file order, handy for debugging.
    shuffle: bool = True

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
    # Append a line to train_log.jsonl (and refresh the progress bar) every this many steps.
    log_every_steps: int = 1
    # Also write a merged model (adapters folded into full-precision base weights) for tools that cannot
    # load PEFT adapters.  Costs a full-precision copy of the base model on disk.
    merge_adapter: bool = False
    # Trade compute for memory by recomputing activations in the backward pass (big models on small GPUs).
    gradient_checkpointing: bool = False
    # Passed to accelerate: "no", "bf16" or "fp16" autocast for the forward pass on accelerators.
    mixed_precision: str = "no"
    # Allow custom modelling code from the hub repo (only for models that need it; it runs their code).
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("batch_size and grad_accum_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 (or None)")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("epochs must be > 0 (or None)")
        if self.kl_weight < 0:
            raise ValueError("kl_weight must be >= 0")

    # --- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def resume_mismatches(self, saved: "TrainConfig") -> list[str]:
        """Fields that differ from a checkpoint's config but must not (see RESUME_MUST_MATCH)."""
        return [
            f"{name}: checkpoint {getattr(saved, name)!r} vs now {getattr(self, name)!r}"
            for name in RESUME_MUST_MATCH
            if getattr(saved, name) != getattr(self, name)
        ]

