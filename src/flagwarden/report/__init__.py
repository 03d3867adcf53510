"""The compliance report (``flagwarden report``): a typed document built from the audit log,
the policies, the rollout states and the measurements, rendered as Markdown, as one
self-contained HTML file with inline SVG charts, or as JSON with its own digest.

See docs/report.md for the sections, the JSON fields, the verdict rules and the glossary.
"""

from __future__ import annotations

from flagwarden.report.build import build_report
from flagwarden.report.document import Report, report_digest
from flagwarden.report.html import render_html
from flagwarden.report.markdown import render_markdown
from flagwarden.report.period import PeriodError, resolve_period

__all__ = [
    "PeriodError",
    "Report",
    "build_report",
    "render_html",
    "render_markdown",
    "report_digest",
    "resolve_period",
]
