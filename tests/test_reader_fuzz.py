"""Property-based fuzzing (hypothesis) of every reader of files users bring.

For each reader a valid file is mutated: bytes cut, deleted, inserted or changed, a line dropped or doubled, a
JSON value replaced by one of another type (NaN and huge numbers included) or a key deleted.  Whatever comes
out, the reader returns (data) or raises the project's error (a BayesTeachError) naming the file; a mutation of
one line of a line-based file (JSONL, CSV) that the reader refuses is named by its line.  Mutations that change
nothing a reader reads (a blank line at the end) give the same data as the original.  Example counts stay small
so that CI stays fast; ``HYPOTHESIS_PROFILE=thorough`` runs more.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ppl_models.errors import BayesTeachError

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "tests" / "data" / "study_sample"

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------------------
TOKENS = ['"', "{", "}", "[", "]", ",", ":", "\n", "null", "-1", "0", "1e999", "NaN", "-Infinity", "\ufeff", "\x00",
          "true", '""', "[]", "{}", "\\", "\r", "\t", "é", "\udcff"]


def _at(data: bytes, fraction: float) -> int:
    return min(len(data), int(fraction * (len(data) + 1)))


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "delete", "insert", "replace", "token", "drop_line", "double_line",
                                 "swap_lines"]))
    where = _at(data, draw(st.floats(0, 1)))
    if kind == "truncate":
        return data[:where]
    if kind == "delete":
        return data[:where] + data[where + draw(st.integers(1, 40)):]
    if kind == "insert":
        return data[:where] + draw(st.binary(min_size=1, max_size=8)) + data[where:]
    if kind == "replace":
        return data[:where] + bytes([draw(st.integers(0, 255))]) + data[where + 1:]
    if kind == "token":
        token = draw(st.sampled_from(TOKENS)).encode("utf-8", "surrogatepass")
        return data[:where] + token + data[where:]
    lines = data.splitlines(keepends=True)
    if not lines:
        return data
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "drop_line":
        return b"".join(lines[:i] + lines[i + 1:])
    if kind == "double_line":
        return b"".join(lines[: i + 1] + lines[i:])
    j = draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


@st.composite
def json_mutation(draw, value):
    """``value`` (parsed JSON) with one value somewhere replaced by another of any type, or one key or item
    deleted."""
    if isinstance(value, (dict, list)) and value and draw(st.booleans()):
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = draw(st.sampled_from(keys))
        copy = dict(value) if isinstance(value, dict) else list(value)
        action = draw(st.sampled_from(["descend", "replace", "delete"]))
        if action == "descend":
            copy[key] = draw(json_mutation(copy[key]))
        elif action == "replace":
            copy[key] = draw(JSON_VALUES)
        else:
            del copy[key]
        return copy
    return draw(JSON_VALUES)


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # NaN and Infinity as the JSON extensions Python reads back


# ------------------------------------------------------------------------------------------------------------
# the readers: each a function of a path, a valid file, and what of its result to compare
# ------------------------------------------------------------------------------------------------------------
def _teaching_set() -> bytes:
    from tiny_student_fixtures import hotel_conversation

    return "".join(json.dumps(hotel_conversation(s)) + "\n" for s in range(3)).encode()


def read_teaching_set(path):
    from distill.training.chat_dataset import load_chat_jsonl

    return [(e.messages, e.soft_targets) for e in load_chat_jsonl(path)]


def _dialogue() -> bytes:
    option = {"departure time": "06:00 AM", "duration": "30 min", "number of stops": 0, "price": "$1000"}
    rounds = [{"options": [option, dict(option, price="$100"), dict(option, **{"departure time": "10:00 PM"})],
               "choice": 2}, {"options": [option, option, option], "choice": 1}]
    return json.dumps({"rounds": rounds}, indent=1).encode()


def read_dialogue(path):
    from eval.dialogue_io import read_dialogue as read
    from ppl_models import get_domain

    options, choices = read(get_domain("flight"), path)
    return options.tolist(), choices.tolist()


def read_template(path):
    from eval.text.prompt_template import load_template

    return load_template(path).fields


def _catalog_jsonl() -> bytes:
    lines = (ROOT / "ppl_models" / "data" / "webshop_catalog.jsonl").read_text().splitlines()
    return ("\n".join(lines[:24]) + "\n").encode()


def _catalog_csv() -> bytes:
    rows = [json.loads(line) for line in _catalog_jsonl().decode().splitlines()]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def read_catalog(path):
    from ppl_models.catalog import load_catalog

    catalog = load_catalog(path)
    return catalog.products, catalog.attributes


def _report() -> bytes:
    report = {"domain": "hotel", "assistant": "bayesian", "rounds": [0, 1, 2], "accuracy": [0.3, 0.5, 0.7],
              "ci95": [[0.2, 0.4], [0.4, 0.6], [0.6, 0.8]], "n_users": 2, "seed": 0,
              "metrics": {"accuracy": {"mean": [0.3, 0.5, 0.7], "ci95": [[0.2, 0.4], [0.4, 0.6], [0.6, 0.8]]},
                          "agreement_with_bayesian": {"mean": [1.0, 1.0, 1.0], "ci95": [None, None, None]}},
              "extra": {"label": "x"}}
    return json.dumps(report, indent=2).encode()


def read_report(path):
    from eval.report import load_report, plot_reports

    report = load_report(path, metric="accuracy")
    plot_reports([report], Path(path).with_suffix(".png"))  # what `plot` does with it
    return report


def read_recipe(path):
    from distill.training.config import TrainConfig

    return TrainConfig.from_recipe(path)


def read_accelerate_config(path):
    from distill.training.launch import check_accelerate_config

    return check_accelerate_config(path)


def read_manifest(path):
    from distill.teaching_data import held_out_users
    from ppl_models import get_domain

    return held_out_users(path, get_domain("hotel")).tolist()


def _manifest() -> bytes:
    return json.dumps({"domain": "hotel", "teacher": "bayesian", "eval_users": [3, 17, 40, 41], "counts": {}},
                      indent=2).encode()


READERS = {  # name: (file name, valid bytes, reader, line-based)
    "teaching set": ("train.jsonl", _teaching_set, read_teaching_set, True),
    "dialogue": ("dialogue.json", _dialogue, read_dialogue, False),
    "prompt template": ("template.json", lambda: (ROOT / "eval/text/templates/default.json").read_bytes(), read_template, False),
    "catalogue jsonl": ("catalog.jsonl", _catalog_jsonl, read_catalog, True),
    "catalogue csv": ("catalog.csv", _catalog_csv, read_catalog, True),
    "report": ("report.json", _report, read_report, False),
    "recipe yaml": ("recipe.yaml", lambda: (ROOT / "configs/recipes/study_full_ft.yaml").read_bytes(), read_recipe, False),
    "recipe json": ("recipe.json", lambda: b'{"learning_rate": 0.001, "batch_size": 2, "method": "lora"}', read_recipe, False),
    "accelerate config": ("ddp.yaml", lambda: (ROOT / "configs/accelerate/ddp.yaml").read_bytes(), read_accelerate_config, False),
    "manifest": ("manifest.json", _manifest, read_manifest, False),
}
STUDY_FILES = {  # the study's released files, read by load_study through their folder
    "interaction jsonl": ("eval/interaction/hotel.jsonl", "hotel", None, True),
    "held-out json": ("eval/heldout/hotel.json", "hotel", None, False),
    "webshop interaction jsonl": ("eval/interaction/webshop/area_rugs.jsonl", "hotel", "webshop/area_rugs", True),
    "webshop held-out jsonl": ("eval/heldout/webshop/area_rugs.jsonl", "hotel", "webshop/area_rugs", True),
}


@contextlib.contextmanager
def written(name: str, data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        yield path


def check_outcome(read, path: Path, data: bytes, line_based: bool, changed_line: int | None = None):
    """The reader returns, or raises a BayesTeachError naming the file (and ``changed_line``, the one line a
    line-based mutation touched, when the error is about a line)."""
    try:
        return read(path)
    except BayesTeachError as error:
        message = str(error)
        assert str(path) in message or path.name in message, f"the error does not name the file: {message}"
        assert "\n" not in message.strip(), f"not one line: {message!r}"
        if changed_line is not None:
            lines = {int(a or b) for a, b in re.findall(rf"{re.escape(str(path))}:(\d+)|line (\d+)", message)}
            assert not lines or changed_line in lines, \
                f"line {changed_line} was changed, the error names line(s) {sorted(lines)}: {message}"
        return None


# ------------------------------------------------------------------------------------------------------------
# the properties
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", READERS)
def test_a_valid_file_reads_and_a_blank_line_at_the_end_changes_nothing(name):
    file_name, valid, read, _ = READERS[name]
    with written(file_name, valid()) as path:
        expected = read(path)
    with written(file_name, valid() + b"\n") as path:
        assert read(path) == expected


@pytest.mark.parametrize("name", READERS)
@given(data=st.data())
def test_byte_mutations_read_or_raise_the_project_error(name, data):
    file_name, valid, read, line_based = READERS[name]
    original = valid()
    mutated = data.draw(byte_mutation(original))
    with written(file_name, mutated) as path:
        check_outcome(read, path, mutated, line_based)


@pytest.mark.parametrize("name", [n for n, (f, _, _, _) in READERS.items() if f.endswith((".json", ".jsonl"))])
@given(data=st.data())
def test_json_value_mutations_read_or_raise_the_project_error(name, data):
    file_name, valid, read, line_based = READERS[name]
    text = valid().decode()
    changed_line = None
    if line_based:  # one line's object mutated; the error, if about a line, names that line
        lines = text.splitlines()
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = dumps(data.draw(json_mutation(json.loads(lines[i]))))
        mutated, changed_line = ("\n".join(lines) + "\n").encode(), i + 1
    else:
        mutated = dumps(data.draw(json_mutation(json.loads(text)))).encode()
    with written(file_name, mutated) as path:
        check_outcome(read, path, mutated, line_based, changed_line)


def _read_study(folder: Path, study_file: str | None):
    from eval.study.released import load_study
    from ppl_models import get_domain

    study = load_study(get_domain("hotel"), folder, study_file, n_users=3, n_heldout=4)
    return study.data


@pytest.mark.parametrize("name", STUDY_FILES)
@given(data=st.data())
def test_study_file_mutations_read_or_raise_the_project_error(name, data):
    relative, _, study_file, line_based = STUDY_FILES[name]
    original = (STUDY / relative).read_bytes()
    changed_line = None
    if line_based and data.draw(st.booleans()):
        lines = original.decode().splitlines()
        i = data.draw(st.integers(0, min(len(lines), 4) - 1))  # the first users: the ones read
        lines[i] = dumps(data.draw(json_mutation(json.loads(lines[i]))))
        mutated, changed_line = ("\n".join(lines) + "\n").encode(), i + 1
    elif not line_based and data.draw(st.booleans()):
        mutated = dumps(data.draw(json_mutation(json.loads(original)))).encode()
    else:
        mutated = data.draw(byte_mutation(original))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for part in ("interaction", "heldout"):
            shutil.copytree(STUDY / "eval" / part, folder / "eval" / part)
        target = folder / relative
        target.write_bytes(mutated)
        try:
            _read_study(folder, study_file)
        except BayesTeachError as error:
            message = str(error)
            assert str(folder) in message, f"the error does not name a file of the release: {message}"
            assert "\n" not in message.strip(), f"not one line: {message!r}"
            named = {int(n) for n in re.findall(rf"{re.escape(str(target))}:(\d+)", message)}
            if changed_line is not None and named:
                assert changed_line in named, f"line {changed_line} was changed, the error names {named}: {message}"


def test_the_study_sample_reads_unchanged():
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for part in ("interaction", "heldout"):
            shutil.copytree(STUDY / "eval" / part, folder / "eval" / part)
        for relative, _, study_file, _ in STUDY_FILES.values():
            data = _read_study(folder, study_file)
            assert 1 <= data.dialogue_choices.shape[0] <= 3
