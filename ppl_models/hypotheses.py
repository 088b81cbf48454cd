"""The hypothesis space of a domain, read off Pyro's parallel enumeration of its user model.

Tracing ``user_model`` under ``poutine.enum`` gives every enumerable latent site of the preference prior
its own tensor dimension to the left of the plates.  The joint of all those dimensions is the space of
preference hypotheses: hypothesis ``h`` is one flat index into it, and ``site_values[name][h]`` is the
value of site ``name`` under ``h``.  For flight that is 5^4 = 625 weight vectors, of which the prior gives
the all-zero one probability 0 (624 users).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate

from .domain import CHOICE_SITE, MAX_PLATE_NESTING, Domain, DomainError, user_model


@dataclass(frozen=True)
class HypothesisSpace:
    """All joint values of a domain's latent preference sites."""

    sites: tuple  # enumerated latent site names
    site_sizes: dict  # site -> number of values
    enum_shape: tuple  # shape of the enumerated joint (dims -K-2 ... -3 of the trace's tensors)
    site_dims: dict  # site -> position of its dimension in enum_shape
    site_values: dict  # site -> long [H], the site's value under each hypothesis
    log_prior: torch.Tensor  # [H], normalised; -inf where the prior excludes a hypothesis
    # What ``domain.preference_model()`` returns under enumeration (e.g. one weight tensor per feature, each
    # along its own enumerated dimension): it does not depend on the data, so inference reuses it for every
    # chunk of dialogues (``observed_trace``).  None where reusing it was not verified to give the same
    # choice distribution as the full enumerated trace.
    preferences: object = None

    @property
    def prior(self) -> torch.Tensor:
        """The prior probabilities, float64 [H], normalised in float64 (``log_prior`` is float32)."""
        prior = self.log_prior.double().exp()
        return prior / prior.sum()

    @property
    def size(self) -> int:
        return int(self.log_prior.numel())

    @property
    def support(self) -> torch.Tensor:
        """Hypotheses with positive prior probability (the possible users), long [n_users]."""
        return torch.nonzero(torch.isfinite(self.log_prior))[:, 0]

    def marginal(self, probs: torch.Tensor, site: str) -> torch.Tensor:
        """Marginal of ``site`` from probabilities over hypotheses ``[H, *batch]`` -> ``[*batch, K]``."""
        batch = probs.shape[1:]
        joint = probs.reshape(self.enum_shape + batch)
        other = [d for d in range(len(self.enum_shape)) if d != self.site_dims[site]]
        marginal = joint.sum(dim=other) if other else joint  # [K, *batch]
        return marginal.movedim(0, -1)

    def marginal_last(self, probs: torch.Tensor, site: str) -> torch.Tensor:
        """Marginal of ``site`` from probabilities with the hypotheses last, ``[*batch, H]`` -> ``[*batch, K]``."""
        batch = probs.shape[:-1]
        joint = probs.reshape(batch + self.enum_shape)
        other = [len(batch) + d for d in range(len(self.enum_shape)) if d != self.site_dims[site]]
        return joint.sum(dim=other) if other else joint


def enumerated_trace(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor):
    """A trace of ``user_model`` with every latent site enumerated in parallel and the choices observed."""
    model = config_enumerate(user_model, default="parallel")
    model = poutine.enum(model, first_available_dim=-MAX_PLATE_NESTING - 1)
    return poutine.trace(model).get_trace(domain, option_index, choices)


def observed_trace(domain: Domain, option_index: torch.Tensor, choices: torch.Tensor):
    """A trace of ``user_model`` whose choice site holds the choice distribution under every hypothesis.

    The preference prior is enumerated once per domain (``hypothesis_space``) and its enumerated value is
    passed to ``user_model`` (Pyro then traces only the plates and the observed choice site); where that
    was not possible, the whole model is traced under enumeration (``enumerated_trace``).  Either way the
    choice site's distribution has batch shape ``[*enum_shape, n_dialogues, n_rounds]`` (or broadcastable).
    """
    preferences = hypothesis_space(domain).preferences
    if preferences is None:
        return enumerated_trace(domain, option_index, choices)
    return poutine.trace(user_model).get_trace(domain, option_index, choices, preferences=preferences)


def _enumerated_preferences(domain: Domain):
    """``domain.preference_model()``'s value under enumeration, traced alone, if it gives exactly the choice
    distribution of a full enumerated trace (the same latent sites on the same enumerated dimensions, the
    same utilities, on a few random dialogues); else None."""

    def prior_only():
        with pyro.plate("dialogues", 1, dim=-2):
            return domain.preference_model()

    model = poutine.enum(config_enumerate(prior_only, default="parallel"), first_available_dim=-MAX_PLATE_NESTING - 1)
    try:
        prior_trace = poutine.trace(model).get_trace()
        preferences = prior_trace.nodes["_RETURN"]["value"]
        option_index = domain.draw_options(torch.Generator().manual_seed(1), (3, 2))
        trace = enumerated_trace(domain, option_index, torch.zeros(3, 2, dtype=torch.long))
        dims = {name: site["infer"].get("_enumerate_dim") for name, site in latent_sites(prior_trace)}
        if dims != {name: site["infer"].get("_enumerate_dim") for name, site in latent_sites(trace)}:
            return None
        expected = trace.nodes[CHOICE_SITE]["fn"].utility
        with pyro.plate("dialogues", 3, dim=-2), pyro.plate("rounds", 2, dim=-1):
            utility = domain.utility(preferences, domain.options(option_index))
        utility, broadcast = torch.broadcast_tensors(utility, expected)
        if broadcast.shape != expected.shape or not torch.equal(utility, broadcast):
            return None
    except Exception:  # a preference model that cannot run outside the full program: trace it every time
        return None
    return preferences


def latent_sites(trace):
    """The enumerated latent sample sites of a trace, in order."""
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name != CHOICE_SITE and "_enumerate_dim" in site["infer"]
    ]


def enum_ndim(trace) -> int:
    dims = [-site["infer"]["_enumerate_dim"] - MAX_PLATE_NESTING for _, site in latent_sites(trace)]
    return max(dims, default=0)


def as_enum_batch(tensor: torch.Tensor, n_enum: int) -> torch.Tensor:
    """Left-pad ``tensor``'s shape with singleton dims to ``n_enum`` enum dims plus the plates."""
    extra = n_enum + MAX_PLATE_NESTING - tensor.dim()
    return tensor.reshape((1,) * extra + tuple(tensor.shape)) if extra > 0 else tensor


def _check_prior_has_latent_sites(domain: Domain) -> None:
    """Trace the preference model alone, so a prior without latent sites gets its own clear error."""

    def prior_only():
        with pyro.plate("dialogues", 1, dim=-2):
            domain.preference_model()

    model = poutine.enum(config_enumerate(prior_only, default="parallel"), first_available_dim=-MAX_PLATE_NESTING - 1)
    try:
        trace = poutine.trace(model).get_trace()
    except Exception as error:
        raise DomainError(f"domain {domain.name!r}: its preference model failed under enumeration: {error}") from error
    if not latent_sites(trace):
        raise DomainError(
            f"domain {domain.name!r}: the preference model samples no enumerable discrete latent site"
        )


@functools.lru_cache(maxsize=64)  # by identity first (Domain hashes by identity): no key to build per call
def hypothesis_space(domain: Domain) -> HypothesisSpace:
    """Enumerate ``domain``'s preference prior and check it (no support, or ``feature_sites`` naming no
    latent site: DomainError).  Cached per prior: domains that differ only in the user's noise (``with_user``,
    ``dataclasses.replace`` of ``temperature``/``lapse``) share one enumeration."""
    return _hypothesis_space(_PriorKey(domain))


class _PriorKey:
    """What a domain's hypothesis space depends on, as a cache key (the user's noise is left out)."""

    def __init__(self, domain: Domain):
        self.domain = domain
        self.key = (type(domain), domain.name, domain.features, domain.preference_model, domain.utility,
                    domain.sample_options, domain.n_options, tuple(sorted(domain.feature_sites.items())))

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _PriorKey) and self.key == other.key


@functools.lru_cache(maxsize=64)
def _hypothesis_space(prior_key: _PriorKey) -> HypothesisSpace:
    """Enumerate the preference prior of ``prior_key.domain`` (see ``hypothesis_space``)."""
    domain = prior_key.domain
    _check_prior_has_latent_sites(domain)
    option_index = domain.draw_options(torch.Generator().manual_seed(0), (1, 1))
    try:
        trace = enumerated_trace(domain, option_index, torch.zeros(1, 1, dtype=torch.long))
    except DomainError:
        raise
    except Exception as error:
        raise DomainError(f"domain {domain.name!r}: its Pyro program failed under enumeration: {error}") from error
    sites = latent_sites(trace)
    if not sites:
        raise DomainError(
            f"domain {domain.name!r}: the preference model samples no enumerable discrete latent site"
        )
    n_enum = enum_ndim(trace)
    enum_shape = [1] * n_enum
    site_dims, site_sizes = {}, {}
    for name, site in sites:
        position = n_enum + MAX_PLATE_NESTING + site["infer"]["_enumerate_dim"]
        size = as_enum_batch(site["value"], n_enum).shape[position]
        enum_shape[position] = size
        site_dims[name], site_sizes[name] = position, size
    enum_shape = tuple(enum_shape)

    # The prior: every non-choice site's log-probability, summed over the enumerated joint.
    log_prior = torch.zeros(enum_shape + (1, 1))
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name == CHOICE_SITE:
            continue
        term = site["fn"].log_prob(site["value"])
        log_prior = log_prior + as_enum_batch(term, n_enum)[..., :1, :1]
    log_prior = log_prior.reshape(-1)
    total = torch.logsumexp(log_prior, 0)
    if not torch.isfinite(total):
        raise DomainError(f"domain {domain.name!r}: the preference prior has no support (every hypothesis has probability 0)")
    log_prior = log_prior - total

    site_values = {
        name: as_enum_batch(site["value"], n_enum)[..., 0, 0].expand(enum_shape).reshape(-1).long()
        for name, site in sites
    }

    utility = trace.nodes[CHOICE_SITE]["fn"].utility
    if utility.shape[-1] != domain.n_options or utility.dim() > n_enum + MAX_PLATE_NESTING + 1:
        raise DomainError(
            f"domain {domain.name!r}: utility returned shape {tuple(utility.shape)}; expected "
            f"[..., n_dialogues, n_rounds, {domain.n_options}]"
        )
    for feature, site in domain.feature_sites.items():
        if site not in site_dims:
            raise DomainError(
                f"domain {domain.name!r}: feature_sites names {site!r}, which is not a latent site of the prior"
            )
    return HypothesisSpace(
        sites=tuple(name for name, _ in sites),
        site_sizes=site_sizes,
        enum_shape=enum_shape,
        site_dims=site_dims,
        site_values=site_values,
        log_prior=log_prior,
        preferences=_enumerated_preferences(domain),
    )
