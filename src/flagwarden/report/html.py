"""The report as one self-contained HTML file: inline CSS and SVG, no script, no network.

Rendered with Jinja2 and autoescaping: every string from the audit log, the policies or the
state (reasons, descriptions, actors, flag names, outage causes) is escaped; only the charts
(built by :mod:`flagwarden.report.charts`, which escapes its own text) are inserted as markup.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from flagwarden.humanize import visible
from flagwarden.report import charts
from flagwarden.report.document import Report
from flagwarden.report.runs import RUNS_NOTE
from flagwarden.report.series import limit_words
from flagwarden.report.text import count, duration, num, plural, share, stage, when
from flagwarden.report.verdict import CAPPING, VERDICT_TITLES, split_verdict

__all__ = ["render_html"]


def _printable(value: Any) -> Any:
    """Text from the log shown, not obeyed: control characters (a terminal escape in a reason)
    become ``\\xNN``; the charts' own markup is left alone."""
    return visible(value) if isinstance(value, str) and not isinstance(value, Markup) else value


_env = Environment(
    loader=PackageLoader("flagwarden.report", "templates"),
    finalize=_printable,
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_env.filters.update(when=when, num=num, count=count, stage=stage, share=share, duration=duration)
_env.globals.update(
    stage_chart=charts.stage_chart,
    guard_chart=charts.guard_chart,
    share_chart=charts.share_chart,
    limit_words=limit_words,
    plural=plural,
    split_verdict=split_verdict,
    verdict_titles=VERDICT_TITLES,
    capping=CAPPING,
    runs_note=RUNS_NOTE,
)


def render_html(report: Report) -> str:
    return _env.get_template("report.html.j2").render(r=report)
