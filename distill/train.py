"""Fine-tune a causal LM on chat dialogues whose assistant turns are an exact Bayesian assistant's answers.

Public API::

    train(config: TrainConfig, dataset_path, out_dir, *, model=None, resume=False, on_step_end=None)
        -> TrainResult
    main(argv=None)   # python -m distill.train --config cfg.json --data train.jsonl --out runs/x [--resume]

``model`` is a name/path (overrides ``config.model_name_or_path``) or an already-built ``(model,
tokenizer)`` pair.  ``resume=True`` continues from the last complete checkpoint in ``out_dir``.
``on_step_end(record: dict)`` is called on every process after each optimizer step (and its checkpoint).
The same script runs unchanged under ``accelerate launch --num_processes N``: every process computes its
own share of each step's batch, gradients are averaged, and only the main process writes files.

The loss of one step is  CE(assistant tokens) + kl_weight * KL(soft target || model over candidates):
cross-entropy averaged over the step's assistant tokens, and, for messages with a soft target, the KL from
the Bayesian posterior predictive to the model's softmax over the summed log-probs of the candidates.

Output directory::

    out_dir/train_config.json        the TrainConfig of the run
    out_dir/train_log.jsonl          one line per logged step: step, loss, sft_loss, kl_loss, lr, tokens/s ...
    out_dir/summary.json             steps, tokens, tokens/s, peak RSS memory, truncation report
    out_dir/adapter/                 qlora/lora: PEFT adapter + tokenizer (PeftModel.from_pretrained loads it)
    out_dir/model/                   full: the fine-tuned model + tokenizer
    out_dir/merged/                  with merge_adapter: base with the adapter folded in + tokenizer
    out_dir/checkpoints/step-NNNNNNNN/  resumable state (complete only with its COMPLETE marker)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from distill import io_utils
from distill.chat_dataset import (
    ChatBatch, EmptyLossMaskError, collate, load_chat_jsonl, micro_batch_indices, step_example_indices,
    steps_per_epoch, tokenize_dataset, tokenize_workers,
)
from distill.model_setup import TrainableModel, build_trainable_model, merge_adapter
from distill.train_config import TrainConfig

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
# The loss of one micro-batch
# --------------------------------------------------------------------------------------------------
def next_token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                         positions: torch.Tensor | None = None):
    """log p(token t+1 | tokens <= t) for every (row, t) with mask[row, t+1].
    logits [R, T, V] (or [R, K, V] at sequence ``positions`` [K] only), input_ids/mask [R, T]
    -> (log_probs [N] float32, rows [N])."""
    predicted = mask[:, 1:]  # [R, T-1] the token at t+1 is predicted from position t
    tokens = input_ids[:, 1:]
    if positions is None:
        logits = logits[:, :-1]
    else:
        predicted, tokens = predicted[:, positions], tokens[:, positions]
    selected = logits[predicted].float()  # [N, V] only the positions that matter
    tokens = tokens[predicted]  # [N]
    log_probs = selected.gather(-1, tokens[:, None]).squeeze(-1) - selected.logsumexp(-1)
    return log_probs, predicted.nonzero()[:, 0]


_KEEPS_LOGITS: dict = {}  # type(model) -> whether its forward takes logits_to_keep as a tensor of positions


def loss_logits(model, batch: ChatBatch):
    """(logits, positions): the model's logits at the positions the loss reads (those predicting a target
    or candidate token, over all rows) where the model can skip the rest (transformers' ``logits_to_keep``;
    the output projection of a large vocabulary is then computed at a few positions instead of all); else
    every position's logits and None."""
    needed = (batch.target_mask[:, 1:] | batch.candidate_mask[:, 1:]).any(0)  # [T-1]
    needed[batch.inline_position] = True
    positions = needed.nonzero()[:, 0]
    kind = type(model)
    if _KEEPS_LOGITS.get(kind, True) and 0 < len(positions) < needed.numel():
        try:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           logits_to_keep=positions).logits
        except TypeError:  # a forward without logits_to_keep
            _KEEPS_LOGITS[kind] = False
        else:
            if logits.shape[1] == len(positions):
                _KEEPS_LOGITS[kind] = True
                return logits, positions
            _KEEPS_LOGITS[kind] = False  # ignored the argument: use the full logits it gave
            return logits, None
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, None


def candidate_kl(log_probs, rows, num_rows: int, candidate_row, target_probs) -> torch.Tensor:
    """Sum over soft targets of KL(target || softmax over candidates of their summed token log-probs).
    candidate_row/target_probs [G, K] (row -1 = padding)."""
    scores = torch.zeros(num_rows, dtype=log_probs.dtype, device=log_probs.device).index_add(0, rows, log_probs)
    valid = candidate_row >= 0  # [G, K]
    return _kl_sum(scores[candidate_row.clamp(min=0)], valid, target_probs)


def inline_kl(logits, positions, batch: ChatBatch) -> torch.Tensor:
    """candidate_kl for the soft targets whose candidates are single tokens (``batch.inline_*``): candidate
    k's score is the next-token log-prob of its token at the position before the answer, on the
    conversation's own row."""
    columns = batch.inline_position if positions is None else torch.searchsorted(positions, batch.inline_position)
    next_log_probs = logits[batch.inline_row, columns].float().log_softmax(-1)  # [H, V]
    valid = batch.inline_tokens >= 0  # [H, K]
    return _kl_sum(next_log_probs.gather(-1, batch.inline_tokens.clamp(min=0)), valid, batch.inline_probs)


def _kl_sum(scores, valid, target_probs) -> torch.Tensor:
    """Sum over groups of KL(target || softmax over a group's valid candidate scores); all [G, K]."""
    model_log_probs = torch.where(valid, scores, float("-inf")).log_softmax(-1)
    terms = torch.xlogy(target_probs, target_probs) - target_probs * model_log_probs.masked_fill(~valid, 0.0)
    return terms.sum()


def micro_batch_loss(model, batch: ChatBatch, step_targets: int, step_soft_targets: int, kl_weight: float):
    """Loss whose gradients, summed over a step's micro-batches, are those of the step-mean loss.
    Returns (loss, sft part, kl part)."""
    logits, positions = loss_logits(model, batch)  # [R, T or K, V]
    log_probs, _ = next_token_log_probs(logits, batch.input_ids, batch.target_mask, positions)
    sft = -log_probs.sum() / step_targets
    kl = logits.new_zeros((), dtype=torch.float32)
    if kl_weight > 0 and batch.candidate_row.numel():
        cand_log_probs, rows = next_token_log_probs(logits, batch.input_ids, batch.candidate_mask, positions)
        kl = kl + candidate_kl(cand_log_probs, rows, len(batch.input_ids), batch.candidate_row, batch.target_probs)
    if kl_weight > 0 and batch.inline_row.numel():
        kl = kl + inline_kl(logits, positions, batch)
    kl = kl / step_soft_targets
    return sft + kl_weight * kl, sft.detach(), kl.detach()


# --------------------------------------------------------------------------------------------------
# Schedule and outputs
# --------------------------------------------------------------------------------------------------
def warmup_cosine(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:  # multiplier of learning_rate at optimizer step `step` (0-based)
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def plan_total_steps(config: TrainConfig, num_examples: int, global_batch: int) -> int:
    per_epoch = steps_per_epoch(num_examples, global_batch)
    by_epochs = math.ceil(config.epochs * per_epoch) if config.epochs else None
    if config.max_steps and by_epochs:
        return min(config.max_steps, by_epochs)
    return config.max_steps or by_epochs or per_epoch


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


# --------------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------------
def train(config: TrainConfig, dataset_path, out_dir, *, model=None, resume: bool = False,
          on_step_end: Callable[[dict], None] | None = None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # ---- 1. setup: processes, output directory, dataset validation, seeds ---------------------------
    run_start = time.perf_counter()
    # Several processes but no GPU (e.g. `accelerate launch --multi_gpu --num_processes 2` on a CPU box):
    # tell accelerate to use CPU processes with the gloo backend.
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu_processes)
    is_main, out_dir = accelerator.is_main_process, Path(out_dir)
    source = model if model is not None else config.model_name_or_path
    if isinstance(source, (str, Path)):
        if not str(source):
            raise ValueError("no model: pass model=... or set config.model_name_or_path")
        config = dataclasses.replace(config, model_name_or_path=str(source))
    checkpoint = io_utils.last_complete_checkpoint(out_dir / "checkpoints")
    if checkpoint is not None and not resume:  # never silently mix a new run with an old run's checkpoints
        raise FileExistsError(f"{out_dir} already holds checkpoints of a run ({checkpoint.name}): resume it "
                              "(resume=True / --resume) or use another output directory")
    examples = load_chat_jsonl(dataset_path)  # a bad line fails now, not after a long model load
    set_seed(config.seed)  # LoRA initialisation and dropout; data order has its own seeded generator
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        io_utils.atomic_write_text(out_dir / "train_config.json", config.to_json())

    # ---- 2. model: quantised base + adapters, or the full model -------------------------------------
    scratch = tempfile.TemporaryDirectory(prefix="bayes-teach-base-")  # in-memory base re-quantised via disk
    trainable = build_trainable_model(config, source, accelerator.device, Path(scratch.name))
    tokenizer = trainable.tokenizer
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    # ---- 3. data: tokenise (assistant-only targets, candidates of soft targets), report truncation --
    processes = accelerator.num_processes
    data, truncation = tokenize_dataset(tokenizer, examples, config.max_length, with_soft_targets=config.kl_weight > 0,
                                        workers=tokenize_workers(processes))
    if truncation.truncated_examples and is_main:
        logger.warning(truncation.describe())
    global_batch = config.batch_size * config.grad_accum_steps * processes  # conversations per step
    total_steps = plan_total_steps(config, len(data), global_batch)
    per_epoch = steps_per_epoch(len(data), global_batch)

    # ---- 4. optimizer and learning-rate schedule ---------------------------------------------------
    parameters = [p for p in trainable.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config, total_steps))
    wrapped, optimizer = accelerator.prepare(trainable.model, optimizer)  # DDP wrapper with >1 process

    def save_checkpoint() -> None:  # every process calls it (RNG states are gathered); the main one writes
        state = io_utils.checkpoint_state(step, per_epoch, global_batch, processes)
        io_utils.save_checkpoint(accelerator, out_dir, trainable, optimizer, scheduler, config, state)

    # ---- 5. resume: weights, optimizer, schedule, RNG and data position of the last checkpoint ------
    step, last_saved = 0, -1
    log_path = out_dir / "train_log.jsonl"
    if checkpoint is not None:
        step = last_saved = io_utils.load_checkpoint(checkpoint, accelerator, trainable, optimizer, scheduler, config)["step"]
        if is_main and log_path.exists():  # forget log lines of steps the checkpoint does not contain
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            io_utils.atomic_write_text(log_path, "".join(line + "\n" for line in kept))
    elif is_main and log_path.exists():
        log_path.unlink()
    accelerator.wait_for_everyone()

    # ---- 6. the loop: micro-batches -> loss -> backward -> clip -> step -> log -> checkpoint --------
    losses, tokens_run, step_seconds = [], 0, 0.0
    stop_reason = "max_steps" if config.max_steps == total_steps else "epochs"
    budget_s = config.budget_minutes * 60 if config.budget_minutes is not None else math.inf
    # With a time budget the step count is only a cap, so the bar shows the budget left, not a percentage
    # and an ETA of the cap.
    progress = tqdm(total=None if math.isfinite(budget_s) else total_steps, initial=step, desc="train",
                    unit="step", disable=not is_main, dynamic_ncols=True)
    while step < total_steps:
        # stop before a step would overrun the budget (all processes take the same decision)
        mean_step = step_seconds / len(losses) if losses else 0.0
        over = torch.tensor(float(time.perf_counter() - run_start + mean_step > budget_s), device=accelerator.device)
        if accelerator.reduce(over, "max").item() > 0:
            stop_reason = "budget"
            break
        step_start = time.perf_counter()
        # this process's micro-batches of the step (a pure function of the step number)
        indices = step_example_indices(step, len(data), global_batch, config.seed, config.shuffle)
        batches = [collate([data[i] for i in micro_batch_indices(indices, m, accelerator.process_index, processes,
                                                                  config.batch_size)], pad_id)
                   for m in range(config.grad_accum_steps)]
        for batch in batches:
            if not batch.target_mask[:, 1:].any():
                raise EmptyLossMaskError(f"step {step}: no assistant tokens to train on in the batch of dataset "
                                         f"indices {batch.example_indices}")
        step_targets = sum(int(b.target_mask[:, 1:].sum()) for b in batches)
        step_soft = max(1, sum(b.num_soft_targets for b in batches))
        wrapped.train()
        sft_total = kl_total = 0.0
        for m, batch in enumerate(batches):  # gradients are all-reduced only on the last micro-batch
            with nullcontext() if m == len(batches) - 1 else accelerator.no_sync(wrapped):
                loss, sft, kl = micro_batch_loss(wrapped, batch.to(accelerator.device), step_targets, step_soft,
                                                 config.kl_weight)
                accelerator.backward(loss)
            sft_total, kl_total = sft_total + sft, kl_total + kl
        grad_norm = accelerator.clip_grad_norm_(parameters, config.max_grad_norm) if config.max_grad_norm > 0 else None
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # losses and token counts, averaged / summed over processes
        local = torch.tensor([float(sft_total), float(kl_total), sum(b.num_tokens for b in batches)],
                             dtype=torch.float64, device=accelerator.device)
        sft_mean, kl_mean, _ = (accelerator.reduce(local.clone(), "mean")).tolist()
        step_tokens = int(accelerator.reduce(local, "sum")[2].item())
        seconds = time.perf_counter() - step_start
        loss_value = sft_mean + config.kl_weight * kl_mean
        losses.append(loss_value)
        tokens_run += step_tokens
        step_seconds += seconds
        record = {"step": step, "epoch": step / per_epoch, "loss": loss_value,
                  "sft_loss": sft_mean, "kl_loss": kl_mean, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens": step_tokens, "tokens_per_s": step_tokens / seconds,
                  "elapsed_s": time.perf_counter() - run_start}
        if is_main and (step % config.log_every_steps == 0 or step == total_steps):
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
            postfix = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}"}
            if math.isfinite(budget_s):
                left = max(0, int(budget_s - (time.perf_counter() - run_start)))
                postfix["budget left"] = f"{left // 60}:{left % 60:02d}"
            progress.set_postfix(postfix)
        progress.update(1)
        if config.save_every_steps and step % config.save_every_steps == 0:
            save_checkpoint()
            last_saved = step
        if on_step_end is not None:
            on_step_end(record)
    progress.close()

    # ---- 7. save: final checkpoint, adapter / model / merged model, summary -------------------------
    if step != last_saved:
        save_checkpoint()
    peak = accelerator.reduce(torch.tensor(peak_rss_mb(), device=accelerator.device), "max").item()
    if is_main:
        write_outputs(out_dir, trainable, config, accelerator.device)
    tokens_per_s = tokens_run / step_seconds if step_seconds else 0.0
    if is_main:
        summary = {"steps": step, "steps_this_run": len(losses), "total_steps": total_steps,
                   "stop_reason": stop_reason, "final_loss": losses[-1] if losses else None,
                   "tokens": tokens_run, "tokens_per_s": tokens_per_s, "train_seconds": step_seconds,
                   "wall_seconds": time.perf_counter() - run_start, "peak_rss_mb": peak,
                   "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                   "num_processes": processes, "num_examples": len(data),
                   "truncation": dataclasses.asdict(truncation), "resumed_from": str(checkpoint) if checkpoint else None}
        io_utils.atomic_write_json(out_dir / "summary.json", summary)
    accelerator.wait_for_everyone()
    scratch.cleanup()
    return TrainResult(out_dir, step, len(losses), stop_reason, losses, tokens_run, tokens_per_s, peak,
                       adapter_dir=out_dir / "adapter" if trainable.is_peft else None,
                       model_dir=None if trainable.is_peft else out_dir / "model",
                       merged_dir=out_dir / "merged" if trainable.is_peft and config.merge_adapter else None,
                       model=trainable.model, tokenizer=tokenizer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fine-tune a causal LM on a JSONL chat dataset.")
    parser.add_argument("--config", required=True, help="TrainConfig as JSON")
    parser.add_argument("--data", required=True, help="JSONL chat dataset")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", help="model path or hub id (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    train(TrainConfig.from_json_file(args.config), args.data, args.out, model=args.model, resume=args.resume)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
