"""Which provider each profile type builds, and how its last-known-good snapshot is replayed.

One entry per profile model: ``build`` gives the (not yet initialized) source for a profile,
``replay`` the function that evaluates a snapshot of its definitions offline (None: the type
keeps no snapshot). Vendor SDKs are imported only when their type is used; a missing SDK is a
:class:`~flagwarden.errors.ConfigError` naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flagwarden.errors import ConfigError
from flagwarden.profiles import (
    EnvProfile,
    FileProfile,
    LaunchDarklyProfile,
    OpenFeatureProfile,
    Profile,
    SplitProfile,
)
from flagwarden.providers.base import SourceProvider
from flagwarden.providers.env import EnvProvider
from flagwarden.providers.file import FileProvider

__all__ = ["Replay", "build_vendor", "replay_for"]

Replay = Callable[[dict[str, Any]], SourceProvider]


@dataclass(frozen=True)
class _SourceType:
    build: Callable[[Any], SourceProvider]
    replay: Callable[[Any], Replay | None]


def _missing_extra(profile: Profile, extra: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        None,
        "type",
        f"profile {profile.name!r} needs the {extra} SDK: "
        f"pip install 'flagwarden[{extra}]' (missing {exc.name})",
    )


def _launchdarkly(profile: LaunchDarklyProfile) -> Any:
    try:
        from flagwarden.providers.launchdarkly import LaunchDarklyVendor
    except ImportError as exc:
        raise _missing_extra(profile, "launchdarkly", exc) from None
    return LaunchDarklyVendor


def _split(profile: SplitProfile) -> Any:
    try:
        from flagwarden.providers.split import SplitVendor
    except ImportError as exc:
        raise _missing_extra(profile, "split", exc) from None
    return SplitVendor


def _file(profile: FileProfile) -> SourceProvider:
    return FileProvider(profile.path, name=profile.name, poll_interval=profile.poll_interval)


def _file_replay(profile: FileProfile) -> Replay:
    # A flag file on a shared mount can vanish too: keep its last good definitions.
    return lambda data: FileProvider(profile.path, name=profile.name, snapshot=data)


def _openfeature(profile: OpenFeatureProfile) -> SourceProvider:
    from flagwarden.providers.openfeature import OpenFeatureSource

    return OpenFeatureSource(profile)


def _openfeature_replay(profile: OpenFeatureProfile) -> Replay:
    from flagwarden.providers.openfeature import replay

    return lambda data: replay(profile, data)


_TYPES: dict[type[Any], _SourceType] = {
    LaunchDarklyProfile: _SourceType(
        build=lambda p: _launchdarkly(p)(p),
        replay=lambda p: lambda data: _launchdarkly(p)(p, snapshot=data),
    ),
    SplitProfile: _SourceType(
        build=lambda p: _split(p)(p),
        replay=lambda p: lambda data: _split(p)(p, snapshot=data),
    ),
    EnvProfile: _SourceType(
        build=lambda p: EnvProvider(p.prefix, name=p.name), replay=lambda p: None
    ),
    FileProfile: _SourceType(build=_file, replay=_file_replay),
    OpenFeatureProfile: _SourceType(build=_openfeature, replay=_openfeature_replay),
}


def build_vendor(profile: Profile) -> SourceProvider:
    """The provider for one profile (not yet initialized)."""
    return _TYPES[type(profile)].build(profile)


def replay_for(profile: Profile) -> Replay | None:
    """How to evaluate a snapshot of this source's definitions offline (None: no snapshots)."""
    return _TYPES[type(profile)].replay(profile)
