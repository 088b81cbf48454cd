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
