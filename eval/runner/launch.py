"""The processes an evaluation runs in, as the ecosystem's launchers describe them.

``torchrun`` and ``accelerate launch`` start N copies of the command and tell each its place through the
environment: ``RANK`` (0..N-1), ``WORLD_SIZE`` (N), ``LOCAL_RANK`` (its GPU on this node) and
``MASTER_ADDR``/``MASTER_PORT`` (where the processes meet).  ``Launch.from_env`` reads them (no variables:
one process) and, for N > 1, joins the process group: gloo on CPU, nccl where the process has a GPU.  The
group is used to agree (``broadcast``) and to wait for each other (``barrier``); results travel through
files (``eval/runner/store.py``), which also makes them resumable.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from ppl_models.errors import BayesTeachError

# Processes wait for the slowest at the end of an evaluation: as long as a long evaluation may take.
BARRIER_TIMEOUT = datetime.timedelta(hours=48)
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(BayesTeachError):
    """The launcher's environment is inconsistent (one line)."""


@dataclass
class Launch:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # the process group's, when world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> str:
        """Where this process's model goes: its own GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
        import torch

        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"

    @classmethod
    def from_env(cls, environ=None, init: bool = True) -> "Launch":
        """This process's place (RANK, WORLD_SIZE, LOCAL_RANK; none set: the only process).  ``init``: join
        the process group when there are several."""
        environ = os.environ if environ is None else environ
        try:
            world_size = int(environ.get("WORLD_SIZE", "1"))
            rank = int(environ.get("RANK", "0"))
            local_rank = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise LaunchError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun or accelerate launch)") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise LaunchError(f"RANK {rank} is not within WORLD_SIZE {world_size}")
        launch = cls(rank, world_size, local_rank)
        if world_size > 1 and init:
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in environ]
            if missing:
                raise LaunchError(f"WORLD_SIZE is {world_size} but {' and '.join(missing)} is not set: start the processes "
                                  "with torchrun or accelerate launch")
            launch._init_group()
        return launch

    def _init_group(self) -> None:
        import torch
        import torch.distributed as dist

        if dist.is_initialized():
            self.backend = dist.get_backend()
            return
        if torch.cuda.is_available():
            torch.cuda.set_device(self.device)
            self.backend = "nccl"
        else:
            self.backend = "gloo"
        dist.init_process_group(self.backend, timeout=BARRIER_TIMEOUT)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every process (any picklable object)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def split_evenly(items: list, parts: int, index: int) -> list:
    """Part ``index`` of ``items`` cut into ``parts`` contiguous parts whose sizes differ by at most one
    (the first ``len(items) % parts`` parts one longer)."""
    size, extra = divmod(len(items), parts)
    start = index * size + min(index, extra)
    return items[start : start + size + (index < extra)]
