"""Times, durations, stages and numbers as people write them (status lines, reports)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["duration", "number", "percent", "when"]


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


def percent(stage: float) -> str:
    """``25%``, ``0.5%``."""
    return f"{stage:g}%"


def number(value: float | None) -> str:
    """Four significant digits (``0.004213``, ``1.235e+06``); ``-`` for None."""
    return "-" if value is None else f"{value:.4g}"
