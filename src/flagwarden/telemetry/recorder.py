"""Exposures counted and logged where the answer is made, at the cost of a dict increment.

The governing provider calls :meth:`ExposureRecorder.record` for every answer it gives (no
OpenFeature hook: a hook costs ~5 µs of SDK dispatch per call and would touch every other
OpenFeature client in the process). An evaluation does three cheap things:

* one increment in a plain dict of this thread's counts, keyed by (flag, variant, reason,
  error, source, arm, capped, provider); a thread only ever writes its own dict, so no count is
  lost between threads and nothing is locked;
* one look-up in the deduplication table;
* for a first exposure within the window, one line from a pre-rendered template into the
  buffered :class:`~flagwarden.telemetry.writer.ExposureWriter`.

Every :data:`FOLD_INTERVAL` seconds (and at shutdown) the telemetry thread folds what each
thread counted since the last fold into the Prometheus counters
(``feature_flag_evaluations_total``, ``flagwarden_capped_evaluations_total``) and the exposure
summaries (and, with ``telemetry.otel``, the OpenTelemetry counter: the same deltas), and
writes the waiting lines; a collection of the default registry (a /metrics scrape) folds
first, so the endpoint is never behind. With ``PROMETHEUS_MULTIPROC_DIR`` set (prefork servers)
counts go to the Prometheus metrics at once, as before: a worker can be killed without a
shutdown, and its counts must be on disk (the OpenTelemetry counter still gets them from the
fold). With ``telemetry.otel.logs``, a first exposure also queues one tuple for
:mod:`flagwarden.telemetry.otel`'s log records.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from flagwarden.background import report_failure, run_supervised
from flagwarden.logs import get_logger
from flagwarden.telemetry.exposure import ExposureSummary
from flagwarden.telemetry.metrics import CAPPED, EVALUATIONS, FOLD_ON_COLLECT
from flagwarden.telemetry.writer import ExposureWriter, exposure_fields

if TYPE_CHECKING:
    from flagwarden.telemetry.otel import OtelExposures

__all__ = ["FOLD_INTERVAL", "THREAD", "Deduper", "ExposureLost", "ExposureRecorder", "Key"]

_log = get_logger("flagwarden.exposure")

FOLD_INTERVAL = 1.0
THREAD = "flagwarden-exposures"
_time_ns = time.time_ns

# flag (its bounded label), variant, reason, error code (or None), source, arm, capped, provider
Key = tuple[str, str, Any, Any, str, str, bool, str]


class Deduper(Protocol):
    """What the recorder needs from the deduplication table."""

    def first_in_window(self, flag: str, key: str, variant: str) -> bool: ...


class _ThreadCounts:
    """One thread's running totals, and what the last fold took of them."""

    __slots__ = ("counts", "folded", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.counts: dict[Key, int] = {}
        self.folded: dict[Key, int] = {}


class ExposureRecorder:
    """Counts every answer and logs first exposures (see the module docstring). The provider
    never lets it raise into an evaluation: a failure is counted (:meth:`failed`) and reported
    by the telemetry thread, as are exposure lines a failed write lost."""

    def __init__(
        self,
        provider: str,
        deduper: Deduper | None,
        summary: ExposureSummary | None,
        writer: ExposureWriter | None,
        *,
        direct: bool | None = None,
        otel: OtelExposures | None = None,
    ) -> None:
        self.provider = provider
        self.deduper = deduper
        self.summary = summary
        self.writer = writer  # None: events go through structlog, one by one
        self.direct = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")) if direct is None else direct
        self.otel = otel  # the OpenTelemetry counter (fed by the fold) and log records
        self._local = threading.local()
        self._threads: list[_ThreadCounts] = []
        self._register_lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._children: dict[tuple[str, str, str, str, str, str], Any] = {}
        self._capped: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0  # record() calls that raised (reported by the telemetry thread)
        self._last_failure = ""
        self._reported = (0, 0)  # failures and dropped lines reported so far
        FOLD_ON_COLLECT.add(self)

    # -- the evaluation path -----------------------------------------------------------

    def record(
        self,
        flag: str,
        variant: str,
        reason: Any,
        error: Any,
        source: str,
        arm: str,
        capped: bool,
        targeting_key: str,
        value: Any,
        stage: Any,
        label: str | None = None,
        provider: str | None = None,
    ) -> None:
        """One answer: counted (under ``label``, the flag's bounded label, when it differs
        from the key), and logged when it is the first for this flag, targeting key and
        variant within the dedup window. ``provider`` defaults to the recorder's."""
        provider = provider or self.provider
        key = (label or flag, variant, reason, error, source, arm, capped, provider)
        if self.direct:
            self._apply(key, 1)
            if self.otel is not None:  # OpenTelemetry still counts through the fold
                self._count_local(key, 1)
        else:  # count()'s increment, inline: one call fewer on every evaluation
            try:
                counts = self._local.counts
            except AttributeError:
                counts = self._register()
            counts[key] = counts.get(key, 0) + 1
        deduper = self.deduper
        if deduper is not None and deduper.first_in_window(flag, targeting_key, variant):
            otel = self.otel
            if otel is not None and otel.logs:  # a tuple for the OpenTelemetry log record
                events = otel.events
                if len(events) < otel.limit:
                    events.append(
                        (
                            flag,
                            variant,
                            reason,
                            error,
                            source,
                            arm,
                            provider,
                            targeting_key,
                            value,
                            stage,
                            _time_ns(),
                        )
                    )
                else:
                    otel.dropped += 1
            writer = self.writer
            if writer is not None:
                writer.write(
                    flag, variant, reason, error, source, arm, provider, targeting_key, value, stage
                )
            else:
                fields = exposure_fields(
                    flag, variant, reason, error, source, arm, provider, targeting_key, value, stage
                )
                _log.info("feature_flag.evaluation", **fields)

    def count(
        self,
        flag: str,
        variant: str,
        reason: Any,
        error: Any,
        source: str,
        arm: str,
        capped: bool,
        n: int,
        label: str | None = None,
    ) -> None:
        """Count ``n`` answers at once (``assign``'s batches); no exposure lines."""
        if n <= 0:
            return
        key = (label or flag, variant, reason, error, source, arm, capped, self.provider)
        if self.direct:
            self._apply(key, n)
            if self.otel is None:
                return
        self._count_local(key, n)

    def _count_local(self, key: Key, n: int) -> None:
        try:
            counts = self._local.counts
        except AttributeError:
            counts = self._register()
        counts[key] = counts.get(key, 0) + n

    def failed(self, exc: Exception) -> None:
        """A :meth:`record` that raised (a targeting key a log line cannot hold, a broken
        stream...): counted here, reported by the telemetry thread; the answer stands."""
        self._failures += 1
        self._last_failure = f"{type(exc).__name__}: {exc}"[:300]

    def _register(self) -> dict[Key, int]:
        entry = _ThreadCounts(threading.current_thread())
        with self._register_lock:
            self._threads.append(entry)
        self._local.counts = entry.counts
        return entry.counts

    # -- the telemetry thread ----------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = run_supervised(THREAD, self.flush, FOLD_INTERVAL, self._stop)

    def flush(self) -> None:
        """Fold the counts into the metrics and summaries, and write the waiting lines; raise
        (for the thread's health) when exposures could not be recorded since the last pass."""
        self.fold()
        writer = self.writer
        dropped = 0
        if writer is not None:
            writer.flush()
            dropped = writer.dropped
            if writer.rerouted:  # structlog configured by the application since: use it
                self.writer = None
        failures = self._failures
        if (failures, dropped) != self._reported:
            new_failures, new_dropped = failures - self._reported[0], dropped - self._reported[1]
            self._reported = (failures, dropped)
            raise ExposureLost(
                f"{new_failures} exposures not recorded"
                + (f" (last: {self._last_failure})" if new_failures else "")
                + f", {new_dropped} exposure lines lost to a failed write"
            )

    def fold(self) -> None:
        """Hand what every thread counted since the last fold to Prometheus and the summary
        (with ``PROMETHEUS_MULTIPROC_DIR`` they had it at once), and to OpenTelemetry."""
        with self._fold_lock:
            deltas: Counter[Key] = Counter()
            with self._register_lock:
                entries = list(self._threads)
            running = sys._current_frames().keys()  # threads threading does not end too
            for entry in entries:
                alive = entry.thread.is_alive() and entry.thread.ident in running
                totals = entry.counts.copy()  # one C-level copy: a consistent view
                folded = entry.folded
                for key, total in totals.items():
                    n = total - folded.get(key, 0)
                    if n:
                        deltas[key] += n
                entry.folded = totals
                if not alive:  # its last counts are in: forget the thread
                    with self._register_lock:
                        self._threads.remove(entry)
            if not self.direct:
                for key, n in deltas.items():
                    self._apply(key, n)
            otel = self.otel
            if otel is not None:
                for key, n in deltas.items():
                    otel.add(key, n)

    def _apply(self, key: Key, n: int) -> None:
        flag, variant, reason, error, source, arm, capped, provider = key
        reason_label = str(reason or "")
        error_label = error.value if error is not None else ""
        labels = (flag, variant, reason_label, provider, error_label, source)
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = EVALUATIONS.labels(*labels)
        child.inc(n)
        if capped:
            counter = self._capped.get(flag)
            if counter is None:
                counter = self._capped[flag] = CAPPED.labels(flag)
            counter.inc(n)
        if self.summary is not None:
            self.summary.add((flag, variant, reason_label, source, arm, capped), n)

    @property
    def series(self) -> int:
        """Distinct metric children this recorder created (bounded by the flag labels)."""
        return len(self._children)

    def after_fork_in_child(self) -> None:
        """The parent's counts and waiting lines stay the parent's; the thread starts again;
        exposure lines are written at once (a prefork worker may end without a shutdown)."""
        self._local = threading.local()
        self._threads = []
        self._register_lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        if self.writer is not None:
            self.writer.after_fork_in_child()
        fork_hook = getattr(self.deduper, "after_fork_in_child", None)
        if fork_hook is not None:
            fork_hook()
        if self._thread is not None:
            self._thread = None
            self.start()

    def close(self) -> None:
        """Stop the thread; fold and write what is left (the summary's own close follows).
        Never raises: shutdown goes on, what could not be written is reported."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.flush()
        except Exception as exc:
            report_failure(THREAD, exc)
            with contextlib.suppress(Exception):
                _log.error("flagwarden.exposures_lost", error=str(exc))


class ExposureLost(Exception):
    """Exposures that could not be counted or logged (reported; the answers stood)."""
