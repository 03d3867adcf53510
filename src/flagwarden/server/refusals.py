"""Refused attempts to the service (401, 403, 429), audited without letting a flood of them
flood the audit log: :class:`RefusalLog` writes the first of a kind at once and the rest of
its window as one record with a count."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flagwarden.logs import get_logger

__all__ = ["RefusalLog"]

_log = get_logger("flagwarden.server")


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class _Refusals:
    """One kind of refused attempt within the current window (see :class:`RefusalLog`)."""

    record: dict[str, Any]  # the first of the window's refusals
    written: float  # monotonic time of the last record written for this kind
    count: int = 0  # refusals since then, not yet written
    first_at: str = ""
    last_at: str = ""


class RefusalLog:
    """Refused attempts, audited without letting a flood of them flood the audit log.

    Refusals alike (same client, status, method, route, why and identity) are written at most
    once per ``window`` seconds: the first at once (``count`` 1), the ones after it within the
    window counted and written as one record when the window closes (``count``, ``first_at``,
    ``last_at``; ``path`` is the first one's). Windows are closed by a background thread,
    by the next refusal, and by :meth:`close` (shutdown: nothing counted is lost). Memory
    is bounded: past ``most`` kinds, new clients are counted together under client ``*``;
    past twice that, the rest by status alone.
    """

    def __init__(
        self,
        write: Callable[[dict[str, Any]], None],
        window: float = 60.0,
        most: int = 1_000,
    ) -> None:
        self._write = write
        self.window = window
        self._most = most
        self._kinds: dict[tuple[Any, ...], _Refusals] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Close due windows in the background (about once a second)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="flagwarden-refusals", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the background thread and write every refusal still counted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            due = [self._pending(kind) for kind in self._kinds.values() if kind.count]
            self._kinds.clear()
        self._emit(due)

    def note(self, data: dict[str, Any]) -> None:
        """A refused attempt: ``status``, ``method``, ``path``, ``route``, ``client``,
        ``why``, ``identity``."""
        now, at = time.monotonic(), _now_text()
        with self._lock:
            due = self._sweep(now) if now >= self._next_sweep else []
            key = self._key(data)
            kind = self._kinds.get(key)
            if kind is None and len(self._kinds) >= self._most:
                data = {**data, "client": "*"}  # past most: new clients counted together
                key = self._key(data)
                kind = self._kinds.get(key)
                if kind is None and len(self._kinds) >= 2 * self._most:
                    data = {**data, "method": "*", "route": "*", "why": "*", "identity": None}
                    key = self._key(data)  # and past twice that: one per status
                    kind = self._kinds.get(key)
            if kind is None:
                self._kinds[key] = _Refusals(dict(data), now)
                due.append({**data, "count": 1, "first_at": at, "last_at": at})
            else:
                if not kind.count:
                    kind.record, kind.first_at = dict(data), at
                kind.count += 1
                kind.last_at = at
        self._emit(due)

    def flush(self) -> None:
        """Write every window that has closed."""
        with self._lock:
            due = self._sweep(time.monotonic())
        self._emit(due)

    @property
    def tracked(self) -> int:
        return len(self._kinds)

    @staticmethod
    def _key(data: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            data.get(k) for k in ("client", "status", "method", "route", "why", "identity")
        )

    def _pending(self, kind: _Refusals) -> dict[str, Any]:
        return {
            **kind.record,
            "count": kind.count,
            "first_at": kind.first_at,
            "last_at": kind.last_at,
        }

    def _sweep(self, now: float) -> list[dict[str, Any]]:
        """The records of every closed window (the lock held); forgets quiet kinds."""
        self._next_sweep = now + min(1.0, self.window / 4)
        due = []
        for key, kind in list(self._kinds.items()):
            if now - kind.written < self.window:
                continue
            if kind.count:
                due.append(self._pending(kind))
                kind.written, kind.count = now, 0
            else:
                del self._kinds[key]  # nothing since its last record: the next one is new
        return due

    def _emit(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                self._write(record)
            except Exception as exc:  # an audit outage must not fail the request or thread
                _log.error("flagwarden.access_refused_unrecorded", error=str(exc), **record)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.window / 4)):
            self.flush()
