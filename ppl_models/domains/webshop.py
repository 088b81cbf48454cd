"""Web shopping, after the study's WebShop task: the options are real products from a catalogue.

The user is a shopper with goals, a different generative program from flight and hotel's linear weights:

* ``goal_attribute_1``, ``goal_value_1``, ``goal_attribute_2``, ``goal_value_2``: two goals, each an
  attribute (uniform over the catalogue's attributes; the two distinct, in catalogue order) and a value of
  it (uniform over that attribute's values, read from a table row chosen by the attribute with ``Vindex``),
  e.g. "colour: black" and "shoe size: 9";
* ``price_sensitivity``: premium, budget or price-driven: -0.5, 0.5 or 2 per unit of price relative to
  the product's category (0 = its cheapest product, 1 = its dearest), so premium and budget shoppers let
  price break ties only (dearer or cheaper first) and price-driven ones trade a goal for a cheaper product.

Utility = number of goals the product matches - price sensitivity x relative price; the user takes the best
product (or chooses noisily with the Domain's ``temperature``/``lapse``).  Each round shows 3 distinct
products of one category, the category uniform at random per round, e.g.
"Product 2: category: running shoes, colour: black, shoe size: 9, fit: wide, price: $79.99".
The built-in catalogue (``ppl_models/data/webshop_catalog.jsonl``, made by ``make_webshop_catalog.py``)
has 450 products in 5 categories and 12 attributes: 15,552 enumerated hypotheses, 2,865 of them possible
users.  The exact Bayesian assistant comes from the same enumeration machinery as every other domain.

Catalogue format (``webshop_domain(catalog_path=FILE)``, the CLI's ``--catalog FILE``)
--------------------------------------------------------------------------------------
CSV (``.csv``, a header row) or JSONL (``.jsonl``/``.ndjson``, one JSON object per line), one product each:

* ``category`` (required): e.g. ``running shoes``; each round shows products of one category, so every
  category needs at least ``n_options`` (3) products;
* ``price`` (required): a non-negative number (``79.99``; ``$79.99`` is read too);
* ``id``, ``title`` (optional): kept with the product, not shown;
* every other column is an attribute, e.g. ``colour``, ``size``, ``fit``: a categorical value (text or a
  number).  An empty cell, a missing JSON key, ``null`` or ``n/a`` means the attribute does not apply to
  that product (``shoe size`` for coffee).  Attributes may be shared across categories.

Example CSV::

    id,category,title,price,colour,shoe size,fit,roast
    P1,running shoes,Stridelab Wide Runner,79.99,black,9,wide,
    P2,coffee,Little Fox Dark Roast,14.99,,,,dark

``schema=`` (a mapping ``attribute -> [values]`` or a JSON file of one, like ``data/webshop_schema.json``)
declares the vocabulary: an attribute column it does not name, or a value it does not list, is an error
(the catalogue may use fewer attributes and values).  Without a schema the values of each attribute are
those that occur.  A missing column, an unknown
attribute value, a bad price or an empty category raises ``CatalogError`` (a ``DomainError``) naming it.
The enumerated hypothesis space is (attributes x most values per attribute)^n_goals x 3; catalogues that
would exceed 50,000 hypotheses are refused (use ``n_goals=1`` or ``categories=[...]``).

Options of ``webshop_domain``: ``schema``, ``categories`` (keep only these), ``n_goals`` (2),
``price_sensitivity`` (levels), ``n_options`` (3), ``n_rounds`` (5), ``temperature``, ``lapse``, ``name``.
"""
from __future__ import annotations

from pathlib import Path

from ..catalog import BUILTIN_CATALOG, BUILTIN_SCHEMA, CatalogDomain, catalog_domain, load_catalog


def webshop_domain(catalog_path=None, *, schema=None, categories=None, name=None, **options) -> CatalogDomain:
    """The web-shopping domain over the built-in catalogue, or over the catalogue at ``catalog_path``."""
    if catalog_path is None:
        catalog = load_catalog(BUILTIN_CATALOG, schema=BUILTIN_SCHEMA if schema is None else schema)
        default_name = "webshop"
    else:
        catalog = load_catalog(catalog_path, schema=schema)
        default_name = f"webshop-{Path(catalog_path).stem}"
    if categories is not None:
        catalog = catalog.restrict(categories)
        default_name += "-" + "+".join(c.replace(" ", "_") for c in categories)
    return catalog_domain(catalog, name=name or default_name, **options)


domain = webshop_domain()
