"""Counts kept in memory and handed on every few seconds (violations, exposure summaries).

The evaluation path only increments a Counter entry; a background thread swaps the Counter
out every ``interval`` seconds (and at close) and writes what it held.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Generic, TypeVar

__all__ = ["PeriodicCounter"]

K = TypeVar("K", bound=Hashable)


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

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        """Hand on the counts since the last flush (nothing when there are none)."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            since, until = self._since, datetime.now(UTC)
            self._since = until
        if counts:
            self._write(counts, since, until)

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
        self.flush()
