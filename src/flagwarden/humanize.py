"""Times, durations, stages and numbers as people write them (status lines, reports)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["duration", "number", "percent", "visible", "when"]

# Control characters (terminal escape sequences among them, line breaks too) never reach a
# terminal or a document raw; nor do Unicode's line separators and bidirectional overrides,
# which let a reason break the line or show its characters in another order than typed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """``text`` on one line with every control character shown as ``\\xNN`` (``\\u202e`` for
    Unicode's line separators and bidirectional controls)."""
    return _CONTROL.sub(_shown, str(text))


def when(moment: datetime | str | None) -> str:
    """``2026-11-27 10:02:03 UTC`` (seconds, UTC); ``-`` for None."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(span: timedelta | float) -> str:
    """``45s``, ``12m05s``, ``3h20m``, ``2d04h``."""
    seconds = int(span.total_seconds() if isinstance(span, timedelta) else span)
    seconds = max(seconds, 0)
    if seconds >= 86400:
        return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def percent(stage: float | None) -> str:
    """``25%``, ``0.5%``; ``-`` for None."""
    return "-" if stage is None else f"{stage:g}%"


def number(value: float | None) -> str:
    """Four significant digits (``0.004213``, ``1.235e+06``); ``-`` for None."""
    return "-" if value is None else f"{value:.4g}"
