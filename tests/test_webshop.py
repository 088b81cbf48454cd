"""The web-shopping domain: its exact posterior against a brute force written here from the catalogue's
raw rows, the Bayesian assistant's learning curve, and reading users' own catalogues."""
import json
import math
import random
from itertools import combinations

import pytest
import torch

from eval.assistants import BayesianAssistant
from eval.metrics import summarise_run
from eval.protocol import run_protocol
from ppl_models import DomainError, all_users, get_domain, infer, simulate_dialogues
from ppl_models.catalog import (
    BUILTIN_CATALOG, BUILTIN_SCHEMA, PRICE_SENSITIVITY, CatalogDomain, CatalogError, goal_text,
)
from ppl_models.domains.webshop import webshop_domain
from script_loader import load_script

TOLERANCE = 1e-6
RESERVED = {"id", "title", "category", "price"}


# -- an independent brute force over the raw catalogue rows ---------------------------------------------
def raw_rows(path=BUILTIN_CATALOG):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def vocabulary(rows):
    """attribute -> sorted set of the values that occur (the brute force's own reading of the catalogue)."""
    values = {}
    for row in rows:
        for key, value in row.items():
            if key not in RESERVED and value not in (None, ""):
                values.setdefault(key, set()).add(str(value))
    return values


def goal_sets(rows):
    """Every shopper: (frozenset of two (attribute, value) goals on distinct attributes, sensitivity index),
    with its unnormalised prior: attribute pair uniform, each value uniform over its attribute's values."""
    values = vocabulary(rows)
    out = {}
    for a1, a2 in combinations(sorted(values), 2):
        for v1 in values[a1]:
            for v2 in values[a2]:
                for s in range(len(PRICE_SENSITIVITY)):
                    out[(frozenset({(a1, v1), (a2, v2)}), s)] = 1.0 / (len(values[a1]) * len(values[a2]))
    return out


def option_products(domain, option_rows, rows):
    """The catalogue row of each option of a round, found by its category, attribute values and price."""
    names = domain.feature_names
    products = []
    for option in option_rows:
        shown = {name: domain.features[f].values[int(i)] for f, (name, i) in enumerate(zip(names, option))}
        matches = [
            row for row in rows
            if row["category"] == shown["category"] and abs(row["price"] - shown["price"]) < 1e-9
            and all(str(row.get(a, "n/a")) == str(v) for a, v in shown.items() if a not in RESERVED)
        ]
        assert matches, f"option {shown} is not a product of the catalogue"
        products.append(matches[0])
    return products


def price_ranges(rows):
    """category -> (cheapest, dearest) price."""
    ranges = {}
    for row in rows:
        low, high = ranges.get(row["category"], (math.inf, -math.inf))
        ranges[row["category"]] = (min(low, row["price"]), max(high, row["price"]))
    return ranges


def choice_probs(goals, sensitivity, products, ranges, temperature, lapse):
    """p(choose each product) for one shopper, by hand."""
    utilities = []
    for product in products:
        low, high = ranges[product["category"]]
        relative = (product["price"] - low) / (high - low)
        matched = sum(str(product.get(attribute)) == value for attribute, value in goals)
        utilities.append(matched - sensitivity * relative)
    if temperature > 0:
        top = max(utilities)
        weights = [math.exp((u - top) / temperature) for u in utilities]
    else:
        weights = [float(u >= max(utilities) - TOLERANCE) for u in utilities]
    n = len(products)
    return [(1 - lapse) * w / sum(weights) + lapse / n for w in weights]


def brute_force(domain, option_index, choices, rows, temperature, lapse):
    """For one dialogue: [{shopper: posterior probability} after 0..R rounds] and
    [{shopper: p(choose each option of round r)} for each round r]."""
    shoppers, ranges = goal_sets(rows), price_ranges(rows)
    rounds = [option_products(domain, option_rows, rows) for option_rows in option_index.tolist()]
    probs = [
        {key: choice_probs(key[0], PRICE_SENSITIVITY[key[1]], products, ranges, temperature, lapse) for key in shoppers}
        for products in rounds
    ]
    joint = dict(shoppers)
    posteriors = []
    for r in range(len(rounds) + 1):
        total = sum(joint.values())
        posteriors.append({key: p / total for key, p in joint.items()})
        if r < len(rounds):
            joint = {key: p * probs[r][key][int(choices[r])] for key, p in joint.items()}
    return posteriors, probs


def package_shoppers(domain, space):
    """Each of the package's hypotheses as the brute force's key, read through the declared labels, or
    None where the hypothesis is no shopper (goal attributes not increasing in label order, or a goal
    value index past the attribute's values, i.e. "n/a" or padding)."""
    keys = []
    values = {site: v.tolist() for site, v in space.site_values.items()}
    for h in range(space.size):
        goals, attribute_indices = [], []
        for k in (1, 2):
            attribute_index = values[f"goal_attribute_{k}"][h]
            attribute = domain.site_labels[f"goal_attribute_{k}"][attribute_index]
            feature = domain.features[domain.feature_names.index(attribute)]
            value_index = values[f"goal_value_{k}"][h]
            value = feature.values[value_index] if value_index < len(feature.values) - 1 else None  # last: n/a
            goals.append((attribute, value))
            attribute_indices.append(attribute_index)
        valid = attribute_indices[0] < attribute_indices[1] and all(v is not None for _, v in goals)
        keys.append((frozenset(goals), values["price_sensitivity"][h]) if valid else None)
    return keys


@pytest.mark.parametrize("temperature,lapse", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.1),
                                               pytest.param(0.3, 0.05, marks=pytest.mark.slow)])
def test_posterior_matches_brute_force(temperature, lapse):
    domain = get_domain("webshop").with_user(temperature=temperature, lapse=lapse)
    rows = raw_rows()
    users = all_users(domain)
    users = users[torch.randint(len(users), (4,), generator=torch.Generator().manual_seed(5))]
    dialogues = simulate_dialogues(domain, users, 1, seed=11)
    result = infer(domain, dialogues.option_index, dialogues.choices, predictive=True)
    keys = package_shoppers(domain, result.space)
    assert len(set(k for k in keys if k is not None)) == sum(k is not None for k in keys) == len(goal_sets(rows))
    for d in range(len(users)):
        expected, choice_table = brute_force(
            domain, dialogues.option_index[d], dialogues.choices[d], rows, temperature, lapse
        )
        for r, want in enumerate(expected):
            got = result.log_posterior[d, r].exp().double()
            assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)
            want_vector = torch.tensor([want.get(key, 0.0) if key else 0.0 for key in keys], dtype=torch.double)
            assert torch.allclose(got, want_vector, atol=TOLERANCE, rtol=0)
            # the price-sensitivity marginal
            mass = [0.0] * len(PRICE_SENSITIVITY)
            for key, p in want.items():
                mass[key[1]] += p
            assert torch.allclose(result.marginals["price_sensitivity"][d, r].double(), torch.tensor(mass, dtype=torch.double), atol=1e-6)
            # the posterior predictive of the next round's choice
            if r < domain.n_rounds:
                predictive = [sum(p * choice_table[r][key][o] for key, p in want.items()) for o in range(domain.n_options)]
                assert torch.allclose(result.predictive[d, r].double(), torch.tensor(predictive, dtype=torch.double), atol=1e-6)


# -- the domain's shape ---------------------------------------------------------------------------------
def test_hypothesis_space_and_sites():
    from ppl_models import hypothesis_space

    domain = get_domain("webshop")
    assert isinstance(domain, CatalogDomain) and domain.name == "webshop"
    space = hypothesis_space(domain)
    assert space.sites == ("goal_attribute_1", "goal_value_1", "goal_attribute_2", "goal_value_2", "price_sensitivity")
    assert space.size == (12 * 6) ** 2 * 3 == 15552
    assert len(space.support) == 2865
    prior = space.log_prior.exp()
    first, second = space.site_values["goal_attribute_1"], space.site_values["goal_attribute_2"]
    assert float(prior[first >= second].sum()) == 0.0
    # The last possible user in flat order (price sensitivity varies slowest, then goal_value_2, ...):
    # price-driven, goal 2 the last value of the last 6-valued attribute (material), goal 1 likewise before it.
    user = int(space.support[-1])
    assert goal_text(domain, user) == "wants shoe size: 12, material: leather; price: price-driven"


def test_options_are_catalogue_products_of_one_category():
    domain = get_domain("webshop")
    rows = raw_rows()
    option_index = domain.draw_options(torch.Generator().manual_seed(3), (20, 4))
    assert option_index.shape == (20, 4, 3, len(domain.features))
    category = domain.feature_names.index("category")
    categories = set()
    for option_rows in option_index.reshape(-1, 3, len(domain.features)):
        assert len(set(option_rows[:, category].tolist())) == 1  # one category per round
        categories.add(int(option_rows[0, category]))
        products = option_products(domain, option_rows.tolist(), rows)  # each is a catalogue product
        assert len({json.dumps(p, sort_keys=True) for p in products}) == len(set(map(tuple, option_rows.tolist())))
    assert len(categories) == 5
    text = domain.option_text(option_index[0, 0, 0].tolist())
    assert text.startswith("category: ") and "n/a" not in text and ", price: $" in text


@pytest.mark.slow
def test_bayesian_assistant_learns():
    domain = get_domain("webshop")
    run = run_protocol(domain, BayesianAssistant(), n_users=40, seed=0, n_heldout=40)
    accuracy = summarise_run(run)["accuracy"]["mean"]
    assert len(accuracy) == domain.n_rounds + 1
    assert accuracy[-1] > accuracy[0] + 0.15
    assert accuracy[-1] > 0.7


# -- users' own catalogues ----------------------------------------------------------------------------------
CSV_TEXT = """id,category,title,price,colour,shoe size,roast
S1,shoes,Runner A,80,black,9,
S2,shoes,Runner B,$95.50,white,10,
S3,shoes,Runner C,60,black,10,
C1,coffee,Bean A,12,,,dark
C2,coffee,Bean B,9.99,,,light
C3,coffee,Bean C,15,,,dark
"""


def write_jsonl(path, text=CSV_TEXT):
    lines = text.strip().splitlines()
    header = lines[0].split(",")
    with path.open("w") as handle:
        for line in lines[1:]:
            record = {k: v for k, v in zip(header, line.split(",")) if v != ""}
            record["price"] = float(record["price"].lstrip("$"))
            if "shoe size" in record:
                record["shoe size"] = int(record["shoe size"])  # JSON numbers read like CSV text
            handle.write(json.dumps(record) + "\n")


def test_load_csv_and_jsonl(tmp_path):
    (tmp_path / "mine.csv").write_text(CSV_TEXT)
    write_jsonl(tmp_path / "mine.jsonl")
    from_csv = webshop_domain(catalog_path=tmp_path / "mine.csv")
    from_jsonl = webshop_domain(catalog_path=tmp_path / "mine.jsonl", temperature=0.2)
    for domain in (from_csv, from_jsonl):
        assert domain.feature_names == ["category", "colour", "shoe size", "roast", "price"]
        assert domain.features[2].values == ("9", "10", "n/a")
        assert domain.features[-1].values == (9.99, 12.0, 15.0, 60.0, 80.0, 95.5)
        assert len(all_users(domain)) == 3 * (2 * 2 + 2 * 2 + 2 * 2)  # pairs of goals x 3 price levels
    assert from_csv.name == "webshop-mine" and from_jsonl.temperature == 0.2
    options = from_csv.draw_options(torch.Generator().manual_seed(0), (30, 1))
    assert torch.equal(options, from_jsonl.draw_options(torch.Generator().manual_seed(0), (30, 1)))
    texts = {from_csv.option_text(row) for row in options.reshape(-1, 5).tolist()}
    assert "category: shoes, colour: white, shoe size: 10, price: $95.50" in texts
    assert "category: coffee, roast: light, price: $9.99" in texts
    dialogues = simulate_dialogues(from_csv, all_users(from_csv), 1, seed=0)
    result = infer(from_csv, dialogues.option_index, dialogues.choices)
    assert torch.allclose(result.log_posterior.exp().sum(-1), torch.ones(36, 6, dtype=result.log_posterior.dtype), atol=1e-5)
    only_shoes = webshop_domain(catalog_path=tmp_path / "mine.csv", categories=["shoes"], n_goals=1)
    assert only_shoes.feature_names == ["colour", "shoe size", "price"]


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "noprice.csv"
    path.write_text(CSV_TEXT.replace(",price", ",cost"))
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['price'\]"):
        webshop_domain(catalog_path=path)
    path = tmp_path / "nocategory.jsonl"
    path.write_text(json.dumps({"price": 3, "colour": "red"}) + "\n")
    with pytest.raises(DomainError, match="category"):
        webshop_domain(catalog_path=path)
    path = tmp_path / "neither.csv"
    path.write_text("id,colour\nA,red\n")
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['category', 'price'\]"):
        webshop_domain(catalog_path=path)


def test_unknown_attribute_values_are_named(tmp_path):
    path = tmp_path / "typo.csv"
    path.write_text(CSV_TEXT.replace("S3,shoes,Runner C,60,black", "S3,shoes,Runner C,60,blak"))
    with pytest.raises(CatalogError, match=r"colour: 'blak' \(line 4\)"):
        webshop_domain(catalog_path=path, schema=BUILTIN_SCHEMA)
    schema = {"colour": ["black", "white"], "shoe size": ["9", "10"], "roast": ["dark"]}
    (tmp_path / "mine.csv").write_text(CSV_TEXT)
    with pytest.raises(CatalogError, match=r"roast: 'light'"):
        webshop_domain(catalog_path=tmp_path / "mine.csv", schema=schema)
    with pytest.raises(CatalogError, match=r"unknown attribute column\(s\) \['roast'\]"):
        webshop_domain(catalog_path=tmp_path / "mine.csv", schema={"colour": ["black", "white"], "shoe size": [9, 10]})


def test_other_catalogue_errors(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("\n".join(CSV_TEXT.splitlines()[:-1]) + "\n")  # coffee has 2 products for 3 options
    with pytest.raises(CatalogError, match="'coffee' \\(2\\)"):
        webshop_domain(catalog_path=path)
    path.write_text(CSV_TEXT.replace("$95.50", "cheap"))
    with pytest.raises(CatalogError, match="line 3: price 'cheap'"):
        webshop_domain(catalog_path=path)
    with pytest.raises(CatalogError, match="unknown category"):
        webshop_domain(categories=["boats"])
    with pytest.raises(CatalogError, match="hypotheses"):
        webshop_domain(n_goals=3)
    with pytest.raises(FileNotFoundError):
        webshop_domain(catalog_path=tmp_path / "absent.csv")


def test_shipped_catalogue_is_what_the_script_makes():
    module = load_script(BUILTIN_CATALOG.parent / "make_webshop_catalog.py")
    products = module.make_products(random.Random(module.SEED))
    assert [json.dumps(p, ensure_ascii=False) for p in products] == BUILTIN_CATALOG.read_text().splitlines()
    assert json.loads(BUILTIN_SCHEMA.read_text()) == module.SCHEMA
    assert 300 <= len(products) and BUILTIN_CATALOG.stat().st_size < 200_000
