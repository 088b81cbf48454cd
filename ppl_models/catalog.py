"""Product catalogues, and the web-shopping domain built on one (see ``ppl_models.domains.webshop``).

A ``Catalog`` is a list of products, each with a category, a price and categorical attribute values (an
attribute that does not apply to a product, e.g. "shoe size" for coffee, is simply absent).  It is read
from CSV or JSONL by ``load_catalog`` and checked as it is read: missing columns, unknown attribute values
(against a declared vocabulary), bad prices and empty categories raise ``CatalogError`` naming them.

``catalog_domain`` turns a catalogue into a ``Domain`` whose user is a shopper with goals:

* ``goal_attribute_k`` (k = 1..n_goals): which attribute the k-th goal is about, uniform over the
  catalogue's attributes; the attributes of the goals are distinct and increasing (a ``pyro.factor``),
  so each set of goals is one hypothesis;
* ``goal_value_k``: the value wanted for that attribute, uniform over that attribute's values, drawn from
  a table row picked by ``goal_attribute_k`` (``Vindex``); the table is padded to the longest attribute
  with probability 0, so this site depends on the one before it;
* ``price_sensitivity``: how much the shopper minds price (``PRICE_SENSITIVITY``).

The shopper's utility for a product is the number of goals it matches minus ``price_sensitivity`` times
the product's price relative to its category (0 = the category's cheapest product, 1 = its dearest).  The
domain's features are ``category``, every attribute (with a trailing ``"n/a"`` value for products it does
not apply to) and ``price`` (the catalogue's distinct prices).  In each round the options are
``n_options`` distinct products of one category, the category uniform at random per round.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from .domain import Domain, DomainError, Feature
from .errors import read_user_text

DATA_DIR = Path(__file__).resolve().parent / "data"
BUILTIN_CATALOG = DATA_DIR / "webshop_catalog.jsonl"
BUILTIN_SCHEMA = DATA_DIR / "webshop_schema.json"

REQUIRED_COLUMNS = ("category", "price")
OPTIONAL_COLUMNS = ("id", "title")
RESERVED_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
NOT_APPLICABLE = "n/a"

# The shopper's price sensitivity: the weight on the product's price relative to its category (0 = the
# category's cheapest product, 1 = its dearest).  Since the relative price differs by at most 1 and a goal
# is worth 1, "premium" (-0.5) and "budget" (0.5) shoppers let price only break ties between products
# that match equally many goals (dearer or cheaper first); a "price-driven" one (2) gives up a goal for a
# product more than half the category's price range cheaper.  (No level is 0: a shopper indifferent to
# price would split ties at random, which no assistant can predict.)
PRICE_SENSITIVITY = (-0.5, 0.5, 2.0)
PRICE_SENSITIVITY_LABELS = ("premium", "budget", "price-driven")
MAX_HYPOTHESES = 50_000


class CatalogError(DomainError):
    """A product catalogue that cannot be used, with a message naming the problem."""


@dataclass(frozen=True)
class Product:
    category: str
    price: float
    attributes: Mapping[str, str]  # only the attributes that apply to this product
    id: str = ""
    title: str = ""


@dataclass(frozen=True)
class Catalog:
    """Products and the vocabulary of each attribute (attribute -> its values, in display order)."""

    products: tuple
    attributes: Mapping[str, tuple]
    source: str = "catalogue"

    @property
    def categories(self) -> tuple:
        """The categories in order of first appearance."""
        return tuple(dict.fromkeys(p.category for p in self.products))

    def restrict(self, categories: Iterable[str]) -> "Catalog":
        """The products of ``categories`` only (and only the attributes and values they use)."""
        categories = list(categories)
        unknown = [c for c in categories if c not in self.categories]
        if unknown:
            raise CatalogError(f"{self.source}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                               f"known: {list(self.categories)}")
        products = tuple(p for p in self.products if p.category in categories)
        return Catalog(products, _used_vocabulary(products, self.attributes), self.source)


# -- reading -------------------------------------------------------------------------------------------
def load_catalog(path, schema=None) -> Catalog:
    """Read a catalogue from CSV (``.csv``) or JSONL (``.jsonl``, ``.ndjson``, ``.json``: one object a line).

    ``schema``: optional vocabulary, a mapping ``attribute -> [values]`` or the path of a JSON file holding
    one.  With a schema, every column other than ``id, title, category, price`` must be an attribute it
    names (the catalogue may use fewer), and every attribute value must be one it lists; the schema's order
    is the values' display order.  Without one, every other column is an attribute and its values are
    those that occur.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no catalogue file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with io.StringIO(read_user_text(path, CatalogError), newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
            rows = [(line, {(k or "").strip(): v for k, v in row.items()}) for line, row in enumerate(reader, start=2)]
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows, columns = [], {}
        for line, text in enumerate(read_user_text(path, CatalogError).splitlines(), start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise CatalogError(f"{path}: line {line} is not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise CatalogError(f"{path}: line {line} must be a JSON object of column: value")
            columns.update(dict.fromkeys(k.strip() for k in record))
            rows.append((line, {k.strip(): v for k, v in record.items()}))
        columns = list(columns)
    else:
        raise CatalogError(f"{path}: a catalogue must be .csv or .jsonl, not {suffix or 'no extension'!r}")
    return catalog_from_records(rows, columns, schema=schema, source=str(path))


def read_schema(schema) -> dict | None:
    """A schema as ``{attribute: (values, ...)}`` from a mapping or a JSON file path (None stays None)."""
    if schema is None:
        return None
    if isinstance(schema, (str, Path)):
        try:
            schema = json.loads(read_user_text(schema, CatalogError))
        except (OSError, json.JSONDecodeError, CatalogError) as error:
            raise CatalogError(f"cannot read the catalogue schema {schema}: {error}") from None
    if not isinstance(schema, Mapping) or not all(
        isinstance(v, (list, tuple)) and v for v in schema.values()
    ):
        raise CatalogError("a catalogue schema maps each attribute to a non-empty list of its values")
    return {str(k).strip(): tuple(_text(v) for v in values) for k, values in schema.items()}


def catalog_from_records(rows, columns, schema=None, source: str = "catalogue") -> Catalog:
    """A catalogue from ``[(line_number, {column: value})]`` (see ``load_catalog``)."""
    schema = read_schema(schema)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise CatalogError(f"{source}: missing column(s) {missing}; a catalogue needs columns "
                           f"{list(REQUIRED_COLUMNS)} and one per attribute")
    attribute_columns = [c for c in columns if c not in RESERVED_COLUMNS and c]
    if schema is not None:
        unknown_columns = [c for c in attribute_columns if c not in schema]
        if unknown_columns:
            raise CatalogError(f"{source}: unknown attribute column(s) {unknown_columns}; the schema declares "
                               f"{list(schema)}")
    if not attribute_columns:
        raise CatalogError(f"{source}: no attribute columns (columns other than {list(RESERVED_COLUMNS)})")

    products, unknown_values = [], {}
    for line, row in rows:
        where = f"{source}: line {line}"

        def cell(name: str) -> str:
            try:
                return _text(row.get(name))
            except CatalogError as error:
                raise CatalogError(f"{where}: {name}: {error}") from None

        category = cell("category")
        if not category or category.lower() == NOT_APPLICABLE:
            raise CatalogError(f"{where}: empty category")
        price = _price(cell("price"), where)
        attributes = {}
        for name in attribute_columns:
            value = cell(name)
            if not value or value.lower() == NOT_APPLICABLE:
                continue
            if schema is not None and value not in schema[name]:
                unknown_values.setdefault(name, {}).setdefault(value, line)
            attributes[name] = value
        products.append(Product(category, price, attributes, cell("id"), cell("title")))
    if unknown_values:
        parts = [
            f"{name}: " + ", ".join(f"{value!r} (line {line})" for value, line in values.items())
            + f" (known: {', '.join(schema[name])})"
            for name, values in unknown_values.items()
        ]
        raise CatalogError(f"{source}: unknown attribute value(s): " + "; ".join(parts))
    if not products:
        raise CatalogError(f"{source}: the catalogue has no products")
    vocabulary = schema if schema is not None else {name: () for name in attribute_columns}
    return Catalog(tuple(products), _used_vocabulary(products, vocabulary), source)


def builtin_catalog() -> Catalog:
    """The catalogue shipped with the package (made by ``data/make_webshop_catalog.py``)."""
    return load_catalog(BUILTIN_CATALOG, schema=BUILTIN_SCHEMA)


def _text(value) -> str:
    """A cell as text: JSON numbers read like CSV ones (9 and 9.0 -> "9"); None -> ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (dict, list)):
        raise CatalogError(f"attribute values must be text or numbers, got {value!r}")
    return str(value).strip()


def _price(value, where: str) -> float:
    text = _text(value).lstrip("$").replace(",", "")
    try:
        price = float(text)
    except ValueError:
        raise CatalogError(f"{where}: price {value!r} is not a number") from None
    if not math.isfinite(price) or price < 0:
        raise CatalogError(f"{where}: price {value!r} must be a non-negative number")
    return price


def _natural_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value.lower())


def _used_vocabulary(products, vocabulary: Mapping[str, tuple]) -> dict:
    """Each attribute's values that some product uses: in vocabulary order, else in natural order."""
    used = {}
    for product in products:
        for name, value in product.attributes.items():
            used.setdefault(name, set()).add(value)
    out = {}
    for name, declared in vocabulary.items():
        if name not in used:
            continue
        ordered = [v for v in declared if v in used[name]]
        ordered += sorted(used[name] - set(ordered), key=_natural_key)
        out[name] = tuple(ordered)
    return out


# -- the domain ------------------------------------------------------------------------------------------
def format_price(price: float) -> str:
    return f"${price:.0f}" if float(price).is_integer() else f"${price:.2f}"


@dataclass(frozen=True, eq=False)
class CatalogDomain(Domain):
    """A ``Domain`` over a product catalogue: an option's text leaves out attributes that do not apply."""

    catalog: Any = None

    def option_text(self, index_row) -> str:
        return ", ".join(
            f"{f.name}: {f.text(int(i))}" for f, i in zip(self.features, index_row)
            if f.values[int(i)] != NOT_APPLICABLE
        )

    @property
    def attribute_names(self) -> tuple:
        return tuple(self.catalog.attributes)


def catalog_domain(
    catalog: Catalog,
    *,
    name: str = "webshop",
    n_goals: int = 2,
    price_sensitivity=PRICE_SENSITIVITY,
    n_options: int = 3,
    n_rounds: int = 5,
    temperature: float = 0.0,
    lapse: float = 0.0,
    max_hypotheses: int = MAX_HYPOTHESES,
    description: str | None = None,
) -> CatalogDomain:
    """The web-shopping domain over ``catalog`` (see the module docstring)."""
    categories = catalog.categories
    attributes = list(catalog.attributes)
    source = catalog.source
    counts = [sum(p.category == c for p in catalog.products) for c in categories]
    few = [f"{c!r} ({n})" for c, n in zip(categories, counts) if n < n_options]
    if few:
        raise CatalogError(f"{source}: each round shows {n_options} products of one category, but categor"
                           f"{'y' if len(few) == 1 else 'ies'} {', '.join(few)} ha{'s' if len(few) == 1 else 've'} fewer")
    if not 1 <= n_goals <= len(attributes):
        raise CatalogError(f"{source}: n_goals must be between 1 and the number of attributes "
                           f"({len(attributes)}), got {n_goals}")
    sensitivity = tuple(float(b) for b in price_sensitivity)
    if not sensitivity:
        raise CatalogError("price_sensitivity needs at least one level (use (0.0,) for shoppers who ignore price)")
    n_values = [len(catalog.attributes[a]) for a in attributes]
    max_values = max(n_values)
    n_hypotheses = (len(attributes) * max_values) ** n_goals * len(sensitivity)
    if n_hypotheses > max_hypotheses:
        raise CatalogError(
            f"{source}: {len(attributes)} attributes with up to {max_values} values and {n_goals} goals give "
            f"{n_hypotheses} hypotheses to enumerate (limit {max_hypotheses}); use fewer goals, fewer "
            "categories (categories=...) or attributes with fewer values"
        )

    # Features: category (when there is more than one), each attribute (+ "n/a"), price.
    prices = sorted({p.price for p in catalog.products})
    if len(prices) < 2:
        raise CatalogError(f"{source}: all products cost the same; the catalogue needs at least two prices")
    low, high = prices[0], prices[-1]
    features = [Feature("category", categories)] if len(categories) > 1 else []
    features += [Feature(a, catalog.attributes[a] + (NOT_APPLICABLE,)) for a in attributes]
    features.append(Feature("price", prices, format_price, [(p - low) / (high - low) for p in prices]))
    category_column = 0 if len(categories) > 1 else None
    attribute_columns = torch.tensor([len(features) - 1 - len(attributes) + i for i in range(len(attributes))])
    price_column = len(features) - 1

    # Each product as value indices, grouped by category; its price relative to its category.
    price_index = {p: i for i, p in enumerate(prices)}
    rows, starts, relative_price = [], [], torch.zeros(len(categories), len(prices))
    for c, category in enumerate(categories):
        starts.append(len(rows))
        members = [p for p in catalog.products if p.category == category]
        cheapest, dearest = min(p.price for p in members), max(p.price for p in members)
        for product in members:
            row = [c] if category_column is not None else []
            row += [
                catalog.attributes[a].index(product.attributes[a]) if a in product.attributes else n_values[i]
                for i, a in enumerate(attributes)
            ]
            row.append(price_index[product.price])
            rows.append(row)
            if dearest > cheapest:
                relative_price[c, price_index[product.price]] = (product.price - cheapest) / (dearest - cheapest)
    product_rows = torch.tensor(rows, dtype=torch.long)

    preference_model = _goal_prior(n_values, n_goals, sensitivity)
    utility = functools.partial(
        _goal_utility, attribute_columns=attribute_columns, category_column=category_column,
        price_column=price_column, relative_price=relative_price,
    )
    sample_options = functools.partial(
        _sample_products, product_rows=product_rows, starts=tuple(starts), counts=tuple(counts)
    )
    site_labels = {}
    for k in range(1, n_goals + 1):
        site_labels[f"goal_attribute_{k}"] = tuple(attributes)
        site_labels[f"goal_value_{k}"] = tuple(f"#{v + 1}" for v in range(max_values))
    site_labels["price_sensitivity"] = (
        PRICE_SENSITIVITY_LABELS if sensitivity == PRICE_SENSITIVITY else tuple(f"{b:g}" for b in sensitivity)
    )
    if description is None:
        description = (
            f"Web shopping over {len(catalog.products)} products in {len(categories)} "
            f"categor{'y' if len(categories) == 1 else 'ies'} ({', '.join(categories)}); the shopper wants "
            f"{n_goals} attribute value{'s' if n_goals > 1 else ''} and may mind the price."
        )
    return CatalogDomain(
        name=name,
        noun="product",
        features=tuple(features),
        preference_model=preference_model,
        utility=utility,
        sample_options=sample_options,
        n_options=n_options,
        n_rounds=n_rounds,
        temperature=temperature,
        lapse=lapse,
        site_labels=site_labels,
        description=description,
        catalog=catalog,
    )


def _goal_prior(n_values, n_goals: int, sensitivity: tuple):
    """The shopper's prior as a Pyro program (see the module docstring)."""
    n_attributes, max_values = len(n_values), max(n_values)
    # Row a: uniform over attribute a's values, -inf beyond them (logits, not probs: torch clamps a
    # probability of 0 to its float epsilon, which would give the padding a small positive prior).
    value_logits = torch.full((n_attributes, max_values), -math.inf)
    for a, n in enumerate(n_values):
        value_logits[a, :n] = -math.log(n)
    levels = torch.tensor(sensitivity)

    def preference_model():
        goals = []
        for k in range(1, n_goals + 1):
            attribute = pyro.sample(f"goal_attribute_{k}", dist.Categorical(logits=torch.zeros(n_attributes)))
            value = pyro.sample(f"goal_value_{k}", dist.Categorical(logits=Vindex(value_logits)[attribute, :]))
            goals.append((attribute, value))
        if n_goals > 1:
            ordered = functools.reduce(
                torch.logical_and, [goals[k][0] < goals[k + 1][0] for k in range(n_goals - 1)]
            )
            pyro.factor("goal_attributes_increasing", torch.where(ordered, 0.0, -math.inf))
        level = pyro.sample("price_sensitivity", dist.Categorical(logits=torch.zeros(len(sensitivity))))
        return goals, levels[level]

    return preference_model


def _goal_utility(preferences, options, *, attribute_columns, category_column, price_column, relative_price):
    """Goals matched minus price sensitivity x relative price: ``[..., n_dialogues, n_rounds, n_options]``.

    Each goal's attribute and value broadcast against the plates (``[..., n_dialogues, 1]``); a trailing
    dimension is added for the options, and ``Vindex`` reads each option's value of the goal's attribute.
    """
    goals, sensitivity = preferences
    index = options.index  # [D, R, O, F]
    attribute_values = index[..., attribute_columns]  # [D, R, O, A]
    utility = 0.0
    for attribute, value in goals:
        option_value = Vindex(attribute_values)[..., attribute.unsqueeze(-1)]  # [..., D, R, O]
        utility = utility + (option_value == value.unsqueeze(-1)).to(torch.float32)
    category = index[..., category_column] if category_column is not None else torch.zeros_like(index[..., 0])
    price = relative_price[category, index[..., price_column]]  # [D, R, O]
    return utility - sensitivity.unsqueeze(-1) * price


def _sample_products(domain, generator, batch_shape, n_options, *, product_rows, starts, counts):
    """Per option set: a category uniformly at random, then ``n_options`` distinct products of it."""
    n_sets = math.prod(batch_shape)
    if n_options > min(counts):
        raise CatalogError(f"domain {domain.name!r}: a category has only {min(counts)} products, "
                           f"fewer than {n_options} options")
    category = torch.randint(len(counts), (n_sets,), generator=generator)
    products = torch.zeros(n_sets, n_options, dtype=torch.long)
    for c, (start, count) in enumerate(zip(starts, counts)):
        sets = torch.nonzero(category == c)[:, 0]
        if len(sets):
            ranks = torch.rand(len(sets), count, generator=generator).argsort(-1)[:, :n_options]
            products[sets] = start + ranks
    return product_rows[products].reshape(tuple(batch_shape) + (n_options, product_rows.shape[-1]))


def goal_text(domain: CatalogDomain, user: int) -> str:
    """A user (hypothesis index) in words: "wants colour: black, shoe size: 9; price: budget"."""
    from .hypotheses import hypothesis_space

    space = hypothesis_space(domain)
    attributes = domain.attribute_names
    goals = []
    k = 1
    while f"goal_attribute_{k}" in space.site_values:
        name = attributes[int(space.site_values[f"goal_attribute_{k}"][user])]
        value = domain.catalog.attributes[name][int(space.site_values[f"goal_value_{k}"][user])]
        goals.append(f"{name}: {value}")
        k += 1
    level = domain.site_labels["price_sensitivity"][int(space.site_values["price_sensitivity"][user])]
    return f"wants {', '.join(goals)}; price: {level}"

