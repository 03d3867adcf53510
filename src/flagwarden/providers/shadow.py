"""Shadow comparison for vendor migrations.

A sample of evaluations is handed to a background thread that asks the shadow provider the
same question and counts agreement; the primary's answer is what the pipeline gets, and the
caller never waits for the shadow. When the queue is full, comparisons are dropped (counted).
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType
from prometheus_client import Counter

from flagwarden.logs import get_logger
from flagwarden.providers.base import SourceProvider

__all__ = ["ShadowComparator"]

_log = get_logger("flagwarden.shadow")

SHADOW_COMPARISONS = Counter(
    "flagwarden_shadow_comparisons",
    "Shadow-provider comparisons by outcome (match, mismatch, error, dropped)",
    ["feature_flag_key", "result"],
)


class ShadowComparator:
    def __init__(self, shadow: SourceProvider, sample_rate: float, queue_size: int = 10_000):
        self.shadow = shadow
        self.sample_rate = sample_rate
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random()
        self.counts = {"match": 0, "mismatch": 0, "error": 0, "dropped": 0}
        self._thread: threading.Thread | None = None

    def recreate(self) -> ShadowComparator:
        """A new comparator with a fresh shadow client (after fork)."""
        return ShadowComparator(self.shadow.recreate(), self.sample_rate, self._queue.maxsize)

    def start(self) -> None:
        """Start the comparison thread; the shadow SDK starts there, off the caller's path."""
        self._thread = threading.Thread(target=self._run, name="flagwarden-shadow", daemon=True)
        self._thread.start()

    def offer(
        self,
        flag_type: FlagType,
        flag_key: str,
        shadow_key: str,
        default_value: Any,
        context: EvaluationContext | None,
        primary_value: Any,
    ) -> None:
        """Maybe queue a comparison; never blocks."""
        if self._random.random() >= self.sample_rate:
            return
        try:
            self._queue.put_nowait(
                (flag_type, flag_key, shadow_key, default_value, context, primary_value)
            )
        except queue.Full:
            self._count(flag_key, "dropped")

    def _count(self, flag_key: str, result: str) -> None:
        self.counts[result] += 1
        SHADOW_COMPARISONS.labels(flag_key, result).inc()

    def _run(self) -> None:
        self.shadow.start()  # comparisons offered meanwhile wait in the queue
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._compare(*item)
            finally:
                self._queue.task_done()

    def _compare(
        self,
        flag_type: FlagType,
        flag_key: str,
        shadow_key: str,
        default_value: Any,
        context: EvaluationContext | None,
        primary_value: Any,
    ) -> None:
        try:
            details = self.shadow.resolve(flag_type, shadow_key, default_value, context)
        except Exception as exc:
            self._count(flag_key, "error")
            _log.warning("flagwarden.shadow_error", flag=flag_key, error=str(exc))
            return
        if details.error_code is not None:
            self._count(flag_key, "error")
        elif details.value == primary_value:
            self._count(flag_key, "match")
        else:
            self._count(flag_key, "mismatch")
            _log.warning(
                "flagwarden.shadow_mismatch",
                **{
                    "feature_flag.key": flag_key,
                    "primary_value": primary_value,
                    "shadow_value": details.value,
                    "shadow_provider": self.shadow.name,
                },
            )

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until queued comparisons are done (for tests and shutdown); False on timeout."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.shadow.shutdown()
