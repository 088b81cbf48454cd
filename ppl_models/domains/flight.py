"""Flights, exactly as in the study's released data: its features, value grids, scaling and texts.

Grids (11 evenly spaced levels unless said otherwise, scaled 0, 0.1, ..., 1): departure and arrival time
06:00 AM to 10:00 PM in steps of 96 min; duration 30 min to 20 hr in steps of 1 hr 57 min; layover 0 hr to
5 hr in steps of 30 min; price $100 to $1000 in steps of $90; number of stops 0, 1, 2, bags and flexibility
3 levels each (scaled 0, 0.5, 1).  Texts as released: "20 hr", "0 hr", "1 carry-on bag, 0 checked bags".

``flight`` is the study's main task (4 features); ``flight_domain(n)`` gives its number-of-features variants
``flight2`` ... ``flight8``, each with the features of its release file (``flight_<n>features.jsonl``) in
that file's order (``VARIANT_FEATURES``).  Each feature of an option is drawn independently from its grid,
as in the release (so a 0-stop flight can have a layover).  Users: every weight vector of the grid but the
all-zero one; the release lists the whole grid for 2-4 features and draws users at random for 5-8.
"""
from ..domain import Domain, DomainError, Feature
from ..linear import linear_domain_parts


def clock(minutes: int) -> str:
    hours, mins = divmod(int(minutes), 60)
    suffix = "AM" if hours < 12 else "PM"
    return f"{(hours - 1) % 12 + 1:02d}:{mins:02d} {suffix}"


def hours_minutes(minutes: int) -> str:
    """A length of time as the release writes it: "30 min", "2 hr 27 min", "20 hr", "0 hr"."""
    hours, mins = divmod(int(minutes), 60)
    if mins == 0:
        return f"{hours} hr"
    return f"{hours} hr {mins} min" if hours else f"{mins} min"


def bags(level: int) -> str:
    return ("0 carry-on bags, 0 checked bags", "1 carry-on bag, 0 checked bags", "1 carry-on bag, 1 checked bag")[level]


FLIGHT_FEATURES = {
    feature.name: feature
    for feature in (
        Feature("departure time", tuple(360 + 96 * i for i in range(11)), clock),
        Feature("arrival time", tuple(360 + 96 * i for i in range(11)), clock),
        Feature("layover duration", tuple(30 * i for i in range(11)), hours_minutes),
        Feature("duration", tuple(30 + 117 * i for i in range(11)), hours_minutes),
        Feature("flexibility", ("non-refundable", "refundable with fee", "fully refundable"), str),
        Feature("bags", (0, 1, 2), bags),
        Feature("number of stops", (0, 1, 2), str),
        Feature("price", tuple(100 + 90 * i for i in range(11)), lambda v: f"${v}"),
    )
}

# The features of each release file, in its order (``features`` of flight.jsonl, flight_<n>features.jsonl).
VARIANT_FEATURES = {
    2: ("duration", "price"),
    3: ("price", "departure time", "duration"),
    4: ("departure time", "duration", "number of stops", "price"),
    5: ("price", "departure time", "bags", "number of stops", "duration"),
    6: ("arrival time", "flexibility", "bags", "duration", "number of stops", "price"),
    7: ("bags", "departure time", "layover duration", "number of stops", "duration", "flexibility", "arrival time"),
    8: ("departure time", "arrival time", "layover duration", "duration", "flexibility", "bags", "number of stops", "price"),
}


def flight_domain(n_features: int = 4) -> Domain:
    """The flight domain with the features of the release's ``n_features``-feature file (the main task: 4)."""
    if n_features not in VARIANT_FEATURES:
        raise DomainError(f"flight domains have {min(VARIANT_FEATURES)} to {max(VARIANT_FEATURES)} features, "
                          f"not {n_features}")
    features = tuple(FLIGHT_FEATURES[name] for name in VARIANT_FEATURES[n_features])
    return Domain(
        name="flight" if n_features == 4 else f"flight{n_features}",
        noun="flight",
        features=features,
        description=f"Flights with {n_features} features, as in the study's flight task"
        + ("." if n_features == 4 else f" (its {n_features}-feature variant"
           + ("; 1,000 users drawn by default, as in the release)." if n_features > 4 else ").")),
        default_users=None if n_features <= 4 else 1000,  # as the release: the whole grid, or 1,000 drawn
        **linear_domain_parts(features),
    )


domain = flight_domain(4)
