"""What a ``type: openfeature`` profile names, checked before anything is built: the provider
class or factory (an import path, or an entry point of ``flagwarden.providers``) and whether
``options`` fit its signature (:func:`load_target`); the options with Enum parameters given as
text (:func:`coerce_options`); and the masking of the options that may be secrets in the
provider's messages (:func:`scrubber`)."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from flagwarden.errors import ConfigError
from flagwarden.profiles import OPENFEATURE, OpenFeatureProfile, registered_types
from flagwarden.storage import redact_text
from flagwarden.validation import looks_secret

__all__ = ["coerce_options", "load_target", "scrubber"]

_SECRET_OPTION = ("key", "token", "secret", "password", "credential", "auth", "header")
_SHORTEST_SECRET = 4  # a shorter value would mask ordinary words in every message


def load_target(profile: OpenFeatureProfile) -> Callable[..., Any]:
    """The provider class (or factory) a profile names, checked against its ``options``."""
    if profile.type == OPENFEATURE:
        assert profile.target is not None  # the profile's validation requires it
        module_name, _, attribute = profile.target.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
        except Exception as exc:  # a module that fails at import, however it fails
            raise ConfigError(
                None,
                "class",
                f"profile {profile.name!r}: cannot import {module_name!r} "
                f"({type(exc).__name__}: {exc})",
            ) from None
        for part in attribute.split("."):
            found = getattr(found, part, None)
            if found is None:
                raise ConfigError(
                    None, "class", f"profile {profile.name!r}: {module_name} has no {attribute!r}"
                )
        where = f"{profile.target!r}"
    else:
        entry = registered_types()[profile.type]
        try:
            found = entry.load()
        except Exception as exc:
            raise ConfigError(
                None,
                "type",
                f"profile {profile.name!r}: the entry point {entry.value!r} registered for type "
                f"{profile.type!r} cannot be loaded ({type(exc).__name__}: {exc})",
            ) from None
        where = f"{entry.value!r} (type {profile.type!r})"
    if not callable(found):
        raise ConfigError(None, "class", f"profile {profile.name!r}: {where} is not callable")
    problems = _option_problems(found, profile.options)
    if problems:
        raise ConfigError(
            None, "options", f"profile {profile.name!r}: {where}: {'; '.join(problems)}"
        )
    return found


def _option_problems(target: Callable[..., Any], options: Mapping[str, Any]) -> list[str]:
    """Every way ``options`` do not fit the target's signature: the names it does not take,
    all of them; the required ones missing; text given for an Enum parameter that names none
    of its members."""
    try:
        signature = inspect.signature(target)
    except ValueError:
        return []  # a builtin without a signature: its own call will say
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [
        n
        for n, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    problems = []
    unknown = sorted(set(options) - set(named))
    if unknown and not takes_any:
        problems.append(f"does not take {', '.join(unknown)} (it takes: {', '.join(named)})")
    else:
        try:
            signature.bind(**options)
        except TypeError as exc:
            problems.append(str(exc))
    for name, kind in _enum_parameters(target).items():
        value = options.get(name)
        if isinstance(value, str) and _member(kind, value) is None:
            members = ", ".join(str(m.value) for m in kind)
            problems.append(f"{name}: {value!r} is none of {kind.__name__}'s ({members})")
    return problems


def _enum_parameters(target: Callable[..., Any]) -> dict[str, type[Enum]]:
    """The parameters annotated with an Enum (or an optional one), by name."""
    try:
        annotated = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
        hints = typing.get_type_hints(annotated)
    except Exception:
        return {}
    found = {}
    for name, hint in hints.items():
        for kind in typing.get_args(hint) or (hint,):
            if isinstance(kind, type) and issubclass(kind, Enum):
                found[name] = kind
                break
    return found


def coerce_options(target: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with each text given for a parameter annotated with an Enum turned into
    that Enum's member (by value, else by name: ``in-process`` or ``IN_PROCESS``), as a YAML
    file cannot spell an Enum; everything else as given."""
    coerced = dict(options)
    for name, kind in _enum_parameters(target).items():
        value = options.get(name)
        if isinstance(value, str) and (member := _member(kind, value)) is not None:
            coerced[name] = member
    return coerced


def _member(kind: type[Enum], value: str) -> Enum | None:
    try:
        return kind(value)
    except ValueError:
        return kind.__members__.get(value.upper().replace("-", "_"))


def scrubber(options: Mapping[str, Any]) -> Callable[[str], str]:
    """Masks the option values that may be secrets (by name or look) in provider messages."""
    secrets: set[str] = set()
    urls: list[str] = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{name}.{key}", item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(name, item)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
            if "://" in text:
                urls.append(text)
            elif len(text) >= _SHORTEST_SECRET and (
                looks_secret(text) or any(word in name.lower() for word in _SECRET_OPTION)
            ):
                secrets.add(text)

    walk("", options)
    ordered = sorted(secrets, key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, "***")
        return redact_text(text, *urls)

    return scrub
