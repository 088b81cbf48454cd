"""How a command's failure reaches the user: bad input as one line with exit code 2, bugs with their traceback.

Errors that mean "bad input" are the project's own (ppl_models.errors.BayesTeachError and its subclasses:
DomainError, DatasetFormatError, ConfigError, ModelLoadError, ...) and the OSErrors of a path the user gave;
click reports its own usage errors.  Anything else, a plain ValueError, KeyError, TypeError or RuntimeError
included, is a bug and keeps its traceback (exit 1); ``--debug`` shows the traceback of bad input too.
"""
from __future__ import annotations

import click

USER_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# transformers / the hub raise a plain OSError for a model folder or hub id they cannot find or read
LOADER_PACKAGES = ("/transformers/", "/huggingface_hub/", "/safetensors/", "/peft/")


def is_bad_input(error: BaseException) -> bool:
    """Whether ``error`` is the user's input at fault (one line, exit 2) rather than a bug (traceback)."""
    from ppl_models.errors import BayesTeachError

    if isinstance(error, (BayesTeachError, *USER_PATH_ERRORS)):
        return True
    if isinstance(error, OSError):
        import traceback

        frames = traceback.extract_tb(error.__traceback__)
        return bool(frames) and any(package in frames[-1].filename for package in LOADER_PACKAGES)
    return False


class FriendlyGroup(click.Group):
    """A click group that turns bad-input exceptions into a one-line error and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise  # click's own: --help, usage errors, Ctrl-C (judged without importing the package)
        except Exception as error:
            if ctx.params.get("debug") or not is_bad_input(error):
                raise
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            click.echo(f"Error: {message}", err=True)
            ctx.exit(2)
