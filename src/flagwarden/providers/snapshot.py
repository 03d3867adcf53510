"""Last-known-good snapshots of a vendor's native flag definitions (file or Redis).

A snapshot holds definitions, not evaluated values, so a worker that cold-starts during an
outage evaluates percentages and targeting exactly as the vendor would. Writes are atomic
(temporary file + rename, or a single Redis SET) and debounced on a background thread.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import structlog

from flagwarden.errors import FlagwardenError

__all__ = [
    "FileSnapshotStore",
    "RedisSnapshotStore",
    "Snapshot",
    "SnapshotError",
    "SnapshotStore",
    "SnapshotWriter",
    "open_snapshot_store",
    "write_private_json",
]

_log = structlog.get_logger("flagwarden.snapshot")
FORMAT = 1


class SnapshotError(FlagwardenError):
    """A snapshot could not be read or written."""


@dataclass(frozen=True)
class Snapshot:
    vendor: str  # the profile type: launchdarkly | split
    profile: str
    written_at: datetime
    data: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "vendor": self.vendor,
                "profile": self.profile,
                "written_at": self.written_at.isoformat(),
                "data": self.data,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Snapshot:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise SnapshotError(f"{where}: unsupported snapshot format {doc.get('format')!r}")
            return cls(
                vendor=str(doc["vendor"]),
                profile=str(doc["profile"]),
                written_at=datetime.fromisoformat(doc["written_at"]),
                data=dict(doc["data"]),
            )
        except SnapshotError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{where}: not a flagwarden snapshot ({exc})") from None


def write_private_json(data: Any, prefix: str) -> str:
    """Write ``data`` to a new file only this user can read; returns its path.

    Snapshot replays hand a vendor SDK's offline mode a file of definitions.
    """
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


class SnapshotStore(Protocol):
    location: str

    def load(self) -> Snapshot | None: ...

    def save(self, snapshot: Snapshot) -> None: ...


class FileSnapshotStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.location = f"file:{self.path}"

    def load(self) -> Snapshot | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotError(f"{self.path}: cannot read ({exc.strerror})") from None
        return Snapshot.from_json(text, str(self.path))

    def save(self, snapshot: Snapshot) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(snapshot.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class RedisSnapshotStore:
    def __init__(self, url: str, key: str = "flagwarden:snapshot") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.key = key
        # Never echo credentials embedded in the URL.
        self.location = "redis://" + url.split("://", 1)[-1].split("@")[-1]

    def load(self) -> Snapshot | None:
        import redis

        try:
            raw = self._redis.get(self.key)
        except redis.RedisError as exc:
            raise SnapshotError(f"{self.location}: {type(exc).__name__}") from None
        return None if raw is None else Snapshot.from_json(raw, f"{self.location} {self.key}")

    def save(self, snapshot: Snapshot) -> None:
        import redis

        try:
            self._redis.set(self.key, snapshot.to_json())
        except redis.RedisError as exc:
            raise SnapshotError(f"{self.location}: {type(exc).__name__}") from None


def open_snapshot_store(location: str) -> SnapshotStore:
    """``file:PATH`` or ``redis://HOST:PORT/DB`` (``?key=NAME`` picks the key)."""
    if location.startswith("file:"):
        return FileSnapshotStore(Path(location[len("file:") :]))
    parts = urlsplit(location)
    query = parse_qs(parts.query)
    key = query.pop("key", ["flagwarden:snapshot"])[0]
    url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    return RedisSnapshotStore(url, key=key)


class SnapshotWriter:
    """Writes the vendor's definitions after READY and configuration changes, debounced."""

    def __init__(
        self,
        store: SnapshotStore,
        export: Callable[[], Snapshot | None],
        debounce: float = 1.0,
    ) -> None:
        self.store = store
        self._export = export
        self.debounce = debounce
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = False
        self.writes = 0

    def request(self) -> None:
        """Ask for a write ``debounce`` seconds from now; requests in between coalesce."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="flagwarden-snapshot", daemon=True
            )
            self._thread.start()
        self._pending = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            # Coalesce a burst of changes into one write.
            while self._wake.is_set() and not self._stop.is_set():
                self._wake.clear()
                self._stop.wait(self.debounce)
            if not self._stop.is_set():
                self.write_now()

    def write_now(self) -> Snapshot | None:
        """Export and save immediately; None (and nothing written) when there is nothing fresh."""
        self._pending = False
        try:
            snapshot = self._export()
            if snapshot is None:
                return None
            self.store.save(snapshot)
        except Exception as exc:
            _log.error(
                "flagwarden.snapshot_write_failed", location=self.store.location, error=str(exc)
            )
            return None
        self.writes += 1
        return snapshot

    def close(self, flush: bool = True) -> None:
        pending = self._pending
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if flush and pending:
            self.write_now()
