"""Partial results of an evaluation, kept as it goes so that a killed one can be resumed.

Users are cut into chunks of ``chunk_users`` (in the order they are evaluated; the cut does not depend on
how many processes play them).  Each finished chunk is one file, ``DIR/partial/chunk-NNNNN.pt``, written
atomically (``eval.io_utils``): a crash at any moment leaves whole chunk files and at most a temporary file,
which is ignored.  ``DIR/partial/manifest.json`` records the arguments the evaluation was started with;
``--resume`` with other arguments is refused, naming what differs.  ``DIR/evaluate.lock`` holds the pid of
the evaluation writing to DIR, so that a second one refuses instead of mixing its chunks in; a lock whose
process is gone (killed) is taken over.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
from pathlib import Path

import torch

from ppl_models.errors import BayesTeachError

from eval.io_utils import atomic_write_bytes, atomic_write_json

SCHEMA = "bayes-teach/partial-evaluation/v1"
PARTIAL_DIR = "partial"
MANIFEST = "manifest.json"
LOCK_FILE = "evaluate.lock"
_CHUNK_NAME = re.compile(r"^chunk-(\d{5})\.pt$")


class ResumeError(BayesTeachError):
    """--resume cannot continue this folder (one line saying why)."""


class CorruptChunkError(BayesTeachError):
    """A chunk file that cannot be read back (one line naming it)."""


class FolderBusyError(BayesTeachError):
    """Another evaluation is writing to the folder."""


def arguments_hash(arguments: dict) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:16]


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two argument records, as "name X there, Y now" (long values cut short)."""
    return [f"{key} {_shown(old.get(key))} there, {_shown(new.get(key))} now"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


# -- the lock --------------------------------------------------------------------------------------------------

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def acquire_lock(out_dir) -> Path:
    """Create DIR/evaluate.lock ("host pid"); FolderBusyError if a live evaluation holds it.  A lock left
    by a process that is gone on this host is taken over."""
    path = Path(out_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
                pid = int(pid)
            except (OSError, ValueError):
                host, pid = None, None
            if host == socket.gethostname() and pid is not None and not _process_alive(pid):
                path.unlink(missing_ok=True)  # stale: its evaluation was killed
                continue
            holder = f"process {pid} on {host}" if pid is not None else "another process"
            raise FolderBusyError(f"{out_dir} is being written by another evaluation ({holder}, see {path}); wait for "
                                  f"it, or give another --out (delete {path} only if that process is gone)") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(mine)
        return path
    raise FolderBusyError(f"{out_dir}: could not take {path} (another evaluation started at the same moment)")


def release_lock(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


# -- the chunks ------------------------------------------------------------------------------------------------

class ChunkStore:
    """The chunk files of one evaluation: ``n_users`` users in chunks of ``chunk_users``."""

    def __init__(self, out_dir, arguments: dict, n_users: int, chunk_users: int):
        if chunk_users < 1:
            raise BayesTeachError("--chunk-users must be at least 1")
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / PARTIAL_DIR
        self.n_users, self.chunk_users = n_users, chunk_users
        self.arguments = {**arguments, "n_users": n_users, "chunk_users": chunk_users}
        self.hash = arguments_hash(self.arguments)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_users // self.chunk_users)

    def rows(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_users
        return start, min(start + self.chunk_users, self.n_users)

    def path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:05d}.pt"

    def chunk_files(self) -> dict[int, Path]:
        if not self.folder.is_dir():
            return {}
        found = {}
        for child in self.folder.iterdir():
            match = _CHUNK_NAME.match(child.name)
            if match:
                found[int(match.group(1))] = child
        return found

    def prepare(self, resume: str) -> list[int]:
        """Make the folder ready (one process: rank 0) and return the finished chunks.

        ``resume``: "no" (start fresh: earlier partial results are discarded), "yes" (continue; an error
        when there is nothing to continue or the arguments differ) or "if-any" (continue when there is
        something to continue, else start fresh)."""
        manifest_path = self.folder / MANIFEST
        has_partial = manifest_path.is_file()
        if resume == "yes" and not has_partial:
            raise ResumeError(f"--resume: {self.folder} holds no partial evaluation to resume; run without --resume to "
                              "start fresh, or with --resume-if-partial to resume when there is one and start fresh otherwise")
        if resume != "no" and has_partial:
            try:
                manifest = json.loads(manifest_path.read_text())
                old = manifest["arguments"]
            except (OSError, ValueError, KeyError, TypeError):
                raise CorruptChunkError(f"{manifest_path} is corrupt; delete {self.folder} to start fresh") from None
            changed = differences(old, self.arguments)
            if changed:
                raise ResumeError(f"--resume: {self.folder} was started with other arguments: {'; '.join(changed)}")
            done = sorted(self.chunk_files())
            for chunk in done:
                if chunk >= self.n_chunks:
                    raise CorruptChunkError(f"{self.path(chunk)} is not a chunk of this evaluation ({self.n_chunks} chunks)")
                self.load(chunk)  # read back now: a corrupt file is named before any work
            return done
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        atomic_write_json(manifest_path, {"schema": SCHEMA, "arguments": self.arguments})
        return []

    def save(self, chunk: int, payload: dict) -> None:
        buffer = io.BytesIO()
        torch.save({"schema": SCHEMA, "arguments_hash": self.hash, "chunk": chunk, "rows": list(self.rows(chunk)),
                    **payload}, buffer)
        atomic_write_bytes(self.path(chunk), buffer.getvalue())

    def load(self, chunk: int) -> dict:
        path = self.path(chunk)
        try:
            payload = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise CorruptChunkError(f"{path} is missing: a process did not finish its chunks") from None
        except Exception as error:  # noqa: BLE001 - any failure to read it back is a corrupt file
            raise CorruptChunkError(f"{path} is corrupt ({str(error).splitlines()[0][:120] if str(error) else type(error).__name__}); "
                                    "delete it and --resume to play its users again") from None
        if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
            raise CorruptChunkError(f"{path} is corrupt (not a partial-evaluation chunk); delete it and --resume to play its users again")
        if payload.get("arguments_hash") != self.hash or payload.get("rows") != list(self.rows(chunk)):
            raise CorruptChunkError(f"{path} belongs to another evaluation (other arguments); delete it and --resume")
        return payload

    def finish(self) -> None:
        """Remove the partial results (after the report is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
