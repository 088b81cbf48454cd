"""Reading the study's released web-shopping files (``webshop/<category>.jsonl``) for replay.

Interaction lines: ``idx``, ``goal_attrs``, ``goal_options`` and five ``rounds`` of ``options`` (three
"Product k: ..." texts), ``user_idx`` (the shopper's pick) and ``score`` (the release's reward per option).
Held-out lines: the same ``idx`` and goals, and ``all_options``, the shopper's own held-out sets in the same
form.  Users are joined by ``idx``; a shopper with no held-out line (as in a cut excerpt) is left out and
listed in ``notes``.  See ``eval/study/released.py`` for the domain the replay plays on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ppl_models import Domain

from eval.records import ProtocolData
from eval.study.files import StudyDataError, StudyReplay, file_record, need, option_table, read_jsonl, released_text_domain, strip_label


def scored_sets(rounds, where: str, texts: list, scores: list, n_options: int = 3):
    """Append each set's option texts and scores to ``texts``/``scores`` (each occurrence its own value);
    return the sets' value indices [S][O], picks [S] and scores [S][O]."""
    if not isinstance(rounds, list) or not rounds:
        raise StudyDataError(f"{where}: must list option sets")
    index, picks, set_scores = [], [], []
    for k, r in enumerate(rounds):
        here = f"{where}[{k}]"
        options, pick = option_table(need(r, "options", here), need(r, "user_idx", here), here, n_options)
        score = need(r, "score", here)
        if not isinstance(score, list) or len(score) != n_options or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 <= s <= 1.0 for s in score
        ):
            raise StudyDataError(f"{here}: 'score' must be {n_options} numbers in [0, 1]")
        index.append([len(texts) + o for o in range(n_options)])
        texts.extend(strip_label(text, "product", o, here) for o, text in enumerate(options))
        scores.extend(float(s) for s in score)
        picks.append(pick)
        set_scores.append([float(s) for s in score])
    return index, picks, set_scores


def _idx(row, where: str):
    """A line's ``idx``: the number (or text) that joins a shopper to their held-out line."""
    idx = need(row, "idx", where)
    if isinstance(idx, bool) or not isinstance(idx, (int, str)):
        raise StudyDataError(f"{where}: 'idx' must be a number or a string, got {idx!r}")
    return idx


def load_webshop(interaction: Path, heldout_path: Path, domain: Domain, n_users: int | None, n_heldout: int | None) -> StudyReplay:
    """A webshop release file and its held-out file, as a ``StudyReplay`` on a ``released_text_domain``."""
    if not heldout_path.is_file():
        raise StudyDataError(f"no held-out file {heldout_path} for {interaction.name}")
    heldout_of = {}
    for number, row in read_jsonl(heldout_path):
        heldout_of.setdefault(_idx(row, f"{heldout_path}:{number}"), (number, row))
    rows, skipped = [], []
    for number, row in read_jsonl(interaction):
        idx = _idx(row, f"{interaction}:{number}")
        (rows if idx in heldout_of else skipped).append((number, row))
    rows = rows[:n_users]
    if not rows:
        raise StudyDataError(f"{heldout_path}: no held-out line for any shopper of {interaction}")
    texts, scores, dialogue, choices, heldout, heldout_choices, heldout_scores = [], [], [], [], [], [], []
    for number, row in rows:
        where = f"{interaction}:{number}"
        for key in ("goal_attrs", "goal_options"):
            need(row, key, where)
        rounds = need(row, "rounds", where)
        if not isinstance(rounds, list) or len(rounds) != domain.n_rounds:
            raise StudyDataError(f"{where}: 'rounds' must list {domain.n_rounds} rounds")
        index, picks, _ = scored_sets(rounds, f"{where} rounds", texts, scores)
        dialogue.append(index)
        choices.append(picks)
        h_number, h_row = heldout_of[row["idx"]]
        sets = need(h_row, "all_options", f"{heldout_path}:{h_number}")
        sets = sets[:n_heldout] if isinstance(sets, list) else sets
        index, picks, set_scores = scored_sets(sets, f"{heldout_path}:{h_number} all_options", texts, scores)
        heldout.append(index)
        heldout_choices.append(picks)
        heldout_scores.append(set_scores)
    n_sets = {len(h) for h in heldout}
    if len(n_sets) != 1:
        raise StudyDataError(f"{heldout_path}: shoppers have different numbers of held-out sets {sorted(n_sets)}; "
                             "give --heldout N to use the first N of each")
    name = f"webshop-{interaction.stem}"
    replay_domain = released_text_domain(name, texts, scores)
    data = ProtocolData(
        torch.zeros(len(rows), dtype=torch.long),  # one hypothesis: the shopper who maximises the score
        torch.tensor(dialogue).unsqueeze(-1), torch.tensor(choices),
        torch.tensor(heldout).unsqueeze(-1), torch.tensor(heldout_choices),
    )
    notes = {"no_heldout_line": [number for number, _ in skipped]} if skipped else {}
    return StudyReplay(replay_domain, data, "webshop", [r[0] for r in rows], [r[1]["idx"] for r in rows],
                       [file_record(interaction), file_record(heldout_path)],
                       torch.tensor(heldout_scores, dtype=torch.float64), notes)
