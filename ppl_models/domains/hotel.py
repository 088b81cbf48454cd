"""Hotels, as in the study: distance to downtown, price, rating and amenities (ordinal)."""
from ..domain import Domain, Feature
from ..linear import linear_domain_parts

AMENITIES = (
    "none",
    "free parking",
    "free parking, free breakfast",
    "free parking, free breakfast, pool",
    "free parking, free breakfast, pool, fitness center",
)

HOTEL_FEATURES = (
    Feature("distance to downtown", tuple(range(11)), lambda v: f"{v} mile" if v == 1 else f"{v} miles"),
    Feature("price", tuple(100 + 90 * i for i in range(11)), lambda v: f"${v}"),
    Feature("rating", tuple(1 + 0.5 * i for i in range(9)), lambda v: f"{v:g} star" if v == 1 else f"{v:g} stars"),
    Feature("amenities", AMENITIES, str),
)

domain = Domain(
    name="hotel",
    noun="hotel",
    features=HOTEL_FEATURES,
    description="Hotels with distance, price, rating and amenities, as in the study's hotel task.",
    **linear_domain_parts(HOTEL_FEATURES),
)
