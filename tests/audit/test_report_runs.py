"""The compliance report's pipeline runs: one row per ``run_pinned`` audit record, in the
Markdown, the HTML and the JSON; the flag filter and the period; hostile run ids; malformed
records left out and named; no section without runs."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt

from flagwarden.audit.log import AuditLog
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState
from flagwarden.report import Report, build_report, render_html, render_markdown, report_digest
from flagwarden.report.text import when
from tests.audit.seed import seed
from tests.conftest import POLICY, Project, governed_project, run_cli

FLAG = POLICY["flag"]
OTHER = "other-flag"
DAY = datetime(2026, 11, 20, tzinfo=UTC)
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TAG = re.compile(r"<[^>]+>")


def _pin_data(run: str, flag: str, **extra: Any) -> dict[str, Any]:
    return {
        "run": run,
        "stage": 25.0,
        "killed": False,
        "state_version": 3,
        "mode": "bucket",
        "source": "vendor",
        "ref": f"run:{run}:{flag}",
        **extra,
    }


def _pin(audit: AuditLog, run: str, flag: str, actor: str = "alice", **extra: Any) -> None:
    """What ``flagwarden.run`` appends the first time ``run`` pins ``flag``."""
    data = _pin_data(run, flag, **extra)
    audit.append("run_pinned", data, flag=flag, actor=actor, ref=data["ref"])


def _policies(*flags: str) -> dict[str, Policy]:
    return {f: Policy.model_validate({**POLICY, "flag": f}) for f in flags}


def _report(audit: AuditLog, *flags: str, **options: Any) -> Report:
    policies = _policies(*(flags or (FLAG, OTHER)))
    return build_report(audit, policies, {f: FlagState(f) for f in policies}, **options)


def _section(md: str, title: str) -> str:
    """A Markdown section's text: from its heading to the next ``## ``."""
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _html_rows(html: str) -> list[list[str]]:
    """The runs table's body rows, each cell's text (tags removed, entities kept)."""
    table = html.split('<table class="runs">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]  # after the header
    return [[TAG.sub("", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]


@pytest.fixture
def audit(tmp_path: Path):
    log = AuditLog(f"sqlite:///{tmp_path}/audit.db")
    yield log
    log.close()


# -- the three formats -----------------------------------------------------------------------


def test_runs_are_listed_in_json_markdown_and_html(audit: AuditLog):
    _pin(audit, "orders-2026-11-26", FLAG)
    _pin(
        audit,
        "orders-2026-11-26",
        OTHER,
        actor="bob",
        stage=0.5,
        killed=True,
        mode="constant",
        source="snapshot",
    )
    _pin(audit, "orders-2026-11-27", FLAG, stage=100, mode="per_key", source="")
    report = _report(audit)

    first, second, third = report.runs
    assert (first.run, first.flag, first.stage, first.killed) == (
        "orders-2026-11-26",
        FLAG,
        25.0,
        False,
    )
    assert (first.mode, first.source, first.actor) == ("bucket", "vendor", "alice")
    assert (second.flag, second.stage, second.killed, second.actor) == (OTHER, 0.5, True, "bob")
    assert (third.run, third.mode, third.source, third.stage) == (
        "orders-2026-11-27",
        "per_key",
        "",
        100.0,
    )

    doc = json.loads(report.dumps())
    assert doc["digest"] == report_digest(doc)  # the runs are in the body the digest covers
    runs = doc["runs"]
    assert [set(r) for r in runs] == [
        {"run", "flag", "stage", "killed", "mode", "source", "at", "actor"}
    ] * 3
    assert all(ISO.fullmatch(r["at"]) for r in runs)
    assert runs[1] == {
        "run": "orders-2026-11-26",
        "flag": OTHER,
        "stage": 0.5,
        "killed": True,
        "mode": "constant",
        "source": "snapshot",
        "at": second.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "actor": "bob",
    }

    md = render_markdown(report)
    # After the flags' sections, before the outages.
    assert md.index(f"## {OTHER}") < md.index("## Pipeline runs") < md.index("## Vendor outages")
    section = _section(md, "Pipeline runs")
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows == [
        "| run | flag | stage | killed | mode | source | when | who |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| orders-2026-11-26 | {FLAG} | 25% | no | bucket | vendor | {when(first.at)} | alice |",
        f"| orders-2026-11-26 | {OTHER} | 0.5% | **killed** | constant | snapshot "
        f"| {when(second.at)} | bob |",
        f"| orders-2026-11-27 | {FLAG} | 100% | no | per\\_key | - | {when(third.at)} | alice |",
    ]

    html = render_html(report)
    assert html.index(f'id="flag-{OTHER}"') < html.index('<h2 id="runs">Pipeline runs</h2>')
    assert html.index('id="runs"') < html.index('id="outages"')
    assert _html_rows(html) == [
        ["orders-2026-11-26", FLAG, "25%", "no", "bucket", "vendor", when(first.at), "alice"],
        [
            "orders-2026-11-26",
            OTHER,
            "0.5%",
            "killed",
            "constant",
            "snapshot",
            when(second.at),
            "bob",
        ],
        ["orders-2026-11-27", FLAG, "100%", "no", "per_key", "-", when(third.at), "alice"],
    ]


# -- the flag filter and the period --------------------------------------------------------------


def test_the_flag_filter_and_the_period_select_the_runs(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/audit.db"
    at = DAY + timedelta(hours=10)
    seed(
        url,
        [
            (DAY - timedelta(seconds=1), "run_pinned", FLAG, _pin_data("before", FLAG)),
            (at, "run_pinned", FLAG, _pin_data("in-period", FLAG)),
            (at + timedelta(hours=1), "run_pinned", OTHER, _pin_data("in-period", OTHER)),
            # A flag with no policy: its pin has no stage. Listed without --flag only.
            (
                at + timedelta(hours=2),
                "run_pinned",
                "stray",
                _pin_data("adhoc", "stray", stage=None),
            ),
            (DAY + timedelta(days=1, seconds=1), "run_pinned", FLAG, _pin_data("after", FLAG)),
        ],
    )
    audit = AuditLog(url)
    try:
        period = {"since": DAY, "until": DAY + timedelta(days=1), "now": DAY + timedelta(days=2)}
        every = _report(audit, **period)
        only_flag = _report(audit, flags=[FLAG], **period)
        only_other = _report(audit, flags=[OTHER], **period)
        unbounded = _report(
            audit, flags=[FLAG], since=DAY - timedelta(days=1), now=DAY + timedelta(days=2)
        )
    finally:
        audit.close()

    assert [(r.run, r.flag) for r in every.runs] == [
        ("in-period", FLAG),
        ("in-period", OTHER),
        ("adhoc", "stray"),
    ]
    assert every.runs[0].at == at and every.runs[0].actor is None
    assert every.runs[2].stage is None and every.audit.verified  # null stage: no policy, readable
    assert [(r.run, r.flag) for r in only_flag.runs] == [("in-period", FLAG)]
    assert [(r.run, r.flag) for r in only_other.runs] == [("in-period", OTHER)]
    assert [r.run for r in unbounded.runs] == ["before", "in-period", "after"]

    md = _section(render_markdown(every), "Pipeline runs")
    assert "| adhoc | stray | no policy | no | bucket | vendor |" in md and "| - |" in md
    assert "before" not in md and "after" not in md
    md = _section(render_markdown(only_flag), "Pipeline runs")
    assert OTHER not in md and "stray" not in md and f"| in-period | {FLAG} |" in md
    html_rows = _html_rows(render_html(only_other))
    assert [row[:2] for row in html_rows] == [["in-period", OTHER]]


def test_the_cli_applies_flag_and_period_to_the_runs(project: Project):
    config = governed_project(project)
    other = {**POLICY, "flag": OTHER, "description": "another governed flag"}
    (project.root / "policies" / f"{OTHER}.yaml").write_text(yaml.safe_dump(other))
    assert run_cli(config, "advance", FLAG, "--reason", "start").returncode == 0
    audit = AuditLog(f"sqlite:///{project.root}/.flagwarden/audit.db")
    try:
        _pin(audit, "nightly-1", FLAG, actor="etl")
        _pin(audit, "nightly-1", OTHER, actor="etl", killed=True)
    finally:
        audit.close()

    def runs(*args: str) -> list[tuple[str, str, str | None]]:
        result = run_cli(config, "report", "--format", "json", *args)
        assert result.returncode == 0, result.stderr
        return [(r["run"], r["flag"], r["actor"]) for r in json.loads(result.stdout)["runs"]]

    assert runs() == [("nightly-1", FLAG, "etl"), ("nightly-1", OTHER, "etl")]
    assert runs("--flag", OTHER) == [("nightly-1", OTHER, "etl")]
    assert runs("--since", "2000-01-01", "--until", "2000-01-02") == []
    md = run_cli(config, "report", "--flag", FLAG).stdout
    assert f"| nightly-1 | {FLAG} | 25% | no | bucket | vendor |" in md
    assert f"| nightly-1 | {OTHER} |" not in md


# -- escaping ------------------------------------------------------------------------------------

HOSTILE_RUN = (
    "nightly\n## forged\n| a | b |\n<script>alert(1)</script> [x](javascript:alert(1)) "
    "*bold* _it_ `code` ![img](https://evil.example/x.png) www.evil.example"
)


def test_a_hostile_run_id_stays_inert_in_markdown_and_html(audit: AuditLog):
    _pin(audit, HOSTILE_RUN, FLAG, actor="[red]mallory <b>x</b>", source="vendor|<i>y</i>")
    report = _report(audit)
    (run,) = report.runs
    assert run.run == HOSTILE_RUN and report.to_json()["runs"][0]["run"] == HOSTILE_RUN

    md = render_markdown(report)
    section = _section(md, "Pipeline runs")
    assert not any(line.startswith(("## forged", "| a | b |")) for line in md.splitlines())
    assert "<script" not in md and "<b>" not in md and "<i>" not in md
    assert "](javascript:" not in md.replace("\\]", "")
    (row,) = [line for line in section.splitlines() if line.startswith("| nightly")]
    assert "nightly ↵ \\#\\# forged ↵ \\| a \\| b \\| ↵ &lt;script&gt;" in row
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in rendered and "<img" not in rendered and "<em>" not in rendered
    assert "<a " not in rendered.replace('<a href="#', "") and "forged</h2>" not in rendered
    assert "<b>" not in rendered and "<i>" not in rendered
    table = rendered.split("<h2>Pipeline runs</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 2  # the header and the one run: no forged row
    (body,) = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    assert body.count("<td>") == 8  # no forged cell
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body  # shown, as text

    html = render_html(report)
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "<b>x</b>" not in html and "<i>y</i>" not in html
    ((cell, *_, actor),) = _html_rows(html)
    assert cell.startswith("nightly\\x0a## forged\\x0a| a | b |\\x0a&lt;script&gt;alert(1)")
    assert actor == "[red]mallory &lt;b&gt;x&lt;/b&gt;"


# -- malformed records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"drop": "stage"}, "'stage' is not a percent from 0 to 100"),
        ({"stage": "25"}, "'stage' is not a percent from 0 to 100"),
        ({"stage": 250}, "'stage' is not a percent from 0 to 100"),
        ({"stage": True}, "'stage' is not a percent from 0 to 100"),
        ({"drop": "run"}, "'run' is not a non-empty string"),
        ({"run": 42}, "'run' is not a non-empty string"),
        ({"killed": "no"}, "'killed' is not true or false"),
        ({"drop": "state_version"}, "'state_version' is not an integer"),
        ({"state_version": "3"}, "'state_version' is not an integer"),
        ({"mode": "random"}, "'mode' is not one of constant, bucket, per_key"),
        ({"source": None}, "'source' is not a string"),
        ({"ref": "run:other-run:new-scoring-model"}, "'ref' does not name this run and flag"),
        ({"flag": None}, "it names no flag"),
    ],
)
def test_a_malformed_run_record_is_left_out_and_named(
    audit: AuditLog, change: dict[str, Any], problem: str
):
    _pin(audit, "good-1", FLAG)
    data = _pin_data("bad", FLAG)
    data.update({k: v for k, v in change.items() if k not in ("drop", "flag")})
    data.pop(change.get("drop", ""), None)
    bad = audit.append("run_pinned", data, flag=change.get("flag", FLAG), actor="mallory")
    _pin(audit, "good-2", FLAG)
    report = _report(audit)

    assert [r.run for r in report.runs] == ["good-1", "good-2"]
    (named,) = report.audit.unreadable_records
    assert (named.seq, named.kind) == (bad.seq, "run_pinned")
    assert named.problem == f"its run_pinned data is malformed: {problem}"
    assert not report.audit.verified and report.audit.first_bad_record == bad.seq
    assert f"record {bad.seq} (its run_pinned data is malformed" in (report.audit.problem or "")
    assert [r["run"] for r in json.loads(report.dumps())["runs"]] == ["good-1", "good-2"]
    section = _section(render_markdown(report), "Pipeline runs")
    assert "| good-1 |" in section and "| good-2 |" in section and "bad" not in section
    assert [row[0] for row in _html_rows(render_html(report))] == ["good-1", "good-2"]


def test_a_run_record_whose_data_is_not_json_is_left_out_and_named(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/audit.db"
    now = datetime.now(UTC)
    seed(
        url,
        [
            (now, "run_pinned", FLAG, _pin_data("good", FLAG)),
            (now, "run_pinned", FLAG, _pin_data("bad", FLAG)),
        ],
    )
    conn = sqlite3.connect(tmp_path / "audit.db")
    conn.execute("UPDATE flagwarden_audit SET data = 'not json' WHERE seq = 2")
    conn.commit()
    conn.close()
    audit = AuditLog(url)
    try:
        for report in (_report(audit, verify=False), _report(audit, flags=[FLAG], verify=False)):
            assert [r.run for r in report.runs] == ["good"]
            (named,) = report.audit.unreadable_records
            assert (named.seq, named.problem) == (2, "its data is not JSON")
    finally:
        audit.close()


# -- no runs, no section ------------------------------------------------------------------------


def test_no_section_without_runs(audit: AuditLog):
    def without_runs(report: Report) -> None:
        assert report.runs == [] and report.to_json()["runs"] == []
        md = render_markdown(report)
        html = render_html(report)
        assert "Pipeline runs" not in md and "Pipeline runs" not in html
        assert 'class="runs"' not in html and "## Vendor outages" in md

    audit.append(
        "transition",
        {
            "action": "advance",
            "reason": "start",
            "before": {"stage": 0, "killed": False, "paused": False, "version": 0},
            "after": {"stage": 1, "killed": False, "paused": False, "version": 1},
        },
        flag=FLAG,
        actor="alice",
    )
    report = _report(audit)  # no run_pinned record at all
    assert report.flags[0].changes  # the flag's history is there, its section too
    without_runs(report)
    _pin(audit, "nightly-1", OTHER)
    without_runs(_report(audit, flags=[FLAG]))  # none of the flags covered
    without_runs(_report(audit, since=datetime.now(UTC) + timedelta(seconds=1)))  # none since
    # The same log, the other flag covered: the section is there.
    assert "## Pipeline runs" in render_markdown(_report(audit, flags=[OTHER]))
