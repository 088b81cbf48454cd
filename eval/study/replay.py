"""Replaying the study's released files with any assistant, through the same protocol code as simulated users.

``replay_study`` plays a ``StudyReplay`` (``eval/study/released.py``) with ``run_protocol`` and builds the usual
report, plus ``study_data``: the files read (path, sha256, line count), each user's line and ``idx``, the
users whose posterior the observed choices empty under the domain's user model (real people under the
deterministic model: ``--user-lapse``/``--user-temperature`` model them), and the loader's notes.  On the
webshop files there is no exact Bayesian assistant (a clear error), no Bayesian reference, and one more
metric, ``score_vs_best``: the release's score of the pick over the set's best score (1 where every option
scores 0; an unparseable answer scores 0).
"""
from __future__ import annotations

import torch

from ppl_models import infer
from ppl_models.errors import BayesTeachError

from eval.assistants import Assistant, BayesianAssistant
from eval.beliefs import belief_levels, elicit_beliefs as elicit
from eval.metrics import summarise
from eval.protocol import EvaluationRun, run_protocol
from eval.report import build_report
from eval.study.released import StudyReplay


class NoExactAssistantError(BayesTeachError):
    """The Bayesian assistant asked for data with no generative model to invert (webshop files)."""


def empty_posteriors(study: StudyReplay) -> list:
    """Users whose observed choices leave no hypothesis of the domain's user model: [{"line", "idx",
    "after_round"}], ``after_round`` the first round (1-based) after which the posterior is empty."""
    if study.kind == "webshop":
        return []
    evidence = infer(study.domain, study.data.dialogue_options, study.data.dialogue_choices,
                     keep_posterior=False, marginals=False, impossible="keep").log_evidence  # [N, R+1]
    empty = []
    for user in torch.nonzero(~torch.isfinite(evidence).all(-1))[:, 0].tolist():
        after = int(torch.nonzero(~torch.isfinite(evidence[user]))[0])
        empty.append({"line": study.lines[user], "idx": study.idx[user], "after_round": after})
    return empty


def score_vs_best(run: EvaluationRun, scores: torch.Tensor) -> torch.Tensor:
    """Per user and round, the mean over held-out sets of score(pick) / best score: [N, R+1]."""
    best = scores.amax(-1)  # [N, M]
    picked = scores.unsqueeze(1).expand(run.picks.shape + scores.shape[-1:])  # [N, R+1, M, O]
    score = picked.gather(-1, run.picks.clamp_min(0).unsqueeze(-1))[..., 0]
    score = torch.where(run.picks < 0, 0.0, score)
    ratio = torch.where(best.unsqueeze(1) > 0, score / best.unsqueeze(1).clamp_min(1e-12), 1.0)
    return ratio.mean(-1)


def replay_study(study: StudyReplay, assistant: Assistant, seed: int = 0, elicit_beliefs: bool = False,
                 progress=None, **ids):
    """(the EvaluationRun, its report) of ``assistant`` on the released users, dialogues and held-out sets."""
    webshop = study.kind == "webshop"
    if webshop and isinstance(assistant, BayesianAssistant):
        raise NoExactAssistantError(
            "no exact Bayesian assistant exists for the released webshop files: their shoppers are scored "
            "options, not a preference model over the option texts (use an LM, oracle or random)"
        )
    if elicit_beliefs:
        belief_levels(study.domain)  # fail before playing on a domain without per-feature weights
    run = run_protocol(study.domain, assistant, seed=seed, reference=not webshop, progress=progress, data=study.data)
    if elicit_beliefs:
        run.beliefs = elicit(run, assistant, progress)
    extra_metrics = {"score_vs_best": summarise(score_vs_best(run, study.heldout_scores), seed)} if webshop else None
    report = build_report(run, extra_metrics=extra_metrics, **ids)
    empty = empty_posteriors(study)
    report["study_data"] = {
        "kind": study.kind,
        "files": study.files,
        "users": [{"line": line, "idx": idx} for line, idx in zip(study.lines, study.idx)],
        "exact_bayesian_assistant": not webshop,
        "empty_posterior": empty,
        "notes": study.notes,
    }
    return run, report
