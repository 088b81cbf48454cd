"""Reading a dialogue written by a person as JSON (the ``posterior`` command's input).

Format (choices count from 1, as in "Flight 2")::

    {"rounds": [
        {"options": [{"departure time": "10:48 AM", "duration": "14 hr 9 min", "number of stops": 0, "price": "$190"},
                     {...}, {...}],
         "choice": 2},
        ...]}

A feature value may be given as its text ("10:48 AM", "$190") or its raw value (648, 190).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ppl_models import Domain
from ppl_models.errors import BayesTeachError, read_user_text


class DialogueFileError(BayesTeachError):
    """A dialogue file that cannot be read as the domain's dialogue; the message names the file, round and option."""


def _value_index(feature, value, where: str) -> int:
    for i, raw in enumerate(feature.values):
        if value == raw or str(value) == feature.text(i) or str(value) == str(raw):
            return i
    examples = ", ".join(feature.text(i) for i in range(min(4, len(feature.values))))
    raise DialogueFileError(f"{where}: {value!r} is not a value of {feature.name!r} (e.g. {examples}, ...)")


def read_dialogue(domain: Domain, path) -> tuple[torch.Tensor, torch.Tensor]:
    """(option_index long [R, O, F], choices long [R], 0-based) from a dialogue JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dialogue file at {path}")
    try:
        data = json.loads(read_user_text(path, DialogueFileError))
    except json.JSONDecodeError as error:
        raise DialogueFileError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    rounds = data.get("rounds") if isinstance(data, dict) else None
    if not isinstance(rounds, list) or not rounds:
        raise DialogueFileError(f'{path}: expected {{"rounds": [{{"options": [...], "choice": N}}, ...]}}')
    option_index, choices = [], []
    for r, round_ in enumerate(rounds, start=1):
        options = round_.get("options") if isinstance(round_, dict) else None
        if not isinstance(options, list) or len(options) != domain.n_options:
            raise DialogueFileError(f"{path}: round {r} must list {domain.n_options} options")
        rows = []
        for o, option in enumerate(options, start=1):
            if not isinstance(option, dict):
                raise DialogueFileError(f"{path}: round {r}, option {o} must be an object of feature: value")
            missing = [f.name for f in domain.features if f.name not in option]
            if missing:
                raise DialogueFileError(f"{path}: round {r}, option {o} lacks feature(s) {missing}")
            rows.append([_value_index(f, option[f.name], f"{path}: round {r}, option {o}") for f in domain.features])
        choice = round_.get("choice")
        if not isinstance(choice, int) or not 1 <= choice <= domain.n_options:
            raise DialogueFileError(f"{path}: round {r}: choice must be an option number from 1 to {domain.n_options}, "
                                    f"got {choice!r}")
        option_index.append(rows)
        choices.append(choice - 1)
    return torch.tensor(option_index, dtype=torch.long), torch.tensor(choices, dtype=torch.long)
