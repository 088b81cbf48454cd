"""What the training run adds to transformers' Trainer, as TrainerCallbacks and a learning-rate schedule.

* ``BudgetCallback``: stops cleanly (and saves a checkpoint) before the next step would overrun a wall-clock
  budget; every process takes the same decision.
* ``BudgetProgressCallback``: under a budget, the progress bar shows steps, rate and the budget left (the
  Trainer's own bar shows a percentage and an ETA of max_steps, a mere cap there).
* ``StepRecorder``: the exact loss of every step (cross-entropy and KL parts, summed over processes) into
  ``train_log.jsonl`` and the run's result; tensorboard gets the Trainer's own logs.
* ``CompleteMarker``: writes ``COMPLETE`` into a checkpoint once the Trainer has written all of it, so a run
  killed mid-save never resumes from half a checkpoint.
* ``LossPlotCallback``: ``loss.png`` (loss per step) next to the tensorboard files at the end.
* ``clock_cosine``: warm-up by steps, then a cosine decay that follows the wall clock to a deadline; the
  embedded student gives it to the Trainer (``train(..., lr_lambda=...)``) so its schedule ends with its budget
  whatever the step time turns out to be on a shared CPU.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from eval import io_utils


def _all_processes_max(value: float, device) -> float:
    """The largest ``value`` over the processes of a distributed run (the value itself in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return float(tensor.item())
    return value


def _all_processes_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
    return values


class BudgetCallback(TrainerCallback):
    """Stop before a step would end after ``start + budget_s`` (judged by the mean step so far) and save."""

    def __init__(self, budget_s: float, start: float):
        self.budget_s, self.start = budget_s, start
        self.last_end, self.step_seconds, self.steps = 0.0, 0.0, 0
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps += 1
        self.step_seconds += now - self.last_end  # a step: from the end of the last (data loading included)
        self.last_end = now
        over = float(now - self.start + self.step_seconds / self.steps > self.budget_s)
        if _all_processes_max(over, args.device) > 0 and not control.should_training_stop:
            control.should_training_stop = control.should_save = True
            self.stopped = True
        return control

    def seconds_left(self) -> float:
        return max(0.0, self.budget_s - (time.perf_counter() - self.start))


class StepRecorder(TrainerCallback):
    """Per optimizer step: loss, its parts, learning rate, tokens and tokens/s.  ``trainer.step_parts`` holds
    this process's [sft, kl, tokens] of the step (DistillTrainer.compute_loss adds to it)."""

    def __init__(self, trainer, log_path: Path, kl_weight: float):
        self.trainer, self.log_path, self.kl_weight = trainer, log_path, kl_weight
        self.losses: list[float] = []
        self.tokens, self.step_seconds, self.last_end, self.lr = 0, 0.0, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.lr = self.trainer.lr_scheduler.get_last_lr()[0]  # the rate this step uses

    def on_step_end(self, args, state, control, **kwargs):
        sft, kl, tokens = _all_processes_sum(self.trainer.step_parts).tolist()
        self.trainer.step_parts.zero_()
        choice_nll, choice_count = _all_processes_sum(self.trainer.choice_parts).tolist()
        self.trainer.choice_parts.zero_()
        now = time.perf_counter()
        seconds, self.last_end = now - self.last_end, now  # from the last step's end: data loading included
        loss = sft + self.kl_weight * kl
        self.losses.append(loss)
        self.tokens += int(tokens)
        self.step_seconds += seconds
        if state.is_world_process_zero and (state.global_step % args.logging_steps == 0 or state.global_step == state.max_steps):
            record = {"step": state.global_step, "epoch": state.epoch, "loss": loss, "sft_loss": sft, "kl_loss": kl,
                      "choice_loss": choice_nll / choice_count if choice_count else None,
                      "lr": self.lr, "tokens": int(tokens), "tokens_per_s": tokens / seconds}
            with self.log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        return control

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_seconds if self.step_seconds else 0.0


class BudgetProgressCallback(TrainerCallback):
    """A progress bar of steps and rate, with the loss, learning rate and budget left (main process only)."""

    def __init__(self, budget: BudgetCallback, recorder: StepRecorder):
        self.budget, self.recorder, self.bar = budget, recorder, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=None, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            left = int(self.budget.seconds_left())
            if state.global_step % args.logging_steps == 0 and self.recorder.losses:
                self.bar.set_postfix({"loss": f"{self.recorder.losses[-1]:.4f}", "lr": f"{self.recorder.lr:.2e}",
                                      "budget left": f"{left // 60}:{left % 60:02d}"})
            self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class CompleteMarker(TrainerCallback):
    """After each save, mark the checkpoint complete and store the run's config in it."""

    def __init__(self, config_json: str):
        self.config_json = config_json

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                io_utils.atomic_write_text(folder / "train_config.json", self.config_json)
                io_utils.atomic_write_text(folder / io_utils.COMPLETE_MARKER, "complete\n")
        return control


class LossPlotCallback(TrainerCallback):
    """At the end of training, draw the logged loss per step into ``path`` (PNG)."""

    def __init__(self, log_path: Path, path: Path):
        self.log_path, self.path = log_path, path

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.log_path.exists():
            return
        records = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
        if not records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot([r["step"] for r in records], [r["loss"] for r in records], label="loss")
        if any(r["kl_loss"] for r in records):
            axis.plot([r["step"] for r in records], [r["sft_loss"] for r in records], label="cross-entropy", alpha=0.7)
            axis.plot([r["step"] for r in records], [r["kl_loss"] for r in records], label="KL", alpha=0.7)
        choice = [r for r in records if r.get("choice_loss") is not None]
        if choice and any(r["choice_loss"] != r["sft_loss"] for r in choice):  # the answers have fixed words too
            axis.plot([r["step"] for r in choice], [r["choice_loss"] for r in choice], label="choice tokens only", alpha=0.7)
        if len(axis.get_lines()) > 1:
            axis.legend()
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("training loss")
        figure.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        io_utils.atomic_save_figure(figure, self.path, dpi=100)
        plt.close(figure)


def clock_cosine(warmup_steps: int, min_lr_ratio: float, end: float):
    """A LambdaLR factor: linear warm-up over ``warmup_steps`` steps (transformers' convention), then a cosine
    from 1 to ``min_lr_ratio`` over the wall-clock time left until ``end`` (a time.perf_counter() value)."""
    state = {}

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        begin = state.setdefault("begin", time.perf_counter())  # when the decay starts
        span = end - begin
        progress = 1.0 if span <= 0 else min(1.0, (time.perf_counter() - begin) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor
