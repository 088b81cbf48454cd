"""Teaching data: simulated dialogues turned into supervised fine-tuning sets in the chat ``messages`` format.

Teachers (what the assistant turns say):

* ``bayesian``: the Bayesian assistant's own picks, its early wrong guesses included, with the user's
  feedback after each (the study's "Bayesian teaching");
* ``oracle``: the user's actual choices ("oracle teaching");
* ``soft``: like ``bayesian``, and every assistant turn also carries the Bayesian posterior predictive over
  the options (``soft_targets``), for a KL loss.

As in the study, every prefix of 1 to n_rounds rounds of a dialogue is one example (624 users x 10 dialogues
x 5 prefixes = 31,200).  The observed option sets are drawn at random (the study's protocol) or, with
``design="active"``, chosen round by round by the Bayesian designer among ``n_candidates`` random sets
(``eval.design.active_dialogues``, on the teaching data's own random streams): the dialogues a designer that
reads the student's predictive will make, so that the student learns the predictive where it will be asked
for it (``distill --task design --teach-design active``).  Users held out for evaluation (``split_users``) never
appear.  The text comes from ``eval.text.dialogue``, so it is exactly what evaluation prompts look like.  Files
are written atomically, with a manifest; the same seed gives byte-identical files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from eval.assistants import pick_argmax
from eval.design import DEFAULT_LM_CANDIDATES, active_dialogues
from eval.io_utils import atomic_write_bytes
from eval.text.dialogue import PromptTemplate, candidate_answers, default_template, dialogue_messages, load_template
from eval.text.prompt_template import PromptTemplateError, check_template
from eval.report import package_versions
from ppl_models import Dialogues, Domain, all_users, infer, simulate_dialogues
from ppl_models.errors import BayesTeachError, read_user_text
from ppl_models.rng import generator

TEACHERS = ("bayesian", "oracle", "soft")
# Dialogues per teaching user: the study's 10 (every prefix an example, 31,200 on flight), and 100 whole
# dialogues for the embedded student (a from-scratch model memorises the study's hotel dialogues within its
# budget and stays at chance on new ones, so it needs new dialogues for most of its steps; see
# experiments/README.md).
STUDY_DIALOGUES_PER_USER = 10
EMBEDDED_DIALOGUES_PER_USER = 100
PREFIXES = ("all", "longest")
# How the teaching dialogues' observed option sets are chosen: at random (the study) or by the Bayesian designer.
TEACHING_DESIGNS = ("random", "active")
ACTIVE_TEACHING_STREAM = "teaching-active"
MANIFEST = "manifest.json"


def split_users(domain: Domain, n_eval_users: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(teaching users, evaluation users): a seeded, disjoint split of the prior's support."""
    support = all_users(domain)
    if not 0 <= n_eval_users < len(support):
        raise BayesTeachError(f"the users held out for evaluation (--eval-users, n_eval_users) must number 0 to "
                              f"{len(support) - 1} on {domain.name}, which has {len(support)} users; got {n_eval_users}")
    order = torch.randperm(len(support), generator=generator(seed, "eval-users"))
    eval_users = support[order[:n_eval_users]].sort().values
    train_users = support[order[n_eval_users:]].sort().values
    return train_users, eval_users


def teaching_users(domain: Domain, n_eval_users: int, seed: int,
                   max_train_users: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(teaching users, evaluation users) of a teaching set: ``split_users``, the teaching users then capped
    at ``max_train_users`` (a seeded subset), the same for every task with the same seed."""
    train_users, eval_users = split_users(domain, n_eval_users, seed)
    if max_train_users is not None and max_train_users < len(train_users):
        order = torch.randperm(len(train_users), generator=generator(seed, "train-users"))
        train_users = train_users[order[:max_train_users]].sort().values
    return train_users, eval_users


def with_rounds(domain: Domain, n_rounds: int | None) -> Domain:
    """``domain`` with ``n_rounds`` rounds per dialogue (None: its own); fewer than 1 is a BayesTeachError."""
    if n_rounds is None or n_rounds == domain.n_rounds:
        return domain
    if n_rounds < 1:
        raise BayesTeachError(f"n_rounds must be at least 1, got {n_rounds}")
    return dataclasses.replace(domain, n_rounds=n_rounds)


def teacher_picks(domain: Domain, dialogues, seed: int):
    """The Bayesian assistant's pick in every round (given the rounds before) and its predictive: long [N, R],
    [N, R, O]."""
    result = infer(domain, dialogues.option_index, dialogues.choices, keep_posterior=False, marginals=False, predictive=True)
    predictive = result.predictive  # [N, R, O]
    return pick_argmax(predictive, generator(seed, "teaching", "tiebreak")), predictive


def teaching_dialogues(domain: Domain, users: torch.Tensor, n_dialogues: int, seed: int, design: str = "random",
                       n_candidates: int = DEFAULT_LM_CANDIDATES) -> Dialogues:
    """``n_dialogues`` dialogues per user (user-major order) on the teaching data's own random streams: random
    option sets, or with ``design="active"`` the Bayesian designer's pick among ``n_candidates`` each round."""
    if design not in TEACHING_DESIGNS:
        raise BayesTeachError(f"unknown teaching design {design!r}; choose from {', '.join(TEACHING_DESIGNS)}")
    if design == "random":
        return simulate_dialogues(domain, users, n_dialogues, seed, stream="teaching")
    dialogue_users = users.repeat_interleave(n_dialogues)
    options, choices, _ = active_dialogues(domain, dialogue_users, seed, n_candidates, stream=ACTIVE_TEACHING_STREAM)
    return Dialogues(dialogue_users, options, choices)


def build_examples(domain: Domain, teacher: str, users: torch.Tensor, n_dialogues: int, seed: int,
                   prefixes: str = "all", n_rounds: int | None = None, template: PromptTemplate | None = None,
                   design: str = "random", n_candidates: int = DEFAULT_LM_CANDIDATES) -> list[dict]:
    """Every prefix of every simulated dialogue as one chat example (see the module docstring); with
    ``prefixes="longest"`` only the whole dialogue (its assistant turns are those of all its prefixes, so a
    trainer that learns every assistant turn gets the same targets from a fifth of the text).

    ``n_rounds``: rounds per teaching dialogue (default: the domain's, as in the study).  The evaluation
    protocol asks for a recommendation after 0..n_rounds observed rounds, i.e. in round n_rounds + 1 too;
    teaching dialogues of n_rounds + 1 rounds contain that question.  ``template``: the prompt template of the
    text (default: the shipped one).  ``design``: "random" option sets, or "active" (the Bayesian designer's
    pick among ``n_candidates`` each round)."""
    domain = with_rounds(domain, n_rounds)
    if teacher not in TEACHERS:
        raise BayesTeachError(f"unknown teacher {teacher!r}; choose from {', '.join(TEACHERS)}")
    if prefixes not in PREFIXES:
        raise BayesTeachError(f"prefixes must be one of {', '.join(PREFIXES)}, not {prefixes!r}")
    first_length = 1 if prefixes == "all" else domain.n_rounds
    dialogues = teaching_dialogues(domain, users, n_dialogues, seed, design, n_candidates)
    bayes_picks, predictive = teacher_picks(domain, dialogues, seed)
    picks = dialogues.choices if teacher == "oracle" else bayes_picks
    candidates = candidate_answers(domain, template)
    examples = []
    for d in range(len(dialogues)):
        options, choices, picks_d = dialogues.option_index[d], dialogues.choices[d].tolist(), picks[d].tolist()
        for length in range(first_length, domain.n_rounds + 1):
            example = {"messages": dialogue_messages(domain, options, picks_d, choices, length, template)}
            if teacher == "soft":
                example["soft_targets"] = [
                    {"message_index": 2 * r + 1, "candidates": candidates,
                     "probs": [round(float(p), 6) for p in predictive[d, r]]}
                    for r in range(length)
                ]
            examples.append(example)
    return examples


def _write_atomic(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` atomically (eval.io_utils: a failure leaves the previous file and no partial
    one); return its sha256."""
    data = text.encode()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def write_teaching_set(
    domain: Domain, teacher: str, out_dir, *, n_dialogues: int = STUDY_DIALOGUES_PER_USER, n_eval_users: int = 0, seed: int = 0,
    max_train_users: int | None = None, prefixes: str = "all", n_rounds: int | None = None,
    template: PromptTemplate | None = None, design: str = "random", n_candidates: int = DEFAULT_LM_CANDIDATES,
) -> dict:
    """Write ``train-<teacher>.jsonl`` and ``manifest.json`` into ``out_dir``; return the manifest.

    ``n_eval_users`` users are held out (their ids go in the manifest, for evaluation); ``max_train_users``
    caps the teaching users (a seeded subset), for quick runs.  ``prefixes``: "all" (every prefix of a
    dialogue is an example, as in the study) or "longest" (one example per dialogue); ``n_rounds``: rounds
    per dialogue (default: the domain's); ``template``: the prompt template (default: the shipped one), recorded
    in the manifest with its sha256 and whole content; ``design`` and ``n_candidates``: how the observed option
    sets are chosen (``build_examples``), recorded in the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_users, eval_users = teaching_users(domain, n_eval_users, seed, max_train_users)
    n_rounds = domain.n_rounds if n_rounds is None else n_rounds
    template = template or default_template()
    examples = build_examples(domain, teacher, train_users, n_dialogues, seed, prefixes, n_rounds, template,
                              design, n_candidates)
    data_file = f"train-{teacher}.jsonl"
    text = jsonl_text(examples)
    manifest = {
        "task": "recommend",
        "domain": domain.name,
        "teacher": teacher,
        "seed": seed,
        "n_dialogues_per_user": n_dialogues,
        "prefixes": prefixes,
        "n_rounds": n_rounds,
        "design": design,
        **({"n_candidates": n_candidates} if design == "active" else {}),
        "counts": {"train_users": int(len(train_users)), "eval_users": int(len(eval_users)),
                   "dialogues": int(len(train_users)) * n_dialogues, "examples": len(examples)},
        "eval_users": eval_users.tolist(),
        "files": {data_file: _write_atomic(out_dir / data_file, text)},
        "prompt_template": template.summary(with_content=True),
        "versions": project_version(),
    }
    write_manifest(out_dir, manifest)
    return manifest


def project_version() -> dict:
    """The manifest's ``versions``: the toolkit's own (what wrote the text)."""
    return {k: v for k, v in package_versions().items() if k == "bayes-teach"}


def jsonl_text(examples: list[dict]) -> str:
    """The examples as JSON lines, keys sorted, so that the same examples are the same bytes."""
    return "".join(json.dumps(example, ensure_ascii=False, sort_keys=True) + "\n" for example in examples)


def write_manifest(out_dir: Path, manifest: dict) -> None:
    _write_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(out_dir) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no teaching-set manifest at {path}; run make-data first")
    return _read_json(path)


def held_out_users(manifest_path, domain: Domain, n_users: int | None = None) -> torch.Tensor:
    """long [N]: the users a teaching set held out of teaching (its manifest's ``eval_users``, the first
    ``n_users``), checked to be ``domain``'s.  ``manifest_path``: the manifest.json or the folder holding it."""
    path = Path(manifest_path)
    if path.is_dir():
        manifest, path = read_manifest(path), path / MANIFEST
    else:
        manifest = _read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("eval_users"), list) or "domain" not in manifest:
        raise BayesTeachError(f"{path}: not a teaching set's manifest (no eval_users / domain)")
    if manifest["domain"] != domain.name:
        raise BayesTeachError(f"{path} held out {manifest['domain']} users, not {domain.name} users")
    if not manifest["eval_users"]:
        raise BayesTeachError(f"{path} held out no users (make-data --eval-users 0)")
    known = set(all_users(domain).tolist())
    strange = [u for u in manifest["eval_users"] if isinstance(u, bool) or not isinstance(u, int) or u not in known]
    if strange:
        raise BayesTeachError(f"{path}: eval_users lists {strange[0]!r}, not a user of {domain.name} (whole numbers "
                              f"0 to {max(known)})")
    return torch.tensor(manifest["eval_users"][:n_users] if n_users else manifest["eval_users"], dtype=torch.long)


def _read_json(path: Path) -> dict:
    """A manifest's contents; a damaged one is the user's file at fault (one line)."""
    try:
        return json.loads(read_user_text(path))
    except json.JSONDecodeError as error:
        raise BayesTeachError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def _set_manifest(data_path) -> dict:
    """The manifest beside a teaching set's file; {} for a set without one (e.g. one of the user's own)."""
    manifest_path = Path(data_path).parent / MANIFEST
    return _read_json(manifest_path) if manifest_path.is_file() else {}


def teaching_set_task(data_path) -> str:
    """The task a teaching set teaches, as its manifest records it: "recommend" or "design" ("recommend" for a
    set without a manifest or one written before manifests named the task)."""
    return _set_manifest(data_path).get("task", "recommend")


def teaching_set_template(data_path, template_path=None) -> PromptTemplate:
    """The prompt template a teaching set's text was written with: ``template_path`` (checked against the one
    the set's manifest records, when it records one: a mismatch is a PromptTemplateError), else the manifest's, else
    the default (a set without a manifest, e.g. one of the user's own)."""
    recorded = _set_manifest(data_path).get("prompt_template")
    if template_path is not None:
        template = load_template(template_path)
        if recorded and recorded["sha256"] != template.sha256:
            raise PromptTemplateError(
                f"teaching set {data_path} was written with prompt template {recorded['name']!r} (sha256 "
                f"{recorded['sha256'][:12]}), not {template.name!r} (sha256 {template.sha256[:12]}) from {template_path}")
        return template
    if recorded and "content" in recorded:
        return check_template(recorded["content"], str(Path(data_path).parent / MANIFEST))
    return default_template()
