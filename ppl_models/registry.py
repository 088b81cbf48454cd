"""Finding a domain by name (``hotel``) or by import path (``mypkg.boats:domain``)."""
from __future__ import annotations

import functools
import importlib

from .domain import Domain, DomainError

BUILTIN = {
    "flight": "ppl_models.domains.flight:domain",
    **{f"flight{n}": f"ppl_models.domains.flight:flight_domain({n})" for n in (2, 3, 5, 6, 7, 8)},
    "hotel": "ppl_models.domains.hotel:domain",
    "webshop": "ppl_models.domains.webshop:domain",
}


class UnknownDomainError(DomainError):
    """No domain by that name or import path."""


def domain_names() -> list[str]:
    return list(BUILTIN)


def _resolve(path: str):
    module_name, _, attribute = path.partition(":")
    argument = None
    if attribute.endswith(")") and "(" in attribute:
        attribute, _, argument = attribute[:-1].partition("(")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UnknownDomainError(f"cannot import {module_name!r} for domain {path!r}: {error}") from error
    if not hasattr(module, attribute):
        raise UnknownDomainError(f"module {module_name!r} has no attribute {attribute!r}")
    value = getattr(module, attribute)
    if argument is not None:
        if not argument.strip().lstrip("+-").isdigit():
            raise UnknownDomainError(f"domain {path!r}: the argument in parentheses must be a whole number")
        value = value(int(argument))
    elif callable(value) and not isinstance(value, Domain):
        value = value()
    return value


def get_domain(spec: "str | Domain") -> Domain:
    """See ``_get_domain``; domains given by name are built once and cached."""
    return spec if isinstance(spec, Domain) else _get_domain(spec)


@functools.lru_cache(maxsize=None)
def _get_domain(spec: str) -> Domain:
    """A built-in domain by name, or a user's domain by ``module:attribute`` (a Domain or a function
    returning one).  Raises UnknownDomainError naming the known domains."""
    if isinstance(spec, Domain):
        return spec
    if spec in BUILTIN:
        value = _resolve(BUILTIN[spec])
    elif ":" in spec:
        value = _resolve(spec)
    else:
        raise UnknownDomainError(
            f"unknown domain {spec!r}; known: {', '.join(domain_names())}, or give module:attribute"
        )
    if not isinstance(value, Domain):
        raise DomainError(f"{spec!r} is a {type(value).__name__}, not a Domain")
    return value
