"""Background threads that never die silently: they report, back off and keep running.

Every thread flagwarden runs in the background (the flag-file watcher, the snapshot writer,
the periodic flushes, the state-store cache, the worker heartbeat) reports each pass through
:func:`report_ok` or :func:`report_failure`. A failure is logged once per distinct error
(``flagwarden.background_failed``, ERROR), a recovery once (``flagwarden.background_recovered``),
and ``flagwarden_background_healthy{thread}`` is 1 or 0. Thread names are bounded (one per
kind of work and profile, never per flag). :func:`health_snapshot` says the same in Python.

:func:`run_supervised` runs a step on a daemon thread every ``interval`` seconds; a step that
raises is reported and retried after an exponential backoff (at most ``max_backoff``), and
the thread ends only when ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flagwarden.logs import get_logger
from flagwarden.telemetry.metrics import BACKGROUND_HEALTHY

__all__ = ["ThreadHealth", "health_snapshot", "report_failure", "report_ok", "run_supervised"]

_log = get_logger("flagwarden.background")

_MIN_BACKOFF = 0.05  # seconds: a step run back to back (interval 0) still backs off


@dataclass(frozen=True)
class ThreadHealth:
    """One background thread's health: ``since`` is when it became unhealthy (None when
    healthy); ``failures`` counts its consecutive failed passes; ``last_error`` is the most
    recent one (kept after a recovery, for the record)."""

    name: str
    healthy: bool
    failures: int
    last_error: str | None
    since: datetime | None


_health: dict[str, ThreadHealth] = {}
_logged: dict[str, set[str]] = {}  # errors already logged per thread, while it stays unhealthy
_lock = threading.Lock()
_LOGGED_LIMIT = 16  # distinct errors logged per unhealthy spell: a message that varies is capped


def _describe(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"[:500]
    return error[:500]


def report_ok(name: str) -> None:
    """A pass of ``name`` went well: healthy again (a recovery is logged once)."""
    current = _health.get(name)
    if current is not None and current.healthy:
        return  # the common case, without the lock: nothing changes
    with _lock:
        current = _health.get(name)
        _health[name] = ThreadHealth(
            name, True, 0, current.last_error if current else None, since=None
        )
        _logged.pop(name, None)
    BACKGROUND_HEALTHY.labels(name).set(1)
    if current is not None:
        _log.info("flagwarden.background_recovered", thread=name, failures=current.failures)


def report_failure(name: str, error: BaseException | str) -> None:
    """A pass of ``name`` failed: unhealthy, logged once per distinct error."""
    message = _describe(error)
    with _lock:
        current = _health.get(name)
        logged = _logged.setdefault(name, set())
        repeated = message in logged or len(logged) >= _LOGGED_LIMIT
        if not repeated:
            logged.add(message)
        since = current.since if current is not None and current.since else datetime.now(UTC)
        failures = (current.failures if current is not None else 0) + 1
        _health[name] = ThreadHealth(name, False, failures, message, since)
    BACKGROUND_HEALTHY.labels(name).set(0)
    if not repeated:
        _log.error("flagwarden.background_failed", thread=name, error=message, failures=failures)


def health_snapshot() -> dict[str, ThreadHealth]:
    """Every background thread that reported so far in this process, by name."""
    with _lock:
        return dict(_health)


def _backoff(interval: float, failures: int, max_backoff: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (``interval`` when none)."""
    if failures == 0:
        return interval
    grown = max(interval, _MIN_BACKOFF) * 2 ** min(failures, 32)
    return max(interval, min(max_backoff, grown))


def run_supervised(
    name: str,
    step: Callable[[], None],
    interval: float,
    stop: threading.Event,
    *,
    max_backoff: float = 30.0,
) -> threading.Thread:
    """Start a daemon thread that calls ``step`` every ``interval`` seconds until ``stop`` is set.

    A step that raises is reported (:func:`report_failure`) and tried again after an
    exponentially growing wait (at most ``max_backoff``, never less than ``interval``); a
    step that returns reports :func:`report_ok`. The thread is named ``name``.
    """

    def supervise() -> None:
        failures = 0
        while not stop.wait(_backoff(interval, failures, max_backoff)):
            try:
                step()
            except Exception as exc:  # the thread outlives any failure: report, back off
                failures += 1
                with contextlib.suppress(Exception):  # nor may a broken log sink end it
                    report_failure(name, exc)
                continue
            failures = 0
            with contextlib.suppress(Exception):
                report_ok(name)

    thread = threading.Thread(target=supervise, name=name, daemon=True)
    thread.start()
    return thread


def _after_fork_in_child() -> None:
    """The parent's threads stay in the parent: a child starts with no health and a new lock
    (one a parent thread held at the fork would never be released)."""
    global _lock
    _lock = threading.Lock()
    _health.clear()
    _logged.clear()
    BACKGROUND_HEALTHY.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
