"""Counts kept in memory and handed on every few seconds (violations, exposure summaries).

The evaluation path only increments a Counter entry; a background thread swaps the Counter
out every ``interval`` seconds (and at close) and writes what it held. The thread is
supervised (:mod:`flagwarden.background`): a write that raises is reported, its counts are
kept for the next flush, and the thread backs off and keeps running.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Generic, TypeVar

from flagwarden.background import report_failure, run_supervised
from flagwarden.logs import get_logger

__all__ = ["PeriodicCounter"]

K = TypeVar("K", bound=Hashable)

_log = get_logger("flagwarden.periodic")


class PeriodicCounter(ABC, Generic[K]):
    def __init__(self, interval: float, thread_name: str) -> None:
        self.interval = interval
        self._thread_name = thread_name
        self._counts: Counter[K] = Counter()
        self._since = datetime.now(UTC)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, key: K, n: int = 1) -> None:
        # A dict increment under the GIL; the lock is only taken by flush's swap.
        self._counts[key] += n

    @property
    def thread_name(self) -> str:
        """The flush thread's name, as :func:`flagwarden.background.health_snapshot` keys it."""
        return self._thread_name

    def start(self) -> None:
        if self._thread is None:
            self._thread = run_supervised(
                self._thread_name, self.flush, self.interval, self._stop, max_backoff=60.0
            )

    def flush(self) -> None:
        """Hand on the counts since the last flush (nothing when there are none).

        A write that raises keeps its counts for the next flush (their log line may then be
        written twice, the counts once) and raises on.
        """
        with self._lock:
            counts, self._counts = self._counts, Counter()
            since, until = self._since, datetime.now(UTC)
        if not counts:
            self._since = until
            return
        try:
            self._write(counts, since, until)
        except BaseException:
            self._requeue(counts)  # the next flush covers this window too: since stays
            raise
        with self._lock:
            self._since = until

    def _requeue(self, counts: Counter[K]) -> None:
        """Keep counts a failed write could not hand on, for the next flush."""
        with self._lock:
            self._counts.update(counts)

    @abstractmethod
    def _write(self, counts: Counter[K], since: datetime, until: datetime) -> None: ...

    def after_fork_in_child(self) -> None:
        """The parent's thread and counts stay in the parent; start afresh."""
        self._lock = threading.Lock()
        self._counts = Counter()
        self._stop = threading.Event()
        self._thread = None
        self.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception as exc:  # shutdown goes on; the counts that could not go are said lost
            report_failure(self._thread_name, exc)
            _log.error("flagwarden.final_flush_failed", thread=self._thread_name, error=str(exc))
