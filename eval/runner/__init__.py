"""Evaluation beyond one process and one sitting: users played in chunks (``play``), over the processes a
launcher started (``launch``: torchrun, accelerate launch), each chunk kept as a file as it finishes so that
a killed evaluation resumes (``store``), with one progress bar weighted by prompts (``progress``)."""

from eval.runner.launch import Launch, LaunchError, split_evenly
from eval.runner.play import assemble, evaluate_users, play_users, slice_data
from eval.runner.progress import ProgressMeter, prompts_per_user
from eval.runner.store import ChunkStore, CorruptChunkError, FolderBusyError, ResumeError, acquire_lock, release_lock

__all__ = ["ChunkStore", "CorruptChunkError", "FolderBusyError", "Launch", "LaunchError", "ProgressMeter", "ResumeError",
           "acquire_lock", "assemble", "evaluate_users", "play_users", "prompts_per_user", "release_lock", "slice_data", "split_evenly"]
