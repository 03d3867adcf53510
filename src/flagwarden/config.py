"""Typed configuration: ``flagwarden.yaml`` (the provider profiles are :mod:`flagwarden.profiles`).

Files are parsed (:mod:`flagwarden.documents`) and validated once, here; everything else
works on these models. Relative paths are resolved against the directory of the file that
contains them. Values may reference the environment as ``${VAR}`` or ``${VAR:-fallback}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flagwarden.documents import interpolate, parse_duration, read_yaml
from flagwarden.errors import ConfigError
from flagwarden.validation import (
    MAX_SECONDS,
    Model,
    describe_validation_error,
    looks_secret,
)

if TYPE_CHECKING:
    from flagwarden.profiles import Profile

__all__ = [
    "CONFIG_ENV",
    "PROVIDER_ENV",
    "AuditConfig",
    "FallbackConfig",
    "FlagwardenConfig",
    "NotifyEvent",
    "NotifyTarget",
    "ServerConfig",
    "Settings",
    "ShadowConfig",
    "describe_validation_error",
    "load_settings",
    "looks_secret",
]

CONFIG_ENV = "FLAGWARDEN_CONFIG"
PROVIDER_ENV = "FLAGWARDEN_PROVIDER"
DEFAULT_CONFIG_NAME = "flagwarden.yaml"
# Shorter summary intervals spend the worker's CPU on flushing (0s was a busy loop).
SUMMARY_INTERVAL_MIN = timedelta(seconds=1)

_STATE_SCHEMES = ("sqlite:///", "redis://", "rediss://", "unix://", "postgresql://", "postgres://")
_AUDIT_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def _scheme(url: str) -> str:
    """A store URL's scheme only: the rest may hold credentials."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://..." if sep else "a URL without a scheme"


class FallbackConfig(Model):
    """Where answers come from when the vendor cannot give them."""

    snapshot: str | None = "file:.flagwarden/snapshot.json"
    env_prefix: str | None = "FLAGWARDEN_FLAG_"  # null turns environment overrides off
    snapshot_debounce: float = Field(default=1.0, ge=0, le=MAX_SECONDS)

    @field_validator("snapshot")
    @classmethod
    def _snapshot_scheme(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("file:", "redis://", "rediss://")):
            return value
        raise ValueError("expected 'file:PATH' or 'redis://HOST:PORT/DB'")


class ShadowConfig(Model):
    """A second profile evaluated beside the primary to find disagreements during a migration."""

    provider: str
    sample_rate: float = Field(default=0.01, ge=0, le=1)
    queue_size: int = Field(default=10_000, ge=1)


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class PrometheusConfig(Model):
    """Getting metrics out: an HTTP endpoint, Pushgateway pushes, and where guards query."""

    port: int | None = Field(default=None, ge=0, le=65535)  # serve /metrics on this port
    addr: str = "0.0.0.0"
    pushgateway: str | None = None  # push at shutdown (batch runs)
    job: str = "flagwarden"
    # The Pushgateway group beside job: labels the user chooses (never a host or a pid).
    grouping: dict[str, str] = Field(default_factory=dict)
    delete_at_start: bool = False  # the pushing process deletes its group at configure()
    query_url: str | None = None  # a Prometheus server's HTTP API, for promql guards

    @field_validator("grouping")
    @classmethod
    def _grouping(cls, value: dict[str, str]) -> dict[str, str]:
        for label, label_value in value.items():
            if not _LABEL_NAME.fullmatch(label):
                raise ValueError(
                    f"{label!r} is not a Prometheus label name (letters, digits and _, "
                    "not starting with a digit)"
                )
            if label.startswith("__"):
                raise ValueError(f"{label!r}: label names starting with __ are reserved")
            if label == "job":
                raise ValueError("'job' is telemetry.prometheus.job, not a grouping label")
            if not label_value.strip():
                raise ValueError(f"the value of {label!r} must be a non-empty string")
        return value


class ExposureLogConfig(Model):
    enabled: bool = True
    dedup_window: timedelta = timedelta(hours=1)
    summary_interval: timedelta = timedelta(seconds=60)
    dedup_slots: int = Field(default=1 << 20, ge=1024, le=1 << 30)

    # Parsed here, once: check and configure() read the same values.
    @field_validator("dedup_window", "summary_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any, info: ValidationInfo) -> timedelta:
        duration = parse_duration(value)
        if info.field_name == "summary_interval" and duration < SUMMARY_INTERVAL_MIN:
            raise ValueError(f"expected a duration of at least 1s, got {value!r}")
        return duration


class OtelConfig(Model):
    """``telemetry.otel``: exposures as OpenTelemetry metrics (and log records) over OTLP/HTTP,
    set up by the standard ``OTEL_*`` variables; needs the ``[otel]`` extra."""

    enabled: bool = False  # the feature_flag.evaluation counter (FLAGWARDEN_OTEL=1 also)
    logs: bool = False  # also each first exposure as a feature_flag.evaluation log record

    @model_validator(mode="after")
    def _logs_need_otel(self) -> OtelConfig:
        if self.logs and not self.enabled:
            raise ValueError("logs: true needs enabled: true (one OpenTelemetry set-up for both)")
        return self


class TelemetryConfig(Model):
    prometheus: PrometheusConfig = PrometheusConfig()
    exposure_log: ExposureLogConfig = ExposureLogConfig()
    otel: OtelConfig = OtelConfig()
    log_format: Literal["auto", "json", "console"] = "auto"
    # Also count and log evaluations of *other* OpenFeature providers' clients (a global hook:
    # ~5 µs on every evaluation in the process). flagwarden's own answers are always counted.
    hook: bool = False
    # Distinct flags without a policy counted under their own label; the rest share one.
    max_unregistered_flags: int = Field(default=100, ge=0)

    @model_validator(mode="after")
    def _log_records_need_exposures(self) -> TelemetryConfig:
        if self.otel.logs and not self.exposure_log.enabled:
            raise ValueError(
                "otel.logs: true sends the first exposures, which exposure_log.enabled: false "
                "turns off: enable exposure_log or set otel.logs: false"
            )
        return self


NotifyEvent = Literal[
    "transition",  # every state change (a kill and a rollback too)
    "kill",
    "rollback",
    "breach",  # a watch pass rolled back or paused on a guard breach
    "approval_requested",
    "approval_decided",
    "outage_start",
    "outage_end",
]


class NotifyTarget(Model):
    """A webhook that hears about changes (``notify:``). Its URL is a secret (Slack's path is
    the credential): it is never logged, shown in an error, a metric or a report; a target is
    named by ``name`` (else ``notify.INDEX``) and shown as ``scheme://host/…``."""

    url: str = Field(repr=False)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    format: Literal["json", "slack"] = "json"
    events: list[NotifyEvent] | None = None  # None: every event
    timeout: float = Field(default=5.0, gt=0, le=300)  # seconds per attempt
    retries: int = Field(default=5, ge=0, le=20)  # after the first attempt
    backoff: float = Field(default=0.5, gt=0, le=60)  # the first retry's wait; doubles, max 30s

    @field_validator("url")
    @classmethod
    def _webhook_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {_scheme(value)!r}")
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("expected a URL without spaces or control characters")
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises for a port that is not a number
        except ValueError:
            raise ValueError("expected a valid URL (the host or port cannot be read)") from None
        if not parts.hostname:
            raise ValueError("expected a URL with a host name")
        if "@" in parts.netloc:
            raise ValueError("expected no user:password@ in the URL (put a token in the path)")
        return value

    @field_validator("events")
    @classmethod
    def _some_events(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("expected at least one event (leave events out for every event)")
        return value

    def label(self, index: int) -> str:
        """How logs and metrics name this target: never its URL."""
        return self.name or f"notify.{index}"

    @property
    def shown_url(self) -> str:
        """``scheme://host[:port]/…``: where it goes, without the path (the credential)."""
        scheme, _, rest = self.url.partition("://")
        host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        return f"{scheme}://{host}/…"


class ServerConfig(Model):
    """``flagwarden serve``: where it listens, and how long a browser session lasts."""

    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    session_hours: float = Field(default=8, gt=0, le=24 * 30)
    # Proxies (addresses or networks) whose X-Forwarded-For/-Proto are believed; none: the peer.
    forwarded_allow_ips: list[str] = []

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
        return value


class AuditConfig(Model):
    """``audit:``: where the log lives and its Ed25519 keys (docs/audit.md#signing). A plain
    string is the URL alone; the keys are loaded by :mod:`flagwarden.audit.signing`."""

    url: str = "sqlite:///.flagwarden/audit.db"
    signing_key: SecretStr | None = None  # PEM text, a PEM file's path, or base64 of the seed
    public_key: Path | None = None  # verify checks signatures with it

    @model_validator(mode="before")
    @classmethod
    def _plain_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"url": cls._audit_url(value)}
        return value

    @field_validator("url")
    @classmethod
    def _audit_url(cls, value: str) -> str:
        if not value.startswith(_AUDIT_SCHEMES):
            raise ValueError(f"expected sqlite:///PATH or postgresql://..., got {_scheme(value)!r}")
        return value

    @field_validator("signing_key", mode="before")
    @classmethod
    def _no_key(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # ${VAR:-}


class FlagwardenConfig(Model):
    """``flagwarden.yaml``."""

    provider: str
    providers_dir: Path = Path("providers")
    policies_dir: Path = Path("policies")
    flag_keys: dict[str, dict[str, str]] = {}
    fallback: FallbackConfig = FallbackConfig()
    unregistered: Literal["allow", "warn", "deny"] = "warn"
    state: str = "sqlite:///.flagwarden/state.db"
    audit: AuditConfig = AuditConfig()

    @field_validator("state")
    @classmethod
    def _state_url(cls, value: str) -> str:
        if not value.startswith(_STATE_SCHEMES):
            raise ValueError(
                "expected sqlite:///PATH, redis://HOST:PORT/DB or postgresql://..., "
                f"got {_scheme(value)!r}"
            )
        return value

    telemetry: TelemetryConfig = TelemetryConfig()
    shadow: ShadowConfig | None = None
    server: ServerConfig = ServerConfig()
    notify: list[NotifyTarget] = []

    @field_validator("notify")
    @classmethod
    def _unique_names(cls, value: list[NotifyTarget]) -> list[NotifyTarget]:
        names = [target.label(i) for i, target in enumerate(value)]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"expected a different name for each target: {', '.join(twice)}")
        return value


@dataclass(frozen=True)
class Settings:
    """A validated configuration and where it came from."""

    config: FlagwardenConfig
    source: Path | None  # None for the embedded default or an in-memory mapping
    base_dir: Path

    @property
    def provider_name(self) -> str:
        return os.environ.get(PROVIDER_ENV) or self.config.provider

    @property
    def providers_dir(self) -> Path:
        return _resolve(self.base_dir, self.config.providers_dir)

    @property
    def policies_dir(self) -> Path:
        return _resolve(self.base_dir, self.config.policies_dir)

    def snapshot_location(self) -> str | None:
        """The snapshot store URL, ``{profile}`` replaced by the active provider's name (one
        location per profile), with a ``file:`` path made absolute."""
        loc = self.config.fallback.snapshot
        if loc is not None:
            loc = loc.replace("{profile}", self.provider_name)
        if loc is None or not loc.startswith("file:"):
            return loc
        return "file:" + str(_resolve(self.base_dir, Path(loc[len("file:") :])))

    def profile_path(self, name: str) -> Path:
        for suffix in (".yaml", ".yml"):
            candidate = self.providers_dir / f"{name}{suffix}"
            if candidate.exists():
                return candidate
        return self.providers_dir / f"{name}.yaml"

    def load_profile(self, name: str) -> Profile:
        from flagwarden.profiles import load_profile

        path = self.profile_path(name)
        if not path.exists():
            known = sorted(p.stem for p in self.providers_dir.glob("*.y*ml"))
            raise ConfigError(
                self.source or DEFAULT_CONFIG_NAME,
                "provider",
                f"no profile {name!r} in {self.providers_dir}"
                + (f" (found: {', '.join(known)})" if known else " (the folder has no profiles)"),
            )
        return load_profile(path)

    def flag_key_for(self, flag_key: str, profile: Profile) -> str:
        """How a vendor spells ``flag_key`` (``flag_keys`` aliases, by profile name or type)."""
        aliases = self.config.flag_keys.get(flag_key)
        if not aliases:
            return flag_key
        return aliases.get(profile.name) or aliases.get(profile.type) or flag_key


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def _default_settings() -> Settings:
    root = Path(str(resources.files("flagwarden") / "defaults"))
    cfg = FlagwardenConfig(
        provider="file",
        providers_dir=root / "providers",
        policies_dir=Path("policies"),
    )
    return Settings(config=cfg, source=None, base_dir=Path.cwd())


def load_settings(
    config: str | Path | Mapping[str, Any] | FlagwardenConfig | None = None,
) -> Settings:
    """Find and validate the configuration.

    ``config`` may be a path, a mapping (as parsed from YAML), or a model. Without it:
    ``$FLAGWARDEN_CONFIG``, else ``./flagwarden.yaml``, else the embedded default
    (the packaged flag file, SQLite state under ``./.flagwarden``).
    """
    if isinstance(config, FlagwardenConfig):
        return Settings(config=config, source=None, base_dir=Path.cwd())
    if isinstance(config, Mapping):
        return Settings(
            config=_validate_config(dict(config), "<mapping>"), source=None, base_dir=Path.cwd()
        )
    if config is None:
        env = os.environ.get(CONFIG_ENV)
        if env:
            config = env
        elif Path(DEFAULT_CONFIG_NAME).exists():
            config = DEFAULT_CONFIG_NAME
        else:
            return _default_settings()
    path = Path(config).absolute()
    if not path.exists():
        raise ConfigError(path, None, "file not found")
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(path, None, "expected a mapping with at least a 'provider' field")
    return Settings(config=_validate_config(dict(raw), path), source=path, base_dir=path.parent)


def _validate_config(raw: dict[str, Any], file: Path | str) -> FlagwardenConfig:
    try:
        return FlagwardenConfig.model_validate(interpolate(raw, file))
    except ValidationError as exc:
        raise describe_validation_error(exc, file) from None
