"""Fine-tune a causal LM on chat dialogues whose assistant turns are an exact Bayesian assistant's answers,
with transformers' ``Trainer``.

Public API::

    train(config: TrainConfig, dataset_path, out_dir, *, model=None, resume=False, on_step_end=None,
          lr_lambda=None) -> TrainResult
    main(argv=None)   # python -m distill.training.trainer --config cfg.json --data train.jsonl --out runs/x [--resume]

``model`` is a name/path (overrides ``config.model_name_or_path``) or an already-built ``(model,
tokenizer)`` pair.  ``resume=True`` continues from the last complete checkpoint in ``out_dir``.
``on_step_end(record: dict)`` is called on every process after each optimizer step.  ``lr_lambda`` (a
step -> factor function) replaces the warm-up + cosine schedule (the embedded student's clock schedule).
Under ``accelerate launch`` (DDP, FSDP, DeepSpeed; ``configs/accelerate/``) the Trainer shards the data and
the model; ``config.global_batch_size`` keeps the batch per optimizer step whatever the number of processes.

The Trainer does the optimizer (AdamW), the warm-up + cosine schedule, accumulation, clipping, checkpoints
(with RNG states and rotation), resume and tensorboard.  What is ours: the dataset of segment-based
assistant masks (``chat_dataset``), the loss below (``DistillTrainer.compute_loss``), the wall-clock budget
and logs (``train_callbacks``).  The loss of one step is  CE(assistant tokens) + kl_weight * KL(soft target
|| model over candidates): cross-entropy averaged over the step's assistant tokens (all processes), and, for
messages with a soft target, the KL from the Bayesian posterior predictive to the model's softmax over the
summed log-probs of the candidates; logits are computed only at the positions the loss reads.

Output directory::

    out_dir/train_config.json        the TrainConfig of the run
    out_dir/train_log.jsonl          one line per logged step: step, loss, sft_loss, kl_loss, choice_loss (the
                                     cross-entropy on the answers' option-number tokens alone), lr, tokens/s
    out_dir/tensorboard/             the Trainer's event files (loss, learning rate, grad norm); loss.png beside
    out_dir/summary.json             steps, tokens, tokens/s, peak RSS memory, truncation report
    out_dir/adapter/                 qlora/lora: PEFT adapter + tokenizer (PeftModel.from_pretrained loads it)
    out_dir/model/                   full: the fine-tuned model + tokenizer
    out_dir/merged/                  with merge_adapter: base with the adapter folded in + tokenizer
    out_dir/checkpoints/checkpoint-N/  the Trainer's checkpoints (resumable once COMPLETE is in them)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import tempfile
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from eval import io_utils
from distill.training.chat_dataset import ChatBatch, EmptyLossMaskError, collate, load_chat_jsonl, tokenize_dataset, tokenize_workers
from distill.training.loss import micro_batch_loss
from distill.training.model_setup import TrainableModel, build_trainable_model, dtype_choice, merge_adapter
from distill.training.callbacks import (
    BudgetCallback, BudgetProgressCallback, CompleteMarker, LossPlotCallback, StepRecorder,
)
from distill.training.config import ConfigError, OutputDirInUseError, TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # optimizer steps done in total (a resumed run counts the earlier ones too)
    steps_this_run: int
    stop_reason: str  # "max_steps", "epochs" or "budget"
    losses: list[float]  # loss of every step of this run, in order
    tokens: int  # tokens forwarded in this run (all processes)
    tokens_per_s: float  # tokens / time spent in training steps
    peak_rss_mb: float  # peak resident memory of the busiest process
    adapter_dir: Path | None = None
    model_dir: Path | None = None
    merged_dir: Path | None = None
    model: Any = field(default=None, repr=False)  # the trained model (PeftModel or full), in memory
    tokenizer: Any = field(default=None, repr=False)

    def summary(self) -> str:
        """One line for logs: steps, why it stopped, first and last loss, speed, memory, where it went."""
        first = f"{self.losses[0]:.4f}" if self.losses else "-"
        last = f"{sum(self.losses[-20:]) / len(self.losses[-20:]):.4f}" if self.losses else "-"
        where = self.adapter_dir or self.model_dir or self.out_dir
        return (f"{self.steps} steps ({self.stop_reason}), loss {first} -> {last} (mean of the last 20), "
                f"{self.tokens_per_s:,.0f} tokens/s, peak RSS {self.peak_rss_mb:,.0f} MB -> {where}")


# --------------------------------------------------------------------------------------------------
# The Trainer: our loss, our step counts, the schedule it is given
# --------------------------------------------------------------------------------------------------
class DistillTrainer(Trainer):
    """transformers' Trainer with the loss above: ``compute_loss`` reads a collated ChatBatch, and the number
    of assistant tokens and soft targets of the whole optimizer step (all micro-batches, all processes) comes
    from ``get_batch_samples``, so accumulation and data parallelism give the gradient of the step mean."""

    loss_is_scaled_for_ga = True  # compute_loss already divides by the step's counts

    def __init__(self, *args, kl_weight: float = 0.0, lr_lambda: Callable[[int], float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_weight, self.lr_lambda = kl_weight, lr_lambda
        self.step_parts = torch.zeros(3, dtype=torch.float64)  # this process's [sft, kl, tokens] of the step
        self.choice_parts = torch.zeros(2, dtype=torch.float64)  # [NLL sum, count] of the step's choice tokens

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.tensor([[int(b["target_mask"][:, 1:].sum()), len(b["candidate_row"]) + len(b["inline_row"])]
                               for b in batches] or [[0, 0]], dtype=torch.float64).sum(0)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(device), "sum").cpu()
        return batches, counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = ChatBatch(**inputs)
        if not batch.target_mask[:, 1:].any():
            raise EmptyLossMaskError(f"no assistant tokens to train on in the batch of dataset indices {batch.example_indices}")
        if num_items_in_batch is None:  # outside a training step (e.g. trainer.evaluate)
            num_items_in_batch = torch.tensor([float(batch.target_mask[:, 1:].sum()), float(batch.num_soft_targets)])
        step_targets, step_soft = num_items_in_batch.tolist()
        loss, sft, kl = micro_batch_loss(model, batch, max(1, int(step_targets)), max(1, int(step_soft)), self.kl_weight,
                                         choice_parts=self.choice_parts)
        self.step_parts += torch.tensor([float(sft), float(kl), float(batch.num_tokens)], dtype=torch.float64)
        # data parallelism averages gradients over processes; each process's loss is its share of the step sum
        loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_lambda is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, self.lr_lambda)
        return self.lr_scheduler


class ChatDataset(torch.utils.data.Dataset):
    """The tokenised conversations (input ids, assistant masks from eval.text.chat_format's segments, soft-target
    candidates), indexed for the Trainer's sampler."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]


def training_arguments(config: TrainConfig, out_dir: Path, total_steps: int | None) -> TrainingArguments:
    """The TrainingArguments a TrainConfig stands for (checkpoints in out_dir/checkpoints)."""
    import os

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    warmup = config.warmup_ratio if config.warmup_ratio is not None else config.warmup_steps
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.accumulation_steps(processes),
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2, adam_epsilon=config.adam_eps, max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=warmup, num_train_epochs=config.epochs or 1.0, max_steps=total_steps or -1,
        # the Trainer also saves at the last step; save_every_steps 0 = only there
        seed=config.seed, save_strategy="steps", save_steps=config.save_every_steps or 2**31 - 1,
        save_total_limit=config.keep_last_checkpoints,
        logging_steps=config.log_every_steps, report_to=[] if config.report_to in ("tensorboard", "none") else [config.report_to],
        bf16=config.mixed_precision == "bf16", fp16=config.mixed_precision == "fp16",
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, dataloader_pin_memory=False,
        ddp_find_unused_parameters=False, disable_tqdm=config.budget_minutes is not None,
        save_only_model=False, average_tokens_across_devices=False,
    )


def write_outputs(out_dir: Path, trainable: TrainableModel, config: TrainConfig, device) -> None:
    """Final adapter / model / merged model, each written atomically with the tokenizer beside it."""
    with io_utils.atomic_directory(out_dir / ("adapter" if trainable.is_peft else "model")) as tmp:
        trainable.model.save_pretrained(str(tmp))
        trainable.tokenizer.save_pretrained(str(tmp))
    if trainable.is_peft and config.merge_adapter:
        with io_utils.atomic_directory(out_dir / "merged") as tmp:
            merge_adapter(trainable, out_dir / "adapter", config, device).save_pretrained(str(tmp))
            trainable.tokenizer.save_pretrained(str(tmp))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _OnStepEnd(TrainerCallback):
    def __init__(self, recorder: StepRecorder, function):
        self.recorder, self.function = recorder, function

    def on_step_end(self, args, state, control, **kwargs):
        self.function({"step": state.global_step, "loss": self.recorder.losses[-1]})


# --------------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------------
def train(config: TrainConfig, dataset_path, out_dir, *, model=None, resume: bool = False,
          on_step_end: Callable[[dict], None] | None = None,
          lr_lambda: Callable[[int], float] | None = None) -> TrainResult:
    run_start = time.perf_counter()
    out_dir = Path(out_dir)
    source = model if model is not None else config.model_name_or_path
    if isinstance(source, (str, Path)):
        if not str(source):
            raise ConfigError("no model: pass model=... or set config.model_name_or_path")
        config = dataclasses.replace(config, model_name_or_path=str(source))
    checkpoint = io_utils.last_complete_checkpoint(out_dir / "checkpoints")
    if checkpoint is not None and not resume:  # never silently mix a new run with an old run's checkpoints
        raise OutputDirInUseError(f"{out_dir} already holds checkpoints of a run ({checkpoint.name}): resume it "
                              "(resume=True / --resume) or use another output directory")
    if checkpoint is not None:
        problems = config.resume_mismatches(type(config).from_json_file(checkpoint / "train_config.json"))
        if problems:
            raise ConfigError(f"cannot resume from {checkpoint}: settings changed: " + "; ".join(problems))
    examples = load_chat_jsonl(dataset_path)  # a bad line fails now, not after a long model load
    args = training_arguments(config, out_dir, None)  # sets up the processes (DDP / FSDP / DeepSpeed)
    is_main = args.process_index == 0
    dtype, dtype_reason = dtype_choice(config.dtype, args.device)
    config_json = json.dumps({**config.to_dict(), "dtype_resolved": {"dtype": str(dtype).removeprefix("torch."),
                                                                     "reason": dtype_reason}}, indent=2, sort_keys=True)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        io_utils.atomic_write_text(out_dir / "train_config.json", config_json)

    # ---- model: quantised base + adapters, or the full model; then the data ------------------------
    from transformers import set_seed

    set_seed(config.seed)  # LoRA initialisation and dropout; the Trainer seeds the data order
    scratch = tempfile.TemporaryDirectory(prefix="bayes-teach-base-")  # in-memory base re-quantised via disk
    trainable = build_trainable_model(config, source, args.device, Path(scratch.name))
    if is_main:  # once the model loaded (a bad model path stays one line)
        print(f"dtype: {str(dtype).removeprefix('torch.')} ({dtype_reason})", file=sys.stderr, flush=True)
    tokenizer = trainable.tokenizer
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    data, truncation = tokenize_dataset(tokenizer, examples, config.max_length, with_soft_targets=config.kl_weight > 0,
                                        workers=tokenize_workers(args.world_size))
    if truncation.truncated_examples and is_main:
        logger.warning(truncation.describe())
    global_batch = config.batch_size * args.gradient_accumulation_steps * args.world_size
    total_steps = config.max_steps  # None: the Trainer runs config.epochs (default 1) epochs
    if config.max_steps and config.epochs:
        total_steps = min(config.max_steps, math.ceil(config.epochs * math.ceil(len(data) / global_batch)))
    if total_steps:
        args.max_steps = total_steps

    # ---- the Trainer and what we add to it -----------------------------------------------------------
    log_path = out_dir / "train_log.jsonl"
    if is_main and checkpoint is not None and log_path.exists():  # forget lines of steps after the checkpoint
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        io_utils.atomic_write_text(log_path, "".join(line + "\n" for line in kept))
    elif is_main and log_path.exists():
        log_path.unlink()
    trainer = DistillTrainer(model=trainable.model, args=args, train_dataset=ChatDataset(data),
                             data_collator=lambda rows: vars(collate(rows, pad_id)),
                             kl_weight=config.kl_weight, lr_lambda=lr_lambda)
    recorder = StepRecorder(trainer, log_path, config.kl_weight)
    budget = BudgetCallback(config.budget_minutes * 60, run_start) if config.budget_minutes is not None else None
    callbacks = [recorder, CompleteMarker(config_json), LossPlotCallback(log_path, out_dir / "tensorboard" / "loss.png")]
    if budget is not None:
        from transformers.trainer_callback import ProgressCallback, PrinterCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        callbacks += [budget, BudgetProgressCallback(budget, recorder)]
    if config.report_to == "tensorboard" and is_main:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "tensorboard"))))
    if on_step_end is not None:
        callbacks.append(_OnStepEnd(recorder, on_step_end))
    for callback in callbacks:
        trainer.add_callback(callback)

    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)

    # ---- outputs: the model, the summary ------------------------------------------------------------
    step = trainer.state.global_step  # the Trainer saved the last step (its DefaultFlowCallback / our budget)
    stop_reason = "budget" if budget is not None and budget.stopped else ("max_steps" if config.max_steps else "epochs")
    peak = peak_rss_mb()
    if args.world_size > 1:
        peak = float(trainer.accelerator.reduce(torch.tensor(peak, device=args.device), "max").item())
    from accelerate.utils import DistributedType

    if trainer.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        trainer.save_model(str(out_dir / ("adapter" if trainable.is_peft else "model")))  # gathers the shards
        if is_main:
            tokenizer.save_pretrained(str(out_dir / ("adapter" if trainable.is_peft else "model")))
    elif is_main:
        write_outputs(out_dir, trainable, config, args.device)
        summary = {"steps": step, "steps_this_run": len(recorder.losses), "max_steps": trainer.state.max_steps,
                   "stop_reason": stop_reason, "final_loss": recorder.losses[-1] if recorder.losses else None,
                   "tokens": recorder.tokens, "tokens_per_s": recorder.tokens_per_s, "train_seconds": recorder.step_seconds,
                   "wall_seconds": time.perf_counter() - run_start, "peak_rss_mb": peak,
                   "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                   "num_processes": args.world_size, "global_batch": global_batch, "num_examples": len(data),
                   "truncation": dataclasses.asdict(truncation), "resumed_from": str(checkpoint) if checkpoint else None}
        io_utils.atomic_write_json(out_dir / "summary.json", summary)
    trainer.accelerator.wait_for_everyone()
    scratch.cleanup()
    return TrainResult(out_dir, step, len(recorder.losses), stop_reason, recorder.losses, recorder.tokens,
                       recorder.tokens_per_s, peak,
                       adapter_dir=out_dir / "adapter" if trainable.is_peft else None,
                       model_dir=None if trainable.is_peft else out_dir / "model",
                       merged_dir=out_dir / "merged" if trainable.is_peft and config.merge_adapter else None,
                       model=trainer.accelerator.unwrap_model(trainer.model), tokenizer=tokenizer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fine-tune a causal LM on a JSONL chat dataset.")
    parser.add_argument("--config", required=True, help="TrainConfig as JSON (or a YAML recipe)")
    parser.add_argument("--data", required=True, help="JSONL chat dataset")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", help="model path or hub id (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    train(TrainConfig.from_recipe(args.config), args.data, args.out, model=args.model, resume=args.resume)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
