"""Generate the built-in web-shopping catalogue (``webshop_catalog.jsonl``) and its attribute vocabulary
(``webshop_schema.json``), deterministically.

WebShop's real product listings cannot be downloaded here, so the catalogue is made up: five categories
(t-shirt, running shoes, headphones, coffee, backpack), each product with categorical attributes, a brand
name in its title and a price that depends on its attributes and brand.  Run from anywhere::

    python ppl_models/data/make_webshop_catalog.py

and the two files next to this script are rewritten byte for byte identically (the generator is seeded and
uses only Python's ``random.Random``, whose integer and float draws are stable across Python versions).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20260101
PRODUCTS_PER_CATEGORY = 90

# Every attribute and its values, in display order.  "fit" and "material" are shared by two categories
# each (t-shirts are slim/regular/relaxed, shoes narrow/regular/wide; t-shirts are cotton, linen or
# polyester, backpacks nylon, canvas, polyester or leather) and colour by four.
SCHEMA = {
    "colour": ["black", "white", "grey", "navy", "red", "green"],
    "size": ["XS", "S", "M", "L", "XL"],
    "shoe size": ["7", "8", "9", "10", "11", "12"],
    "fit": ["slim", "regular", "relaxed", "narrow", "wide"],
    "material": ["cotton", "linen", "polyester", "nylon", "canvas", "leather"],
    "style": ["over-ear", "on-ear", "in-ear"],
    "connection": ["wired", "bluetooth"],
    "noise cancelling": ["yes", "no"],
    "roast": ["light", "medium", "dark"],
    "form": ["whole bean", "ground", "pods"],
    "caffeine": ["regular", "decaf"],
    "capacity": ["15 L", "25 L", "35 L"],
}

# Per category: its attributes with the values it uses, its brands, and its price model
# (base price, additive premium per attribute value, and the spread of the brand multiplier).
CATEGORIES = {
    "t-shirt": {
        "attributes": {
            "colour": SCHEMA["colour"],
            "size": SCHEMA["size"],
            "fit": ["slim", "regular", "relaxed"],
            "material": ["cotton", "linen", "polyester"],
        },
        "brands": ["Alder & Finch", "Northpeak", "Basic Thread", "Lumen Co.", "Harbor Supply"],
        "base": 17.0,
        "premium": {"material": {"linen": 11.0, "polyester": -3.0}, "fit": {"slim": 2.0}},
        "brand_spread": (0.75, 1.6),
        "noun": "T-Shirt",
    },
    "running shoes": {
        "attributes": {
            "colour": SCHEMA["colour"],
            "shoe size": SCHEMA["shoe size"],
            "fit": ["narrow", "regular", "wide"],
        },
        "brands": ["Stridelab", "Northpeak", "Velo Run", "Kestrel", "Tempo Athletics"],
        "base": 82.0,
        "premium": {"fit": {"wide": 6.0, "narrow": 4.0}},
        "brand_spread": (0.7, 1.7),
        "noun": "Running Shoe",
    },
    "headphones": {
        "attributes": {
            "colour": ["black", "white", "grey", "navy", "red"],
            "style": SCHEMA["style"],
            "connection": SCHEMA["connection"],
            "noise cancelling": SCHEMA["noise cancelling"],
        },
        "brands": ["Sonora", "Quietwave", "Arclight Audio", "Pulse", "Meridian"],
        "base": 35.0,
        "premium": {
            "style": {"over-ear": 65.0, "on-ear": 35.0},
            "connection": {"bluetooth": 30.0},
            "noise cancelling": {"yes": 70.0},
        },
        "brand_spread": (0.7, 1.5),
        "noun": "Headphones",
    },
    "coffee": {
        "attributes": {
            "roast": SCHEMA["roast"],
            "form": SCHEMA["form"],
            "caffeine": SCHEMA["caffeine"],
        },
        "brands": ["Highland Roasters", "Tidewater", "Ember & Oak", "Little Fox", "Cordillera"],
        "base": 11.0,
        "premium": {"form": {"pods": 5.0, "whole bean": 1.5}, "caffeine": {"decaf": 1.5}},
        "brand_spread": (0.7, 1.8),
        "noun": "Coffee",
    },
    "backpack": {
        "attributes": {
            "colour": ["black", "grey", "navy", "red", "green"],
            "capacity": SCHEMA["capacity"],
            "material": ["nylon", "canvas", "polyester", "leather"],
        },
        "brands": ["Trailhead", "Northpeak", "Urban Carry", "Kestrel", "Fieldhouse"],
        "base": 40.0,
        "premium": {
            "material": {"leather": 75.0, "canvas": 12.0, "polyester": -5.0},
            "capacity": {"25 L": 8.0, "35 L": 18.0},
        },
        "brand_spread": (0.75, 1.5),
        "noun": "Backpack",
    },
}


def make_products(rng: random.Random) -> list[dict]:
    products = []
    for category, spec in CATEGORIES.items():
        brand_factor = {brand: rng.uniform(*spec["brand_spread"]) for brand in spec["brands"]}
        for _ in range(PRODUCTS_PER_CATEGORY):
            attributes = {name: rng.choice(values) for name, values in spec["attributes"].items()}
            brand = rng.choice(spec["brands"])
            price = spec["base"]
            for name, premiums in spec["premium"].items():
                price += premiums.get(attributes[name], 0.0)
            price *= brand_factor[brand] * rng.uniform(0.9, 1.1)
            price = max(round(price), 2) - 0.01  # $23.99 style
            described = " ".join(
                attributes[name] for name in ("fit", "material", "roast", "form", "style") if name in attributes
            )
            title = " ".join(part for part in (brand, described.title(), spec["noun"]) if part)
            products.append({"category": category, "title": title, "price": round(price, 2), **attributes})
    for number, product in enumerate(products, start=1):
        product["id"] = f"WS{number:04d}"
    return [{"id": p.pop("id"), **p} for p in products]


def main() -> None:
    rng = random.Random(SEED)
    products = make_products(rng)
    lines = [json.dumps(product, ensure_ascii=False) for product in products]
    (HERE / "webshop_catalog.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (HERE / "webshop_schema.json").write_text(json.dumps(SCHEMA, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
