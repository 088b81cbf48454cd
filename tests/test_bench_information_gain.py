"""The information-gain benchmark's hand-vectorised baseline computes what the package computes (so the
difference it records can show a disagreement), and its weight matrix is the package's hypothesis order."""
from pathlib import Path

import torch

from ppl_models import all_users, current_posterior, expected_information_gain, get_domain, hypothesis_space
from ppl_models import simulate_dialogues
from ppl_models.linear import WEIGHT_LEVELS
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_information_gain.py"


def test_hand_baseline_matches_the_package():
    bench = load_script(SCRIPT)
    domain = get_domain("flight")
    weights = bench.weight_matrix(len(domain.features))
    space = hypothesis_space(domain)
    levels = torch.tensor(WEIGHT_LEVELS)
    for f, feature in enumerate(domain.feature_names):  # the package's hypothesis h has weight row h
        assert torch.equal(weights[:, f], levels[space.site_values[f"weight[{feature}]"]])
    users = all_users(domain)[:40]
    dialogues = simulate_dialogues(domain, users, 1, seed=1)
    posterior = current_posterior(domain, dialogues.option_index[:, :2], dialogues.choices[:, :2])
    candidates = domain.draw_options(torch.Generator().manual_seed(2), (len(users), 12))
    hand = bench.hand_information_gain(domain.options(candidates).value, posterior, weights, users_per_chunk=7)
    package = expected_information_gain(domain, candidates, posterior=posterior)
    assert torch.allclose(hand, package, atol=1e-8, rtol=0)  # the package's 1/3 is float32
    assert float(package.std()) > 0.05  # the sets differ in what they teach: the comparison is not vacuous
