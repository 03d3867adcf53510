"""structlog set-up: JSON lines in production, readable console output on a terminal.

Only when the application has not configured structlog itself: its choice wins. Output goes
to stderr, so a pipeline's stdout stays its own. ``FLAGWARDEN_LOG_LEVEL`` sets the level
(``warning`` silences exposure events, which are logged at info). The standard library's
records (the vendor SDKs') go the same way, rendered alike and scrubbed of secrets, unless
the application put a handler on the root logger (:mod:`flagwarden.telemetry.stdlib_logs`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog

__all__ = ["configure_logging", "exposure_stream"]

# What flagwarden configured (None: structlog was configured by the application, or not yet):
# the processor list (to see that nobody replaced it since), the stream, and the level.
_own: tuple[list[Any], tuple[Any, ...], TextIO, int] | None = None


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto") -> bool:
    """Configure structlog unless the application already did; True if we configured it."""
    if structlog.is_configured():
        return False
    level = getattr(logging, os.environ.get("FLAGWARDEN_LOG_LEVEL", "info").upper(), logging.INFO)
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # A traceback as one "exception" string (the console renderer prints its own).
        *([] if console else [structlog.processors.format_exc_info]),
        renderer,
    ]
    stream = sys.stderr
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (message and newline together), under structlog's lock for the
        # stream: whole lines beside other threads and, on a pipe, other processes.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    global _own
    _own = (processors, tuple(processors), stream, level) if not console else None
    _release_in_forked_children(stream)
    from flagwarden.telemetry import stdlib_logs  # pydantic: not before the first log line

    stdlib_logs.install(console=console, stream=stream, level=level)
    return True


# structlog's write locks of the streams flagwarden configured it with, by stream.
_write_locks: dict[int, Any] = {}


def _release_in_forked_children(stream: TextIO) -> None:
    """structlog's lock for ``stream`` (the one its writers, flagwarden's exposure batches and
    the vendors' log bridge share) is never renewed after a fork: a child forked while another
    thread was writing would wait for it forever. The thread is gone in the child, so the child
    releases it (a plain lock may be released by any thread): see :func:`_release_write_locks`."""
    _write_locks.setdefault(id(stream), structlog.WriteLogger(stream)._lock)


def _release_write_locks() -> None:
    for lock in list(_write_locks.values()):
        if lock.locked():
            lock.release()


# Registered when this module is imported, before the runtime's own fork hooks (registered by
# the first configure()): a child's hooks run in that order, and theirs may log a line.
os.register_at_fork(after_in_child=_release_write_locks)


def exposure_stream() -> TextIO | None:
    """Where exposure lines may be written directly, as JSON lines in structlog's own format:
    the stream flagwarden configured structlog with, when it did, as JSON, at info or below,
    and nobody configured structlog since. None: log each event through structlog."""
    if _own is None:
        return None
    processors, as_configured, stream, level = _own
    current = structlog.get_config()["processors"]
    if level > logging.INFO or current is not processors or tuple(current) != as_configured:
        return None  # reconfigured, or the list edited in place (structlog's capture_logs)
    return stream
