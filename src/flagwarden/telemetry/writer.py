"""Exposure events written as JSON lines from pre-rendered templates, through a buffer.

A ``feature_flag.evaluation`` line differs from the last one of the same flag, answer and
stage only in the targeting key and the timestamp, so each distinct answer is rendered once
into a template and a line is the template, the key (JSON-escaped) and a timestamp. Lines are
the same JSON, byte for byte, as structlog's JSON renderer writes for the event (the keys in
the same order, ``event``, ``level`` and ``timestamp`` last) apart from the timestamp's value,
and they go out in batches: when :data:`BUFFER_LINES` are waiting, on the telemetry thread's
timer, at shutdown. Used only when flagwarden configured structlog itself (JSON at info); an
application's own structlog configuration gets each event through structlog instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _escape
from typing import Any, TextIO

__all__ = ["BUFFER_LINES", "ExposureWriter", "exposure_fields"]

BUFFER_LINES = 512  # a write every 512 first exposures at most (~200 KB)
_TEMPLATES = 4096  # distinct answers remembered; past that the table starts again
_SCALARS = (bool, int, float, str)
_time_ns = time.time_ns


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
    """A ``feature_flag.evaluation`` event's fields under OpenFeature's attribute names, in the
    order they are written."""
    return {
        "feature_flag.key": flag,
        "feature_flag.result.variant": variant,
        "feature_flag.result.reason": str(reason or ""),
        "feature_flag.result.value": value if isinstance(value, _SCALARS) else None,
        "feature_flag.provider.name": provider,
        "feature_flag.context.id": targeting_key,
        "error.type": error.value if error is not None else None,
        "flagwarden.source": source,
        "flagwarden.stage": stage,
        "flagwarden.arm": arm or None,
    }


class ExposureWriter:
    """Renders exposure lines from templates and writes them in batches to ``stream()``.

    ``write`` is safe from any thread: lines wait in a deque (appends and pops are atomic) and
    one lock keeps batches whole on the stream. A line is never written twice; lines still
    waiting when the process forks stay the parent's.
    """

    def __init__(self, stream: Callable[[], TextIO], buffer_lines: int = BUFFER_LINES) -> None:
        self._stream = stream
        self._limit = buffer_lines
        self._lines: deque[str] = deque()
        self._templates: dict[tuple[Any, ...], tuple[str, str]] = {}
        # structlog's ISO UTC timestamp (2026-11-27T07:50:41.115778Z): the date and time are
        # rendered once a second, the microseconds per line.
        self._second = -1
        self._stamp = ""
        self._lock = threading.Lock()
        self.written = 0  # lines handed to the stream

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
        # The value's type is part of the key: True == 1 == 1.0 in Python, not in JSON.
        key = (flag, variant, reason, error, source, arm, provider, type(shown), shown, stage)
        template = self._templates.get(key)
        if template is None:
            template = self._template(key, value)
        second, micro = divmod(_time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._stamp = datetime.fromtimestamp(second, UTC).isoformat()[: -len("+00:00")]
            self._second = second
        lines = self._lines
        lines.append(
            f'{template[0]}{_escape(targeting_key)}{template[1]}{self._stamp}.{micro:06d}Z"}}\n'
        )
        if len(lines) >= self._limit:
            self.flush()

    def _template(self, key: tuple[Any, ...], value: Any) -> tuple[str, str]:
        flag, variant, reason, error, source, arm, provider, _, _, stage = key
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
        """Write every waiting line now (the timer, the size bound and shutdown call this)."""
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
            stream = self._stream()
            stream.write("".join(batch))
            stream.flush()
            self.written += len(batch)

    def after_fork_in_child(self) -> None:
        self._lines = deque()
        self._lock = threading.Lock()
