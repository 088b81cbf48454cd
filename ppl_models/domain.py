"""Declaring a recommendation domain as a Pyro generative program.

A ``Domain`` bundles:

* ``features``: what an option is made of (a name, the raw values it can take, how a raw value reads in
  text, and its normalised value in [0, 1]);
* ``sample_options(generator, batch_shape, n_options)``: how options come about, as value indices
  ``[*batch_shape, n_options, n_features]`` (default: each feature uniform over its grid);
* ``preference_model()``: a Pyro program that samples the user's latent preferences with enumerable
  discrete ``pyro.sample`` sites (and ``pyro.factor`` for constraints) and returns them in whatever form
  ``utility`` expects;
* ``utility(preferences, options)``: the user's utility for each option, ``[..., n_options]``;
* the user's noise: ``temperature`` (0 = the study's deterministic argmax user) and ``lapse``.

``user_model`` below is the generative program of a batch of dialogues that every inference, simulation
and assistant in the toolkit is derived from.  A domain file declares the pieces and calls ``Domain(...)``;
the declaration's structure (features, option generator, sizes) is checked when it is built
(``validate_domain``, cheap); its prior (support, ``feature_sites``) is checked once, where it is first
enumerated (``hypotheses.hypothesis_space``, cached and shared by the noise variants ``with_user`` makes),
so declaring a domain never enumerates its hypotheses.  Either way a malformed domain fails with an error
that names the problem.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import pyro
import torch

from .choice import UtilityChoice
from .errors import BayesTeachError

# Plates of user_model: dialogues at dim -2, rounds at dim -1; enumeration dims go to the left of these.
MAX_PLATE_NESTING = 2
CHOICE_SITE = "choice"


class DomainError(BayesTeachError):
    """A domain declaration that cannot work, with a message naming the problem."""


@dataclass(frozen=True)
class Feature:
    """One attribute of an option: its raw values, how each reads in text, and its value in [0, 1]."""

    name: str
    values: tuple  # raw values, e.g. minutes after midnight
    format: Callable[[Any], str] = str  # raw value -> text, e.g. 648 -> "10:48 AM"
    normalised: tuple | None = None  # value in [0, 1] per raw value; None = evenly spaced 0..1

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if self.normalised is None and len(self.values) > 1:
            n = len(self.values)
            object.__setattr__(self, "normalised", tuple(i / (n - 1) for i in range(n)))
        elif self.normalised is not None:
            object.__setattr__(self, "normalised", tuple(float(v) for v in self.normalised))

    def text(self, index: int) -> str:
        """The raw value at ``index`` as it reads in a prompt."""
        return self.format(self.values[index])


class Options(NamedTuple):
    """A batch of option sets: value indices and their normalised values."""

    index: torch.Tensor  # long [..., n_options, n_features]
    value: torch.Tensor  # float [..., n_options, n_features], in [0, 1]


def uniform_options(domain: "Domain", generator: torch.Generator, batch_shape, n_options: int) -> torch.Tensor:
    """Each feature of each option drawn uniformly from its value grid: long [*batch, n_options, n_features]."""
    columns = [
        torch.randint(len(f.values), tuple(batch_shape) + (n_options,), generator=generator)
        for f in domain.features
    ]
    return torch.stack(columns, dim=-1)


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so inference can cache per domain
class Domain:
    """A recommendation domain; see the module docstring.  Build with ``Domain(...)``; it checks its structure
    (cheaply) when built, and its prior when first enumerated."""

    name: str
    noun: str  # what an option is called in text ("flight" -> "Flight 2")
    features: tuple
    preference_model: Callable[[], Any]
    utility: Callable[[Any, Options], torch.Tensor]
    sample_options: Callable[..., torch.Tensor] | None = None  # (domain, generator, batch_shape, n) -> index
    n_options: int = 3
    n_rounds: int = 5
    temperature: float = 0.0  # user noise: 0 = deterministic argmax (ties split evenly), > 0 = softmax
    lapse: float = 0.0  # user noise: probability of a uniformly random choice
    price_feature: str | None = None  # the feature the "cheapest" heuristic minimises (default: "price")
    feature_sites: dict = field(default_factory=dict)  # feature name -> latent site holding the user's preference on it
    site_labels: dict = field(default_factory=dict)  # latent site -> label of each of its values
    description: str = ""
    # How many users simulate/evaluate draw (at random from the prior's support) when not told; None = all
    # of them.  The release lists every user for small grids and draws 1,000 for flight with 5-8 features.
    default_users: int | None = None
    validate: bool = True

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        if self.price_feature is None and any(f.name == "price" for f in self.features):
            object.__setattr__(self, "price_feature", "price")
        if self.validate:
            validate_domain(self)

    # -- options -------------------------------------------------------------------------------------
    def normalised_table(self) -> list[torch.Tensor]:
        return [torch.tensor(f.normalised, dtype=torch.float32) for f in self.features]

    def options(self, index: torch.Tensor) -> Options:
        """Options from value indices ``[..., n_options, n_features]``."""
        tables = _normalised_tables(self)
        return Options(index, torch.stack([table[index[..., i]] for i, table in enumerate(tables)], dim=-1))

    def draw_options(self, generator: torch.Generator, batch_shape, n_options: int | None = None) -> torch.Tensor:
        """Random option sets as value indices, long ``[*batch_shape, n_options, n_features]``."""
        n_options = n_options or self.n_options
        sampler = self.sample_options or uniform_options
        return sampler(self, generator, tuple(batch_shape), n_options)

    def option_text(self, index_row: Sequence[int]) -> str:
        """One option in words: "departure time: 10:48 AM, duration: 14 hr 9 min, ..."."""
        return ", ".join(f"{f.name}: {f.text(int(i))}" for f, i in zip(self.features, index_row))

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def with_user(self, temperature: float | None = None, lapse: float | None = None) -> "Domain":
        """The same domain with another user noise model."""
        changes = {}
        if temperature is not None:
            changes["temperature"] = float(temperature)
        if lapse is not None:
            changes["lapse"] = float(lapse)
        return dataclasses.replace(self, **changes)

    def choice_distribution(self, utility: torch.Tensor) -> UtilityChoice:
        return UtilityChoice(utility, self.temperature, self.lapse)


@functools.lru_cache(maxsize=64)
def _normalised_tables(domain: Domain) -> tuple:
    """``domain.normalised_table()``, built once per domain (``options`` runs for every chunk of inference)."""
    return tuple(domain.normalised_table())


def user_model(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor | None = None, preferences=None):
    """The generative program of a batch of dialogues.

    ``option_index`` is long ``[n_dialogues, n_rounds, n_options, n_features]``; ``choices`` is long
    ``[n_dialogues, n_rounds]`` (observed) or None (sampled).  Each dialogue has one user whose latent
    preferences come from ``domain.preference_model`` inside the ``dialogues`` plate; in every round the
    user's choice (site ``"choice"``) follows ``domain.utility`` through the domain's choice rule.

    ``preferences``: the value ``domain.preference_model()`` returned in an earlier run, to use instead of
    running it again (the program is then the likelihood of the choices given those preferences).  Exact
    inference enumerates the prior once per domain (``hypothesis_space``) and passes its enumerated
    preferences here for every chunk of dialogues: they do not depend on the data.
    """
    n_dialogues, n_rounds = option_index.shape[:2]
    options = domain.options(option_index)
    with pyro.plate("dialogues", n_dialogues, dim=-2):
        if preferences is None:
            preferences = domain.preference_model()
        with pyro.plate("rounds", n_rounds, dim=-1):
            utility = domain.utility(preferences, options)  # [..., n_dialogues, n_rounds, n_options]
            return pyro.sample(CHOICE_SITE, domain.choice_distribution(utility), obs=choices)


def validate_domain(domain: Domain) -> None:
    """Reject a malformed declaration with an error that names the problem (everything but the prior, which
    ``hypotheses.hypothesis_space`` checks when it first enumerates it)."""
    where = f"domain {domain.name!r}"
    if not domain.name or not isinstance(domain.name, str):
        raise DomainError("a domain needs a non-empty name")
    if not domain.features:
        raise DomainError(f"{where} declares no features")
    names = [f.name for f in domain.features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DomainError(f"{where}: duplicate feature names {duplicates}")
    for f in domain.features:
        if len(f.values) < 2:
            raise DomainError(f"{where}: feature {f.name!r} has {len(f.values)} value(s); it needs at least 2")
        if len(f.normalised) != len(f.values):
            raise DomainError(
                f"{where}: feature {f.name!r} has {len(f.values)} values but {len(f.normalised)} normalised values"
            )
        if any(not (0.0 <= v <= 1.0) or math.isnan(v) for v in f.normalised):
            raise DomainError(f"{where}: feature {f.name!r} has normalised values outside [0, 1]")
        try:
            [f.text(i) for i in range(len(f.values))]
        except Exception as error:  # a formatter that cannot read its own values
            raise DomainError(f"{where}: feature {f.name!r} cannot format its values: {error}") from error
    if domain.n_options < 2:
        raise DomainError(f"{where}: n_options must be at least 2, got {domain.n_options}")
    if domain.n_rounds < 1:
        raise DomainError(f"{where}: n_rounds must be at least 1, got {domain.n_rounds}")
    if domain.temperature < 0 or not (0.0 <= domain.lapse < 1.0):
        raise DomainError(f"{where}: temperature must be >= 0 and lapse in [0, 1)")
    if domain.price_feature is not None and domain.price_feature not in names:
        raise DomainError(f"{where}: price_feature {domain.price_feature!r} is not a feature")

    # The option generator: right shape, dtype and range.
    generator = torch.Generator().manual_seed(0)
    try:
        sample = domain.draw_options(generator, (2, 1))
    except Exception as error:
        raise DomainError(f"{where}: the option generator failed: {error}") from error
    expected = (2, 1, domain.n_options, len(domain.features))
    if not isinstance(sample, torch.Tensor) or tuple(sample.shape) != expected:
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise DomainError(f"{where}: the option generator returned shape {shape}; expected {expected}")
    if sample.dtype not in (torch.int64, torch.int32):
        raise DomainError(f"{where}: the option generator must return integer value indices, got {sample.dtype}")
    for i, f in enumerate(domain.features):
        column = sample[..., i]
        if column.min() < 0 or column.max() >= len(f.values):
            raise DomainError(f"{where}: the option generator gave out-of-range indices for feature {f.name!r}")

    for feature in domain.feature_sites:
        if feature not in names:
            raise DomainError(f"{where}: feature_sites names an unknown feature {feature!r}")
    # The prior and the utility are checked where they are first enumerated (hypotheses.hypothesis_space).
