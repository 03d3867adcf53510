"""Exposure events written as JSON lines from pre-rendered templates, through a buffer.

A ``feature_flag.evaluation`` line differs from the last one of the same flag, answer and
stage only in the targeting key and the timestamp, so each distinct answer is rendered once
into a template and a line is the template, the key (JSON-escaped) and a timestamp. Lines are
the same JSON, byte for byte, as structlog's JSON renderer writes for the event (the keys in
the same order, ``event``, ``level`` and ``timestamp`` last) apart from the timestamp's value,
and they go out in batches: when :data:`BUFFER_LINES` are waiting, on the telemetry thread's
timer, at shutdown and at the process's exit (a forked child writes each line at once). Used
only while flagwarden's own structlog configuration is in place (JSON at info); an
application's structlog configuration gets each event through structlog instead, also one
made after ``configure()`` (the waiting lines are handed to it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _escape
from typing import Any, TextIO

__all__ = ["BUFFER_LINES", "ExposureWriter", "error_type", "exposure_fields", "reason_value"]

BUFFER_LINES = 512  # a write every 512 first exposures at most (~200 KB)
_TEMPLATES = 4096  # distinct answers remembered; past that the table starts again
_SCALARS = (bool, int, float, str)
_time_ns = time.time_ns


def reason_value(reason: Any) -> str:
    """A resolution reason as OpenTelemetry's feature-flag conventions write it: lowercase
    (``static``, ``targeting_match``, ``split``, ``default``, ``error``...)."""
    return str(reason or "").lower()


def error_type(error: Any) -> str:
    """An OpenFeature error code as the conventions' ``error.type``: lowercase
    (``flag_not_found``, ``type_mismatch``, ``general``...)."""
    return str(getattr(error, "value", error)).lower()


def exposure_fields(
    flag: str,
    variant: str,
    reason: Any,
    error: Any,
    source: str,
    arm: str,
    provider: str,
    targeting_key: str,
    value: Any,
    stage: Any,
) -> dict[str, Any]:
    """A ``feature_flag.evaluation`` event's fields under the attribute names of OpenTelemetry's
    feature-flag conventions, in the order they are written: the reason in lowercase, and
    ``error.type`` (the lowercase error code) only when the answer is an error."""
    fields = {
        "feature_flag.key": flag,
        "feature_flag.result.variant": variant,
        "feature_flag.result.reason": reason_value(reason),
        "feature_flag.result.value": value if isinstance(value, _SCALARS) else None,
        "feature_flag.provider.name": provider,
        "feature_flag.context.id": targeting_key,
    }
    if error is not None:
        fields["error.type"] = error_type(error)
    fields["flagwarden.source"] = source
    fields["flagwarden.stage"] = stage
    fields["flagwarden.arm"] = arm or None
    return fields


class ExposureWriter:
    """Renders exposure lines from templates and writes them in batches to ``stream()``.

    ``write`` is safe from any thread: lines wait in a deque (appends and pops are atomic) and
    one lock keeps batches whole on the stream. A line is never written twice; lines still
    waiting when the process forks stay the parent's.
    """

    def __init__(
        self, stream: Callable[[], TextIO | None], buffer_lines: int = BUFFER_LINES
    ) -> None:
        self._stream = stream
        self._limit = buffer_lines
        self._lines: deque[str] = deque()
        self._templates: dict[tuple[Any, ...], tuple[str, str]] = {}
        # structlog's ISO UTC timestamp (2026-11-27T07:50:41.115778Z): the date and time are
        # rendered once a second (one tuple: threads read a consistent pair), the microseconds
        # per line.
        self._clock: tuple[int, str] = (-1, "")
        self._lock = threading.Lock()
        self.written = 0  # lines handed to the stream
        self.dropped = 0  # lines a failed write lost (said in the telemetry thread's health)
        self.rerouted = False  # structlog was configured by someone else: lines go through it

    def write(
        self,
        flag: str,
        variant: str,
        reason: Any,
        error: Any,
        source: str,
        arm: str,
        provider: str,
        targeting_key: str,
        value: Any,
        stage: Any,
    ) -> None:
        shown = value if isinstance(value, _SCALARS) else None
        # Types are part of the key: True == 1 == 1.0 (and stage 5 == 5.0) in Python, not JSON.
        key = (
            flag,
            variant,
            reason,
            error,
            source,
            arm,
            provider,
            shown.__class__,
            shown,
            stage.__class__,
            stage,
        )
        template = self._templates.get(key)
        if template is None:
            template = self._template(key, value)
        second, micro = divmod(_time_ns() // 1000, 1_000_000)
        clock = self._clock
        if clock[0] != second:
            clock = (second, datetime.fromtimestamp(second, UTC).isoformat()[: -len("+00:00")])
            self._clock = clock
        # isoformat() leaves out a zero fraction; so does this.
        stamp = f"{clock[1]}.{micro:06d}Z" if micro else f"{clock[1]}Z"
        lines = self._lines
        lines.append(f'{template[0]}{_escape(targeting_key)}{template[1]}{stamp}"}}\n')
        if len(lines) >= self._limit:
            self.flush()

    def _template(self, key: tuple[Any, ...], value: Any) -> tuple[str, str]:
        flag, variant, reason, error, source, arm, provider, _, _, _, stage = key
        fields = exposure_fields(
            flag, variant, reason, error, source, arm, provider, "\x00", value, stage
        )
        fields.update(event="feature_flag.evaluation", level="info", timestamp="")
        text = json.dumps(fields)
        marker = text.index('"feature_flag.context.id": ') + len('"feature_flag.context.id": ')
        end = text.index('"\\u0000"', marker)
        head = text[:marker]
        tail = text[end + len('"\\u0000"') : -len('"}')]
        if len(self._templates) >= _TEMPLATES:
            self._templates = {}  # answers that never repeat (NaN values): memory stays bounded
        self._templates[key] = (head, tail)
        return head, tail

    @property
    def pending(self) -> int:
        return len(self._lines)

    def flush(self) -> None:
        """Write every waiting line now (the timer, the size bound and shutdown call this).

        Never raises: lines a failed write loses are counted in ``dropped`` (a broken stderr
        must not break the evaluation that filled the buffer). When structlog was configured
        by someone else since (``stream()`` gives None), the lines go through structlog, one
        event each, so the application's processors see them."""
        lines = self._lines
        with self._lock:
            batch = []
            try:
                while True:
                    batch.append(lines.popleft())
            except IndexError:
                pass
            if not batch:
                return
            try:
                stream = self._stream()
                if stream is None:
                    self.rerouted = True
                    _through_structlog(batch)
                else:
                    # Through structlog's writer for the stream, under the lock structlog and
                    # the vendors' log bridge hold for each of their lines (a batch never lands
                    # inside one of them), in writes of whole lines of at most PIPE_BUF bytes:
                    # on a pipe shared with other processes, such a write is never split.
                    from structlog import WriteLogger  # imported already: it gave the stream

                    writer = WriteLogger(stream)
                    for chunk in _chunks(batch):
                        writer.msg(chunk[:-1])  # msg adds the last "\n"
            except Exception:
                self.dropped += len(batch)
            else:
                self.written += len(batch)

    def write_through(self) -> None:
        """Write each line at once from now on (a forked child: a prefork worker can end with
        ``os._exit`` or a signal, never flushing a buffer)."""
        self._limit = 1

    def after_fork_in_child(self) -> None:
        self._lines = deque()
        self._lock = threading.Lock()
        self.write_through()


def _through_structlog(lines: list[str]) -> None:
    """Rendered lines as structlog events (their own timestamp dropped: structlog stamps)."""
    from flagwarden.logs import get_logger

    log = get_logger("flagwarden.exposure")
    for line in lines:
        event = json.loads(line)
        for key in ("event", "level", "timestamp"):
            event.pop(key, None)
        log.info("feature_flag.evaluation", **event)


PIPE_BUF = 4096  # POSIX: a write to a pipe of at most this many bytes is never interleaved


def _chunks(lines: list[str]) -> Iterator[str]:
    """``lines`` joined into texts of whole lines of at most PIPE_BUF bytes each (a longer line
    alone)."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode("utf-8", "surrogateescape")) if not line.isascii() else len(line)
        if chunk and size + length > PIPE_BUF:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "".join(chunk)
