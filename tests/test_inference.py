"""Exact inference against an independent brute-force enumeration (tests/brute_force.py)."""
import pytest
import torch

import brute_force
from ppl_models import ImpossibleChoiceError, get_domain, infer, predict, simulate_dialogues, all_users
from ppl_models.linear import WEIGHT_LEVELS, weight_site


def _weights_of_hypotheses(domain, space):
    """Each hypothesis as a weight tuple, read from the package's site values."""
    columns = [space.site_values[weight_site(f.name)] for f in domain.features]
    return [tuple(WEIGHT_LEVELS[int(c[h])] for c in columns) for h in range(space.size)]


@pytest.mark.parametrize(
    "name,temperature,lapse",
    [("flight", 0.0, 0.0), ("hotel", 0.0, 0.0), ("flight", 0.3, 0.0), ("hotel", 0.0, 0.1), ("flight3", 0.5, 0.05)],
)
def test_posterior_and_predictive_match_brute_force(name, temperature, lapse):
    domain = get_domain(name).with_user(temperature=temperature, lapse=lapse)
    generator = torch.Generator().manual_seed(7)
    users = all_users(domain)[torch.randint(len(all_users(domain)), (6,), generator=generator)]
    dialogues = simulate_dialogues(domain, users, 1, seed=3)
    result = infer(domain, dialogues.option_index, dialogues.choices, predictive=True)
    hypotheses = _weights_of_hypotheses(domain, result.space)
    new_options = domain.draw_options(torch.Generator().manual_seed(11), (len(users), 2))
    predicted = predict(domain, result.log_posterior, new_options)  # [D, R+1, 2, O]
    for d in range(len(users)):
        for r in range(domain.n_rounds + 1):
            expected = brute_force.posterior(
                domain, dialogues.option_index[d, :r], dialogues.choices[d, :r], temperature, lapse
            )
            got = result.log_posterior[d, r].exp()
            for h, weights in enumerate(hypotheses):
                assert abs(float(got[h]) - expected.get(weights, 0.0)) < 1e-6
            # each feature's marginal
            for f, feature in enumerate(domain.features):
                marginal = result.marginals[weight_site(feature.name)][d, r]
                for k, level in enumerate(WEIGHT_LEVELS):
                    want = sum(p for w, p in expected.items() if w[f] == level)
                    assert abs(float(marginal[k]) - want) < 1e-6
            # posterior predictive over this round's options (given rounds before it) and over new sets
            if r < domain.n_rounds:
                want = brute_force.predictive(domain, expected, dialogues.option_index[d, r].tolist(), temperature, lapse)
                assert torch.allclose(result.predictive[d, r].double(), torch.tensor(want, dtype=torch.double), atol=1e-6)
            for m in range(2):
                want = brute_force.predictive(domain, expected, new_options[d, m].tolist(), temperature, lapse)
                assert torch.allclose(predicted[d, r, m].double(), torch.tensor(want, dtype=torch.double), atol=1e-6)


def test_prior_excludes_only_the_indifferent_user():
    domain = get_domain("flight")
    assert len(all_users(domain)) == 624
    result = infer(domain, domain.draw_options(torch.Generator(), (1, 0)), torch.zeros(1, 0, dtype=torch.long))
    prior = result.log_posterior[0, 0].exp()
    hypotheses = _weights_of_hypotheses(domain, result.space)
    assert float(prior[hypotheses.index((0.0, 0.0, 0.0, 0.0))]) == 0.0
    assert torch.allclose(prior[prior > 0], torch.full((624,), 1 / 624, dtype=prior.dtype))


def test_marginals_agree_with_pyro_trace_enum_elbo():
    """A second, independent route through Pyro: TraceEnum_ELBO.compute_marginals."""
    import pyro
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    from ppl_models import user_model

    domain = get_domain("hotel")
    dialogues = simulate_dialogues(domain, all_users(domain)[[5, 300]], 1, seed=1)
    result = infer(domain, dialogues.option_index, dialogues.choices)
    model = config_enumerate(user_model, default="parallel")
    guide = lambda *args, **kwargs: None  # noqa: E731 (everything latent is enumerated)
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    pyro.clear_param_store()
    marginals = elbo.compute_marginals(model, guide, domain, dialogues.option_index, dialogues.choices)
    for site, distribution in marginals.items():
        probs = distribution.probs if hasattr(distribution, "probs") else distribution.logits.softmax(-1)
        probs = probs.reshape(-1, 5)[:2]  # [D, K]
        assert torch.allclose(probs.double(), result.marginals[site][:, -1], atol=1e-6)


def _never_tied_pair(domain):
    """Two options P, Q that no user with prior mass finds equally good (found by brute force)."""
    weights = brute_force.weight_vectors(len(domain.features))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20000):
        pair = domain.draw_options(generator, (1, 1), n_options=2)[0, 0]
        values = brute_force.option_values(domain, pair.tolist())
        gaps = [sum(w * (p - q) for w, p, q in zip(ws, *values)) for ws in weights]
        if all(abs(g) > 1e-3 for g in gaps):
            return pair
    raise AssertionError("no never-tied pair found")


def test_impossible_choice_names_dialogue_and_round():
    domain = get_domain("flight2")  # with 2 features some option pairs are never tied (e.g. gaps 0.1, 0.3)
    p, q = _never_tied_pair(domain)
    round_options = torch.stack([p, q, q])  # [O, F]
    options = round_options.expand(2, 2, 3, 2)  # 2 dialogues, 2 rounds, the same set each round
    # Choosing P, then Q from the same set contradicts every deterministic user (no one is indifferent).
    bad = torch.tensor([[0, 0], [0, 1]])
    with pytest.raises(ImpossibleChoiceError, match=r"dialogue 1, round 2"):
        infer(domain, options, bad)
    # Choosing either copy of Q is a tie, which is possible.
    assert torch.isfinite(infer(domain, options[:1], torch.tensor([[1, 2]])).log_evidence).all()
    noisy = domain.with_user(lapse=0.05)
    result = infer(noisy, options, bad)
    assert torch.isfinite(result.log_evidence).all() and not torch.isnan(result.log_posterior).any()
    assert torch.allclose(result.log_posterior.exp().sum(-1), torch.ones(2, 3, dtype=torch.double))


def test_chunking_does_not_change_results():
    domain = get_domain("flight")
    dialogues = simulate_dialogues(domain, all_users(domain)[:40], 1, seed=5)
    whole = infer(domain, dialogues.option_index, dialogues.choices, predictive=True)
    chunked = infer(domain, dialogues.option_index, dialogues.choices, predictive=True, max_elements=625 * 5 * 3 * 3)
    assert torch.allclose(whole.log_posterior.exp(), chunked.log_posterior.exp(), atol=1e-7)
    assert torch.allclose(whole.predictive, chunked.predictive, atol=1e-7)


@pytest.mark.parametrize("temperature,lapse", [(0.0, 0.0), (0.0, 0.2), (0.4, 0.0), (0.4, 0.1)])
def test_probability_space_choice_rule_matches_its_log_probs(temperature, lapse):
    """UtilityChoice.likelihood / probs (the inference hot path) against exp(log_prob) / exp(log_probs),
    on utilities with many exact and near ties (within and beyond the tie tolerance)."""
    from ppl_models.choice import UtilityChoice

    generator = torch.Generator().manual_seed(0)
    utility = torch.randint(0, 4, (6, 40, 3), generator=generator).float() / 4
    utility[::3, :, 1] = utility[::3, :, 0] + 5e-7  # tied within the tolerance
    utility[1::3, :, 2] = utility[1::3, :, 0] - 3e-6  # not tied
    permuted = utility.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # option-major storage, as linear_utility
    value = torch.randint(0, 3, (40,), generator=generator)
    for u in (utility, permuted):
        fn = UtilityChoice(u, temperature, lapse)
        assert torch.allclose(fn.likelihood(value).double(), fn.log_prob(value).double().exp(), atol=1e-7, rtol=0)
        assert torch.allclose(fn.probs().double(), fn.log_probs().double().exp(), atol=1e-7, rtol=0)


def test_posterior_result_and_predict_in_probability_space():
    domain = get_domain("hotel")
    dialogues = simulate_dialogues(domain, all_users(domain)[::97], 1, seed=2)
    result = infer(domain, dialogues.option_index, dialogues.choices)
    assert result.posterior.dtype == torch.float64 and result.posterior.shape == (7, 6, 625)
    assert torch.equal(result.log_posterior, result.posterior.log())
    assert torch.allclose(result.posterior.sum(-1), torch.ones(7, 6, dtype=torch.float64), atol=1e-12, rtol=0)
    new_options = domain.draw_options(torch.Generator().manual_seed(4), (7, 3))
    from_result = predict(domain, result, new_options)
    assert torch.allclose(from_result, predict(domain, result.log_posterior, new_options), atol=1e-12, rtol=0)
    assert torch.equal(infer(domain, dialogues.option_index, dialogues.choices, keep_posterior=False).log_evidence,
                       result.log_evidence)


def test_threads_do_not_change_results_and_report_the_first_impossible_dialogue():
    domain = get_domain("flight")
    dialogues = simulate_dialogues(domain, all_users(domain)[:60], 1, seed=6)
    flight2 = get_domain("flight2")
    p, q = _never_tied_pair(flight2)
    options = torch.stack([p, q, q]).expand(40, 2, 3, 2)  # 40 dialogues, the same set in both rounds
    choices = torch.zeros(40, 2, dtype=torch.long)
    choices[[31, 13], 1] = 1  # P, then Q: no deterministic user does that (dialogues 13 and 31)
    threads = torch.get_num_threads()
    try:
        results, errors = [], []
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            results.append(infer(domain, dialogues.option_index, dialogues.choices, predictive=True,
                                 max_elements=625 * 15 * 4))  # 15 chunks
            assert torch.get_num_threads() == n_threads
            with pytest.raises(ImpossibleChoiceError) as error:
                infer(flight2, options, choices, max_elements=25 * 2 * 3 * 2)  # 20 chunks of 2 dialogues
            errors.append(error.value)
        one, two = results
        for name in ("posterior", "predictive", "log_evidence"):
            assert torch.equal(getattr(one, name), getattr(two, name))
        for site in one.marginals:
            assert torch.equal(one.marginals[site], two.marginals[site])
        assert [(e.dialogue, e.round) for e in errors] == [(13, 1), (13, 1)]
    finally:
        torch.set_num_threads(threads)


def test_long_noisy_dialogues_fall_back_to_per_round_normalisation():
    """700 random choices of a noisy user: the evidence (about 1e-300) is below what products of
    likelihoods may reach in float64, so inference normalises every round; checked against a log-space
    brute force."""
    import math

    domain = get_domain("flight2").with_user(temperature=0.3)
    generator = torch.Generator().manual_seed(9)
    options = domain.draw_options(generator, (2, 700))
    choices = torch.randint(0, domain.n_options, (2, 700), generator=generator)
    result = infer(domain, options, choices, marginals=False)
    assert float(result.log_evidence[:, -1].max()) < -900 * math.log(2)
    hypotheses = _weights_of_hypotheses(domain, result.space)
    for d in range(2):
        log_joint = []
        for weights in hypotheses:
            if not any(weights):
                log_joint.append(-math.inf)
                continue
            total = 0.0
            for rows, choice in zip(options[d].tolist(), choices[d].tolist()):
                utilities = [sum(w * x for w, x in zip(weights, row)) for row in brute_force.option_values(domain, rows)]
                top = max(utilities)
                total += (utilities[choice] - top) / 0.3 - math.log(sum(math.exp((u - top) / 0.3) for u in utilities))
            log_joint.append(total)
        top = max(log_joint)
        norm = top + math.log(sum(math.exp(v - top) for v in log_joint))
        expected = torch.tensor([math.exp(v - norm) for v in log_joint], dtype=torch.float64)
        assert torch.allclose(result.posterior[d, -1], expected, atol=1e-6)
        assert abs(float(result.log_evidence[d, -1]) - (norm - math.log(len(hypotheses) - 1))) < 1e-6 * abs(norm)
