"""Study: the Bayesian assistant on dialogues whose option sets were chosen at random (the study's protocol)
or by the Bayesian designer (the best of C candidates by exact expected information gain).

For each setting (domain, user noise) and seed: the same users and the same held-out sets under both designs
(``eval.design.run_designed_protocol``), the Bayesian assistant's accuracy after 0..5 observed rounds with 95%
bootstrap intervals over users, and the mean information gain (nats) of each round's shown set.  Targets
(issue 24): flight, all 624 users, 100 held-out sets, 100 candidates: active >= 90% after round 5 (random:
81%), and active passes random's round-5 accuracy by round 4.  The same table for hotel and noisy users.

    python experiments/active_elicitation.py                      # every setting, seed 0 (a few minutes)
    python experiments/active_elicitation.py --seeds 0 1 2        # more seeds
    python experiments/active_elicitation.py --settings flight --users 100   # a quick look

Writes experiments/results/active_elicitation.json (``--output``) and prints one table per setting.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from eval.assistants import BayesianAssistant
from eval.design import run_designed_protocol
from eval.report import build_report
from ppl_models import get_domain

SETTINGS = {  # name -> (domain, user temperature, user lapse)
    "flight": ("flight", 0.0, 0.0),
    "hotel": ("hotel", 0.0, 0.0),
    "flight-temperature-0.1": ("flight", 0.1, 0.0),
    "hotel-temperature-0.1": ("hotel", 0.1, 0.0),
    "flight-temperature-0.3": ("flight", 0.3, 0.0),
}


def run_setting(name, seed, n_users, n_heldout, n_candidates):
    domain_name, temperature, lapse = SETTINGS[name]
    domain = get_domain(domain_name).with_user(temperature=temperature, lapse=lapse)
    out = {}
    for design in ("random", "active"):
        start = time.perf_counter()
        run = run_designed_protocol(domain, BayesianAssistant(), design=design, n_candidates=n_candidates,
                                    n_users=n_users, seed=seed, n_heldout=n_heldout)
        report = build_report(run)
        out[design] = {
            "accuracy": report["accuracy"],
            "ci95": report["ci95"],
            "information_gain_nats": report["design"]["information_gain_nats"]["mean"],
            "total_information_gain_nats": report["design"]["total_information_gain_nats"]["mean"][0],
            "candidate_mean_gain_nats": report["design"].get("candidate_mean_gain_nats", {}).get("mean"),
            "n_users": report["n_users"],
            "seconds": round(time.perf_counter() - start, 2),
        }
    random_round5 = out["random"]["accuracy"][5]
    passing = [r for r, a in enumerate(out["active"]["accuracy"]) if a >= random_round5]
    out["active_passes_random_round5_at_round"] = passing[0] if passing else None
    return {"domain": domain_name, "user_temperature": temperature, "user_lapse": lapse, "seed": seed, **out}


def table(result):
    lines = [f"{result['setting']} (seed {result['seed']}, {result['random']['n_users']} users): accuracy % [95% CI] "
             "and information gain of the round's set (nats)",
             "round   random                    active                    gain random  gain active"]
    for r in range(len(result["random"]["accuracy"])):
        cells = []
        for design in ("random", "active"):
            a, (lo, hi) = result[design]["accuracy"][r], result[design]["ci95"][r]
            cells.append(f"{100 * a:5.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]     ")
        gains = ["-" if r == 0 else f"{result[d]['information_gain_nats'][r - 1]:.3f}" for d in ("random", "active")]
        lines.append(f"{r:5d}   {cells[0]}{cells[1]}{gains[0]:>11}  {gains[1]:>11}")
    lines.append(f"active reaches random's round-5 accuracy at round {result['active_passes_random_round5_at_round']}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--users", type=int, default=None, help="users per setting (default: all)")
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "active_elicitation.json"))
    args = parser.parse_args()
    results = []
    total = len(args.settings) * len(args.seeds)
    for name in args.settings:
        for seed in args.seeds:
            result = {"setting": name, **run_setting(name, seed, args.users, args.heldout, args.candidates)}
            results.append(result)
            print(table(result), flush=True)
            save(args, results, total)  # after every setting, so that an interrupted run keeps what it finished
    print(f"results: {args.output}")


def save(args, results, total):
    record = {
        "command": "python experiments/active_elicitation.py " + " ".join(
            [f"--settings {' '.join(args.settings)}", f"--seeds {' '.join(map(str, args.seeds))}"]
            + ([f"--users {args.users}"] if args.users else []) + [f"--heldout {args.heldout}", f"--candidates {args.candidates}"]),
        "assistant": "bayesian",
        "n_heldout": args.heldout,
        "n_candidates": args.candidates,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "note": "shared with other jobs; times are indicative"},
        "complete": len(results) == total,
        "finished": [f"{r['setting']} seed {r['seed']}" for r in results],
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
