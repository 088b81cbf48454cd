"""Hotels, exactly as in the study's released data: distance to downtown, price, rating and amenities.

Distance 0 to 10 miles ("1 miles", as released); price $100 to $1000 in steps of $90 (both scaled 0, 0.1,
..., 1); rating "1 stars" to "5 stars" and amenities from "no amenities" to "free parking, free breakfast,
pool, and fitness center" (5 levels each, scaled 0, 0.25, ..., 1).
"""
from ..domain import Domain, Feature
from ..linear import linear_domain_parts

AMENITIES = (
    "no amenities",
    "free parking",
    "free parking and free breakfast",
    "free parking, free breakfast, and pool",
    "free parking, free breakfast, pool, and fitness center",
)

HOTEL_FEATURES = (
    Feature("distance to downtown", tuple(range(11)), lambda v: f"{v} miles"),
    Feature("price", tuple(100 + 90 * i for i in range(11)), lambda v: f"${v}"),
    Feature("rating", tuple(range(1, 6)), lambda v: f"{v} stars"),
    Feature("amenities", AMENITIES, str),
)

domain = Domain(
    name="hotel",
    noun="hotel",
    features=HOTEL_FEATURES,
    description="Hotels with distance, price, rating and amenities, as in the study's hotel task.",
    **linear_domain_parts(HOTEL_FEATURES),
)
