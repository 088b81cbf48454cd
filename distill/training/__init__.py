"""Fine-tuning a causal LM on teaching data with transformers' Trainer: QLoRA, LoRA or full fine-tuning,
accelerate launches, the chat dataset and its loss, callbacks, and atomic writes of what a run saves.
"""
from typing import TYPE_CHECKING

from distill.lazy import lazy_exports

_EXPORTS = {
    "ConfigError": "distill.training.config",
    "OutputDirInUseError": "distill.training.config",
    "TrainConfig": "distill.training.config",
    "DatasetFormatError": "distill.training.chat_dataset",
    "load_chat_jsonl": "distill.training.chat_dataset",
    "TrainResult": "distill.training.trainer",
    "train": "distill.training.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # heavy modules load on first use

if TYPE_CHECKING:  # the same names, for static readers (API docs, type checkers)
    from distill.training.config import ConfigError, OutputDirInUseError, TrainConfig
    from distill.training.chat_dataset import DatasetFormatError, load_chat_jsonl
    from distill.training.trainer import TrainResult, train
