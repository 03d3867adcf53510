"""The dashboard in a real headless Chromium (Playwright driving Debian's ``chromium``) against
a real ``flagwarden serve``: log in with a token, kill a flag through the confirmation page
and watch a worker process go to control, see changes made by other processes without a
reload, no console errors (CSP violations included), a screenshot that shows a page, and
hostile text in a policy and in a reason rendered as text."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import Project, run_cli, wait_for
from tests.governance.worker import spawn
from tests.server.conftest import FLAG, Console

CHROMIUM = Path("/usr/bin/chromium")
# A policy description and a reason that would run script if rendered as HTML.
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '</svg><img src=x onerror="window.__xss=2">'
XSS = f"{XSS_SCRIPT} {XSS_IMG}"
VIEWPORT = {"width": 1200, "height": 900}

# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests drive Debian's chromium "
            "(.ci/run installs it: apt-get install chromium)"
        )
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


class Tab:
    """One page in a fresh browser context, with every console error and uncaught exception
    it saw (a CSP violation is a console error in Chromium)."""

    def __init__(self, browser: Any, console: Console) -> None:
        self.context = browser.new_context(base_url=console.url, viewport=VIEWPORT)
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(f"console: {m.text} at {m.location.get('url')}")
                if m.type == "error"
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def log_in(self, token: str) -> None:
        page = self.page
        page.goto("/flags")  # no session yet: sent to the login form
        assert page.url.endswith("/login")
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url("**/flags")

    def open_flag(self) -> None:
        """From the flags page, follow the flag's link; wait for the live stream to open."""
        self.page.click(f'tr[data-flag="{FLAG}"] a[href="/flags/{FLAG}"]')
        self.page.wait_for_url(f"**/flags/{FLAG}")
        self.wait_live()

    def wait_live(self) -> None:
        self.page.wait_for_selector('#live[data-live="open"]', state="attached")

    def state(self, state: str, timeout: float = 15_000) -> Any:
        return self.page.wait_for_selector(
            f'#state[data-state="{state}"]', state="attached", timeout=timeout
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser: Any) -> Iterator[Any]:
    opened: list[Tab] = []

    def make(console: Console) -> Tab:
        tab = Tab(browser, console)
        opened.append(tab)
        return tab

    yield make
    for tab in opened:
        tab.close()


# -- helpers ------------------------------------------------------------------------------------


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG: what Chromium
    writes. Enough of a decoder to tell a rendered page from a blank one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prior = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prior[i]
            c = prior[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prior = line
    return width, height, rows


def assert_rendered(shot: Path) -> None:
    """A screenshot of a rendered page: a PNG of plausible size, mostly white (the page's
    background) but with plenty of ink and more than a handful of colours."""
    assert shot.exists() and shot.stat().st_size > 15_000, shot.stat().st_size
    width, height, rows = png_pixels(shot)
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    channels = len(rows[0]) // width
    colours: set[bytes] = set()
    ink = 0
    for row in rows[::3]:
        for x in range(0, width, 3):
            pixel = row[x * channels : x * channels + 3]
            colours.add(pixel)
            ink += pixel != b"\xff\xff\xff"
    sampled = len(rows[::3]) * len(range(0, width, 3))
    assert len(colours) > 20, f"{len(colours)} colours: a blank page?"
    assert 0.02 < ink / sampled < 0.9, f"ink on {ink / sampled:.1%} of the page"


def sqlite_state(project: Project) -> str:
    return f"sqlite:///{project.root}/.flagwarden/state.db"


def all_in(console: Console) -> None:
    """The flag at 100% (forced past its soak): every unit of the worker gets the treatment."""
    with console.as_("operator") as client:
        answer = client.post(
            f"/api/v1/flags/{FLAG}/advance", json={"reason": "go", "to": 100, "force": True}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["after"]["stage"] == 100


# -- the scenarios ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_kill_from_the_dashboard_and_live_updates(
    store: str, project: Project, console_for, tabs, request: pytest.FixtureRequest, tmp_path: Path
):
    url = sqlite_state(project) if store == "sqlite" else request.getfixturevalue("redis_url")
    console = console_for(state=url)
    all_in(console)
    (worker,) = spawn(console.config, 1)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"

        tab = tabs(console)
        page = tab.page
        tab.log_in(console.tokens["operator"])
        assert page.locator("#me").inner_text() == "operator (operator)"
        row = page.locator(f'tr[data-flag="{FLAG}"]')
        assert row.get_attribute("data-state") == "live"
        assert "100%" in row.inner_text()

        tab.open_flag()
        facts = page.locator("#state")
        assert facts.get_attribute("data-state") == "live"
        assert float(facts.get_attribute("data-stage")) == 100
        version = int(facts.get_attribute("data-version"))

        page.click("#action-kill")
        page.wait_for_url(f"**/flags/{FLAG}/confirm/kill")
        assert page.input_value("#reason") == "Kill from the dashboard"  # prefilled, editable
        page.fill("#reason", "null spike seen on the dashboard")
        clicked = time.time()
        page.click("#confirm")
        page.wait_for_url(f"**/flags/{FLAG}")
        tab.state("killed")
        assert int(page.locator("#state").get_attribute("data-version")) > version
        assert "null spike seen on the dashboard" in page.locator("#live").inner_text()
        assert page.locator(".flash.ok").count() == 1

        # The worker process serves control to every one of its units, within seconds.
        line = worker.stdout.readline().split()
        assert line and line[0] == "control", line
        took = float(line[1]) - clicked
        assert 0 < took < 5.0, took
        worker.wait(30)
    finally:
        worker.kill()

    # Changes made by other processes show without navigation: the page stays the same
    # document (the marker survives), the live region is fetched again.
    tab.wait_live()
    page.evaluate("window.__marker = 1")
    revived = run_cli(console.config, "revive", FLAG, "--reason", "false alarm")
    assert revived.returncode == 0, revived.stderr
    tab.state("live")
    updated = page.locator("#live").get_attribute("data-updated")
    assert updated is not None
    killed = run_cli(console.config, "kill", FLAG, "--reason", "nulls again")
    assert killed.returncode == 0, killed.stderr
    tab.state("killed")
    assert page.evaluate("window.__marker") == 1
    assert page.url.endswith(f"/flags/{FLAG}")
    assert page.locator("#live").get_attribute("data-updated") != updated
    assert "nulls again" in page.locator("#live").inner_text()

    shot = tmp_path / f"dashboard-{store}.png"
    page.screenshot(path=str(shot))
    assert_rendered(shot)
    assert tab.errors == []


@pytest.mark.slow
def test_hostile_text_renders_as_text(project: Project, console_for, tabs):
    console = console_for(state=sqlite_state(project), policy={"description": XSS})
    with console.as_("operator") as client:
        answer = client.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": XSS})
    assert answer.status_code == 200, answer.text

    tab = tabs(console)
    page = tab.page
    tab.log_in(console.tokens["operator"])

    def harmless() -> None:
        # The CSP alone keeps window.__xss unset even if the text were not escaped (Chromium
        # blocks the inline script and handler, saying so on the console): no <img> and no
        # second script in the DOM, the literal text shown and no console error are what
        # show the escaping.
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("main img").count() == 0
        scripts = page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))")
        assert scripts == ["/static/app.js"]

    # The flags page: the description as text.
    assert XSS in page.locator(f'tr[data-flag="{FLAG}"]').inner_text()
    harmless()

    # The flag page: the description, and the reason in the audit trail, as text.
    tab.open_flag()
    main = page.locator("#live")
    assert XSS in main.locator("p.note").inner_text()
    assert XSS in main.locator("table.trail").inner_text()
    harmless()

    # A change from elsewhere with the same reason: the live fragment goes in by innerHTML,
    # where an <img onerror> would run if it were not escaped.
    page.evaluate("window.__marker = 1")
    with console.as_("operator") as client:
        answer = client.post(f"/api/v1/flags/{FLAG}/pause", json={"reason": XSS})
    assert answer.status_code == 200, answer.text
    tab.state("paused")
    assert page.evaluate("window.__marker") == 1
    assert XSS in main.locator("#state").inner_text()
    assert main.locator("table.trail").inner_text().count(XSS) == 2
    harmless()

    # The same reason typed into the confirmation form.
    page.click("#action-kill")
    page.fill("#reason", XSS)
    page.click("#confirm")
    page.wait_for_url(f"**/flags/{FLAG}")
    tab.state("killed")
    assert XSS in main.locator("#state").inner_text()
    assert main.locator("table.trail").inner_text().count(XSS) == 3
    harmless()

    assert tab.errors == []


@pytest.mark.slow
def test_a_new_user_rolls_back_in_two_clicks_signed_and_notified(
    project: Project, console_for: Any, tabs: Any, receiver: Any
):
    """The issue's "done when": serve, a token, the dashboard, a rollback in two clicks; the
    change is signed in the audit log and a webhook fired."""
    keys = project.root / "keys"
    keys.mkdir()
    made = subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", "audit", "keygen", "-o", str(keys / "audit")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    console = console_for(
        policy={"soak": "0s"},
        audit={"url": "sqlite:///.flagwarden/audit.db", "signing_key": "keys/audit.key"},
        notify=[{"url": f"{receiver.url}/hook", "format": "json", "events": ["rollback"]}],
    )
    with console.as_("operator") as operator:
        advanced = operator.post(
            f"/api/v1/flags/{FLAG}/advance", json={"reason": "go", "to": 25, "force": True}
        )
        assert advanced.status_code == 200, advanced.text
    tab = tabs(console)
    tab.log_in(console.tokens["operator"])
    tab.open_flag()
    tab.page.click("#action-rollback")  # one
    tab.page.click("#confirm")  # two
    rolled = tab.state("live")
    assert rolled.get_attribute("data-stage") == "5.0"
    assert tab.errors == []
    # Signed: the chain and every signature verify with the public key alone.
    verified = run_cli(console.config, "audit", "verify", "--public-key", str(keys / "audit.pub"))
    assert verified.returncode == 0, verified.stderr + verified.stdout
    with console.as_("viewer") as viewer:
        trail = viewer.get(f"/api/v1/flags/{FLAG}/audit").json()
    rollback = next(r for r in trail if r["data"].get("action") == "rollback")
    assert rollback["actor"] == "operator" and rollback["data"]["reason"].startswith("Roll back")
    # Notified: the webhook got the rollback, said by whom.
    posts = wait_for(lambda: receiver.delivered("/hook"), timeout=15)
    assert [p["event"] for p in posts] == ["rollback"]
    assert posts[0]["flag"] == FLAG and posts[0]["actor"] == "operator"
