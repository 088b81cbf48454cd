"""The embedded student: a small LLaMA-style model built from scratch for one domain, with a phrase-level
tokenizer, trained on CPU in minutes.
"""
from typing import TYPE_CHECKING

from distill.lazy import lazy_exports

_EXPORTS = {
    "StudentConfig": "distill.student.config",
    "build_student": "distill.student.model",
    "train_student": "distill.student.model",
    "adopt_saved_template": "distill.student.tokenizer",
    "build_tokenizer": "distill.student.tokenizer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # heavy modules load on first use

if TYPE_CHECKING:  # the same names, for static readers (API docs, type checkers)
    from distill.student.config import StudentConfig
    from distill.student.model import build_student, train_student
    from distill.student.tokenizer import adopt_saved_template, build_tokenizer
