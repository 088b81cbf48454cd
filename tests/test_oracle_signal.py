"""experiments/oracle_signal.py: the oracle target's cross-entropy floor, checked against brute force over every
preference vector (tests/brute_force.py) on a few teaching dialogues."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch

import brute_force
from ppl_models import get_domain, simulate_dialogues
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "oracle_signal.py"


def test_oracle_floor_matches_brute_force():
    oracle_signal = load_script(SCRIPT)
    domain = get_domain("hotel")
    users, n_dialogues, n_rounds = torch.tensor([3, 200, 517]), 2, 6
    result = oracle_signal.oracle_signal(domain, users, n_dialogues, n_rounds, seed=0)
    # the same dialogues, replayed by hand: -log of the brute-force predictive of each choice given the rounds before
    dialogues = simulate_dialogues(dataclasses.replace(domain, n_rounds=n_rounds), users, n_dialogues, 0, stream="teaching")
    expected = [[] for _ in range(n_rounds)]
    agree = [[] for _ in range(n_rounds)]
    signal, noise = [[] for _ in range(n_rounds)], [[] for _ in range(n_rounds)]
    for d in range(len(dialogues)):
        options, choices = dialogues.option_index[d], dialogues.choices[d]
        for r in range(n_rounds):
            post = brute_force.posterior(domain, options[:r], choices[:r])
            predictive = brute_force.predictive(domain, post, options[r].tolist())
            expected[r].append(-math.log(predictive[int(choices[r])]))
            signal[r].append(sum((p - 1 / 3) ** 2 for p in predictive))
            noise[r].append(sum((float(o == int(choices[r])) - p) ** 2 for o, p in enumerate(predictive)))
            top = max(predictive)
            if sum(p >= top - 1e-9 for p in predictive) == 1:  # no tie: the Bayesian pick is the argmax
                agree[r].append(predictive.index(top) == int(choices[r]))
    for r, row in enumerate(result["rounds"]):
        assert row["oracle_floor_nats"] == pytest.approx(sum(expected[r]) / len(expected[r]), abs=1e-6)
        assert 0 <= row["bayes_teacher_floor_nats"] <= math.log(3)
        assert row["oracle_signal_sq"] == pytest.approx(sum(signal[r]) / len(signal[r]), abs=1e-9)
        assert row["oracle_noise_sq"] == pytest.approx(sum(noise[r]) / len(noise[r]), abs=1e-9)
        assert row["bayes_signal_sq"] == pytest.approx(2 / 3)  # (2/3, -1/3, -1/3): no ties in these dialogues
    assert result["rounds"][0]["uniform_nats"] == pytest.approx(math.log(3))
    untied = [a for rows in agree for a in rows]
    assert len(untied) == n_rounds * len(dialogues)  # these dialogues have no tie, so the pick is the argmax:
    assert result["mean_bayes_pick_accuracy_vs_oracle"] == pytest.approx(sum(untied) / len(untied))
    assert result["mean_bayes_teacher_floor_nats"] == 0
