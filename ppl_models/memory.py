"""Memory for exact inference: large outputs on transparent huge pages, and an allocator kept warm.

The first write to freshly allocated memory page-faults once per page.  Exact inference writes its
posterior (``[dialogues, rounds + 1, hypotheses]`` float64, e.g. 618 MB for 20,592 flight dialogues) once,
so with 4 KiB pages faulting can cost more than computing it.  On Linux, ``madvise(MADV_HUGEPAGE)`` asks for
2 MiB pages for the range (the kernel's transparent_hugepage setting "madvise", a common default, gives them
only where asked): 512 times fewer faults.  Elsewhere, or where the call fails, this is a plain
``torch.empty``.  One caveat: on a virtual machine whose balloon driver hands free memory back to the host,
free huge pages that sat idle may be memory the host took back, and the first write to them can then cost
more than 4 KiB pages would (the host backs them again).  ``benchmarks/bench_inference.py`` (its ``memory``
section) times first and second writes on both page sizes.

Inference also allocates and frees a few MB of intermediate tensors per chunk of dialogues.  glibc's malloc
returns freed memory at the top of its heap to the kernel once it exceeds a trim threshold, which starts at
128 KiB and only rises (to twice the size, up to 64 MiB) when a large block it had mapped separately is
freed; depending on what the process happened to allocate before, every chunk's intermediates could be
faulted in afresh, differently from one process start to the next.  ``warm_allocator`` allocates and frees
one 31 MiB block once per process, which raises both thresholds to their maximum as any program that once
used such a buffer would; it changes no setting (an explicit ``mallopt`` would switch the adaptive thresholds off).
"""
from __future__ import annotations

import ctypes
import functools
import sys

import torch

_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux
_HUGE_PAGE = 1 << 21
MIN_BYTES = 8 * _HUGE_PAGE  # smaller tensors gain little and may come from the allocator's reused heap


@functools.lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def advise_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """Ask for huge pages under ``tensor``'s storage (the 2 MiB-aligned part of it), before its first write.

    Only advice: the values are untouched, failures are ignored, and small or non-CPU tensors are left alone.
    """
    nbytes = tensor.untyped_storage().nbytes()
    madvise = _madvise()
    if madvise is None or tensor.device.type != "cpu" or nbytes < MIN_BYTES:
        return tensor
    address = tensor.untyped_storage().data_ptr()
    start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    stop = (address + nbytes) & ~(_HUGE_PAGE - 1)
    if stop > start:
        madvise(start, stop - start, _MADV_HUGEPAGE)
    return tensor


def empty(shape, dtype=torch.float32) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)``, on huge pages where available (see the module docstring)."""
    return advise_huge_pages(torch.empty(shape, dtype=dtype))


@functools.lru_cache(maxsize=1)
def warm_allocator() -> None:
    """Once per process: allocate and free a 31 MiB block (see the module docstring)."""
    block = torch.empty(31 << 20, dtype=torch.uint8)
    del block
