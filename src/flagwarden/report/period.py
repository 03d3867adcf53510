"""The period a report covers: ``--since`` and ``--until`` as dates, datetimes or durations."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from flagwarden.documents import is_duration, parse_duration

__all__ = ["PeriodError", "resolve_moment", "resolve_period"]


class PeriodError(ValueError):
    """A ``--since``/``--until`` value that names no moment (a usage error)."""


def _moment(option: str, value: str, anchor: datetime, *, end_of_day: bool) -> datetime:
    text = value.strip()
    delta = None
    if is_duration(text):
        try:
            delta = parse_duration(text)
        except (ValueError, OverflowError):
            raise PeriodError(
                f"{option} {value}: that duration is too long (at most 3650d); "
                "give a date for an older start"
            ) from None
    if delta is not None:
        try:
            return anchor - delta
        except OverflowError:
            raise PeriodError(
                f"{option} {value}: that reaches back before the year 1; "
                "give a shorter duration or a date"
            ) from None
    try:
        if len(text) == 10:  # a date alone: the day starts (--since) or ends (--until) there
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if end_of_day else start
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise PeriodError(
            f"{option} {value!r}: expected a duration (7d, 24h, 30m) or an ISO date or "
            "datetime (2026-11-20, 2026-11-20T08:00:00, 2026-11-20T08:00:00+01:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # no zone given: UTC
    return moment.astimezone(UTC)


def resolve_moment(option: str, value: str, *, now: datetime | None = None) -> datetime:
    """One moment in UTC (``--before``): an ISO date (the start of that day) or datetime, or a
    duration counted back from now (``90d``: ninety days ago)."""
    return _moment(option, value, now or datetime.now(UTC), end_of_day=False)


def resolve_period(
    since: str, until: str | None = None, *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """``(since, until)`` in UTC. ``until`` defaults to now, and a duration there counts back
    from now (``--until 1d``: a day ago); a duration in ``since`` counts back from ``until``
    (``--since 7d``: the seven days up to it). A date alone is the start of that day for
    ``since`` and its end (the next midnight) for ``until``."""
    now = now or datetime.now(UTC)
    end = now if until is None else _moment("--until", until, now, end_of_day=True)
    start = _moment("--since", since, end, end_of_day=False)
    if start >= end:
        raise PeriodError(
            f"--since ({start.strftime('%Y-%m-%d %H:%M:%S')} UTC) must come before --until "
            f"({end.strftime('%Y-%m-%d %H:%M:%S')} UTC)"
        )
    return start, end
