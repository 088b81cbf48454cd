"""Atomic file and directory writes, and which of the Trainer's checkpoints are complete.

A reader (a resumed run, an evaluation script, a person) must never see a half-written file or checkpoint:

* files are written to a temporary name in the same directory, fsync'ed, then ``os.replace``d over the
  target (atomic on POSIX);
* directories are filled under a temporary name, a ``COMPLETE`` marker file is written *last*, and the
  directory is then renamed into place.  A checkpoint counts as complete only if its marker exists, so a
  crash at any moment leaves either the old state or the new one, never something in between.

transformers' Trainer writes its checkpoints (``checkpoint-N/``: weights or adapter, optimizer, scheduler,
RNG states, trainer_state.json) in place; ``distill.training.callbacks.CompleteMarker`` adds the ``COMPLETE``
marker once the Trainer is done with one, and a resumed run starts from the newest marked one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
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


def atomic_save_figure(figure, path: str | Path, **savefig_options) -> None:
    """A matplotlib figure saved as ``path`` (its suffix the format) atomically: drawn in memory first, so a
    failing draw or a full disk leaves the previous file."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig_options)
    atomic_write_bytes(path, buffer.getvalue())


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
