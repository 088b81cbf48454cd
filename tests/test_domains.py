"""Domain declarations: the study's grids, loading by name or import path, and load-time validation."""
import dataclasses

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_models import (
    Domain, DomainError, Feature, UnknownDomainError, all_users, get_domain, hypothesis_space, simulate_dialogues,
)
from ppl_models.linear import linear_domain_parts


def test_flight_grids_match_the_study():
    flight = get_domain("flight")
    departure, duration, stops, price = flight.features
    assert [departure.text(0), departure.text(10)] == ["06:00 AM", "10:00 PM"]
    assert departure.values[1] - departure.values[0] == 96
    assert [duration.text(0), duration.text(1), duration.text(10)] == ["30 min", "2 hr 27 min", "20 hr"]
    assert stops.values == (0, 1, 2) and stops.normalised == (0.0, 0.5, 1.0)
    assert [price.text(0), price.text(1), price.text(10)] == ["$100", "$190", "$1000"]
    assert all(len(f.values) == 11 for f in (departure, duration, price))
    assert len(all_users(flight)) == 624 and (flight.n_options, flight.n_rounds) == (3, 5)


def test_hotel_and_feature_variants():
    hotel = get_domain("hotel")
    assert hotel.feature_names == ["distance to downtown", "price", "rating", "amenities"]
    assert hotel.features[3].text(4) == "free parking, free breakfast, pool, and fitness center"
    assert [hotel.features[2].text(0), hotel.features[0].text(1)] == ["1 stars", "1 miles"]
    assert hotel.features[2].normalised == (0.0, 0.25, 0.5, 0.75, 1.0)
    for n in range(2, 9):
        domain = get_domain("flight" if n == 4 else f"flight{n}")
        assert len(domain.features) == n
        assert domain.default_users == (None if n <= 4 else 1000)
        if n <= 6:
            assert len(all_users(domain)) == 5**n - 1
    assert get_domain("flight7").feature_names[:3] == ["bags", "departure time", "layover duration"]
    layover = get_domain("flight8").features[2]
    assert [layover.text(i) for i in (0, 1, 2, 3)] == ["0 hr", "30 min", "1 hr", "1 hr 30 min"]


def test_domain_by_import_path():
    assert get_domain("ppl_models.domains.hotel:domain") is get_domain("hotel")
    assert len(get_domain("ppl_models.domains.flight:flight_domain(3)").features) == 3
    with pytest.raises(UnknownDomainError, match="known: flight"):
        get_domain("boats")
    with pytest.raises(UnknownDomainError, match="cannot import"):
        get_domain("no_such_module:domain")


def _parts(features):
    return dict(name="toy", noun="toy", features=features, **linear_domain_parts(features))


GOOD = (Feature("size", (1, 2, 3)), Feature("price", (10, 20)))


def test_a_valid_toy_domain_loads():
    assert len(all_users(Domain(**_parts(GOOD)))) == 24


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(features=()), "declares no features"),
        (dict(features=(Feature("size", (1,)), GOOD[1])), "'size' has 1 value"),
        (dict(features=(GOOD[0], GOOD[0])), "duplicate feature names"),
        (dict(sample_options=lambda d, g, shape, n: torch.zeros(shape + (n, 5), dtype=torch.long)), "option generator returned shape"),
        (dict(sample_options=lambda d, g, shape, n: torch.zeros(shape + (n, 2))), "integer value indices"),
        (dict(sample_options=lambda d, g, shape, n: torch.full(shape + (n, 2), 7)), "out-of-range indices"),
        (dict(preference_model=lambda: pyro.factor("nothing", torch.tensor(0.0))), "no enumerable discrete latent site"),
    ],
)
def test_malformed_declarations_are_rejected_at_load(change, message):
    """Structural problems when the domain is built; a prior without latent sites when first enumerated."""
    parts = _parts(GOOD)
    if "features" in change:
        features = change["features"]
        parts.update(features=features)
        if features:
            parts.update(linear_domain_parts(features) if len({f.name for f in features}) == len(features) else {})
    else:
        parts.update(change)
    with pytest.raises(DomainError, match=message):
        all_users(Domain(**parts))


def test_declaring_does_not_enumerate_and_noise_variants_share_one_enumeration():
    parts = _parts(GOOD)
    calls = []
    prior = parts["preference_model"]
    parts["preference_model"] = lambda: calls.append(1) or prior()
    domain = Domain(**parts)
    noisy = dataclasses.replace(domain, lapse=0.1).with_user(temperature=0.5)
    assert calls == []
    assert hypothesis_space(noisy) is hypothesis_space(domain) and calls
    assert hypothesis_space(dataclasses.replace(domain, name="other")) is not hypothesis_space(domain)


def test_a_prior_with_no_support_is_rejected():
    def impossible_prior():
        level = pyro.sample("level", dist.Categorical(logits=torch.zeros(3)))
        pyro.factor("never", torch.full(level.shape, -float("inf")))
        return level

    parts = _parts(GOOD)
    parts.update(preference_model=impossible_prior, utility=lambda pref, options: options.value.sum(-1) * pref.unsqueeze(-1), feature_sites={}, site_labels={})
    with pytest.raises(DomainError, match="no support"):
        all_users(Domain(**parts))


def test_simulation_is_deterministic_given_a_seed():
    flight = get_domain("flight")
    users = all_users(flight)[:50]
    first, again, other = (simulate_dialogues(flight, users, 10, seed=s) for s in (4, 4, 5))
    assert first.option_index.shape == (500, 5, 3, 4) and first.choices.shape == (500, 5)
    assert torch.equal(first.option_index, again.option_index) and torch.equal(first.choices, again.choices)
    assert not torch.equal(first.option_index, other.option_index)
    # Options are uniform over the value grids: every value of every feature shows up.
    for f, feature in enumerate(flight.features):
        assert set(first.option_index[..., f].unique().tolist()) == set(range(len(feature.values)))


def test_noisy_user_variant_keeps_the_declaration():
    noisy = get_domain("flight").with_user(temperature=0.2, lapse=0.1)
    assert (noisy.temperature, noisy.lapse, noisy.feature_names) == (0.2, 0.1, get_domain("flight").feature_names)
    with pytest.raises(DomainError, match="lapse"):
        dataclasses.replace(get_domain("flight"), lapse=1.5)
