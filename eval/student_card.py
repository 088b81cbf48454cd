"""The domain a model was built for, saved beside it (``student.json``), and the check that refuses to play
another domain's dialogues with it.

The embedded student's tokenizer and option-line embeddings are made from one domain's feature names and
value texts; read another domain's dialogue it sees unknown tokens and answers at chance without a word of
warning.  So ``train_student`` writes ``student.json`` into the model directory::

    {"schema": "bayes-teach/student/v1", "domain": "hotel", "noun": "Hotel",
     "features": [{"name": ..., "values": [value texts]}, ...], "fingerprint": sha256 of noun + features,
     "chat_template_options": {"restate": true, ...}}   # what its chat template was built from


and evaluation (``LMAssistant``, ``evaluate --model``) calls ``check_student_domain`` before it prompts the
model: another domain name, or the same name with other feature names or value texts (e.g. a webshop built
from another catalogue), is a ``StudentDomainError`` naming both.  A model directory without the file
(any Hugging Face model) is not checked.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ppl_models import Domain
from ppl_models.errors import BayesTeachError, read_user_text

STUDENT_CARD_NAME = "student.json"
SCHEMA = "bayes-teach/student/v1"


class StudentDomainError(BayesTeachError):
    """A model built for one domain was asked to play another's dialogues (one-line message)."""


def domain_description(domain: Domain) -> dict:
    """The words of a domain that a student's tokenizer is made from: its noun and, per feature, its name
    and the text of every value."""
    return {
        "noun": domain.noun,
        "features": [{"name": f.name, "values": [f.text(i) for i in range(len(f.values))]} for f in domain.features],
    }


def domain_fingerprint(domain: Domain) -> str:
    """sha256 of ``domain_description`` (canonical JSON): equal for two domains whose prompts use the same words."""
    canonical = json.dumps(domain_description(domain), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def save_student_card(domain: Domain, directory, chat_template_options: dict | None = None) -> Path:
    """Write ``directory/student.json``: the domain's name, words and fingerprint, and what the student's chat
    template was built from (``chat_template_options``, if given: a later process that rebuilds the same template
    renders it without the sandbox, see ``distill.student.tokenizer.adopt_saved_template``)."""
    card = {"schema": SCHEMA, "domain": domain.name, **domain_description(domain),
            "fingerprint": domain_fingerprint(domain)}
    if chat_template_options is not None:
        card["chat_template_options"] = dict(chat_template_options)
    path = Path(directory) / STUDENT_CARD_NAME
    from eval.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


def read_student_card(model_dir) -> dict | None:
    """The card saved in ``model_dir`` (a local model directory), or None when there is none (a hub id, any
    model not built for one domain)."""
    if model_dir is None:
        return None
    path = Path(str(model_dir)).expanduser() / STUDENT_CARD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(read_user_text(path))
    except json.JSONDecodeError as error:
        raise BayesTeachError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def check_student_domain(card: dict | None, domain: Domain, model: str = "the student") -> None:
    """Raise StudentDomainError when ``card`` (``read_student_card``) records a domain other than ``domain``
    (by name, or by its words under the same name); nothing when ``card`` is None."""
    if card is None:
        return
    built_for = card.get("domain")
    if built_for != domain.name:
        raise StudentDomainError(
            f"{model} was built for domain {built_for!r}, not {domain.name!r}: its tokenizer and option embeddings "
            f"know only {built_for}'s words (evaluate it with --domain {built_for}, or teach a --model on {domain.name})"
        )
    fingerprint = domain_fingerprint(domain)
    if card.get("fingerprint") != fingerprint:
        raise StudentDomainError(
            f"{model} was built for a {built_for!r} domain with other feature names or value texts than this "
            f"{domain.name!r} (fingerprint {str(card.get('fingerprint'))[:12]} vs {fingerprint[:12]})"
        )
