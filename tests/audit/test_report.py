"""The compliance report: content, verdicts, digest, formats, options, escaping, and the HTML
in headless Chromium."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from flagwarden.audit.log import AuditLog
from flagwarden.governance.measurements import open_measurement_store
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState
from flagwarden.report import (
    build_report,
    render_html,
    render_markdown,
    report_digest,
    resolve_period,
)
from flagwarden.report.period import PeriodError
from flagwarden.report.text import markdown_escape, num, when
from tests.conftest import POLICY, Project, governed_project, run_cli

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]
EMPTY_TH = re.compile(r"<th[^>]*>\s*</th>")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(config, *args)


def report_json(config: Path, *args: str) -> dict:
    result = cli(config, "report", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def chromium_flags(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run of the main job; its folder holds the state, audit log and reports."""
    out = tmp_path_factory.mktemp("demo") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", "demo", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every record back on control" in result.stdout
    (out / "demo-stdout.txt").write_text(result.stdout)
    return out


# -- the demo's report ---------------------------------------------------------------------


@pytest.mark.slow
def test_demo_tells_the_story(demo: Path):
    report = report_json(demo / "flagwarden.yaml")
    (flag,) = report["flags"]
    assert [t["stage"] for t in flag["timeline"]] == [1, 5, 25, 50, 0]
    assert flag["state"]["stage"] == 0
    # The healthy rollout broke no rule; the breach was the guard's job, done by the watch.
    assert flag["violations"] == {} and flag["violation_details"] == []
    assert report["glossary"] == []
    assert flag["breaches"] == 1 and flag["automatic_rollbacks"] == 1
    assert flag["manual_kills"] == 0 and flag["manual_rollbacks"] == 0
    assert [row["status"] for row in flag["soak"]] == ["compliant"] * 4
    verdict = flag["verdict"]
    assert verdict["status"] == "followed" and verdict["summary"] == "no violations"
    assert verdict["text"].startswith("Followed its policy: advanced 1% → 5% → 25% → 50%")
    assert "rolled back automatically to 0% on the null-rate breach at 50%" in verdict["text"]
    assert verdict["text"].endswith("no violations.")
    exposures = flag["exposures"]
    assert exposures["by_source"].get("snapshot", 0) >= 20_000
    assert exposures["by_arm"]["treatment"] > 0 and exposures["capped"] > 0
    (outage,) = report["outages"]
    assert outage["served"]["snapshot"] >= 20_000 and outage["ended_at"]
    assert report["audit"]["verified"] is True
    assert report["digest"] == report_digest(report)
    # JSON times: ISO 8601, UTC, to the second.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", flag["timeline"][0]["at"])
    # The guard chart has the measurements behind it: both arms, bucketed or not.
    (chart,) = flag["guard_charts"]
    assert chart["treatment"] and chart["control"] and chart["breaches"]
    assert {s["upper"] for s in chart["limit_steps"]} == {0.02, None}
    md = (demo / "report.md").read_text()
    assert md.startswith("# flagwarden compliance report")
    assert "**Followed its policy:**" in md and "no violations." in md
    assert "Policy violations" not in md  # capping is not headlined as a violation
    stdout = (demo / "demo-stdout.txt").read_text()
    assert "0 policy violations" in stdout and "1 automatic rollback" in stdout
    assert "Verdict: Followed its policy" in stdout


@pytest.mark.slow
def test_each_guard_decision_is_shown_once(demo: Path):
    report = report_json(demo / "flagwarden.yaml")
    (flag,) = report["flags"]
    decisions = flag["guards"]
    assert len({(d["tick"], d["guard"]) for d in decisions}) == len(decisions)
    (breach,) = [d for d in decisions if d["verdict"] == "breach"]
    assert breach["outcome"] == "rollback" and breach["stage"] == 50
    md = (demo / "report.md").read_text()
    assert md.count("| **breach** ") == 1
    # Values at 4 significant digits, times to the second: no 17-digit floats, no microseconds.
    assert not re.search(r"\d\.0*[1-9]\d{4}", md) and not re.search(r":\d\d\.\d{3}", md)
    assert f"| {num(breach['value'])} |" in md


# -- verdicts, violations, soak -------------------------------------------------------------


def test_a_forced_skip_is_one_violation_and_the_verdict_says_so(project: Project, tmp_path: Path):
    config = governed_project(project)
    assert cli(config, "advance", FLAG, "--reason", "start").returncode == 0
    forced = cli(
        config, "advance", FLAG, "--reason", "hurry", "--to", "25", "--force", "--actor", "alice"
    )
    assert forced.returncode == 0, forced.stderr
    assert cli(config, "kill", FLAG, "--reason", "nulls", "--actor", "bob").returncode == 0
    doc = report_json(config)
    (flag,) = doc["flags"]
    assert flag["violations"] == {"soak_cut_short": 1, "stage_skipped": 1}
    (skipped,) = [v for v in flag["violation_details"] if v["kind"] == "stage_skipped"]
    assert skipped["actor"] == "alice" and skipped["reason"] == "hurry"
    assert flag["kills"] == flag["manual_kills"] == 1 and flag["automatic_rollbacks"] == 0
    assert flag["breaches"] == 0
    verdict = flag["verdict"]
    assert verdict["status"] == "not followed"
    assert verdict["text"].startswith("Did not follow its policy: 1 stage skipped (1% → 25%")
    assert "by alice, 'hurry'" in verdict["text"] and "1 soak cut short" in verdict["text"]
    assert verdict["summary"] == "1 stage skipped, 1 soak cut short"
    first, live = flag["soak"]
    assert first["stage"] == 1 and first["status"] == "cut short" and first["forced"] is True
    assert live["stage"] == 25 and live["status"] == "in progress" and live["left_at"] is None
    assert [g["kind"] for g in doc["glossary"]] == ["soak_cut_short", "stage_skipped"]
    md = cli(config, "report").stdout
    assert "## new-scoring-model" in md and "**Did not follow its policy:**" in md
    assert "- **stage\\_skipped**: an advance went past the next approved stage" in md
    out = tmp_path / "r.html"
    written = cli(config, "report", "--format", "html", "-o", str(out))
    assert written.returncode == 0 and "html report written to" in written.stdout
    html = out.read_text()
    assert html.startswith("<!doctype html>") and not EMPTY_TH.search(html)
    assert "Did not follow its policy" in html
    assert cli(config, "report", "--format", "pdf").returncode == 2


def test_a_live_stage_still_soaking_is_in_progress_not_compliant(project: Project):
    config = governed_project(project)
    assert cli(config, "advance", FLAG, "--reason", "start").returncode == 0
    (flag,) = report_json(config)["flags"]
    (row,) = flag["soak"]
    assert row["status"] == "in progress" and row["soak_met"] is False
    assert row["required_seconds"] == 1800
    assert flag["verdict"]["status"] == "followed"
    assert "still soaking at 1%" in flag["verdict"]["text"]
    md = cli(config, "report").stdout
    assert "| in progress (soaking) |" in md and "| compliant |" not in md


# -- options -------------------------------------------------------------------------------


def test_since_until_and_flag_options(project: Project):
    config = governed_project(project)
    other = {**POLICY, "flag": "other-flag", "description": "another governed flag"}
    (project.root / "policies" / "other-flag.yaml").write_text(yaml.safe_dump(other))
    assert cli(config, "advance", FLAG, "--reason", "start").returncode == 0

    doc = report_json(config, "--since", "2000-01-01", "--until", "2000-01-02")
    assert doc["period"] == {"since": "2000-01-01T00:00:00Z", "until": "2000-01-03T00:00:00Z"}
    assert all(f["changes"] == [] for f in doc["flags"])
    doc = report_json(config, "--since", "2000-01-01T08:00:00+02:00", "--until", "2000-01-01T09:00")
    assert doc["period"] == {"since": "2000-01-01T06:00:00Z", "until": "2000-01-01T09:00:00Z"}
    today = datetime.now(UTC).date().isoformat()
    doc = report_json(config, "--since", today)
    assert doc["period"]["since"] == f"{today}T00:00:00Z"
    assert [len(f["changes"]) for f in doc["flags"]] == [1, 0]  # new-scoring-model, other-flag
    doc = report_json(config, "--since", "24h", "--until", "1h")
    until = datetime.fromisoformat(doc["period"]["until"])
    since = datetime.fromisoformat(doc["period"]["since"])
    assert until - since == timedelta(hours=24)
    assert all(f["changes"] == [] for f in doc["flags"])  # the advance was seconds ago

    doc = report_json(config, "--flag", FLAG)
    assert doc["selected_flags"] == [FLAG] and [f["flag"] for f in doc["flags"]] == [FLAG]
    doc = report_json(config, "--flag", FLAG, "--flag", "other-flag")
    assert [f["flag"] for f in doc["flags"]] == [FLAG, "other-flag"]

    unknown = cli(config, "report", "--flag", "nope")
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr and "new-scoring-model, other-flag" in unknown.stderr
    for bad in (
        ["--since", "soon"],
        ["--until", "tomorrow"],
        ["--since", "2000-13-45"],
        ["--since", "100000000d"],
        ["--since", "99999999999999999999999d"],
        ["--since", "2030-01-01", "--until", "2020-01-01"],
    ):
        result = cli(config, "report", *bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "error:" in result.stderr and "Traceback" not in result.stderr, bad
    assert "too long" in cli(config, "report", "--since", "99999999999999999999999d").stderr
    assert "too long" in cli(config, "report", "--since", "100000000d").stderr


def test_resolve_period():
    now = datetime(2026, 11, 27, 10, 2, 3, tzinfo=UTC)
    assert resolve_period("7d", None, now=now) == (now - timedelta(days=7), now)
    assert resolve_period("2026-11-20", "2026-11-21", now=now) == (
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 11, 22, tzinfo=UTC),
    )
    assert resolve_period("1d", "2026-11-21T12:00:00Z", now=now)[0] == datetime(
        2026, 11, 20, 12, tzinfo=UTC
    )
    for since, until in (
        ("x", None),
        ("7d", "later"),
        ("2030-01-01", "2020-01-01"),
        ("4000d", None),
    ):
        with pytest.raises(PeriodError):
            resolve_period(since, until, now=now)


# -- escaping ------------------------------------------------------------------------------

HOSTILE = (
    "hurry\n## forged\n| a | b |\n<script>alert(1)</script> [x](javascript:alert(1)) "
    "*bold* _it_ `code` \\ ![img](https://evil.example/x.png) www.evil.example"
)


def test_user_text_renders_inert_in_markdown_and_html(project: Project, tmp_path: Path):
    config = governed_project(project)
    assert (
        cli(config, "advance", FLAG, "--reason", HOSTILE, "--actor", "[red]mallory").returncode == 0
    )
    md = cli(config, "report").stdout
    assert not any(line.startswith(("## forged", "| a | b |")) for line in md.splitlines())
    assert "<script" not in md and "](javascript:" not in md.replace("\\]", "")
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in rendered and "<a " not in rendered.replace('<a href="#', "")
    assert "<img" not in rendered and "<em>" not in rendered and "<code>" in rendered
    assert "forged</h2>" not in rendered
    changes = rendered.split("<h3>Changes</h3>")[1].split("</table>")[0]
    assert changes.count("<tr>") == 2  # the header and the one change: no forged row
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered  # shown, as text
    out = tmp_path / "r.html"
    assert cli(config, "report", "--format", "html", "-o", str(out)).returncode == 0
    html = out.read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "[red]mallory" in html and "<img" not in html


def test_markdown_escape_and_formats():
    assert markdown_escape("a|b*c_d[e]f<g>h\\i`j#k\nl") == (
        "a\\|b\\*c\\_d\\[e\\]f&lt;g&gt;h\\\\i\\`j\\#k ↵ l"
    )
    assert "javascript\\:" in markdown_escape("javascript:alert(1)")
    assert num(0.0767603505590813) == "0.07676" and num(12345.6) == "12,350" and num(0) == "0"
    assert num(None) == "-" and num(2.5e-06) == "2.5e-06"
    assert when(datetime(2026, 11, 27, 10, 2, 3, 456789, tzinfo=UTC)) == "2026-11-27 10:02:03 UTC"


def test_the_stage_chart_steps_on_a_stage_index_axis(project: Project, tmp_path: Path):
    """0% -> 1% -> 5% -> 25%, rendered into the HTML report: the stage chart is a step line
    (only horizontal and vertical segments) whose levels are the policy's stages equally
    spaced, so the step from 0% to 1% is as tall as the one from 5% to 25% (on a percent
    axis it would be 1/20 of it), each level on the grid line labelled with its percent."""
    config = governed_project(project, policy={"soak": "0s"})  # no soak cut short: no violation
    for _ in range(3):
        assert cli(config, "advance", FLAG, "--reason", "healthy").returncode == 0
    out = tmp_path / "r.html"
    assert cli(config, "report", "--format", "html", "-o", str(out)).returncode == 0
    svg = out.read_text().split('<svg class="chart stage-chart"')[1].split("</svg>")[0]
    (d,) = re.findall(r'<path class="stage" d="([^"]*)"', svg)
    points = [(float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+),([-\d.]+)", d)]
    assert len(points) >= 8 and d.startswith("M") and d.count("M") == 1
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        assert x0 == x1 or y0 == y1, (x0, y0, x1, y1)  # a step, never a slope
        assert x1 >= x0  # forward in time
    levels = [y for i, (_, y) in enumerate(points) if i == 0 or y != points[i - 1][1]]
    assert len(levels) == 4, d  # 0%, 1%, 5%, 25%
    rises = [low - high for low, high in itertools.pairwise(levels)]  # SVG y grows downwards
    assert all(rise > 20 for rise in rises), rises
    assert max(rises) - min(rises) <= 0.11, rises  # evenly spaced (to the 0.1 px printed)
    grid = dict(
        re.findall(r'<line class="grid" [^>]*y1="([\d.]+)"[^>]*/><text [^>]*>([^<]+)</text>', svg)
    )
    assert [grid.get(f"{y:.1f}") for y in levels] == ["0%", "1%", "5%", "25%"], grid
    change = r'<circle class="change" cx="[\d.]+" cy="([\d.]+)".*?advance to (\d+%)'
    changes = re.findall(change, svg)
    assert [(float(y), label) for y, label in changes] == list(
        zip(levels[1:], ["1%", "5%", "25%"], strict=True)
    )


# -- built in-process: guard charts, limits, dedupe, older records -----------------------------


def _policy(**extra) -> Policy:
    return Policy.model_validate(
        {
            **POLICY,
            "soak": "0s",
            "guards": [
                {"name": "nulls", "metric": "null_rate", "max": {1: 0.05, 25: 0.03}},
                {
                    "name": "vs-control",
                    "metric": "null_rate",
                    "max": 0.5,
                    "relative_to_control": True,
                },
            ],
            **extra,
        }
    )


def _guard(name: str, verdict: str, value: float, stage: float, upper: float) -> dict:
    return {
        "guard": name,
        "verdict": verdict,
        "value": value,
        "samples": 500,
        "control": None,
        "limit": f"<= {upper:.4g}",
        "detail": "",
        "stage": stage,
        "upper": upper,
        "lower": None,
    }


def _move(audit: AuditLog, action: str, before: float, after: float, actor: str, **extra) -> None:
    data = {
        "action": action,
        "reason": f"{action} by {actor}",
        "before": {"stage": before, "killed": False, "paused": False, "version": 0},
        "after": {"stage": after, "killed": False, "paused": False, "version": 0},
        **extra,
    }
    audit.append("transition", data, flag=FLAG, actor=actor)


def test_guard_charts_follow_the_stage_and_control(tmp_path: Path):
    audit = AuditLog(f"sqlite:///{tmp_path}/audit.db")
    store = open_measurement_store(f"sqlite:///{tmp_path}/state.db")
    try:
        _move(audit, "advance", 0, 1, "alice")
        for _ in range(3):
            store.add(FLAG, "null_rate", "control", 0.010, 1000, stage=1, epoch=1)
            store.add(FLAG, "null_rate", "treatment", 0.012, 100, stage=1, epoch=1)
            time.sleep(0.01)
        ok = [
            _guard("nulls", "healthy", 0.012, 1, 0.05),
            _guard("vs-control", "healthy", 0.012, 1, 0.015),
        ]
        _move(audit, "advance", 1, 25, "flagwarden-watch", guards=ok, tick="t1")
        for _ in range(3):
            store.add(FLAG, "null_rate", "control", 0.020, 1000, stage=25, epoch=2)
            store.add(FLAG, "null_rate", "treatment", 0.090, 400, stage=25, epoch=2)
            time.sleep(0.01)
        bad = [
            _guard("nulls", "breach", 0.09, 25, 0.03),
            _guard("vs-control", "breach", 0.09, 25, 0.03),
        ]
        audit.append(
            "guard",
            {"guards": bad, "tick": "t2", "failures": {"nulls": 1}, "acting": ["nulls"]},
            flag=FLAG,
            actor="flagwarden-watch",
        )
        _move(audit, "rollback", 25, 0, "flagwarden-watch", guards=bad, tick="t2")
        time.sleep(0.01)
        report = build_report(audit, {FLAG: _policy()}, {FLAG: FlagState(FLAG)}, measurements=store)
    finally:
        audit.close()
        store.close()
    (flag,) = report.flags
    assert len(flag.guards) == 4 and flag.breaches == 2  # two guards, two ticks, once each
    assert {d.outcome for d in flag.guards if d.tick == "t2"} == {"rollback"}
    assert flag.automatic_rollbacks == 1 and flag.manual_rollbacks == 0
    nulls, relative = flag.guard_charts
    steps = [(s.stage, s.upper) for s in nulls.limit_steps]
    assert steps == [(0, None), (1, 0.05), (25, 0.03), (0, None)]  # none at 0: not judged there
    assert len(nulls.treatment) == 3 * 2 and len(nulls.control) == 6 and not nulls.bucketed
    at_25 = [s for s in relative.limit_steps if s.stage == 25 and s.upper is not None]
    assert at_25 and all(s.upper == pytest.approx(0.02 * 1.5) for s in at_25)
    assert all(s.upper is None for s in relative.limit_steps if s.stage == 0)
    assert [b.value for b in nulls.breaches] == [0.09]
    assert flag.verdict.status == "followed"
    assert (
        "rolled back automatically to 0% on the nulls and vs-control breach at 25%"
        in flag.verdict.text
    )
    html = render_html(report)
    for css in ("stage", "limit", "arm-treatment", "arm-control", "breach"):
        assert f'class="{css}"' in html, css
    assert not EMPTY_TH.search(html)
    assert render_markdown(report).count("| **breach**") == 2


def test_guard_series_are_bucketed_and_weighted(tmp_path: Path):
    audit = AuditLog(f"sqlite:///{tmp_path}/audit.db")
    store = open_measurement_store(f"sqlite:///{tmp_path}/state.db")
    try:
        _move(audit, "advance", 0, 1, "alice")
        start = time.time()
        for i in range(600):
            store.add(
                FLAG,
                "null_rate",
                "treatment",
                0.01 if i % 2 else 0.03,
                1 if i % 2 else 3,
                at=start + i,
                stage=1,
                epoch=1,
            )
        report = build_report(
            audit,
            {FLAG: _policy()},
            {FLAG: FlagState(FLAG)},
            measurements=store,
            since=datetime.fromtimestamp(start - 10, UTC),
            until=datetime.fromtimestamp(start + 700, UTC),
        )
    finally:
        audit.close()
        store.close()
    chart = report.flags[0].guard_charts[0]
    assert chart.bucketed and chart.measurements == 600 and len(chart.treatment) <= 121
    # Weighted by count: the buckets keep every observation and the overall mean.
    assert sum(p.n for p in chart.treatment) == 1200
    total = sum(p.value * p.n for p in chart.treatment) / 1200
    assert total == pytest.approx((0.03 * 3 * 300 + 0.01 * 300) / 1200)


def test_records_of_unexpected_shape_are_read_and_soak_is_judged_by_its_time(tmp_path: Path):
    """A violation written as "kind: detail" text, a violation with no kind, and an advance
    whose record says its soak was 0s: judged by that, not by today's 30m."""
    audit = AuditLog(f"sqlite:///{tmp_path}/audit.db")
    try:
        _move(audit, "advance", 0, 1, "alice", soak_seconds=0)
        _move(audit, "advance", 1, 5, "alice", soak_seconds=0)
        _move(audit, "advance", 5, 25, "alice", violations=["stage_skipped: 5% -> 25%"])
        audit.append("violation", {"kind": "", "count": 500}, flag=FLAG)
        audit.append("violation", {"kind": "missing_unit", "count": 3}, flag=FLAG)
        audit.append("violation", {"kind": "unregistered", "count": 7}, flag="stray-flag")
        rows = [
            {
                "flag": FLAG,
                "variant": "on",
                "reason": "STATIC",
                "source": "vendor",
                "arm": "treatment",
                "capped": False,
                "count": 10,
            },
            {
                "flag": FLAG,
                "variant": "control",
                "reason": "SPLIT",
                "source": "snapshot",
                "arm": "control",
                "capped": True,
                "count": 30,
            },
        ]
        now = datetime.now(UTC).isoformat()
        audit.append("exposure_summary", {"from": now, "to": now, "rows": rows})
        report = build_report(audit, {FLAG: _policy(soak="30m")}, {FLAG: FlagState(FLAG)})
    finally:
        audit.close()
    (flag,) = report.flags
    assert flag.violations == {"missing_unit": 3, "stage_skipped": 1}
    assert flag.exposures.by_arm == {"treatment": 10, "control": 30, "none": 0}
    assert flag.exposures.capped == 30 and flag.exposures.treatment_share[0].share == 0.25
    assert [u.flag for u in report.unregistered_flags] == ["stray-flag"]
    assert [g.kind for g in report.glossary] == ["missing_unit", "stage_skipped", "unregistered"]
    assert flag.verdict.status == "not followed"
    # 1% and 5% were left when the policy's soak was 0s (the records say so): compliant. The
    # 5% -> 25% record says nothing, so today's 30m judges it: cut short, without a violation.
    assert [r.status for r in flag.soak] == ["compliant", "cut short", "in progress"]
    assert flag.verdict.summary == (
        "1 stage skipped, 3 evaluations without a unit, "
        "1 stage left before the soak, no violation recorded"
    )


# -- integrity ----------------------------------------------------------------------------


def test_tampered_audit_log_fails_the_report(project: Project):
    import sqlite3

    config = governed_project(project)
    cli(config, "advance", FLAG, "--reason", "start")
    conn = sqlite3.connect(project.root / ".flagwarden" / "audit.db")
    conn.execute("UPDATE flagwarden_audit SET actor = 'mallory' WHERE seq = 1")
    conn.commit()
    conn.close()
    result = cli(config, "report", "--format", "json")
    assert result.returncode == 1
    assert "did not verify" in result.stderr
    doc = json.loads(result.stdout)  # still written, and says where it broke
    assert doc["audit"]["verified"] is False and doc["audit"]["first_bad_record"] == 1
    assert doc["flags"][0]["verdict"]["status"] == "unverified"
    md = cli(config, "report")
    assert md.returncode == 1 and "**BROKEN at record 1**" in md.stdout


# -- the HTML in a browser ----------------------------------------------------------------


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(demo: Path, tmp_path: Path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: .ci/run installs Debian's package")
    html = demo / "report.html"
    text = html.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    flags = chromium_flags(tmp_path / "profile")
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0
    assert "Uncaught" not in dom.stderr  # no script errors (there are no scripts)
    page = dom.stdout
    assert 'id="flag-new-transform"' in page
    assert page.count("<th") > 20 and not EMPTY_TH.search(page)  # every header says what it is
    assert 'class="chart stage-chart"' in page and 'class="stage"' in page
    guard = page.split('class="chart guard-chart"')[1].split("</svg>")[0]
    for css in ("limit", "arm-treatment", "arm-control", "breach"):
        assert f'class="{css}"' in guard, css
    assert 'class="chart share-chart"' in page and 'class="share"' in page
    assert "Followed its policy" in page
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1100,1400", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.slow
def test_status_after_the_demo_shows_the_provider_and_no_stale_verdict(demo: Path):
    doc = json.loads(cli(demo / "flagwarden.yaml", "status", "--json").stdout)
    (flag,) = doc["flags"]
    assert flag["stage"] == 0 and flag["last_change"]["action"] == "rollback"
    # The breach was at 50%; at 0% nothing has been judged: it is history, in the report.
    assert flag["guards"] == []
    provider = doc["provider"]
    assert provider["name"] == "file" and provider["snapshot_age_seconds"] is not None
    assert provider["last_outage"]["served"]["snapshot"] >= 20_000
    table = cli(demo / "flagwarden.yaml", "status").stdout
    assert "new-transform  0% (control for everyone)" in table
    assert "last change: rolled back 50% -> 0% by flagwarden-watch" in table
    assert "last outage" in table
