"""One progress bar for a whole evaluation, weighted by prompts, over all processes.

A user costs ``R`` dialogue prompts (one per observed round), ``M * (R+1)`` held-out prompts (each
held-out set after each history length) and, with beliefs, ``F * (R+1)`` belief questions; the bar counts
those, so that the held-out step (most of the work) moves it in proportion.  Within a step a language
model's scorer reports each group of prompts as it finishes (``ChoiceScorer.on_prompts``); the protocol's
end-of-step calls then make the count exact.  The ETA is the remaining prompts at this run's average rate
(prompts done in this run / time since it started: no smoothing, so the first chunk's model warm-up weighs
less and less); a resumed run starts the bar at the prompts its finished chunks hold.

With several processes each writes its counts to ``partial/progress-rank<R>.json`` (at most once a second,
and at each chunk's end); rank 0 adds them up and alone draws the bar.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eval.io_utils import atomic_write_json

WRITE_INTERVAL_S = 1.0


def prompts_per_user(n_rounds: int, n_heldout: int, n_belief_features: int = 0) -> list[int]:
    """The prompts of one user's steps, in the order the protocol plays them: R dialogue rounds, the
    held-out step, the belief step (when ``n_belief_features``)."""
    steps = [1] * n_rounds + [n_heldout * (n_rounds + 1)]
    if n_belief_features:
        steps.append(n_belief_features * (n_rounds + 1))
    return steps


class ProgressMeter:
    """Counts prompts and users; draws the bar on rank 0 (``show``)."""

    def __init__(self, description: str, total_users: int, user_steps: list[int], *, done_users: int = 0,
                 rank: int = 0, world_size: int = 1, folder: Path | None = None, show: bool = True, file=None):
        self.user_steps = user_steps
        self.total_users = total_users
        self.total = total_users * sum(user_steps)
        self.rank, self.world_size, self.folder = rank, world_size, folder
        self.start_prompts = done_users * sum(user_steps)  # from chunks finished by an earlier run
        self.prompts, self.users = 0, 0  # this process's, in this run
        self._start_users = done_users
        self._steps: list[int] = []
        self._step = 0
        self._in_step = 0
        self._last_write = 0.0
        self.started = time.monotonic()
        self.bar = None
        if show and rank == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.start_prompts, desc=description, unit="prompt",
                            smoothing=0, leave=False, file=file or sys.stderr, dynamic_ncols=True)
            self._postfix()

    # -- counting ------------------------------------------------------------------------------------------
    def begin_chunk(self, n_users: int) -> None:
        self._steps = [n_users * s for s in self.user_steps]
        self._step, self._in_step = 0, 0

    def hint(self, n_prompts: int) -> None:
        """Prompts finished within the current step (capped at the step's size)."""
        if self._step >= len(self._steps):
            return
        n = min(n_prompts, self._steps[self._step] - self._in_step)
        if n > 0:
            self._in_step += n
            self._advance(n)

    def step(self, _=1) -> None:
        """The protocol finished a step: count what the hints did not."""
        if self._step >= len(self._steps):
            return
        self._advance(self._steps[self._step] - self._in_step)
        self._step, self._in_step = self._step + 1, 0

    def end_chunk(self, n_users: int) -> None:
        while self._step < len(self._steps):
            self.step()
        self.users += n_users
        self._publish(force=True)

    def _advance(self, n: int) -> None:
        self.prompts += n
        self._publish()

    # -- sharing and drawing -------------------------------------------------------------------------------
    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < WRITE_INTERVAL_S:
            return
        self._last_write = now
        if self.rank != 0 and self.folder is not None:
            atomic_write_json(self.folder / f"progress-rank{self.rank}.json", {"prompts": self.prompts, "users": self.users})
        if self.bar is not None:
            self.refresh()

    def totals(self) -> tuple[int, int]:
        """(prompts, users) done over all processes, including an earlier run's finished chunks."""
        prompts, users = self.start_prompts + self.prompts, self._start_users + self.users
        if self.folder is not None:
            for rank in range(1, self.world_size):
                try:
                    other = json.loads((self.folder / f"progress-rank{rank}.json").read_text())
                except (OSError, ValueError):
                    continue
                prompts, users = prompts + int(other.get("prompts", 0)), users + int(other.get("users", 0))
        return prompts, users

    def eta_seconds(self) -> float | None:
        """Seconds left at this run's average rate (None before anything is done)."""
        prompts, _ = self.totals()
        done_here = prompts - self.start_prompts
        elapsed = time.monotonic() - self.started
        if done_here <= 0 or elapsed <= 0:
            return None
        return (self.total - prompts) * elapsed / done_here

    def refresh(self) -> None:
        if self.bar is None:
            return
        prompts, _ = self.totals()
        self.bar.n = min(prompts, self.total)
        self._postfix()
        self.bar.refresh()

    def _postfix(self) -> None:
        _, users = self.totals()
        self.bar.set_postfix_str(f"users {users}/{self.total_users}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()
