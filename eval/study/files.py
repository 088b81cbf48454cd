"""What every reader of the study's released files shares: the error, the replay record, JSONL lines,
checked option rounds, and the text-only domain of the webshop files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ppl_models import Domain
from ppl_models.domain import Feature
from ppl_models.errors import BayesTeachError, read_user_text
from ppl_models.linear import linear_utility, linear_weight_prior

from eval.records import ProtocolData


class StudyDataError(BayesTeachError):
    """A released file that cannot be read as the domain's data, naming the file, line and key or text."""


@dataclass
class StudyReplay:
    """A release file read for replay: ``data`` for ``run_protocol``, and where each user came from."""

    domain: Domain
    data: ProtocolData
    kind: str  # "synthetic", "human" or "webshop"
    lines: list  # each user's line in the interaction file (1-based)
    idx: list  # each user's ``idx``
    files: list  # {"path", "sha256", "lines"} of every file read
    heldout_scores: torch.Tensor | None = None  # [N, M, O]: the release's score per option (webshop)
    notes: dict = field(default_factory=dict)


def file_record(path: Path) -> dict:
    data = path.read_bytes()
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(),
            "lines": data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)}


def read_jsonl(path: Path) -> list:
    """(line number, object) for every non-blank line."""
    rows = []
    for number, line in enumerate(read_user_text(path, StudyDataError).splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise StudyDataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not rows:
        raise StudyDataError(f"{path}: no lines")
    return rows


def need(obj, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise StudyDataError(f"{where}: missing key {key!r}")
    return obj[key]


def need_list(obj, key: str, where: str) -> list:
    """``obj[key]``, which must be a list."""
    value = need(obj, key, where)
    if not isinstance(value, list):
        raise StudyDataError(f"{where}: {key!r} must be a list, got {type(value).__name__}")
    return value


def need_numbers(obj, key: str, where: str) -> list:
    """``obj[key]``, which must be a list of finite numbers."""
    import math

    value = need_list(obj, key, where)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise StudyDataError(f"{where}: {key!r} must list finite numbers")
    return value


def option_table(options, choice, where: str, n_options: int) -> tuple:
    """A round's option texts and pick, checked: (list of str, int)."""
    if not isinstance(options, list) or len(options) != n_options or not all(isinstance(o, str) for o in options):
        raise StudyDataError(f"{where}: 'options' must be {n_options} option texts")
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < n_options:
        raise StudyDataError(f"{where}: 'user_idx' {choice!r} is not an option index 0..{n_options - 1}")
    return options, choice


def strip_label(text: str, noun: str, position: int, where: str) -> str:
    """The option text after its "Flight 2: " label (which must name its position)."""
    label = f"{noun[:1].upper() + noun[1:]} {position + 1}: "
    if not text.startswith(label):
        raise StudyDataError(f"{where}: option text {text[:60]!r} does not start with {label!r}")
    return text[len(label):]


class ReleasedTextDomain(Domain):
    """A domain whose option text is its one feature's text as released (no "feature: " label)."""

    def option_text(self, index_row) -> str:
        return self.features[0].text(int(index_row[0]))


def released_text_domain(name: str, texts: list, scores: list) -> ReleasedTextDomain:
    """One "product" feature whose values are option texts (each occurrence its own value) scaled to their
    scores, and one user who maximises the score: the oracle picks the best, an LM reads the texts."""
    features = (Feature("product", tuple(range(len(texts))), texts.__getitem__, tuple(scores)),)
    return ReleasedTextDomain(
        name=name, noun="product", features=features, utility=linear_utility,
        preference_model=linear_weight_prior(["product"], levels=(1.0,), exclude_indifferent=False),
        description="Released web-shopping option sets (scored options, no preference model).",
    )
