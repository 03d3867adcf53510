"""How the report writes times, numbers and user text (Markdown escaping lives here too)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from flagwarden import humanize

__all__ = [
    "count",
    "duration",
    "iso",
    "markdown_escape",
    "num",
    "percent",
    "plural",
    "quote",
    "share",
    "stage",
    "when",
]


def iso(moment: datetime) -> str:
    """JSON: ISO 8601, UTC, to the second (``2026-11-27T10:02:03Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(moment: datetime | None) -> str:
    """People: ``2026-11-27 10:02:03 UTC``."""
    return humanize.when(moment)


def num(value: float | None) -> str:
    """A measured value to 4 significant digits, without a surprise exponent."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 and magnitude < 1e15:
        digits = 3 - math.floor(math.log10(magnitude))
        return f"{round(value, digits):,.0f}"
    return f"{value:.4g}"


def count(value: int | float) -> str:
    return f"{int(value):,}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 rollback``, ``2 rollbacks``, ``1 guard breach``, ``3 guard breaches``."""
    many = words or (word + "es" if word.endswith(("s", "sh", "ch")) else word + "s")
    return f"{count(n)} {word if n == 1 else many}"


stage = humanize.percent


def share(value: float) -> str:
    return f"{value * 100:.1f}%"


def percent(value: float) -> str:
    return f"{value:.0%}"


def duration(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``12m03s``, ``3h05m``, ``2d04h`` (as ``flagwarden status`` writes
    them; a tenth of a second below 10s, where compressed soaks live)."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{max(seconds, 0):.1f}s"
    return humanize.duration(seconds)


def quote(text: str | None, most: int = 80) -> str:
    """A reason quoted inside a sentence, cut at ``most`` characters."""
    text = " ".join(str(text or "").split())
    if len(text) > most:
        text = text[: most - 1].rstrip() + "…"
    return f"'{text}'"


# -- Markdown ----------------------------------------------------------------------------

# Characters that start Markdown constructs (emphasis, code, links, headings, tables,
# strikethrough, images) are backslash-escaped; < > & become entities, so no raw HTML
# passes through; line breaks become a visible mark, so user text cannot start a new
# line (a heading, a table row, a list item).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~!])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n|\u2028|\u2029")
# GitHub turns bare addresses into links: break the scheme and the www. so they stay text.
# No word boundary: GitHub links "www." right after an "_" too, which \b would miss.
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|javascript|data|vbscript|file):")
_WWW = re.compile(r"(?i)www\.")


def markdown_escape(text: object) -> str:
    """``text`` as inert Markdown: it renders as the same characters, never as markup."""
    s = str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = _LINE_BREAK.sub(" ↵ ", s)
    s = humanize.visible(s)
    s = _AUTOLINK.sub(lambda m: f"{m.group(1)}\\:", s)
    return _WWW.sub(lambda m: m.group()[:3] + "\\.", s)
