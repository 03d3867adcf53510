"""Provider profiles: one YAML per source in ``providers/``, its name the file's stem.

``type:`` picks the model: ``launchdarkly``, ``split``, ``env`` or ``file``. How each type
becomes a provider is :mod:`flagwarden.providers.registry`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError

from flagwarden.config import (
    _MAX_SECONDS,
    _Model,
    _resolve,
    describe_validation_error,
    looks_secret,
)
from flagwarden.documents import interpolate, read_yaml
from flagwarden.errors import ConfigError

__all__ = [
    "EnvProfile",
    "FileProfile",
    "LaunchDarklyProfile",
    "Profile",
    "SplitProfile",
    "load_profile",
]


class LaunchDarklyProfile(_Model):
    """A LaunchDarkly connection (the cloud, a relay proxy, or a local server)."""

    type: Literal["launchdarkly"]
    name: str = "launchdarkly"
    sdk_key: SecretStr
    base_uri: str | None = None
    stream_uri: str | None = None
    events_uri: str | None = None
    stream: bool = True
    start_wait: float = Field(default=5.0, ge=0, le=_MAX_SECONDS)
    send_events: bool = True
    initial_reconnect_delay: float = Field(default=1.0, gt=0, le=_MAX_SECONDS)


class SplitProfile(_Model):
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
    start_wait: float = Field(default=5.0, ge=0, le=_MAX_SECONDS)
    features_refresh_rate: int = Field(default=30, ge=1, le=_MAX_SECONDS)
    segments_refresh_rate: int = Field(default=30, ge=1, le=_MAX_SECONDS)
    impressions_mode: Literal["OPTIMIZED", "DEBUG", "NONE"] = "OPTIMIZED"


class EnvProfile(_Model):
    """Flags from the environment: ``new-scoring-model`` reads ``{prefix}NEW_SCORING_MODEL``."""

    type: Literal["env"]
    name: str = "env"
    prefix: str = "FLAGWARDEN_FLAG_"


class FileProfile(_Model):
    """A flagd flag-definition file (JSON or YAML), evaluated in-process and reloaded on change."""

    type: Literal["file"]
    name: str = "file"
    path: Path
    poll_interval: float = Field(default=0.5, ge=0.01, le=_MAX_SECONDS)  # below: a busy loop


Profile = LaunchDarklyProfile | SplitProfile | EnvProfile | FileProfile

_BUILTIN: dict[str, type[_Model]] = {
    "launchdarkly": LaunchDarklyProfile,
    "split": SplitProfile,
    "env": EnvProfile,
    "file": FileProfile,
}


def _known_types() -> str:
    return ", ".join(_BUILTIN)


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
    if model is None:
        said = "" if looks_secret(kind) or not isinstance(kind, str) else f" {kind!r}"
        raise ConfigError(path, "type", f"unknown type{said}; expected one of {_known_types()}")
    if kind == "file" and isinstance(data.get("path"), str):
        data["path"] = os.path.normpath(_resolve(path.parent, Path(data["path"])))
    try:
        profile: Profile = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise describe_validation_error(exc, path) from None
    return profile
