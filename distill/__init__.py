"""Teaching: teaching data from the Bayesian assistant (or the users; for the design task, from the Bayesian
designer), training (``distill.training``), the embedded student (``distill.student``), the whole loop
(``run_distill``; for the design task ``run_design_distill``) and transfer to other domains.
"""
from typing import TYPE_CHECKING

from distill.lazy import lazy_exports

_EXPORTS = {
    "write_teaching_set": "distill.teaching_data",
    "build_examples": "distill.teaching_data",
    "split_users": "distill.teaching_data",
    "write_design_set": "distill.design_data",
    "build_design_examples": "distill.design_data",
    "DistillSettings": "distill.pipeline",
    "run_distill": "distill.pipeline",
    "run_design_distill": "distill.design_pipeline",
    "evaluate_domains": "distill.transfer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # heavy modules load on first use

if TYPE_CHECKING:  # the same names, for static readers (API docs, type checkers)
    from distill.teaching_data import write_teaching_set, build_examples, split_users
    from distill.design_data import write_design_set, build_design_examples
    from distill.pipeline import DistillSettings, run_distill
    from distill.design_pipeline import run_design_distill
    from distill.transfer import evaluate_domains
