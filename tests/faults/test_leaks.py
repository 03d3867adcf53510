"""Nothing leaks: a store's password never reaches a CLI error or a worker's log, user text
never forms Markdown or HTML in the report, and never reaches a terminal as escape sequences.

Each case was found by a fault-injection pass; every test drives the real CLI (or a real
worker process) against real stores and real drivers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import psycopg
import pytest
import yaml
from markdown_it import MarkdownIt

from flagwarden import storage
from tests.conftest import POLICY, ROOT, Project, governed_project, run_cli
from tests.servers.launchdarkly import free_port

FLAG = POLICY["flag"]
SECRET = "Zq7s3cretPw"


# -- 1. a store's password never reaches a message ---------------------------------------


def _no_such_db() -> str:
    return f"fw_no_such_db_{os.getpid()}"


def _store_urls(tmp: Path) -> dict[str, str]:
    """Store URLs, each with SECRET in one of the forms a user may write it, each failing."""
    dead = free_port()
    blocker = tmp / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    return {
        "pg-userinfo-no-db": f"postgresql://postgres:{SECRET}@127.0.0.1:5432/{_no_such_db()}",
        "pg-query-dead-port": f"postgresql://postgres@127.0.0.1:{dead}/test?password={SECRET}",
        # libpq rejects the value and quotes it back, alone, without its key.
        "pg-query-bad-escape": f"postgresql://postgres@127.0.0.1:5432/test?password={SECRET}%zz",
        # libpq quotes the whole URI back; urllib cannot even parse it.
        "pg-uri-echoed": f"postgresql://postgres:{SECRET}@[::1:5432/test",
        "redis-userinfo-dead-port": f"redis://:{SECRET}@127.0.0.1:{dead}/0",
        "redis-query-dead-port": f"redis://127.0.0.1:{dead}/0?password={SECRET}",
        "sqlite-query-unwritable": f"sqlite:///{blocker}/state.db?password={SECRET}",
    }


STATE_FORMS = [
    "pg-userinfo-no-db",
    "pg-query-dead-port",
    "pg-query-bad-escape",
    "pg-uri-echoed",
    "redis-userinfo-dead-port",
    "redis-query-dead-port",
    "sqlite-query-unwritable",
]


@pytest.mark.parametrize("command", ["status", "kill"])
@pytest.mark.parametrize("form", STATE_FORMS)
def test_a_state_store_password_never_reaches_a_cli_error(
    project: Project, tmp_path: Path, form: str, command: str
):
    url = _store_urls(tmp_path)[form]
    config = governed_project(project, state=url)
    args = ["kill", FLAG, "--reason", "nulls"] if command == "kill" else ["status"]
    result = run_cli(config, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    # The store is still named and the driver's reason still said: redacted, not silenced.
    assert storage.redact_url(url) in result.stderr, result.stderr
    assert "a flagwarden bug" not in result.stderr, result.stderr


@pytest.mark.parametrize("form", ["pg-userinfo-no-db", "pg-query-bad-escape", "pg-uri-echoed"])
def test_an_audit_store_password_never_reaches_a_cli_error(
    project: Project, tmp_path: Path, form: str
):
    url = _store_urls(tmp_path)[form]
    config = governed_project(project, audit=url)
    for args in (["kill", FLAG, "--reason", "nulls"], ["report"], ["audit", "verify"]):
        result = run_cli(config, *args)
        # Refused, or (a kill) done with its record kept for later: either way, said safely.
        assert result.returncode in (0, 1), result.stdout + result.stderr
        assert SECRET not in result.stdout + result.stderr, args
        assert storage.redact_url(url) in result.stderr and "a flagwarden bug" not in result.stderr


def _worker(config: Path) -> subprocess.CompletedProcess[str]:
    """A pipeline worker: configure(), evaluate, shut down; its JSON log is on stderr."""
    code = textwrap.dedent(
        f"""
        import time, flagwarden
        from openfeature.evaluation_context import EvaluationContext
        client = flagwarden.configure({str(config)!r})
        client.get_boolean_value({FLAG!r}, False, EvaluationContext("order-1"))
        flagwarden.record_metric({FLAG!r}, "null_rate", 0.1, variant="treatment", count=10)
        time.sleep(0.5)  # the state watcher's first reconnect
        flagwarden.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")}
    env["FLAGWARDEN_LOG_LEVEL"] = "info"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


WORKER_FORMS = [
    "pg-userinfo-no-db",
    "pg-query-dead-port",
    "pg-query-bad-escape",
    "pg-uri-echoed",
    "redis-query-dead-port",
]


@pytest.mark.parametrize("form", WORKER_FORMS)
def test_a_store_password_never_reaches_a_workers_log(project: Project, tmp_path: Path, form: str):
    url = _store_urls(tmp_path)[form]
    audit = url if url.startswith("postgresql") else "sqlite:///.flagwarden/audit.db"
    result = _worker(governed_project(project, state=url, audit=audit))
    logged = result.stdout + result.stderr  # a log line written before configure() set up
    assert result.returncode == 0, logged[-2000:]  # a bad store never stops a worker
    assert "flagwarden.state_store_unreachable" in logged, logged[-2000:]
    if url.startswith("postgresql"):
        assert "flagwarden.audit_unavailable" in logged, logged[-2000:]
    assert SECRET not in logged


def test_a_sqlite_store_password_never_reaches_a_workers_log(project: Project, tmp_path: Path):
    url = _store_urls(tmp_path)["sqlite-query-unwritable"]
    result = _worker(governed_project(project, state=url, audit=url.replace("state", "audit")))
    logged = result.stdout + result.stderr
    assert result.returncode == 0, logged[-2000:]
    assert "flagwarden.state_store_unreachable" in logged, logged[-2000:]
    assert "flagwarden.audit_unavailable" in logged, logged[-2000:]
    assert SECRET not in logged


def test_a_snapshot_store_password_never_reaches_a_workers_log(project: Project):
    dead = free_port()
    url = f"redis://127.0.0.1:{dead}/0?password={SECRET}"
    config = governed_project(project, fallback={"snapshot": url, "snapshot_debounce": 0})
    result = _worker(config)
    logged = result.stdout + result.stderr
    assert result.returncode == 0, logged[-2000:]
    assert "flagwarden.snapshot_write_failed" in logged, logged[-2000:]
    assert SECRET not in logged


def _driver_error(conninfo: str) -> psycopg.Error:
    try:
        psycopg.connect(conninfo, connect_timeout=3).close()
    except psycopg.Error as exc:
        return exc
    raise AssertionError(f"{conninfo!r} connected")


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        (f"host=127.0.0.1 dbname={{db}} user=postgres password={SECRET}", SECRET),
        (f"host=127.0.0.1 dbname={{db}} user=postgres password = {SECRET}", SECRET),
        (f"host=127.0.0.1 dbname={{db}} password='{SECRET} 2' user=postgres", f"{SECRET} 2"),
        (f"host=127.0.0.1 dbname={{db}} password='it\\'s {SECRET}'", f"it's {SECRET}"),
        (f"host=127.0.0.1 port={{port}} dbname=test password='{SECRET}'", SECRET),
        (f"postgresql://postgres@127.0.0.1:5432/test?password={SECRET}%2", f"{SECRET}%2"),
        (f"postgresql://postgres:{SECRET}%zz@127.0.0.1:5432/test", f"{SECRET}%zz"),
        (f"postgresql://postgres:{SECRET}%21@127.0.0.1:5432/{{db}}", f"{SECRET}!"),
    ],
)
def test_a_libpq_dsn_password_is_masked_in_every_form(dsn: str, password: str):
    """Key=value DSNs are what psycopg quotes back; the CLI's config only takes URLs."""
    conninfo = dsn.format(db=_no_such_db(), port=free_port())
    exc = _driver_error(conninfo)
    message = storage.store_failure(conninfo, exc)
    assert SECRET not in message and SECRET not in storage.redact_url(conninfo)
    assert type(exc).__name__ in message
    assert storage.redact_text(message, conninfo) == message  # redacting twice changes nothing
    # A message that quotes the DSN, or the password alone (decoded), is masked wherever it is.
    quoted = f"cannot use {conninfo}: {exc} ({password})"
    assert SECRET not in storage.redact_text(quoted, conninfo)


# -- 2. the Markdown report: user text stays text ----------------------------------------

HOSTILE = (
    "<script>alert(1)</script> [click](javascript:alert(1)) ![x](http://e.test/p.png) "
    "`code` **bold** _em_ <img src=x onerror=alert(1)> javascript:alert(2) www.e.test "
    "&lt;b&gt; | a | b |\n## forged heading\n| c | d |\n|---|---|\n- item\r\n> quote"
)
HOSTILE_ACTOR = "[red]mal|lory</td><script>x</script>\n# forged actor"
HOSTILE_FLAG = "pay<script>1</script>|[x](javascript:y)"


def _hostile_project(project: Project) -> Path:
    """A governed flag whose policy, guard, reasons, actors and a forced skip carry hostile text,
    and a second flag (hostile key) governed too."""
    guard = {"name": "nulls <b>|</b> [g](javascript:z)", "metric": "null_rate", "max": 0.05}
    config = governed_project(
        project,
        policy={
            "owner": "team <script>o()</script> | [o](javascript:o)",
            "description": "desc\n## forged description\n<iframe src=javascript:d>",
            "guards": [guard],
            "soak": "0s",
        },
    )
    other = {**POLICY, "flag": HOSTILE_FLAG, "owner": "x", "description": HOSTILE}
    (project.root / "policies" / "hostile.yaml").write_text(yaml.safe_dump(other))
    return config


def _transitions(config: Path) -> None:
    for args, actor in (
        (["advance", FLAG, "--to", "25", "--force", "--reason", HOSTILE], HOSTILE_ACTOR),
        (["pause", FLAG, "--reason", HOSTILE], "carol\x1b[2J"),
        (["kill", FLAG, "--reason", HOSTILE], HOSTILE_ACTOR),
        (["advance", HOSTILE_FLAG, "--reason", HOSTILE], HOSTILE_ACTOR),
    ):
        result = run_cli(config, *args, "--actor", actor)
        assert result.returncode == 0, result.stderr


# What the report's own Markdown renders to: anything else came from user text.
REPORT_TAGS = {"h1", "h2", "h3", "p", "ul", "li", "strong", "code", "a", "table", "thead"}
REPORT_TAGS |= {"tbody", "tr", "th", "td"}


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, [(name, value or "") for name, value in attrs]))


def _tags(html: str) -> list[tuple[str, list[tuple[str, str]]]]:
    parser = _TagCollector()
    parser.feed(html)
    return parser.tags


def _md_to_html(md: str) -> str:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)


@pytest.mark.slow
def test_hostile_text_in_the_markdown_report_renders_inert(project: Project):
    config = _hostile_project(project)
    _transitions(config)
    result = run_cli(config, "report", "--format", "md")
    assert result.returncode == 0, result.stderr
    md = result.stdout
    html = _md_to_html(md)
    # No markup came from user text: only the report's own elements, links to its own anchors.
    tags = _tags(html)
    assert {tag for tag, _ in tags} <= REPORT_TAGS, {tag for tag, _ in tags} - REPORT_TAGS
    assert all(value.startswith("#") for _, attrs in tags for _, value in attrs), tags
    assert "<strong>bold</strong>" not in html and "<strong>x</strong>" not in html
    # The report's own headings only: one per flag, none forged by a reason or a description.
    headings = re.findall(r"<h([12])>(.*?)</h\1>", html)
    assert [h for h in headings if "forged" in h[1]] == []
    h2 = [text for level, text in headings if level == "2"]
    assert len(h2) == 5, h2  # summary, one per flag, outages, flags to remove
    assert h2[0] == "Summary" and h2[-2:] == ["Vendor outages", "Flags to remove"]
    # Every table row is the report's: the changes table has a header and one row per change.
    for section, changes in (
        (html.split("Changes</h3>")[1], 3),
        (html.split("Changes</h3>")[2], 1),
    ):
        table = section.split("</table>")[0]
        assert table.count("<tr>") == 1 + changes, table
    # The text is still there for a person to read, shown as typed.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "[red]mal|lory" in html and "## forged heading" in html


def test_markdown_escaping_neutralises_every_markdown_construct():
    from flagwarden.report.text import markdown_escape

    # GitHub links a bare address even right after "_": the escape breaks it there too.
    assert markdown_escape("_www.e.test") == "\\_www\\.e.test"
    assert markdown_escape("x_https://e.test") == "x\\_https\\://e.test"
    for text in (HOSTILE, HOSTILE_ACTOR, HOSTILE_FLAG, "_www.e.test", "xhttps://e.test", "a\\"):
        for frame in ("{}", "| a | {} |\n|---|---|\n| {} | z |", "## {}", "- why: {}"):
            html = _md_to_html(frame.replace("{}", markdown_escape(text)))
            assert not re.search(r"<(?!/?(p|h2|ul|li|table|thead|tbody|tr|th|td)>)", html), html
            assert html.count("<tr>") in (0, 2) and html.count("<h2>") <= 1, html


# -- 3. the terminal: user text is printed as typed, never as markup or escape codes ------

TERMINAL = (
    "path a[/b] [bold]x[/bold] \x1b[2J\x1b[31mred \x1b]8;;http://evil.test\x07click\x1b]8;;\x07"
    " \x1b]0;title\x1b\\ \r over \x07 bell \x9b1m c1 \x08 \u202edesrever\u202c \u2028next"
)
# Raw controls; C1 controls, line separators and bidirectional overrides in UTF-8.
RAW = re.compile(
    rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]"
)


def _raw_cli(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``run_cli`` as bytes: universal newlines would turn a raw ``\\r`` into a line break."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")}
    return subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", *args, "-c", str(config)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def _printed(result: subprocess.CompletedProcess[bytes]) -> bytes:
    """What a person sees: stdout, and stderr without the JSON log lines."""
    people = [line for line in result.stderr.splitlines(True) if not line.startswith(b"{")]
    return result.stdout + b"".join(people)


@pytest.mark.slow
def test_hostile_text_reaches_no_terminal_raw(project: Project):
    guard = {"name": "nulls[/b]\x1b[5m", "metric": "null_rate", "max": 0.05}
    config = governed_project(
        project,
        policy={
            "owner": f"owner {TERMINAL}",
            "description": f"desc {TERMINAL}",
            "guards": [guard],
            "soak": "0s",
        },
    )
    actor = f"mallory {TERMINAL}"
    runs = [
        (["advance", FLAG, "--reason", TERMINAL, "--actor", actor], 0),
        (["status"], 0),
        (["status", FLAG], 0),
        (["watch", "--once"], 0),
        (["pause", FLAG, "--reason", TERMINAL, "--actor", actor], 0),
        (["pause", FLAG, "--reason", "again", "--actor", actor], 0),  # already paused (reason)
        (["advance", FLAG, "--reason", "go", "--actor", actor], 1),  # refused: paused (reason)
        (["kill", FLAG, "--reason", TERMINAL, "--actor", actor], 0),
        (["kill", FLAG, "--reason", "again", "--actor", actor], 0),  # already killed (reason)
        (["status", FLAG], 0),
        (["status", f"no-such-flag {TERMINAL}"], 1),
        (["kill", f"no-such-flag {TERMINAL}", "--reason", "r"], 0),  # no policy: said so
        (["advance", f"no-such-flag {TERMINAL}", "--reason", "r"], 1),
        (["check"], 0),
        (["audit", "verify"], 0),
        (["report", "--format", "md"], 0),
        (["report", "--format", "html"], 0),
        (["report", "--flag", f"x{TERMINAL}"], 1),
        (["report", "--since", f"x{TERMINAL}"], 2),
    ]
    for args, code in runs:
        result = _raw_cli(config, *args)
        shown = _printed(result)
        assert result.returncode == code, (args, shown.decode(errors="replace"))
        assert not RAW.findall(shown), (args, RAW.findall(shown), shown[-600:])
        assert b"a flagwarden bug" not in shown, shown
    # Still readable: the text as typed, markup brackets kept, each control shown as \xNN.
    status = _printed(_raw_cli(config, "status", FLAG)).decode()
    assert "path a[/b] [bold]x[/bold] \\x1b[2J\\x1b[31mred" in status
    assert "\\x0d over \\x07 bell \\x9b1m c1 \\x08 \\u202edesrever\\u202c \\u2028next" in status
    assert "owner owner path a[/b]" in status
    # JSON output escapes every control character itself.
    doc = json.loads(_raw_cli(config, "status", "--json").stdout)
    assert doc["flags"][0]["last_change"]["reason"] == TERMINAL


def test_the_snapshot_location_is_printed_as_typed(project: Project):
    location = f"file:{project.root}/snap[/b]\x1b[2J/snapshot.json"
    config = governed_project(project, fallback={"snapshot": location, "snapshot_debounce": 0})
    result = _raw_cli(config, "snapshot")
    shown = _printed(result)
    assert result.returncode == 0, shown
    assert not RAW.findall(shown) and b"snap[/b]\\x1b[2J" in shown
