"""A flag's dashboard page over real HTTP (a real ``flagwarden serve``, a viewer logged in
through the login form): the stage timeline, one guard chart per guard fed by
``flagwarden.record_metric`` with its limit line, and guard and metric names that would be
markup rendered as text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from itertools import pairwise
from typing import Any

import httpx
import pytest

import flagwarden
from tests.conftest import wait_for
from tests.server.conftest import FLAG, Console

# A guard name and a metric name that would end the chart's <svg>, run script or add an
# attribute if they reached the page as markup.
GUARD = '<script>window.__xss=1</script>"nulls'
METRIC = 'null_rate"></svg><img src=x onerror="window.__xss=2">'
GUARDS = [
    {"name": GUARD, "metric": METRIC, "max": {1: 0.05, 25: 0.03}},
    {"name": "rows-kept", "metric": "kept_share", "min": 0.9},
]


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Page(HTMLParser):
    """The page as a browser reads it: every start tag, and each <svg> with its attributes,
    its <title> and the elements inside it in order (with the text of each)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.svgs: list[dict[str, Any]] = []
        self._open: list[str] = []
        self._text: list[str] | None = None  # the element whose text is being read
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, dict(attrs), opens=tag not in VOID)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, dict(attrs), opens=False)  # <path .../>: nothing inside it

    def _start(self, tag: str, attrs: dict[str, str | None], opens: bool) -> None:
        self.tags.append((tag, attrs))
        if tag == "svg":
            self.svgs.append({**attrs, "elements": []})
        elif "svg" in self._open:
            element = {"tag": tag, **attrs, "text": ""}
            self.svgs[-1]["elements"].append(element)
            if tag in ("title", "text") and opens:
                self._text = []
        if opens:
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "text") and self._text is not None:
            self.svgs[-1]["elements"][-1]["text"] = "".join(self._text)
            self._text = None
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def charts(self, kind: str) -> list[dict[str, Any]]:
        return [s for s in self.svgs if kind in str(s.get("class")).split()]


def title(chart: dict[str, Any]) -> str:
    """The chart's own <title> (the first: the ones after it belong to its points)."""
    return str(next(e["text"] for e in chart["elements"] if e["tag"] == "title"))


def paths(chart: dict[str, Any], css: str) -> list[str]:
    return [str(e["d"]) for e in chart["elements"] if e["tag"] == "path" and e.get("class") == css]


def circles(chart: dict[str, Any], css: str) -> list[float]:
    """The heights of the chart's dots of class ``css``."""
    found = chart["elements"]
    return [float(e["cy"]) for e in found if e["tag"] == "circle" and e.get("class") == css]


def heights(d: str) -> set[float]:
    """The y of every point of an SVG path made of M and L commands."""
    return {float(point.split(",")[1]) for point in re.findall(r"[ML](\S+)", d)}


def y_of(chart: dict[str, Any], value: float) -> float:
    """Where ``value`` sits on the chart's y axis, from its grid lines and their labels."""
    elements = chart["elements"]
    grid = [
        (float(label["text"]), float(line["y1"]))
        for line, label in pairwise(elements)
        if line["tag"] == "line" and line.get("class") == "grid" and label["tag"] == "text"
    ]
    (v0, y0), (v1, y1) = grid[0], grid[-1]
    return y0 + (value - v0) * (y1 - y0) / (v1 - v0)


def log_in(console: Console, token: str) -> httpx.Client:
    """A browser's session: the login form, its nonce cookie, the token posted."""
    browser = console.client()
    found = re.search(r'name="nonce" value="([^"]+)"', browser.get("/login").text)
    assert found is not None
    nonce = found.group(1)
    assert browser.post("/login", data={"nonce": nonce, "token": token}).status_code == 303
    return browser


def test_the_flag_page_charts_the_stage_and_each_guard_against_its_limit(console_for):
    console = console_for(policy={"soak": "0s", "guards": GUARDS})
    with console.as_("operator") as operator:
        for _ in range(2):  # 0% -> 1% -> 5%
            moved = operator.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": "go"})
            assert moved.status_code == 200, moved.text
    # A pipeline measures both arms at 5%: the measurements the guard charts draw.
    flagwarden.configure(console.config)
    runtime = flagwarden.current()
    assert runtime is not None
    wait_for(lambda: runtime.governed.state(FLAG).stage == 5)
    for value in (0.010, 0.012, 0.020):
        flagwarden.record_metric(FLAG, METRIC, value, variant="treatment", count=500)
        flagwarden.record_metric(FLAG, METRIC, value / 2, variant="control", count=5000)
        flagwarden.record_metric(FLAG, "kept_share", 0.99, variant="treatment", count=500)
        flagwarden.record_metric(FLAG, "kept_share", 0.98, variant="control", count=5000)
    flagwarden.shutdown()

    browser = log_in(console, console.tokens["viewer"])
    try:
        answer = browser.get(f"/flags/{FLAG}")
    finally:
        browser.close()
    assert answer.status_code == 200, answer.text[:500]
    html = answer.text
    assert 'id="me">viewer (viewer)<' in html  # the viewer's session
    page = Page(html)

    # The names are text: escaped in the markup, no element or attribute of their own.
    assert GUARD not in html and METRIC not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;&#34;nulls" in html
    assert "null_rate&#34;&gt;&lt;/svg&gt;&lt;img src=x onerror=&#34;" in html
    assert [tag for tag, _ in page.tags if tag == "img"] == []
    assert [a.get("src") for tag, a in page.tags if tag == "script"] == ["/static/app.js"]
    assert not [a for _, a in page.tags if "onerror" in a]
    assert len(page.svgs) == 3 and len(re.findall(r"<svg\b", html)) == 3

    # The stage over time: one chart, its stage line through the two advances.
    (stage,) = page.charts("stage-chart")
    assert title(stage) == f"stage of {FLAG} over time" == stage["aria-label"]
    assert len(paths(stage, "stage")) == 1
    changes = [e["text"] for e in stage["elements"] if e["tag"] == "title"][1:]
    assert [c.split(": ", 1)[1] for c in changes] == [
        "advance to 1% by operator",
        "advance to 5% by operator",
    ]

    # One chart per guard, in the policy's order, each drawing both arms and its limit.
    nulls, kept = page.charts("guard-chart")
    assert title(nulls) == f"guard {GUARD} of {FLAG}: {METRIC} over time against its limit"
    assert title(kept) == f"guard rows-kept of {FLAG}: kept_share over time against its limit"
    assert nulls["aria-label"] == title(nulls) and kept["aria-label"] == title(kept)
    for chart in (nulls, kept):
        assert len(circles(chart, "dot arm-treatment-dot")) == 3
        assert len(circles(chart, "dot arm-control-dot")) == 3
        assert len(paths(chart, "arm-treatment")) == len(paths(chart, "arm-control")) == 1
    # null_rate's max at 1% and 5% is 0.05: one flat line at 0.05, above every reading.
    (limit,) = paths(nulls, "limit")
    assert paths(nulls, "limit limit-lower") == []
    (at,) = heights(limit)
    assert at == pytest.approx(y_of(nulls, 0.05), abs=0.15)
    assert at < min(circles(nulls, "dot arm-treatment-dot"))  # SVG's y grows downwards
    # kept_share's min is 0.9: a lower limit, below the readings (0.98, 0.99).
    (floor,) = paths(kept, "limit limit-lower")
    assert paths(kept, "limit") == []
    (at,) = heights(floor)
    assert at == pytest.approx(y_of(kept, 0.9), abs=0.15)
    assert at > max(circles(kept, "dot arm-treatment-dot"))
