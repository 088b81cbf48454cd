"""How much an oracle teacher's labels can teach: the cross-entropy floor of the oracle target per round.

    python experiments/oracle_signal.py [--domain hotel] [--dialogues 100] [--rounds 6] \
        [--out experiments/results/oracle_signal.json]

The oracle teacher's answer in round r is the user's own choice.  Given the history (rounds before r), the
best any student can predict that choice is the exact Bayesian posterior predictive p_bayes(. | history), so
the expected cross-entropy of the oracle target cannot go below

    floor_r = E[-log p_bayes(user's choice in round r | rounds < r)]        (nats; the conditional entropy)

where the expectation is over the teaching dialogues (the distill pipeline's: users outside the 100 held out
for evaluation, ``--dialogues`` dialogues each, ``--rounds`` rounds, seed 0, the "teaching" stream).  A student
stuck at ln 3 (uniform over 3 options) leaves ln 3 - floor_r on the table.  The Bayesian teacher's answer is a
function of the history (its argmax), so its floor is 0, except where the predictive ties at the top and the
teacher's tie-break draws at random: E[log(number of tied options)], reported as ``bayes_teacher_floor``.
``bayes_pick_accuracy_vs_oracle`` is how often the Bayesian pick equals the oracle label (the accuracy of the
ideal oracle-taught student).

The gradient at the start: a student that predicts uniformly (u = 1/3 each) gets, per example, the logit
gradient u - target.  Its expectation given the history is u - p_bayes for the oracle target and
u - onehot(Bayesian pick) for the Bayesian one; what is left, target - p_bayes, is noise that averages out
only over many examples.  Per round: ``oracle_signal_sq`` = E||p_bayes - u||^2, ``oracle_noise_sq`` =
E||onehot(choice) - p_bayes||^2, ``bayes_signal_sq`` = E||onehot(pick) - u||^2 (2/3 with 3 options, no noise),
and ``bayes_over_oracle_signal`` = their ratio: how much weaker the oracle's expected push away from uniform
is.  Not a timing: the references (ln 3, the Bayesian teacher) are computed in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path


import torch  # noqa: E402

from distill.teaching_data import split_users, teacher_picks  # noqa: E402
from ppl_models import get_domain, infer, simulate_dialogues  # noqa: E402

TIE_TOLERANCE = 1e-9


def oracle_signal(domain, users: torch.Tensor, n_dialogues: int, n_rounds: int, seed: int = 0) -> dict:
    """Per-round floors and agreement (see the module docstring) over ``n_dialogues`` teaching dialogues of
    ``n_rounds`` rounds for each of ``users``."""
    domain = dataclasses.replace(domain, n_rounds=n_rounds)
    dialogues = simulate_dialogues(domain, users, n_dialogues, seed, stream="teaching")
    result = infer(domain, dialogues.option_index, dialogues.choices, keep_posterior=False, marginals=False,
                   predictive=True)
    predictive = result.predictive.double()  # [N, R, O]: p_bayes(option | rounds before r)
    choices = dialogues.choices  # [N, R]
    p_choice = predictive.gather(-1, choices[..., None])[..., 0]  # [N, R]
    if bool((p_choice <= 0).any()):
        raise RuntimeError("a user's choice has zero predictive probability: the users are not the prior's")
    oracle_ce = -p_choice.log()  # [N, R]
    picks, _ = teacher_picks(domain, dialogues, seed)  # the Bayesian teacher's answers, its tie-break included
    tied = (predictive >= predictive.max(dim=-1, keepdim=True).values - TIE_TOLERANCE).sum(-1).double()  # [N, R]
    ln3 = math.log(domain.n_options)
    uniform = torch.full_like(predictive, 1.0 / domain.n_options)
    oracle_signal_sq = (predictive - uniform).pow(2).sum(-1)  # [N, R]
    oracle_noise_sq = (torch.nn.functional.one_hot(choices, domain.n_options).double() - predictive).pow(2).sum(-1)
    bayes_signal_sq = (torch.nn.functional.one_hot(picks, domain.n_options).double() - uniform).pow(2).sum(-1)
    rounds = []
    for r in range(n_rounds):
        ce = oracle_ce[:, r]
        rounds.append({
            "round": r + 1,
            "observed_rounds_before": r,
            "oracle_floor_nats": float(ce.mean()),
            "oracle_floor_sem": float(ce.std() / math.sqrt(len(ce))),
            "uniform_nats": ln3,
            "oracle_floor_over_uniform": float(ce.mean()) / ln3,
            "bayes_teacher_floor_nats": float(tied[:, r].log().mean()),
            "bayes_tie_rate": float((tied[:, r] > 1).double().mean()),
            "bayes_pick_accuracy_vs_oracle": float((picks[:, r] == choices[:, r]).double().mean()),
            "oracle_signal_sq": float(oracle_signal_sq[:, r].mean()),
            "oracle_noise_sq": float(oracle_noise_sq[:, r].mean()),
            "bayes_signal_sq": float(bayes_signal_sq[:, r].mean()),
            "bayes_over_oracle_signal": float(bayes_signal_sq[:, r].mean() / oracle_signal_sq[:, r].mean()),
        })
    mean_floor = float(oracle_ce.mean())
    return {
        "domain": domain.name, "n_options": domain.n_options, "n_rounds": n_rounds, "n_users": int(len(users)),
        "n_dialogues_per_user": n_dialogues, "n_dialogues": int(len(choices)), "seed": seed,
        "rounds": rounds,
        "mean_oracle_floor_nats": mean_floor, "uniform_nats": ln3, "mean_oracle_floor_over_uniform": mean_floor / ln3,
        "mean_bayes_teacher_floor_nats": float(tied.log().mean()),
        "mean_bayes_pick_accuracy_vs_oracle": float((picks == choices).double().mean()),
        "mean_bayes_over_oracle_signal": float(bayes_signal_sq.mean() / oracle_signal_sq.mean()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="hotel", help="A built-in domain name or module:attribute.")
    parser.add_argument("--dialogues", type=int, default=100,
                        help="Dialogues per teaching user (the embedded student's default, 100).")
    parser.add_argument("--rounds", type=int, default=None,
                        help="Rounds per dialogue (default: the domain's + 1, as the embedded student is taught).")
    parser.add_argument("--eval-users", type=int, default=100, help="Users held out of teaching, as in distill.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the teaching dialogues (distill's default 0).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads (at most 2 on the shared machine).")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "oracle_signal.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    domain = get_domain(args.domain)
    users, _ = split_users(domain, args.eval_users, args.seed)
    start = time.perf_counter()
    result = oracle_signal(domain, users, args.dialogues, args.rounds or domain.n_rounds + 1, args.seed)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["command"] = "python experiments/oracle_signal.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['domain']}: {result['n_dialogues']} teaching dialogues x {result['n_rounds']} rounds")
    print("round  oracle floor  / ln 3  bayes floor  ties %  bayes pick = oracle %  oracle signal  noise  bayes/oracle")
    for row in result["rounds"]:
        print(f"{row['round']:5d}  {row['oracle_floor_nats']:12.3f}  {row['oracle_floor_over_uniform']:6.3f}  "
              f"{row['bayes_teacher_floor_nats']:11.3f}  {100 * row['bayes_tie_rate']:6.1f}  "
              f"{100 * row['bayes_pick_accuracy_vs_oracle']:21.1f}  {row['oracle_signal_sq']:13.3f}  "
              f"{row['oracle_noise_sq']:5.3f}  {row['bayes_over_oracle_signal']:12.1f}")
    print(f"mean oracle floor {result['mean_oracle_floor_nats']:.3f} nats vs ln {result['n_options']} = "
          f"{result['uniform_nats']:.3f}; the Bayesian target's expected gradient at uniform is "
          f"{result['mean_bayes_over_oracle_signal']:.1f}x the oracle's (squared norm); -> {out}")
    return result


if __name__ == "__main__":
    main()
