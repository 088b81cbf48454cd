"""Finding a domain by name (``hotel``) or by import path (``mypkg.boats:domain``)."""
from __future__ import annotations

import functools
import importlib
import inspect

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
    if not module_name or module_name.startswith(".") or not attribute:
        raise UnknownDomainError(f"domain {path!r}: give module:attribute, e.g. mypackage.boats:domain")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # the module, or something it imports, is not installed
        raise UnknownDomainError(f"cannot import {module_name!r} for domain {path!r}: {error}") from error
    if not hasattr(module, attribute):
        raise UnknownDomainError(f"domain {path!r}: module {module_name!r} has no attribute {attribute!r}")
    value = getattr(module, attribute)
    if argument is not None:
        if not argument.strip().lstrip("+-").isdigit():
            raise UnknownDomainError(f"domain {path!r}: the argument in parentheses must be a whole number")
        _check_call(value, path, int(argument))
        value = value(int(argument))
    elif callable(value) and not isinstance(value, Domain):
        _check_call(value, path)
        value = value()
    return value


def _check_call(value, path: str, *arguments) -> None:
    """A DomainError unless ``value`` can be called with ``arguments`` (checked on its signature, so that a
    TypeError raised inside the user's function keeps its traceback)."""
    if not callable(value):
        raise DomainError(f"domain {path!r}: {type(value).__name__} {value!r} is not a function to call with "
                          f"{', '.join(map(str, arguments))}")
    try:
        inspect.signature(value).bind(*arguments)
    except TypeError as error:
        raise DomainError(f"domain {path!r} must be a Domain or a function that returns one when called with "
                          f"{len(arguments)} argument(s): {error}") from None
    except ValueError:  # no signature to read (some built-ins): the call itself decides
        pass


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
        raise DomainError(f"domain {spec!r} is a {type(value).__name__}, not a Domain (nor a function returning one)")
    return value
