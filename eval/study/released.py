"""Reading the study's released evaluation files into ``ProtocolData`` (``eval/records.py``).

A release folder holds ``eval/interaction/<name>.jsonl`` (one user per line: ``reward_fn``, ``features``,
five ``rounds`` of three option texts and the user's pick ``user_idx``, and ``rounds_numpy``, the options'
scaled feature values) and ``eval/heldout/<name>.json`` (``all_options``: option sets shared by every
user, ``user_idxs``: each weight vector's pick in each set, ``all_options_numpy``).  ``load_study`` parses
every option text on the domain's grids (checking it against the file's scaled values), maps each
``reward_fn`` to its hypothesis of the domain, and joins each user to the held-out picks of the same
``reward_fn`` (the file is the truth, ties included; a ``reward_fn`` the held-out file lacks, as in a cut
excerpt, gets the picks its weights imply, ties broken by a seeded draw, and is listed in ``notes``).
The release has held-out files for flight and hotel only: for the other files (``flight_<n>features``)
each user gets held-out sets drawn from the domain's generator, their weights choosing (said in ``notes``).

* ``flight_human`` (held-out sets: ``flight``): lines are people, ``idx`` repeats, and a pick need not be
  any weight vector's best; each line is one user.
* ``webshop/<category>.jsonl`` (held-out sets: ``heldout/webshop/<category>.jsonl``, one line per shopper
  with their own sets, joined by ``idx``): real product texts and a ``score`` per option instead of
  weights.  Its domain (``released_text_domain``) has one "product" feature whose values are the option
  texts as released and whose scaled value is the option's score, and one user who maximises it: the oracle
  picks the best score, and an LM sees the released strings.  No exact Bayesian assistant exists for it.

Bad input (a missing key, a round without 3 options, a pick out of range, a feature list that does not match
the domain, an option text not on the grid) raises ``StudyDataError``: one line naming the file, the line
(or JSON path) and the key or text.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ppl_models import Domain, hypothesis_space, simulate_choices
from ppl_models.errors import read_user_text
from ppl_models.rng import generator

from eval.records import N_HELDOUT, ProtocolData, pick_argmax
from eval.study.webshop import load_webshop
from eval.study.files import StudyDataError, StudyReplay, file_record, need, need_list, need_numbers, option_table, read_jsonl, strip_label  # noqa: F401

HELDOUT_OF = {"flight_human": "flight"}  # release file -> the held-out file its users are scored on
VALUE_TOLERANCE = 1e-6  # option texts vs the file's scaled values


def default_study_file(domain: Domain) -> str:
    """The release file of a domain: flight, hotel, flight_<n>features for flight<n>."""
    match = re.fullmatch(r"flight(\d)", domain.name)
    if match:
        return f"flight_{match.group(1)}features"
    if domain.name in ("flight", "hotel"):
        return domain.name
    raise StudyDataError(f"the release has no file for domain {domain.name!r}; give --study-file (e.g. webshop/area_rugs)")


def parse_option(domain: Domain, text: str, position: int, where: str) -> list:
    """The value index of each feature in a released option text ("Flight 1: departure time: 06:00 AM, ...")."""
    body = strip_label(text, domain.noun, position, where)
    tables = [{f.text(i): i for i in range(len(f.values))} for f in domain.features]
    names = domain.feature_names
    indices, start = [], 0
    for f, name in enumerate(names):
        head = f"{name}: "
        if not body.startswith(head, start):
            raise StudyDataError(f"{where}: option text {text!r} does not list feature {name!r} next")
        start += len(head)
        end = body.find(f", {names[f + 1]}: ", start) if f + 1 < len(names) else len(body)
        if end < 0:
            raise StudyDataError(f"{where}: option text {text!r} does not list feature {names[f + 1]!r}")
        value = body[start:end]
        if value not in tables[f]:
            raise StudyDataError(f"{where}: {name} text {value!r} is not on domain {domain.name!r}'s grid")
        indices.append(tables[f][value])
        start = end + 2
    return indices


def parse_option_sets(domain: Domain, sets, numpy, where: str) -> torch.Tensor:
    """Option texts [S][O] -> long [S, O, F], checked against their scaled values ``numpy`` [S][O][F]."""
    index = torch.tensor([[parse_option(domain, text, o, f"{where}[{s}][{o}]") for o, text in enumerate(row)]
                          for s, row in enumerate(sets)], dtype=torch.long).reshape(len(sets), domain.n_options, -1)
    try:
        expected = torch.tensor(numpy, dtype=torch.float64)
    except (TypeError, ValueError):
        raise StudyDataError(f"{where}: the scaled values are not a numeric array") from None
    values = domain.options(index).value.double()
    if expected.shape != values.shape:
        raise StudyDataError(f"{where}: scaled values have shape {tuple(expected.shape)}, expected {tuple(values.shape)}")
    wrong = ((expected - values).abs() > VALUE_TOLERANCE).nonzero()
    if len(wrong):
        s, o, f = (int(v) for v in wrong[0])
        raise StudyDataError(f"{where}[{s}][{o}]: {domain.feature_names[f]} reads {float(values[s, o, f]):g} from "
                             f"the text but the file's scaled value is {float(expected[s, o, f]):g}")
    return index


def check_features(domain: Domain, features, where: str) -> None:
    expected = [name.replace(" ", "_") for name in domain.feature_names]
    if features != expected:
        raise StudyDataError(f"{where}: 'features' {features} do not match domain {domain.name!r} ({expected})")


def hypothesis_of_weights(domain: Domain, weights, where: str) -> int:
    """The hypothesis index of a linear user's weight vector (one weight per feature, on the domain's levels)."""
    space = hypothesis_space(domain)
    if not isinstance(weights, list) or len(weights) != len(domain.features):
        raise StudyDataError(f"{where}: 'reward_fn' must list {len(domain.features)} weights")
    strides = torch.ones(len(space.enum_shape), dtype=torch.long)
    for d in range(len(space.enum_shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * space.enum_shape[d + 1]
    flat = 0
    for name, weight in zip(domain.feature_names, weights):
        site = domain.feature_sites.get(name)
        levels = domain.site_labels.get(site, ())
        if not isinstance(weight, (int, float)) or float(weight) not in levels:
            raise StudyDataError(f"{where}: 'reward_fn' weight {weight!r} for {name!r} is not one of {list(levels)}")
        flat += levels.index(float(weight)) * int(strides[space.site_dims[site]])
    return flat


def load_study(domain: Domain, study_dir, study_file: str | None = None, n_users: int | None = None,
               n_heldout: int | None = None, seed: int = 0) -> StudyReplay:
    """Read a release file (default: the domain's own) and its held-out file; the first ``n_users`` users
    and ``n_heldout`` held-out sets (default: all)."""
    root = Path(study_dir)
    name = study_file or default_study_file(domain)
    name = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    interaction = root / "eval" / "interaction" / f"{name}.jsonl"
    if not interaction.is_file():
        raise StudyDataError(f"no release file {interaction} (looked for it under --study-data {root})")
    if name.startswith("webshop/"):
        return load_webshop(interaction, root / "eval" / "heldout" / f"{name}.jsonl", domain, n_users, n_heldout)
    heldout_path = root / "eval" / "heldout" / f"{HELDOUT_OF.get(name, name)}.json"
    rows = read_jsonl(interaction)[:n_users]
    users, options, choices, weights = [], [], [], []
    for number, row in rows:
        where = f"{interaction}:{number}"
        check_features(domain, need(row, "features", where), where)
        rounds = need(row, "rounds", where)
        if not isinstance(rounds, list) or len(rounds) != domain.n_rounds:
            raise StudyDataError(f"{where}: 'rounds' must list {domain.n_rounds} rounds")
        texts, picks = zip(*[option_table(need(r, "options", f"{where} round {k + 1}"),
                                          need(r, "user_idx", f"{where} round {k + 1}"),
                                          f"{where} round {k + 1}", domain.n_options) for k, r in enumerate(rounds)])
        options.append(parse_option_sets(domain, texts, need(row, "rounds_numpy", where), f"{where} rounds"))
        choices.append(list(picks))
        weights.append(need(row, "reward_fn", where))
        users.append(hypothesis_of_weights(domain, weights[-1], where))
    n, users = len(rows), torch.tensor(users)
    files = [file_record(interaction)]
    if heldout_path.is_file():
        heldout_options, heldout_choices, computed = read_heldout(domain, heldout_path, weights, n_heldout, seed)
        heldout_options = heldout_options.expand((n,) + tuple(heldout_options.shape))
        notes = {"heldout_choices_from_weights": [rows[i][0] for i in computed]} if computed else {}
        files.append(file_record(heldout_path))
    else:  # the release has held-out files for flight and hotel only: draw sets, the weights choose
        n_sets = n_heldout or N_HELDOUT
        heldout_options = domain.draw_options(generator(seed, "study-heldout", "options"), (n, n_sets))
        heldout_choices = simulate_choices(domain.with_user(temperature=0.0, lapse=0.0), users, heldout_options,
                                           generator(seed, "study-heldout", "choices"))
        notes = {"heldout_drawn": f"no {heldout_path.name} in {heldout_path.parent}: {n_sets} held-out sets per user "
                                  f"drawn from the domain (seed {seed}), each user's weights choosing"}
    data = ProtocolData(users, torch.stack(options), torch.tensor(choices), heldout_options, heldout_choices)
    return StudyReplay(domain, data, "human" if name.endswith("human") else "synthetic", [r[0] for r in rows],
                       [r[1].get("idx") for r in rows], files, None, notes)


def read_heldout(domain: Domain, path: Path, weights: list, n_heldout: int | None, seed: int):
    """The shared held-out sets, long [M, O, F], each user's picks, long [N, M], and the users whose picks
    came from their weights (no entry for their ``reward_fn`` in the file)."""
    try:
        heldout = json.loads(read_user_text(path, StudyDataError))
    except json.JSONDecodeError as error:
        raise StudyDataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    check_features(domain, need(heldout, "features", str(path)), str(path))
    sets = need_list(heldout, "all_options", str(path))[:n_heldout]
    numpy = need_list(heldout, "all_options_numpy", str(path))[:n_heldout]
    if not isinstance(sets, list) or not sets:
        raise StudyDataError(f"{path}: 'all_options' must list option sets")
    for s, row in enumerate(sets):
        option_table(row, 0, f"{path}: all_options[{s}]", domain.n_options)
    options = parse_option_sets(domain, sets, numpy, f"{path}: all_options")
    picks_of = {}
    for u, entry in enumerate(need_list(heldout, "user_idxs", str(path))):
        where = f"{path}: user_idxs[{u}]"
        idxs = need_list(entry, "idxs", where)[: len(sets)]
        if len(idxs) != len(sets):
            raise StudyDataError(f"{where}: 'idxs' lists {len(idxs)} picks for {len(sets)} option sets")
        for s, pick in enumerate(idxs):
            option_table(sets[s], pick, f"{where} idxs[{s}]", domain.n_options)
        picks_of[tuple(float(w) for w in need_numbers(entry, "reward_fn", where))] = idxs
    choices, computed = [], []
    values = domain.options(options).value.double()  # [M, O, F]
    for u, w in enumerate(weights):
        key = tuple(float(v) for v in w)
        if key in picks_of:
            choices.append(picks_of[key])
            continue
        utility = values @ torch.tensor(key, dtype=torch.float64)  # [M, O]
        is_best = (utility >= utility.amax(-1, keepdim=True) - VALUE_TOLERANCE).double()
        choices.append(pick_argmax(is_best, generator(seed, "study-heldout", u)).tolist())
        computed.append(u)
    return options, torch.tensor(choices, dtype=torch.long).reshape(len(weights), len(sets)), computed
