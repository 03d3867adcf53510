"""The compliance report: content, digest, formats, and the HTML in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flagwarden.audit.report import report_digest
from tests.conftest import POLICY, Project, governed_project

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


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
    return out


@pytest.mark.slow
def test_demo_tells_the_story(demo: Path):
    report = json.loads(cli(demo / "flagwarden.yaml", "report", "--format", "json").stdout)
    (flag,) = report["flags"]
    stages = [t["stage"] for t in flag["timeline"]]
    assert stages == [1, 5, 25, 50, 0]
    assert flag["rollbacks"] == 1 and flag["breaches"] >= 1
    assert flag["state"]["stage"] == 0
    assert all(row["compliant"] for row in flag["soak"])
    assert flag["exposures"]["by_source"].get("snapshot", 0) >= 20_000
    assert flag["exposures"]["by_variant"]["treatment"] > 0
    (outage,) = report["outages"]
    assert outage["served"]["snapshot"] >= 20_000 and outage["ended_at"]
    assert report["audit"]["verified"] is True
    assert report["digest"] == report_digest(report)
    assert (demo / "report.md").read_text().startswith("# flagwarden compliance report")


def test_report_formats_and_violations(project: Project, tmp_path: Path):
    config = governed_project(project)
    assert cli(config, "advance", FLAG, "--reason", "start").returncode == 0
    assert (
        cli(config, "advance", FLAG, "--reason", "hurry", "--to", "25", "--force").returncode == 0
    )
    assert cli(config, "kill", FLAG, "--reason", "nulls").returncode == 0
    doc = json.loads(cli(config, "report", "--format", "json").stdout)
    (flag,) = doc["flags"]
    assert flag["kills"] == 1
    assert flag["violations"] == {"soak_cut_short": 1, "stage_skipped": 1}
    assert [c["actor"] for c in flag["changes"]] == [flag["changes"][0]["actor"]] * 3
    assert flag["soak"][0]["forced"] is True and flag["soak"][0]["compliant"] is False
    md = cli(config, "report", "--format", "md")
    assert "## new-scoring-model" in md.stdout and "soak_cut_short" in md.stdout
    out = tmp_path / "r.html"
    written = cli(config, "report", "--format", "html", "-o", str(out))
    assert written.returncode == 0 and out.read_text().startswith("<!doctype html>")
    assert cli(config, "report", "--format", "pdf").returncode == 2
    assert cli(config, "report", "--since", "soon").returncode == 2


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
    assert json.loads(result.stdout)["audit"]["verified"] is False


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(demo: Path, tmp_path: Path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: .ci/run installs Debian's package")
    html = demo / "report.html"
    assert (
        "http://" not in html.read_text() and "https://" not in html.read_text()
    )  # self-contained
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0
    assert "Uncaught" not in dom.stderr  # no script errors (there are no scripts)
    assert 'id="flag-new-transform"' in dom.stdout
    assert (
        dom.stdout.count("<svg") >= 2
        and 'class="stage"' in dom.stdout
        and 'class="share"' in dom.stdout
    )
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1100,1400", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.slow
def test_status_shows_guard_health_and_provider_state(demo: Path):
    doc = json.loads(cli(demo / "flagwarden.yaml", "status", "--json").stdout)
    (flag,) = doc["flags"]
    assert flag["stage"] == 0
    assert flag["guards"][0]["guard"] == "null-rate" and flag["guards"][0]["verdict"] == "breach"
    provider = doc["provider"]
    assert provider["name"] == "file" and provider["snapshot_age_seconds"] is not None
    assert provider["last_outage"]["served"]["snapshot"] >= 20_000
    table = cli(demo / "flagwarden.yaml", "status")
    assert "null-rate: breach" in table.stdout and "last outage" in table.stdout
