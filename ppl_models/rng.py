"""Seeded random streams: every random draw in the toolkit comes from ``generator(seed, *stream_names)``,
so results depend only on the seed and on which stream a draw belongs to (not on call order elsewhere)."""
from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, *names) -> int:
    digest = hashlib.sha256("/".join([str(seed), *map(str, names)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *names) -> torch.Generator:
    """A torch.Generator for the stream ``names`` under ``seed``."""
    return torch.Generator().manual_seed(stream_seed(seed, *names))
