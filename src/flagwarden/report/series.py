"""Time series behind the charts: stage segments, guard metrics per arm, limits, shares.

A guard's chart shows what the guard judged: its metric per arm from the measurement store
(bucketed to at most ~120 points per arm, weighted by each measurement's count, never mixing
two stages in one point), the limit that applied at the stage the flag was at (none at stage
0 or while killed: the watch does not judge then; for a guard relative to control, control's
value times ``1 + max``), and the breaches from the guard decisions.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime

from flagwarden.governance.measurements import Measurement, MeasurementStore
from flagwarden.governance.policy import Guard, Policy
from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.report.document import (
    BreachPoint,
    GuardChart,
    GuardDecision,
    LimitStep,
    Period,
    SeriesPoint,
    SharePoint,
    StageLimit,
    StageState,
    TimelinePoint,
)
from flagwarden.report.text import num, stage

__all__ = [
    "MOST_POINTS",
    "Segment",
    "bucket_shares",
    "guard_charts",
    "limit_words",
    "stage_segments",
]

MOST_POINTS = 120  # per arm, per chart
MOST_SHARES = 240

Segment = tuple[datetime, datetime, StageState]


def stage_segments(
    start: StageState | None, timeline: list[TimelinePoint], since: datetime, until: datetime
) -> list[Segment]:
    """``(from, to, state)`` covering ``[since, until]``; stage 0 before a first transition."""
    current = start or StageState(0.0, False, False)
    moment = since
    segments: list[Segment] = []
    for point in timeline:
        if point.at > moment:
            segments.append((moment, point.at, current))
            moment = point.at
        current = StageState(point.stage, point.killed, point.paused)
    segments.append((moment, max(until, moment), current))
    return segments


def _live(state: StageState) -> bool:
    return state.stage > 0 and not state.killed


def _dt(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _bucket(
    found: list[Measurement], first: float, last: float, most: int = MOST_POINTS
) -> tuple[list[SeriesPoint], bool]:
    """At most ~``most`` points, each the count-weighted mean of one time bucket at one stage."""
    found = [m for m in found if m.n > 0]
    if len(found) <= most:
        return [SeriesPoint(_dt(m.at), m.value, m.n, m.stage, m.epoch) for m in found], False
    width = (last - first) / most or 1.0
    groups: dict[tuple[int, int | None, float | None], list[float]] = {}
    for m in found:
        index = min(int((m.at - first) / width), most - 1)
        group = groups.setdefault((index, m.epoch, m.stage), [0.0, 0.0, 0.0, 0.0])
        group[0] += m.value * m.n
        group[1] += m.n
        group[2] += m.at
        group[3] += 1
    points = [
        SeriesPoint(_dt(at_sum / k), weighted / n, int(n), stage, epoch)
        for (_, epoch, stage), (weighted, n, at_sum, k) in groups.items()
    ]
    return sorted(points, key=lambda p: p.at), True


def _absolute_steps(guard: Guard, segments: list[Segment]) -> list[LimitStep]:
    steps = []
    for begin, _, state in segments:
        upper, lower = guard.limits_at(state.stage) if _live(state) else (None, None)
        steps.append(LimitStep(begin, state.stage, upper, lower))
    return steps


def _relative_steps(
    guard: Guard, segments: list[Segment], control: list[SeriesPoint]
) -> list[LimitStep]:
    """Control's value times ``1 + limit``, moving with each control reading and stage (a
    stage's limit rests on control's readings at that stage, as the guard's does)."""
    starts = [s[0] for s in segments]
    moments = sorted({*starts, *(p.at for p in control)})
    times = [p.at for p in control]
    steps = []
    for moment in moments:
        begin, _, state = segments[max(bisect_right(starts, moment) - 1, 0)]
        i = bisect_right(times, moment) - 1
        baseline = control[i].value if i >= 0 and control[i].at >= begin else None
        upper = lower = None
        if _live(state) and baseline is not None:
            most, least = guard.limits_at(state.stage)
            upper = None if most is None else baseline * (1 + most)
            lower = None if least is None else baseline * (1 + least)
        steps.append(LimitStep(moment, state.stage, upper, lower))
    return steps


def _chart(
    policy: Policy,
    guard: Guard,
    segments: list[Segment],
    decisions: Iterable[GuardDecision],
    read: list[Measurement] | str | None,
) -> GuardChart:
    mine = [d for d in decisions if d.guard == guard.name]
    chart = GuardChart(
        guard=guard.name,
        source="metric" if guard.metric is not None else "promql",
        query=guard.metric if guard.metric is not None else str(guard.promql),
        relative_to_control=guard.relative_to_control and guard.metric is not None,
        limits=[StageLimit(s, *guard.limits_at(s)) for s in policy.stages],
        breaches=[
            BreachPoint(d.at, d.value, d.stage)
            for d in mine
            if d.verdict == "breach" and d.value is not None
        ],
    )
    readings = [SeriesPoint(d.at, d.value, d.samples, d.stage) for d in mine if d.value is not None]
    if guard.metric is None:
        chart.values = readings
        chart.note = (
            "PromQL readings as the watch recorded them (ticks that breached or changed the stage)"
        )
        chart.limit_steps = _absolute_steps(guard, segments)
        return chart
    if not isinstance(read, list):
        chart.note = read or "no measurement store was given to the report"
        if readings:
            chart.values = readings
            chart.note += "; the guard's readings as the watch recorded them instead"
    else:
        chart.measurements = len(read)
        if read:
            first, last = read[0].at, read[-1].at
            chart.treatment, bucketed = _bucket(
                [m for m in read if m.variant == "treatment"], first, last
            )
            chart.control, also = _bucket([m for m in read if m.variant == "control"], first, last)
            chart.bucketed = bucketed or also
        else:
            chart.note = f"no measurements of {guard.metric} in this period"
    chart.limit_steps = (
        _relative_steps(guard, segments, chart.control)
        if chart.relative_to_control
        else _absolute_steps(guard, segments)
    )
    return chart


def guard_charts(
    policy: Policy,
    start: StageState | None,
    timeline: list[TimelinePoint],
    decisions: list[GuardDecision],
    measurements: MeasurementStore | None,
    period: Period,
) -> list[GuardChart]:
    segments = stage_segments(start, timeline, period.since, period.until)
    read: dict[str, list[Measurement] | str | None] = {}
    charts = []
    for guard in policy.guards:
        if guard.metric is not None and guard.metric not in read:
            if measurements is None:
                read[guard.metric] = None
            else:
                try:
                    read[guard.metric] = measurements.series(
                        policy.flag,
                        guard.metric,
                        period.since.timestamp(),
                        period.until.timestamp(),
                    )
                except StateStoreUnavailable as exc:
                    read[guard.metric] = f"measurements unavailable: {exc}"
        source = read.get(guard.metric) if guard.metric is not None else None
        charts.append(_chart(policy, guard, segments, decisions, source))
    return charts


def bucket_shares(raw: list[tuple[datetime, int, int]]) -> list[SharePoint]:
    """Treatment share per summary period ``(at, treatment, evaluations)``, or per time bucket
    when there are more than ``MOST_SHARES`` periods."""
    raw = sorted(raw)
    if len(raw) > MOST_SHARES:
        first, last = raw[0][0].timestamp(), raw[-1][0].timestamp()
        width = (last - first) / MOST_SHARES or 1.0
        groups: dict[int, list[float]] = {}
        for at, treated, n in raw:
            index = min(int((at.timestamp() - first) / width), MOST_SHARES - 1)
            group = groups.setdefault(index, [0.0, 0.0, 0.0])
            group[0] = max(group[0], at.timestamp())
            group[1] += treated
            group[2] += n
        raw = [(_dt(at), int(t), int(n)) for at, t, n in (groups[i] for i in sorted(groups))]
    return [SharePoint(at, round(t / n, 4) if n else 0.0, n) for at, t, n in raw]


def limit_words(chart: GuardChart) -> str:
    """The policy's limit in words: one number, or where each per-stage value starts."""
    relative = " \N{MULTIPLICATION SIGN} control" if chart.relative_to_control else ""

    def words(limits: list[tuple[float, float | None]], sign: str) -> str:
        values = [(s, v) for s, v in limits if v is not None]
        if not values:
            return ""
        if len({v for _, v in values}) == 1 and len(values) == len(limits):
            return f"{sign} {_scaled(values[0][1], relative)} at every stage"
        shown: list[str] = []
        last: float | None = None
        for s, v in values:
            if v != last:
                shown.append(f"{sign} {_scaled(v, relative)} from {stage(s)}")
                last = v
        return ", ".join(shown)

    upper = words([(s.stage, s.max) for s in chart.limits], "≤")
    lower = words([(s.stage, s.min) for s in chart.limits], "≥")
    return "; ".join(w for w in (upper, lower) if w) or "no limit"


def _scaled(value: float | None, relative: str) -> str:
    if value is None:
        return "-"
    return f"(1 + {num(value)}){relative}" if relative else num(value)
