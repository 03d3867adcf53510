"""Inline SVG charts for the HTML report (no script, no network; every text escaped).

All of a flag's charts share one time axis, so they line up on the page. Stages are drawn on a
stage-*index* axis (0, then each policy stage equally spaced, labelled with its percent), so
1% and 5% are as visible as 50%. Stable class names: ``stage``, ``killed``, ``paused``,
``outage``, ``limit``, ``arm-treatment``, ``arm-control``, ``guard-value``, ``breach``,
``share``, ``stage-cap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from markupsafe import Markup
from markupsafe import escape as _xml_escape

from flagwarden.humanize import visible
from flagwarden.report.document import (
    FlagReport,
    GuardChart,
    LimitStep,
    Outage,
    Period,
    SeriesPoint,
)
from flagwarden.report.series import stage_segments
from flagwarden.report.text import num, stage, when

__all__ = ["guard_chart", "share_chart", "span", "stage_chart"]


def escape(text: object) -> Markup:
    """XML-escaped, with control characters shown as ``\\xNN`` (a terminal escape in an
    actor's name must not reach a reader's screen when the HTML is printed)."""
    return _xml_escape(visible(text))


__all__ = ["guard_chart", "share_chart", "span", "stage_chart"]

WIDTH, HEIGHT = 940, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 18, 18, 40


def span(flag: FlagReport, period: Period) -> tuple[float, float]:
    """The time range of a flag's charts: from its first data in the period (or the period's
    start when it already had a state then) to the period's end."""
    end = period.until.timestamp()
    if flag.state_at_since is not None:
        return period.since.timestamp(), end
    moments = [p.at for p in flag.timeline]
    moments += [p.at for p in flag.exposures.treatment_share]
    for chart in flag.guard_charts:
        moments += [p.at for p in (*chart.treatment, *chart.control, *chart.values)]
    first = min(moments).timestamp() if moments else period.since.timestamp()
    first = min(first, end)
    if end - first < 1:
        first = end - 1
    return first, end


class _Frame:
    def __init__(self, t0: float, t1: float, height: int = HEIGHT) -> None:
        self.t0, self.t1, self.height = t0, max(t1, t0 + 1e-3), height
        self.bottom = height - BOTTOM

    def x(self, moment: datetime | float) -> float:
        t = moment.timestamp() if isinstance(moment, datetime) else moment
        t = min(max(t, self.t0), self.t1)
        return LEFT + (t - self.t0) / (self.t1 - self.t0) * (WIDTH - LEFT - RIGHT)

    def y(self, fraction: float) -> float:
        return self.bottom - fraction * (self.bottom - TOP)

    def time_axis(self) -> str:
        spread = self.t1 - self.t0
        pattern = "%H:%M:%S" if spread < 86400 else "%m-%d %H:%M"
        parts = [
            f'<line class="axis-line" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
            f'y1="{self.bottom}" y2="{self.bottom}"/>'
        ]
        for i in range(5):
            t = self.t0 + spread * i / 4
            x = self.x(t)
            anchor = "start" if i == 0 else ("end" if i == 4 else "middle")
            label = datetime.fromtimestamp(t, UTC).strftime(pattern)
            parts.append(
                f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" '
                f'y2="{self.bottom + 4}"/><text class="axis" x="{x:.1f}" '
                f'y="{self.bottom + 16}" text-anchor="{anchor}">{escape(label)}</text>'
            )
        parts.append(
            f'<text class="axis" x="{WIDTH - RIGHT}" y="{self.height - 6}" '
            f'text-anchor="end">time (UTC)</text>'
        )
        return "".join(parts)


def _svg(kind: str, title: str, body: str, frame: _Frame | None = None, legend: str = "") -> Markup:
    height = frame.height if frame else 44
    return Markup(
        f'<svg class="chart {kind}" role="img" aria-label="{escape(title)}" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}">'
        f"<title>{escape(title)}</title>{body}{legend}</svg>"
    )


def _empty(kind: str, title: str, message: str) -> Markup:
    return _svg(kind, title, f'<text class="empty" x="12" y="27">{escape(message)}</text>')


def _legend(entries: Sequence[tuple[str, str]]) -> str:
    parts, x = [], LEFT
    for css, label in entries:
        parts.append(
            f'<line class="key {css}" x1="{x}" x2="{x + 18}" y1="8" y2="8"/>'
            f'<text class="legend" x="{x + 22}" y="11">{escape(label)}</text>'
        )
        x += 30 + 6 * len(label)
    return "".join(parts)


# -- stages ------------------------------------------------------------------------------


class _StageAxis:
    """0, then each policy stage equally spaced; other values interpolated between them."""

    def __init__(self, stages: Sequence[float]) -> None:
        self.levels = [0.0, *stages]

    def fraction(self, value: float) -> float:
        levels = self.levels
        top = len(levels) - 1 or 1
        if value <= levels[0]:
            return 0.0
        for i in range(1, len(levels)):
            if value <= levels[i]:
                low, high = levels[i - 1], levels[i]
                return (i - 1 + (value - low) / ((high - low) or 1)) / top
        return 1.0

    def grid(self, frame: _Frame) -> str:
        parts = []
        for level in self.levels:
            y = frame.y(self.fraction(level))
            parts.append(
                f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                f'<text class="axis" x="{LEFT - 6}" y="{y + 3.5:.1f}" text-anchor="end">'
                f"{escape(stage(level))}</text>"
            )
        return "".join(parts)


def _bands(frame: _Frame, flag: FlagReport, period: Period) -> str:
    parts = []
    for begin, end, state in stage_segments(
        flag.state_at_since, flag.timeline, period.since, period.until
    ):
        for on, css, label in (
            (state.killed, "killed", "killed"),
            (state.paused, "paused", "paused"),
        ):
            if on:
                x0, x1 = frame.x(begin), frame.x(end)
                parts.append(
                    f'<rect class="{css}" x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1.5):.1f}" '
                    f'height="{frame.bottom - TOP}"><title>{label} from {escape(when(begin))} '
                    f"to {escape(when(end))}</title></rect>"
                )
    return "".join(parts)


def _stage_path(frame: _Frame, axis: _StageAxis, flag: FlagReport, period: Period, css: str) -> str:
    points: list[str] = []
    for begin, end, state in stage_segments(
        flag.state_at_since, flag.timeline, period.since, period.until
    ):
        y = frame.y(axis.fraction(state.stage))
        points.append(f"{'M' if not points else 'L'}{frame.x(begin):.1f},{y:.1f}")
        points.append(f"L{frame.x(end):.1f},{y:.1f}")
    return f'<path class="{css}" d="{" ".join(points)}"/>'


def stage_chart(flag: FlagReport, period: Period, outages: Iterable[Outage]) -> Markup:
    title = f"stage of {flag.flag} over time"
    frame = _Frame(*span(flag, period))
    axis = _StageAxis(flag.stages)
    body = [axis.grid(frame), _bands(frame, flag, period)]
    shown_outages = 0
    for outage in outages:
        ended = outage.ended_at or period.until
        if outage.started_at is None or ended.timestamp() < frame.t0:
            continue
        if outage.started_at.timestamp() > frame.t1:
            continue
        shown_outages += 1
        x0, x1 = frame.x(outage.started_at), frame.x(outage.ended_at or period.until)
        body.append(
            f'<rect class="outage" x="{x0:.1f}" y="{frame.bottom - 6}" '
            f'width="{max(x1 - x0, 2):.1f}" height="6"><title>vendor outage from '
            f"{escape(when(outage.started_at))} to {escape(when(outage.ended_at))}</title></rect>"
        )
    body.append(_stage_path(frame, axis, flag, period, "stage"))
    for point in flag.timeline:
        y = frame.y(axis.fraction(point.stage))
        body.append(
            f'<circle class="change" cx="{frame.x(point.at):.1f}" cy="{y:.1f}" r="3">'
            f"<title>{escape(when(point.at))}: {escape(point.action)} to "
            f"{escape(stage(point.stage))} by {escape(point.actor or 'unknown')}</title></circle>"
        )
    body.append(frame.time_axis())
    segments = stage_segments(flag.state_at_since, flag.timeline, period.since, period.until)
    entries = [("stage", "approved stage")]
    entries += [("killed", "killed")] if any(s[2].killed for s in segments) else []
    entries += [("paused", "paused")] if any(s[2].paused for s in segments) else []
    entries += [("outage", "vendor outage")] if shown_outages else []
    legend = _legend(entries)
    return _svg("stage-chart", title, "".join(body), frame, legend)


# -- guards ------------------------------------------------------------------------------


Scale = Callable[[float], float]


def _new_stage(before: SeriesPoint, after: SeriesPoint) -> bool:
    return (before.stage, before.epoch) != (after.stage, after.epoch)


def _line(frame: _Frame, points: Sequence[SeriesPoint], y: Scale, css: str, label: str) -> str:
    if not points:
        return ""
    # A new stage is a new population: the line starts again rather than bridge the two
    # (a lone point still shows, as a round dot of the line's width).
    parts = []
    for i, p in enumerate(points):
        starts = i == 0 or _new_stage(points[i - 1], p)
        parts.append(f"{'M' if starts else 'L'}{frame.x(p.at):.1f},{y(p.value):.1f}")
        ends = i + 1 == len(points) or _new_stage(p, points[i + 1])
        if starts and ends:
            parts.append("l0.01,0")
    d = " ".join(parts)
    dots = ""
    if len(points) <= 60:
        dots = "".join(
            f'<circle class="dot {css}-dot" cx="{frame.x(p.at):.1f}" cy="{y(p.value):.1f}" '
            f'r="2"><title>{escape(label)} {escape(num(p.value))} (n={p.n:,}) at '
            f"{escape(when(p.at))}</title></circle>"
            for p in points
        )
    return f'<path class="{css}" d="{d}"/>{dots}'


def _limit_path(
    frame: _Frame, steps: Sequence[LimitStep], end: datetime, y: Scale, upper: bool
) -> str:
    parts: list[str] = []
    drawing = False
    for i, step in enumerate(steps):
        value = step.upper if upper else step.lower
        stop = steps[i + 1].at if i + 1 < len(steps) else end
        if value is None:
            drawing = False
            continue
        yy = y(value)
        parts.append(f"{'L' if drawing else 'M'}{frame.x(step.at):.1f},{yy:.1f}")
        parts.append(f"L{frame.x(stop):.1f},{yy:.1f}")
        drawing = True
    if not parts:
        return ""
    css = "limit" if upper else "limit limit-lower"
    return f'<path class="{css}" d="{" ".join(parts)}"/>'


def _ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Round tick values from at or below ``low`` to at or above ``high``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0 if math.isfinite(low) else 1.0
        low = low if math.isfinite(low) else 0.0
    raw = (high - low) / (most - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(first + step * len(ticks))
    return ticks


def guard_chart(flag: FlagReport, chart: GuardChart, period: Period) -> Markup:
    what = chart.query if chart.source == "metric" else "its PromQL query"
    title = f"guard {chart.guard} of {flag.flag}: {what} over time against its limit"
    series = [*chart.treatment, *chart.control, *chart.values]
    if not series:
        return _empty("guard-chart", title, chart.note or "no readings in this period")
    frame = _Frame(*span(flag, period))
    limits = [v for s in chart.limit_steps for v in (s.upper, s.lower) if v is not None]
    values = [p.value for p in series] + [b.value for b in chart.breaches] + limits
    ticks = _ticks(min(0.0, *values), max(values))
    low, high = ticks[0], ticks[-1]

    def y(value: float) -> float:
        return frame.y((value - low) / (high - low))

    body = []
    for value in ticks:
        yy = y(value)
        body.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{yy + 3.5:.1f}" text-anchor="end">'
            f"{escape(num(value))}</text>"
        )
    for point in flag.timeline:
        x = frame.x(point.at)
        body.append(
            f'<line class="stage-change" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{frame.bottom}"/>'
            f'<text class="axis" x="{x + 2:.1f}" y="{TOP + 9}">{escape(stage(point.stage))}</text>'
        )
    body.append(_limit_path(frame, chart.limit_steps, period.until, y, upper=True))
    body.append(_limit_path(frame, chart.limit_steps, period.until, y, upper=False))
    body.append(_line(frame, chart.control, y, "arm-control", "control"))
    body.append(_line(frame, chart.treatment, y, "arm-treatment", "treatment"))
    body.append(_line(frame, chart.values, y, "guard-value", "reading"))
    for b in chart.breaches:
        body.append(
            f'<circle class="breach" cx="{frame.x(b.at):.1f}" cy="{y(b.value):.1f}" r="5.5">'
            f"<title>breach at {escape(when(b.at))}: {escape(num(b.value))} at "
            f"{escape(stage(b.stage))}</title></circle>"
        )
    body.append(frame.time_axis())
    entries = (
        [("arm-treatment", "treatment"), ("arm-control", "control")]
        if chart.source == "metric"
        else [("guard-value", "guard reading")]
    )
    entries += [("limit", "limit at the stage")]
    entries += [("breach-key", "breach")] if chart.breaches else []
    return _svg("guard-chart", title, "".join(body), frame, _legend(entries))


# -- exposures ---------------------------------------------------------------------------


def share_chart(flag: FlagReport, period: Period) -> Markup:
    title = f"share of {flag.flag}'s exposures given the treatment, against the approved stage"
    points = flag.exposures.treatment_share
    if not points:
        return _empty("share-chart", title, "no exposure summaries in this period")
    frame = _Frame(*span(flag, period))
    axis = _StageAxis(flag.stages)
    body = [axis.grid(frame), _stage_path(frame, axis, flag, period, "stage-cap")]
    d = " ".join(
        f"{'M' if i == 0 else 'L'}{frame.x(p.at):.1f},{frame.y(axis.fraction(p.share * 100)):.1f}"
        for i, p in enumerate(points)
    )
    body.append(f'<path class="share" d="{d}"/>')
    if len(points) <= 120:
        body += [
            f'<circle class="dot share-dot" cx="{frame.x(p.at):.1f}" '
            f'cy="{frame.y(axis.fraction(p.share * 100)):.1f}" r="2.5"><title>'
            f"{p.share:.1%} of {p.evaluations:,} evaluations, period ending "
            f"{escape(when(p.at))}</title></circle>"
            for p in points
        ]
    body.append(frame.time_axis())
    legend = _legend([("share", "treatment share"), ("stage-cap", "approved stage")])
    return _svg("share-chart", title, "".join(body), frame, legend)
