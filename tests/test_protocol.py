"""The study's evaluation protocol and the built-in assistants."""
import pytest
import torch

from eval.assistants import BayesianAssistant, CheapestAssistant, OracleAssistant, RandomAssistant, RecommendRequest
from eval.metrics import bootstrap_ci, summarise_run
from eval.protocol import run_protocol
from ppl_models import get_domain

STUDY_FLIGHT = [40.3, 58.0, 67.3, 73.1, 77.5, 81.0]  # an independent simulation of the protocol (../shared/STUDY.md)


@pytest.mark.slow
def test_bayesian_assistant_reproduces_the_study_curve_on_flight():
    run = run_protocol(get_domain("flight"), BayesianAssistant(), seed=0)
    summary = summarise_run(run)
    accuracy = [100 * a for a in summary["accuracy"]["mean"]]
    assert len(run.users) == 624 and run.heldout_choices.shape == (624, 100)
    for got, want in zip(accuracy, STUDY_FLIGHT):
        assert abs(got - want) < 1.5, (accuracy, STUDY_FLIGHT)
    for (lo, hi), mean in zip(summary["accuracy"]["ci95"], summary["accuracy"]["mean"]):
        assert lo < mean < hi and hi - lo < 0.05
    assert summary["agreement_with_bayesian"]["mean"] == [1.0] * 6


def test_reference_assistants():
    flight = get_domain("flight")
    random_run = summarise_run(run_protocol(flight, RandomAssistant(), n_users=200, seed=1))
    assert all(abs(a - 1 / 3) < 0.03 for a in random_run["accuracy"]["mean"])
    oracle = summarise_run(run_protocol(flight, OracleAssistant(), n_users=200, seed=1))
    assert min(oracle["accuracy"]["mean"]) > 0.9  # below 1 only through ties the user breaks at random
    # An oracle's KL from the Bayesian predictive shrinks as the Bayesian assistant learns the user.
    kl = oracle["kl_from_bayesian"]["mean"]
    assert kl[-1] < kl[0]


def test_cheapest_assistant_picks_the_lowest_price():
    flight = get_domain("flight")
    option_sets = torch.tensor([[[[0, 0, 0, 5], [0, 0, 0, 2], [0, 0, 0, 9]]]])
    empty = torch.zeros(1, 0, dtype=torch.long)
    request = RecommendRequest(flight, torch.zeros(1, 0, 3, 4, dtype=torch.long), empty, empty, option_sets)
    recommendation = CheapestAssistant().recommend(request)
    assert recommendation.picks.tolist() == [[1]]
    assert recommendation.probs[0, 0].tolist() == [0.0, 1.0, 0.0]


def test_bayesian_ties_are_broken_by_a_seeded_draw():
    flight = get_domain("flight")
    same = torch.tensor([[[[3, 3, 1, 3]] * 3] * 200])  # three identical options, 200 sets
    empty = torch.zeros(1, 0, dtype=torch.long)
    request = RecommendRequest(flight, torch.zeros(1, 0, 3, 4, dtype=torch.long), empty, empty, same, seed=9)
    picks = BayesianAssistant().recommend(request).picks
    assert torch.equal(picks, BayesianAssistant().recommend(request).picks)
    counts = torch.bincount(picks[0], minlength=3)
    assert counts.min() > 40  # all three tied options get picked


def test_protocol_is_deterministic_given_a_seed():
    hotel = get_domain("hotel")
    first = run_protocol(hotel, BayesianAssistant(), n_users=30, seed=2)
    again = run_protocol(hotel, BayesianAssistant(), n_users=30, seed=2)
    assert torch.equal(first.picks, again.picks) and torch.equal(first.heldout_choices, again.heldout_choices)


def test_bootstrap_interval_against_a_direct_resampling():
    values = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]])
    lo, hi = bootstrap_ci(values, seed=0, n_bootstrap=20000)
    # The mean of 5 Bernoulli(0.6) resamples: the 2.5% and 97.5% quantiles are 0.2 and 1.0.
    assert float(lo) == pytest.approx(0.2) and float(hi) == pytest.approx(1.0)


def test_noise_tolerant_assistant_against_noisy_users():
    flight = get_domain("flight")
    noisy = flight.with_user(lapse=0.2)
    run = run_protocol(noisy, BayesianAssistant(), n_users=100, seed=3, user_domain=noisy)
    accuracy = summarise_run(run)["accuracy"]["mean"]
    assert accuracy[-1] > accuracy[0] + 0.1
