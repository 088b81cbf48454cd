"""The one base class of the project's "your input is at fault" errors (the bottom layer, so every layer can use it).

The command line turns a ``BayesTeachError`` into one line and exit code 2; any other exception is a bug in
bayes-teach (or a library) and keeps its traceback.  Python callers can catch ``BayesTeachError`` to tell the two
apart the same way.
"""
from __future__ import annotations


class BayesTeachError(ValueError):
    """The user's input is at fault, and the message says which input and why in one line: a file that cannot be
    read as what it should be (a dialogue, a report, a released study file, a dataset, a prompt template, a
    catalogue, a recipe), a command-line or config value out of range or unknown, a domain that cannot be built,
    a model or adapter that cannot be loaded, or a missing piece of the user's environment (bitsandbytes, a GPU).
    A broken promise between two parts of bayes-teach (a tensor of the wrong shape passed by our own code, an
    impossible internal state) is not one: raise a plain ``ValueError`` (or ``RuntimeError``) there, so that it
    shows its traceback.  A subclass of ``ValueError``, so that ``except ValueError`` keeps catching it."""


def read_user_text(path, error: type[BayesTeachError] = BayesTeachError) -> str:
    """The text of a file the user gave, read as UTF-8 (a byte-order mark is dropped).  Bytes that are not UTF-8
    raise ``error`` naming the file and the line, instead of a UnicodeDecodeError naming neither; a missing path
    or a folder keeps its FileNotFoundError / IsADirectoryError (the command line shows those as bad input too)."""
    from pathlib import Path

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as failure:
        line = data.count(b"\n", 0, failure.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {failure.start}: {failure.reason}); is it the right file?") from None
