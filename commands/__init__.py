"""The click commands of ``cli.py``, one module per kind of work (explore, evaluate, teach) over the layers below
them (ppl_models <- eval <- distill <- commands <- cli.py); each command imports its layers inside its body, so
``--help`` starts in a fraction of a second."""

__all__ = ["errors", "common", "explore", "evaluate", "teach"]
