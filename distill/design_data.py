"""Teaching data for the design task: which option set to show next, answered by the Bayesian designer.

An example is one round of a dialogue that the Bayesian designer (``eval.design.active_dialogues``) chose: a
single user turn (``eval.text.dialogue.design_prompt_messages``) holding the rounds so far (each shown set and
the user's choice) and K labelled candidate sets drawn from the domain, then one assistant turn naming the set
to show ("Show me set k.").  The teacher ``bayesian`` answers with the designer's pick, the candidate of highest
exact expected information gain given the rounds so far (ties broken as the designer breaks them); ``soft``
gives the same answer and also the candidates' gains normalised to sum to 1 (``soft_targets``, as the
recommendation task's soft teacher writes them, for the trainer's KL loss).  The history is the designer's own
dialogue (teacher forcing): the set shown in round r is candidate ``pick`` of round r, and the simulated user
chose from it.  Every round of every dialogue is one example (``n_dialogues`` dialogues per teaching user x
``n_rounds`` rounds).  The random streams are the teaching data's own ("design-teaching"), independent of
evaluation's; users held out for evaluation are exactly those the recommendation task holds out for the same
seed; files are written atomically with a manifest, and the same seed gives byte-identical files.
"""
from __future__ import annotations

from pathlib import Path

import torch

from distill.teaching_data import (
    _write_atomic, jsonl_text, project_version, teaching_users, with_rounds, write_manifest,
)
from eval.design import DEFAULT_LM_CANDIDATES, active_dialogues
from eval.text.dialogue import PromptTemplate, default_template, design_answer_text, design_candidate_answers, design_prompt_messages
from ppl_models import Domain
from ppl_models.errors import BayesTeachError

DESIGN_TEACHERS = ("bayesian", "soft")
TEACHING_STREAM = "design-teaching"


def check_design_teacher(teacher: str) -> None:
    """Refuse a teacher the design task has not (one BayesTeachError line)."""
    if teacher == "oracle":
        raise BayesTeachError("the design task has no oracle: the user's choice says what they prefer, not which set "
                              "would have taught most (use --teacher bayesian or soft)")
    if teacher not in DESIGN_TEACHERS:
        raise BayesTeachError(f"unknown teacher {teacher!r} for the design task; choose from {', '.join(DESIGN_TEACHERS)}")


def gain_distribution(gains: torch.Tensor) -> list[float]:
    """The candidates' gains (float64 [K]) normalised to sum to 1, rounded to 6 decimals; uniform when no
    candidate teaches anything.  Gains below 0 (float rounding of a zero gain) and NaN count as 0."""
    gains = gains.nan_to_num(nan=0.0).clamp(min=0.0)
    total = float(gains.sum())
    probs = gains / total if total > 0 else torch.full_like(gains, 1.0 / len(gains))
    return [round(float(p), 6) for p in probs]


def build_design_examples(domain: Domain, teacher: str, users: torch.Tensor, n_dialogues: int, seed: int,
                          n_candidates: int = DEFAULT_LM_CANDIDATES, n_rounds: int | None = None,
                          template: PromptTemplate | None = None) -> list[dict]:
    """Every round of ``n_dialogues`` Bayesian-designed dialogues per user (user-major order, rounds in order)
    as one chat example (see the module docstring).  ``n_rounds``: rounds per dialogue (default: the
    domain's); ``template``: the prompt template of the text (default: the shipped one)."""
    check_design_teacher(teacher)
    if n_candidates < 2:
        raise BayesTeachError(f"the design task needs at least 2 candidates to choose among, got {n_candidates}")
    if n_dialogues < 1:
        raise BayesTeachError(f"n_dialogues must be at least 1, got {n_dialogues}")
    domain = with_rounds(domain, n_rounds)
    template = template or default_template()
    dialogue_users = users.repeat_interleave(n_dialogues)
    options, choices, record = active_dialogues(domain, dialogue_users, seed, n_candidates, stream=TEACHING_STREAM,
                                                keep_candidates=True)
    answers = design_candidate_answers(n_candidates, template)
    examples = []
    for d in range(len(dialogue_users)):
        choices_d, picks_d = choices[d].tolist(), record.picks[d].tolist()
        for r in range(domain.n_rounds):
            messages = design_prompt_messages(domain, options[d, :r], choices_d[:r], record.candidates[d, r], template)
            example = {"messages": messages + [{"role": "assistant", "content": design_answer_text(picks_d[r] + 1, template)}]}
            if teacher == "soft":
                example["soft_targets"] = [{"message_index": 1, "candidates": answers,
                                            "probs": gain_distribution(record.candidate_gains[d, r])}]
            examples.append(example)
    return examples


def write_design_set(
    domain: Domain, teacher: str, out_dir, *, n_dialogues: int = 10, n_eval_users: int = 0, seed: int = 0,
    n_candidates: int = DEFAULT_LM_CANDIDATES, max_train_users: int | None = None, n_rounds: int | None = None,
    template: PromptTemplate | None = None,
) -> dict:
    """Write ``train-design-<teacher>.jsonl`` and ``manifest.json`` into ``out_dir``; return the manifest.

    As ``distill.teaching_data.write_teaching_set``: ``n_eval_users`` users are held out (the same users as the
    recommendation task's for this seed; their ids go in the manifest), ``max_train_users`` caps the teaching
    users (the same seeded subset), and the manifest has the same keys, plus ``task`` ("design") and
    ``n_candidates``."""
    check_design_teacher(teacher)
    out_dir = Path(out_dir)
    train_users, eval_users = teaching_users(domain, n_eval_users, seed, max_train_users)
    n_rounds = domain.n_rounds if n_rounds is None else n_rounds
    template = template or default_template()
    examples = build_design_examples(domain, teacher, train_users, n_dialogues, seed, n_candidates, n_rounds, template)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = f"train-design-{teacher}.jsonl"
    manifest = {
        "task": "design",
        "domain": domain.name,
        "teacher": teacher,
        "seed": seed,
        "n_dialogues_per_user": n_dialogues,
        "n_candidates": n_candidates,
        "prefixes": "all",  # every round of a dialogue is one example, as every prefix is in the recommendation task
        "n_rounds": n_rounds,
        "design": "active",  # the Bayesian designer chose each dialogue's shown sets
        "counts": {"train_users": int(len(train_users)), "eval_users": int(len(eval_users)),
                   "dialogues": int(len(train_users)) * n_dialogues, "examples": len(examples)},
        "eval_users": eval_users.tolist(),
        "files": {data_file: _write_atomic(out_dir / data_file, jsonl_text(examples))},
        "prompt_template": template.summary(with_content=True),
        "versions": project_version(),
    }
    write_manifest(out_dir, manifest)
    return manifest
