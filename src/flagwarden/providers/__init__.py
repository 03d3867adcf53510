"""Flag sources (LaunchDarkly, Split, env, file) and the failover chain in front of them."""

from __future__ import annotations

from flagwarden.providers.base import SourceProvider
from flagwarden.providers.env import EnvProvider
from flagwarden.providers.failover import FailoverProvider, aggregate_status
from flagwarden.providers.file import FileProvider
from flagwarden.providers.snapshot import (
    FileSnapshotStore,
    RedisSnapshotStore,
    Snapshot,
    SnapshotStore,
    open_snapshot_store,
)

__all__ = [
    "EnvProvider",
    "FailoverProvider",
    "FileProvider",
    "FileSnapshotStore",
    "RedisSnapshotStore",
    "Snapshot",
    "SnapshotStore",
    "SourceProvider",
    "aggregate_status",
    "open_snapshot_store",
]
