"""Atomic file and directory writes, and resumable training checkpoints built on them.

A reader (a resumed run, an evaluation script, a person) must never see a half-written file or checkpoint:

* files are written to a temporary name in the same directory, fsync'ed, then ``os.replace``d over the
  target (atomic on POSIX);
* directories are filled under a temporary name, a ``COMPLETE`` marker file is written *last*, and the
  directory is then renamed into place.  A checkpoint counts as complete only if its marker exists, so a
  crash at any moment leaves either the old state or the new one, never something in between.

A checkpoint (``checkpoints/step-NNNNNNNN/``) holds the trainable weights (``trainable.safetensors``, exact
parameter names; plus ``adapter/`` in PEFT layout for adapters), optimizer and scheduler states, every
process's RNG states, ``trainer_state.json`` (step and data position) and the ``train_config.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from distill.train_config import TrainConfig

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_PREFIX = "step-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success mark it complete and rename it to ``final``.

    An existing ``final`` is replaced (moved aside first, deleted after the new one is in place).  On an
    exception the temporary directory is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        atomic_write_text(tmp / COMPLETE_MARKER, "complete\n")  # written last: everything else is on disk
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / COMPLETE_MARKER).is_file()


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def complete_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; temporary and unmarked ones are skipped."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def last_complete_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    found = complete_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def prune_checkpoints(checkpoints_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and stale temporary directories."""
    root = Path(checkpoints_dir)
    if keep_last > 0:
        for _, path in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)
    if root.is_dir():  # leftovers of a crash mid-save: never complete, never resumed from
        for child in [*root.glob(".tmp-*"), *root.glob(".old-*")]:
            shutil.rmtree(child, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Resumable training checkpoints
# ---------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(accelerator, out_dir: Path, trainable, optimizer, scheduler, config: TrainConfig, state: dict) -> None:
    """All processes call this (RNG states are gathered); the main process writes it atomically.
    ``trainable`` is a model_setup.TrainableModel."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    rng_states = gather_object([rng_state()])  # one per process, in process order
    if accelerator.is_main_process:
        checkpoints = out_dir / "checkpoints"
        with atomic_directory(checkpoints / checkpoint_dir_name(state["step"])) as tmp:
            save_file(trainable_state(trainable.model), str(tmp / "trainable.safetensors"))
            if trainable.is_peft:  # also usable as an adapter on its own
                trainable.model.save_pretrained(str(tmp / "adapter"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng_states, tmp / "rng.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            (tmp / "train_config.json").write_text(config.to_json())
        prune_checkpoints(checkpoints, config.keep_last_checkpoints)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, accelerator, trainable, optimizer, scheduler, config: TrainConfig) -> dict:
    """Restore this process's weights, optimizer, scheduler and RNG from ``path``; -> its trainer state.
    Refuses (ValueError) when settings that change what a step computes differ from the checkpoint's."""
    from safetensors.torch import load_file

    saved = TrainConfig.from_json_file(path / "train_config.json")
    state = json.loads((path / "trainer_state.json").read_text())
    problems = config.resume_mismatches(saved)
    if state["num_processes"] != accelerator.num_processes:
        problems.append(f"num_processes: checkpoint {state['num_processes']} vs now {accelerator.num_processes}")
    if problems:
        raise ValueError(f"cannot resume from {path}: settings changed: " + "; ".join(problems))
    weights = load_file(str(path / "trainable.safetensors"))
    with torch.no_grad():
        for name, parameter in trainable.model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(weights[name].to(parameter.device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True)[accelerator.process_index])
    return state


def checkpoint_state(step: int, steps_per_epoch: int, global_batch: int, num_processes: int) -> dict:
    """Where the run is: the data position is a pure function of the step (see chat_dataset), recorded
    explicitly so a checkpoint can be read without the code."""
    epoch, position = divmod(step, steps_per_epoch)
    return {"step": step, "epoch": epoch, "position_in_epoch": position, "global_batch": global_batch,
            "num_processes": num_processes}
