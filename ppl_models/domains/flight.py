"""Flights, as in the study: departure time, duration, number of stops and price.

Departure 06:00 AM to 10:00 PM in 11 steps of 96 min; duration 30 min to 20 hr in 11 steps of 1 hr 57 min;
0, 1 or 2 stops; price $100 to $1000 in 11 steps of $90.  ``flight_domain(n)`` gives the study's
number-of-features variants (2 to 8 features), adding arrival time, checked bags, legroom and on-time rate.
"""
from ..domain import Domain, Feature
from ..linear import linear_domain_parts


def clock(minutes: int) -> str:
    hours, mins = divmod(int(minutes), 60)
    suffix = "AM" if hours < 12 else "PM"
    return f"{(hours - 1) % 12 + 1:02d}:{mins:02d} {suffix}"


def hours_minutes(minutes: int) -> str:
    hours, mins = divmod(int(minutes), 60)
    return f"{hours} hr {mins} min" if hours else f"{mins} min"


FLIGHT_FEATURES = (
    Feature("departure time", tuple(360 + 96 * i for i in range(11)), clock),
    Feature("duration", tuple(30 + 117 * i for i in range(11)), hours_minutes),
    Feature("number of stops", (0, 1, 2), str),
    Feature("price", tuple(100 + 90 * i for i in range(11)), lambda v: f"${v}"),
    Feature("arrival time", tuple(360 + 96 * i for i in range(11)), clock),
    Feature("checked bags included", (0, 1, 2, 3), str),
    Feature("legroom", tuple(range(28, 35)), lambda v: f"{v} in"),
    Feature("on-time rate", tuple(60 + 5 * i for i in range(9)), lambda v: f"{v}%"),
)


def flight_domain(n_features: int = 4) -> Domain:
    """The flight domain with its first ``n_features`` features (the study's task has 4)."""
    if not 2 <= n_features <= len(FLIGHT_FEATURES):
        raise ValueError(f"flight domains have 2 to {len(FLIGHT_FEATURES)} features, not {n_features}")
    features = FLIGHT_FEATURES[:n_features]
    return Domain(
        name="flight" if n_features == 4 else f"flight{n_features}",
        noun="flight",
        features=features,
        description=f"Flights with {n_features} features, as in the study's flight task.",
        **linear_domain_parts(features),
    )


domain = flight_domain(4)
