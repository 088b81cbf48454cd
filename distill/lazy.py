"""Lazy public names for a package whose members import heavy libraries (transformers, peft).

A package lists its public names and the module each lives in; ``from package import name`` then imports
that module on first use, so importing one light submodule (``distill.training.config``) does not load
the whole package.  Static tools (the API docs) read the same names from the package's
``if TYPE_CHECKING:`` imports.
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` whose public names map to the modules defining them."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
