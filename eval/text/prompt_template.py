"""Prompt templates as data: the wording of every prompt, read from a small JSON file and checked.

``eval/text/templates/default.json`` is today's wording (what the shipped students were trained on); a user's file
with the same fields changes the text of teaching data and evaluation prompts alike, e.g. to match the text a
released checkpoint was trained on.  ``eval.text.dialogue`` is still the one place prompts are made: it fills
these fields.  The layout around the fields is fixed (see ``dialogue_text``): a user turn is the opening
(instructions or feedback), a blank line, the round header, one option line per option, and the question.

Each field's placeholders are listed in ``FIELDS`` (``{number}`` is an option's 1-based number, ``{round}`` a
round's, ``{point}`` a belief scale point); a field that lacks a required placeholder, uses one not allowed
there, or a template with a missing or unknown field is a ``PromptTemplateError`` (a ValueError: one line
naming the file and the field).
"""
from __future__ import annotations

import functools
import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

from ppl_models.errors import BayesTeachError, read_user_text

DEFAULT_TEMPLATE_PATH = Path(__file__).parent / "templates" / "default.json"
SAVED_TEMPLATE_NAME = "prompt_template.json"  # the template a model directory was trained with, saved beside it
N_BELIEF_SCALE_POINTS = 5  # the belief scale's length is fixed: its points map to weight levels (belief_scale.py)

NOUNS = frozenset({"noun", "Noun"})
# field -> (allowed placeholders, required placeholders); a frozenset() field takes no placeholders.
FIELDS = {
    "instructions": (NOUNS | {"features", "n_options", "answer_format"}, frozenset()),
    "feature_separator": (frozenset(), frozenset()),
    "feature_last_separator": (frozenset(), frozenset()),
    "round_header": (frozenset({"round"}), frozenset({"round"})),
    "option_line": (NOUNS | {"number", "description"}, frozenset({"number", "description"})),
    "question": (NOUNS, frozenset()),
    "answer": (NOUNS | {"number"}, frozenset({"number"})),
    "no_answer": (NOUNS, frozenset()),
    "feedback_right": (NOUNS | {"number"}, frozenset({"number"})),
    "feedback_wrong": (NOUNS | {"number"}, frozenset({"number"})),
    "feedback_after_no_answer": (NOUNS | {"number"}, frozenset({"number"})),
    "belief_question": (frozenset({"feature", "lowest", "highest", "n_points", "scale", "answer_format"}), frozenset()),
    "belief_scale_point": (frozenset({"point", "words"}), frozenset({"point", "words"})),
    "belief_scale_separator": (frozenset(), frozenset()),
    "belief_answer": (frozenset({"point"}), frozenset({"point"})),
    # The designer's prompt (``dialogue.design_prompt_messages``): which of several labelled option sets to show next.
    "design_instructions": (NOUNS | {"features", "n_options", "n_sets", "answer_format"}, frozenset()),
    "design_choice": (NOUNS | {"number"}, frozenset({"number"})),
    "design_set_header": (frozenset({"number"}), frozenset({"number"})),
    "design_question": (NOUNS | {"round", "n_sets"}, frozenset()),
    "design_answer": (frozenset({"number"}), frozenset({"number"})),
}
# Fields a template file may leave out: the shipped default's wording is used (and is not part of the file's
# content or sha256), so templates written before these fields existed still load unchanged.
OPTIONAL_FIELDS = frozenset({"design_instructions", "design_choice", "design_set_header", "design_question", "design_answer"})
LIST_FIELDS = {"belief_scale": N_BELIEF_SCALE_POINTS}  # field -> its exact length (plain strings, no placeholders)
META_FIELDS = {"name": True, "description": False}  # field -> required


class PromptTemplateError(BayesTeachError):
    """A prompt template file that cannot be used (the message names the file and the field)."""


@dataclass(frozen=True)
class PromptTemplate:
    """A checked prompt template: ``fields`` (every key of ``FIELDS`` and ``LIST_FIELDS``), its ``name`` and
    where it came from (``source``: a path, or "default")."""

    name: str
    fields: dict
    source: str
    description: str = ""
    defaulted: tuple = ()  # optional fields the file left out, filled from the shipped default

    def fill(self, field: str, **values) -> str:
        """The text of ``field`` with its placeholders filled from ``values``."""
        return self.fields[field].format(**values)

    def content(self) -> dict:
        """The template as its file holds it (what the sha256 is taken over)."""
        meta = {"name": self.name} | ({"description": self.description} if self.description else {})
        return meta | {field: text for field, text in self.fields.items() if field not in self.defaulted}

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of ``content()``: the same for any layout of the same template."""
        canonical = json.dumps(self.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def summary(self, with_content: bool = False) -> dict:
        """What reports and manifests record: name, sha256, source (and the whole content if asked)."""
        summary = {"name": self.name, "sha256": self.sha256, "source": self.source}
        return summary | ({"content": self.content()} if with_content else {})


def _placeholders(source: str, field: str, text: str) -> set[str]:
    """The placeholder names of ``text``; only plain ``{name}`` is allowed (no index, attribute, conversion,
    format spec); ``{{`` and ``}}`` are literal braces."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise PromptTemplateError(f"prompt template {source}: field {field!r}: {error}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise PromptTemplateError(
                f"prompt template {source}: field {field!r}: placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not allowed; write a plain {{name}}")
        names.add(name)
    return names


def check_template(data, source: str) -> PromptTemplate:
    """A ``PromptTemplate`` from the parsed JSON ``data`` of file ``source``, or a PromptTemplateError."""
    if not isinstance(data, dict):
        raise PromptTemplateError(f"prompt template {source}: expected a JSON object of fields, got {type(data).__name__}")
    known = set(FIELDS) | set(LIST_FIELDS) | set(META_FIELDS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise PromptTemplateError(f"prompt template {source}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    required = [f for f in FIELDS if f not in OPTIONAL_FIELDS] + list(LIST_FIELDS) + [f for f, needed in META_FIELDS.items() if needed]
    missing = [f for f in required if f not in data]
    if missing:
        raise PromptTemplateError(f"prompt template {source}: missing field {missing[0]!r}")
    defaulted = tuple(f for f in FIELDS if f in OPTIONAL_FIELDS and f not in data)
    if defaulted:
        data = {**data, **{f: _default_data()[f] for f in defaulted}}
    for field in META_FIELDS:
        if field in data and not isinstance(data[field], str):
            raise PromptTemplateError(f"prompt template {source}: field {field!r} must be a string")
    fields = {}
    for field, (allowed, needed) in FIELDS.items():
        text = data[field]
        if not isinstance(text, str) or not text:
            raise PromptTemplateError(f"prompt template {source}: field {field!r} must be a non-empty string")
        names = _placeholders(source, field, text)
        extra = sorted(names - allowed)
        if extra:
            allowed_text = ", ".join(f"{{{n}}}" for n in sorted(allowed)) or "none"
            raise PromptTemplateError(f"prompt template {source}: field {field!r}: placeholder {{{extra[0]}}} is not "
                                      f"allowed (allowed: {allowed_text})")
        absent = sorted(needed - names)
        if absent:
            raise PromptTemplateError(f"prompt template {source}: field {field!r} must contain {{{absent[0]}}}")
        fields[field] = text
    for field, length in LIST_FIELDS.items():
        items = data[field]
        if not (isinstance(items, list) and len(items) == length and all(isinstance(i, str) and i for i in items)):
            raise PromptTemplateError(f"prompt template {source}: field {field!r} must be a list of {length} non-empty strings")
        fields[field] = tuple(items)
    return PromptTemplate(name=data["name"], fields=fields, source=source, description=data.get("description", ""),
                          defaulted=defaulted)


@functools.lru_cache(maxsize=1)
def _default_data() -> dict:
    """The shipped default template file's fields, as parsed JSON (where optional fields come from)."""
    return json.loads(DEFAULT_TEMPLATE_PATH.read_text(encoding="utf-8"))


def load_template(path=None) -> PromptTemplate:
    """The template in JSON file ``path`` (None: the shipped default), checked (see ``check_template``)."""
    if path is None:
        return default_template()
    path = Path(path)
    try:
        text = read_user_text(path, PromptTemplateError)
    except OSError as error:
        raise PromptTemplateError(f"prompt template {path}: cannot read it ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptTemplateError(f"prompt template {path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                                  f"{error.msg})") from None
    return check_template(data, str(path))


def save_template(template: PromptTemplate, directory) -> Path:
    """Write ``template``'s content to ``directory/prompt_template.json`` (beside a model trained on its text)."""
    path = Path(directory) / SAVED_TEMPLATE_NAME
    from eval.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(template.content(), indent=2, ensure_ascii=False) + "\n")
    return path


def template_for_model(model: str, template_path=None) -> tuple[PromptTemplate, str | None]:
    """(the template to prompt ``model`` with, a warning or None): ``template_path`` if given, else the one
    saved in the model's directory (``save_template``), else the default.  The warning says when the given
    template differs from the saved one."""
    saved_path = Path(model) / SAVED_TEMPLATE_NAME
    saved = load_template(saved_path) if saved_path.is_file() else None
    if template_path is None:
        return saved or default_template(), None
    template = load_template(template_path)
    if saved is not None and saved.sha256 != template.sha256:
        return template, (f"{model} was trained with prompt template {saved.name!r} ({saved_path}), not "
                          f"{template.name!r} from {template_path}")
    return template, None


@functools.lru_cache(maxsize=1)
def default_template() -> PromptTemplate:
    """The shipped default template (today's wording), loaded once."""
    data = json.loads(DEFAULT_TEMPLATE_PATH.read_text(encoding="utf-8"))
    return check_template(data, "default")
