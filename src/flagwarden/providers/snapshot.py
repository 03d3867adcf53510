"""Last-known-good snapshots of a vendor's native flag definitions (file or Redis).

A snapshot holds definitions, not evaluated values, so a worker that cold-starts during an
outage evaluates percentages and targeting exactly as the vendor would. Writes are atomic
(temporary file + rename, or a single Redis SET) and debounced on a supervised background
thread (a failed write is reported and retried with backoff). A snapshot that cannot be read
(not UTF-8, not JSON, nested too deep, not ours) is a :class:`SnapshotError` naming its
location and the reason, never another exception.
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

from flagwarden.background import run_supervised
from flagwarden.errors import FlagwardenError
from flagwarden.logs import get_logger
from flagwarden.providers.base import too_deep
from flagwarden.storage import redact_url
from flagwarden.telemetry.metrics import SNAPSHOT_LAST_WRITE

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

_log = get_logger("flagwarden.snapshot")
FORMAT = 1
# Vendors' definitions nest a few levels (a flag file at most 100): deeper is not a snapshot,
# and would make the replay recurse past Python's limit.
MAX_NESTING = 128
WRITER_THREAD = "flagwarden-snapshot"


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
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SnapshotError(f"{where}: not UTF-8 ({exc})") from None
        try:
            doc = json.loads(text)
        except RecursionError:
            raise SnapshotError(f"{where}: nested deeper than {MAX_NESTING} levels") from None
        except ValueError as exc:
            raise SnapshotError(f"{where}: not JSON ({exc})") from None
        if (deep := too_deep(doc, MAX_NESTING)) is not None:
            raise SnapshotError(f"{where}: {deep}: nested deeper than {MAX_NESTING} levels")
        try:
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
        except UnicodeDecodeError as exc:
            raise SnapshotError(f"{self.path}: not UTF-8 ({exc})") from None
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
        self.location = redact_url(url)

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
            # Supervised: a failed write is reported and retried after a backoff.
            self._thread = run_supervised(WRITER_THREAD, self._step, 0.0, self._stop)
        self._pending = True
        self._wake.set()

    def _step(self) -> None:
        """Wait for a request (a second at most, to see ``stop``), debounce, write."""
        if not self._wake.wait(1.0) or self._stop.is_set():
            return
        # Coalesce a burst of changes into one write.
        while self._wake.is_set() and not self._stop.is_set():
            self._wake.clear()
            self._stop.wait(self.debounce)
        if self._stop.is_set():
            return
        try:
            self._save()
        except Exception as exc:
            self._log_failure(exc)
            self._pending = True
            self._wake.set()  # the write is still owed: tried again after the backoff
            raise

    def _save(self) -> Snapshot | None:
        self._pending = False
        snapshot = self._export()
        if snapshot is None:
            return None
        self.store.save(snapshot)
        self.writes += 1
        SNAPSHOT_LAST_WRITE.labels(snapshot.profile).set(snapshot.written_at.timestamp())
        return snapshot

    def _log_failure(self, exc: Exception) -> None:
        _log.error(
            "flagwarden.snapshot_write_failed",
            location=self.store.location,
            error=f"{type(exc).__name__}: {exc}",
        )

    def write_now(self) -> Snapshot | None:
        """Export and save immediately; None (and nothing written) when there is nothing fresh
        or the write failed (logged as ``flagwarden.snapshot_write_failed``)."""
        try:
            return self._save()
        except Exception as exc:
            self._log_failure(exc)
            return None

    def close(self, flush: bool = True) -> None:
        pending = self._pending
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if flush and pending:
            self.write_now()
