"""What the design task's targets say: per round, how much the Bayesian designer's pick beats the other
candidates, and how sharp the soft target (the candidates' gains normalised to sum to 1) is.

    python experiments/design_targets.py [--domain flight] [--candidates 4] [--dialogues 10] \
        [--out experiments/results/design_targets.json]

The dialogues are exactly those of ``make-data --task design`` with the same settings (the users outside the
``--eval-users`` held out, ``--dialogues`` each, the "design-teaching" stream, ``--seed``), rebuilt with
``eval.design.active_dialogues(keep_candidates=True)``.  Per round over all teaching dialogues:
``best_gain_nats`` (the mean gain of the designer's pick), ``mean_candidate_gain_nats`` (of a candidate
drawn at random), ``random_fraction_of_best`` (the mean over dialogues of their ratio: what a designer that
picks at random scores in the LM designer's metric; 1.0 is the Bayesian designer), ``tie_rate`` (dialogues
whose best gain is shared by two candidates or more, within eval.design.GAIN_TIE_TOLERANCE: the hard target
is then a seeded draw among them), ``no_gain_rate`` (no candidate teaches anything: the soft target is
uniform), ``soft_max_prob`` (the mean of the soft target's largest probability; 1/K is a uniform target) and
``soft_pick_is_argmax`` (how often the hard answer is the soft target's most probable); over all rounds,
``picks_per_label``: how often each label ("Show me set k.") is the answer.  Not a timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from stage_runner import write_json

from distill.design_data import TEACHING_STREAM
from distill.teaching_data import teaching_users
from eval.design import GAIN_TIE_TOLERANCE, active_dialogues
from ppl_models import get_domain


def design_targets(domain, users: torch.Tensor, n_dialogues: int, n_candidates: int, seed: int) -> dict:
    """Per-round statistics of the design targets (see the module docstring)."""
    _, _, record = active_dialogues(domain, users.repeat_interleave(n_dialogues), seed, n_candidates,
                                    stream=TEACHING_STREAM, keep_candidates=True)
    gains = record.candidate_gains.nan_to_num(nan=0.0).clamp(min=0.0)  # [N, R, K], as gain_distribution reads them
    best = gains.amax(-1)
    total = gains.sum(-1, keepdim=True)
    soft = torch.where(total > 0, gains / total.clamp(min=1e-300), torch.full_like(gains, 1.0 / n_candidates))
    hard = record.picks
    rounds = []
    for r in range(domain.n_rounds):
        positive = best[:, r] > GAIN_TIE_TOLERANCE
        rounds.append({
            "round": r + 1,
            "best_gain_nats": round(float(best[:, r].mean()), 4),
            "mean_candidate_gain_nats": round(float(gains[:, r].mean()), 4),
            "random_fraction_of_best": round(float((gains[positive, r].mean(-1) / best[positive, r]).mean()), 4),
            "tie_rate": round(float(((gains[:, r] >= best[:, r, None] - GAIN_TIE_TOLERANCE).sum(-1) > 1).double().mean()), 4),
            "no_gain_rate": round(float((~positive).double().mean()), 4),
            "soft_max_prob": round(float(soft[:, r].amax(-1).mean()), 4),
            "soft_pick_is_argmax": round(float((soft[:, r].argmax(-1) == hard[:, r]).double().mean()), 4),
        })
    picks_per_label = torch.bincount(hard.flatten(), minlength=n_candidates).tolist()
    return {"domain": domain.name, "n_candidates": n_candidates, "n_dialogues": len(hard), "seed": seed,
            "picks_per_label": picks_per_label, "rounds": rounds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="flight", help="A built-in domain name or module:attribute.")
    parser.add_argument("--candidates", type=int, default=4, help="Candidate sets per round (make-data's default, 4).")
    parser.add_argument("--dialogues", type=int, default=10, help="Dialogues per teaching user (make-data's default, 10).")
    parser.add_argument("--eval-users", type=int, default=100, help="Users held out of teaching, as make-data's default.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the teaching dialogues (make-data's default 0).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads (at most 2 on the shared machine).")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "design_targets.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    domain = get_domain(args.domain)
    users, _ = teaching_users(domain, args.eval_users, args.seed)
    start = time.perf_counter()
    result = design_targets(domain, users, args.dialogues, args.candidates, args.seed)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["command"] = "python experiments/design_targets.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(result, Path(args.out))
    print(f"{result['domain']}: {result['n_dialogues']} teaching dialogues, {args.candidates} candidates a round")
    print("round  best gain  mean gain  random/best  ties %  no gain %  soft max p  hard = soft argmax %")
    for row in result["rounds"]:
        print(f"{row['round']:5d}  {row['best_gain_nats']:9.3f}  {row['mean_candidate_gain_nats']:9.3f}  "
              f"{row['random_fraction_of_best']:11.3f}  {100 * row['tie_rate']:6.1f}  {100 * row['no_gain_rate']:9.1f}  "
              f"{row['soft_max_prob']:10.3f}  {100 * row['soft_pick_is_argmax']:20.1f}")
    print(f"answers per label (set 1, 2, ...): {result['picks_per_label']}")
    return result


if __name__ == "__main__":
    main()
