"""Exact expected information gain (ppl_models.design) against brute-force sums written in the tests, for
every choice rule and every kind of built-in domain, per-user and shared candidates."""
import math

import pytest
import torch

import brute_force
from ppl_models import (
    all_users, current_posterior, domain_names, expected_information_gain, get_domain, hypothesis_space, infer,
    simulate_dialogues,
)

RULES = [(0.0, 0.0), (0.4, 0.0), (0.0, 0.1), (0.25, 0.05)]  # (temperature, lapse)


def some_users(domain, n, seed):
    users = all_users(domain)
    return users[torch.randint(len(users), (n,), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("name", ["flight", "flight3", "hotel"])
@pytest.mark.parametrize("temperature,lapse", RULES)
def test_linear_domains_match_brute_force(name, temperature, lapse):
    domain = get_domain(name).with_user(temperature=temperature, lapse=lapse)
    users = some_users(domain, 3, seed=1)
    dialogues = simulate_dialogues(domain, users, 1, seed=2)
    candidates = domain.draw_options(torch.Generator().manual_seed(3), (len(users), 6))
    for n_rounds in (0, 2):
        history = dialogues.option_index[:, :n_rounds], dialogues.choices[:, :n_rounds]
        got = expected_information_gain(domain, candidates, *history)
        assert got.shape == (len(users), 6) and got.dtype == torch.float64
        for d in range(len(users)):
            post = brute_force.posterior(domain, history[0][d], history[1][d], temperature, lapse)
            want = [brute_force.linear_information_gain(domain, post, candidates[d, c].tolist(), temperature, lapse)
                    for c in range(candidates.shape[1])]
            assert torch.allclose(got[d], torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0), (d, n_rounds)


def test_webshop_matches_brute_force():
    from test_webshop import brute_force as shop_posteriors, choice_probs, goal_sets, option_products, price_ranges
    from test_webshop import package_shoppers, raw_rows
    from ppl_models.catalog import PRICE_SENSITIVITY

    rows = raw_rows()
    ranges = price_ranges(rows)
    for temperature, lapse in RULES:
        domain = get_domain("webshop").with_user(temperature=temperature, lapse=lapse)
        users = some_users(domain, 2, seed=4)
        dialogues = simulate_dialogues(domain, users, 1, seed=5)
        candidates = domain.draw_options(torch.Generator().manual_seed(6), (len(users), 3))
        history = dialogues.option_index[:, :1], dialogues.choices[:, :1]
        got = expected_information_gain(domain, candidates, *history)
        for d in range(len(users)):
            post = shop_posteriors(domain, history[0][d], history[1][d], rows, temperature, lapse)[0][-1]
            for c in range(candidates.shape[1]):
                products = option_products(domain, candidates[d, c].tolist(), rows)
                table = {key: choice_probs(key[0], PRICE_SENSITIVITY[key[1]], products, ranges, temperature, lapse)
                         for key in post}
                want = brute_force.information_gain(post, table)
                assert got[d, c].item() == pytest.approx(want, abs=1e-6), (temperature, lapse, d, c)
    assert len(goal_sets(rows)) == sum(k is not None for k in package_shoppers(domain, hypothesis_space(domain)))


@pytest.mark.parametrize("temperature,lapse", RULES)
def test_shared_pool_equals_each_users_own_copy(temperature, lapse):
    domain = get_domain("flight").with_user(temperature=temperature, lapse=lapse)
    users = some_users(domain, 5, seed=7)
    dialogues = simulate_dialogues(domain, users, 1, seed=8)
    pool = domain.draw_options(torch.Generator().manual_seed(9), (10,))
    history = dialogues.option_index[:, :3], dialogues.choices[:, :3]
    shared = expected_information_gain(domain, pool, *history)
    own = expected_information_gain(domain, pool.expand(len(users), *pool.shape), *history)
    assert torch.allclose(shared, own, atol=1e-9, rtol=0)
    posterior = current_posterior(domain, *history)
    assert torch.equal(expected_information_gain(domain, pool, posterior=posterior), shared)


def test_information_gain_is_the_expected_drop_in_posterior_entropy():
    """I = H[p(h | history)] - E_y H[p(h | history, y)], computed through ``infer`` on every outcome."""
    domain = get_domain("hotel").with_user(lapse=0.05)
    users = some_users(domain, 2, seed=10)
    dialogues = simulate_dialogues(domain, users, 1, seed=11)
    candidates = domain.draw_options(torch.Generator().manual_seed(12), (len(users), 4))
    history = dialogues.option_index[:, :2], dialogues.choices[:, :2]
    got = expected_information_gain(domain, candidates, *history)

    def entropy(p):
        return float(-torch.special.xlogy(p, p).sum())

    before = current_posterior(domain, *history)
    for d in range(len(users)):
        for c in range(candidates.shape[1]):
            options = torch.cat([history[0][d], candidates[d, c : c + 1]])[None]
            outcomes = []
            for y in range(domain.n_options):
                choices = torch.cat([history[1][d], torch.tensor([y])])[None]
                result = infer(domain, options, choices, marginals=False)
                evidence = math.exp(float(result.log_evidence[0, -1] - result.log_evidence[0, -2]))
                outcomes.append((evidence, entropy(result.posterior[0, -1])))
            assert sum(p for p, _ in outcomes) == pytest.approx(1.0, abs=1e-6)  # float32 likelihoods
            want = entropy(before[d]) - sum(p * h for p, h in outcomes)
            assert got[d, c].item() == pytest.approx(want, abs=1e-6)


def test_deterministic_users_gain_the_entropy_of_the_predictive_and_no_more_than_log_options():
    for name in domain_names():
        if name in ("flight7", "flight8"):  # 78,125 and 390,625 hypotheses: covered by the same code as flight
            continue
        domain = get_domain(name)
        users = some_users(domain, 2, seed=13)
        candidates = domain.draw_options(torch.Generator().manual_seed(14), (len(users), 5))
        gain = expected_information_gain(domain, candidates)
        assert bool((gain >= 0).all() and (gain <= math.log(domain.n_options) + 1e-9).all()), name
        assert float(gain.max()) > 0.1, name  # a random set teaches something about a user drawn from the prior


def test_an_empty_posterior_gives_nan_and_bad_shapes_are_refused():
    domain = get_domain("flight")
    space = hypothesis_space(domain)
    posterior = torch.stack([space.prior, torch.full((space.size,), float("nan"), dtype=torch.float64)])
    candidates = domain.draw_options(torch.Generator().manual_seed(15), (2, 3))
    gain = expected_information_gain(domain, candidates, posterior=posterior)
    assert bool(torch.isfinite(gain[0]).all()) and bool(gain[1].isnan().all())
    shared = expected_information_gain(domain, candidates[0], posterior=posterior)
    assert torch.allclose(shared[0], gain[0]) and bool(shared[1].isnan().all())
    with pytest.raises(ValueError, match="candidates must be"):
        expected_information_gain(domain, candidates[..., :2])
    with pytest.raises(ValueError, match="posteriors"):
        expected_information_gain(domain, candidates[:1], posterior=posterior)
