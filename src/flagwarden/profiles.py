"""Provider profiles: one YAML per source in ``providers/``, its name the file's stem.

``type:`` picks the model: ``launchdarkly``, ``split``, ``env``, ``file``, or ``openfeature``
(any OpenFeature provider named by import path), or a short type that a third-party package
registers under the entry-point group ``flagwarden.providers``. How each type becomes a
provider is :mod:`flagwarden.providers.registry`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator

from flagwarden.documents import interpolate, read_yaml
from flagwarden.errors import ConfigError
from flagwarden.validation import MAX_SECONDS, Model, describe_validation_error, looks_secret

__all__ = [
    "ENTRY_POINT_GROUP",
    "OPENFEATURE",
    "EnvProfile",
    "FileProfile",
    "LaunchDarklyProfile",
    "OpenFeatureProfile",
    "Profile",
    "SplitProfile",
    "load_profile",
    "registered_types",
]

OPENFEATURE = "openfeature"
ENTRY_POINT_GROUP = "flagwarden.providers"
# "package.module:Name" (a class, or any callable returning a provider; dots after the colon
# reach a nested attribute).
_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class LaunchDarklyProfile(Model):
    """A LaunchDarkly connection (the cloud, a relay proxy, or a local server)."""

    type: Literal["launchdarkly"]
    name: str = "launchdarkly"
    sdk_key: SecretStr
    base_uri: str | None = None
    stream_uri: str | None = None
    events_uri: str | None = None
    stream: bool = True
    start_wait: float = Field(default=5.0, ge=0, le=MAX_SECONDS)
    send_events: bool = True
    initial_reconnect_delay: float = Field(default=1.0, gt=0, le=MAX_SECONDS)


class SplitProfile(Model):
    """A Split (Harness FME) connection; the URLs point at the cloud, a proxy or a local server."""

    type: Literal["split"]
    name: str = "split"
    sdk_key: SecretStr
    sdk_api_base_url: str | None = None
    events_api_base_url: str | None = None
    auth_api_base_url: str | None = None
    streaming_api_base_url: str | None = None
    telemetry_api_base_url: str | None = None
    streaming: bool = True
    start_wait: float = Field(default=5.0, ge=0, le=MAX_SECONDS)
    features_refresh_rate: int = Field(default=30, ge=1, le=MAX_SECONDS)
    segments_refresh_rate: int = Field(default=30, ge=1, le=MAX_SECONDS)
    impressions_mode: Literal["OPTIMIZED", "DEBUG", "NONE"] = "OPTIMIZED"


class EnvProfile(Model):
    """Flags from the environment: ``new-scoring-model`` reads ``{prefix}NEW_SCORING_MODEL``."""

    type: Literal["env"]
    name: str = "env"
    prefix: str = "FLAGWARDEN_FLAG_"


class FileProfile(Model):
    """A flagd flag-definition file (JSON or YAML), evaluated in-process and reloaded on change."""

    type: Literal["file"]
    name: str = "file"
    path: Path
    poll_interval: float = Field(default=0.5, ge=0.01, le=MAX_SECONDS)  # below: a busy loop


class OpenFeatureProfile(Model):
    """Any OpenFeature provider: ``class: package.module:Name`` (a provider class, or a callable
    returning a provider) called with ``options`` as keyword arguments; or, with ``type`` set to
    a name registered under the ``flagwarden.providers`` entry-point group, the entry point's
    target. Its last answers are kept per flag and context (``answer_cache`` of them) as its
    last-known-good, unless the provider exports its own definitions (``export_snapshot``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    type: str = OPENFEATURE
    name: str = OPENFEATURE
    target: str | None = Field(default=None, alias="class")
    options: dict[str, Any] = Field(default_factory=dict)
    start_wait: float = Field(default=5.0, ge=0, le=MAX_SECONDS)
    # How often a provider that went out is asked again (off the evaluation path).
    probe_interval: float = Field(default=2.0, ge=0.05, le=MAX_SECONDS)
    # Answers kept as the last-known-good of a provider that cannot export its definitions.
    answer_cache: int = Field(default=10_000, ge=0, le=1_000_000)

    @field_validator("target")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not _TARGET.match(value):
            raise ValueError("expected an import path 'package.module:ClassName'")
        return value


Profile = LaunchDarklyProfile | SplitProfile | EnvProfile | FileProfile | OpenFeatureProfile

_BUILTIN: dict[str, type[Model]] = {
    "launchdarkly": LaunchDarklyProfile,
    "split": SplitProfile,
    "env": EnvProfile,
    "file": FileProfile,
    OPENFEATURE: OpenFeatureProfile,
}


@cache
def registered_types() -> dict[str, EntryPoint]:
    """The provider types third-party packages register (entry-point group
    ``flagwarden.providers``), by name; a built-in type's name cannot be taken."""
    found = entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found if ep.name not in _BUILTIN}


def _known_types() -> str:
    extra = sorted(registered_types())
    known = ", ".join(_BUILTIN)
    return known + (f" (or, registered by installed packages: {', '.join(extra)})" if extra else "")


def load_profile(path: Path) -> Profile:
    """Read and validate one provider profile; its name is the file's stem."""
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(path, None, "expected a mapping with at least a 'type' field")
    data = dict(interpolate(raw, path))
    data.setdefault("name", path.stem)
    kind = data.get("type")
    if kind is None:
        raise ConfigError(path, "type", f"is required: one of {_known_types()}")
    model = _BUILTIN.get(kind) if isinstance(kind, str) else None
    if model is None and isinstance(kind, str) and kind in registered_types():
        model = OpenFeatureProfile
    if model is None:
        said = "" if looks_secret(kind) or not isinstance(kind, str) else f" {kind!r}"
        raise ConfigError(path, "type", f"unknown type{said}; expected one of {_known_types()}")
    if model is OpenFeatureProfile:
        _check_target(path, kind, data)
    if kind == "file" and isinstance(data.get("path"), str):
        data["path"] = os.path.normpath(path.parent / data["path"])
    try:
        profile: Profile = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise describe_validation_error(exc, path) from None
    return profile


def _check_target(path: Path, kind: str, data: dict[str, Any]) -> None:
    if kind == OPENFEATURE and "class" not in data:
        raise ConfigError(
            path, "class", "is required for type openfeature: 'package.module:ClassName'"
        )
    if kind != OPENFEATURE and "class" in data:
        raise ConfigError(
            path, "class", f"is given by the package that registered type {kind!r}: remove it"
        )
