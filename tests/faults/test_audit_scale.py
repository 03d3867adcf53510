"""A log that scales: status, report and verify on a large audit log, in bounded memory.

Not timed (speed is in bench/bench_audit.py); what is checked is that the commands give the
right answers on a large log and that their memory does not grow with it: a command's peak RSS
on a log of 100,000 records stays within a small margin of the same command on 1,000.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from bench.bench_audit import Expected, _check_report, build_log, measure, project

GROWTH_MB = 25  # status before streaming grew by about 300 MB here


def _peak(config: Path, *args: str) -> tuple[str, float]:
    """``flagwarden ARGS`` in a process of its own (through the bench's launcher, so the peak
    is its own, not what it inherited from this process): stdout and peak RSS in MB."""
    run = measure(
        [sys.executable, "-m", "flagwarden.cli", *args, "-c", str(config)],
        config.parent / "stdout.txt",
    )
    return run.stdout, run.peak_mb


def _log(root: Path, n: int) -> tuple[Path, Expected]:
    root.mkdir()
    url = f"sqlite:///{root}/audit.db"
    expected = build_log(url, n)
    return project(root, url), expected


@pytest.mark.slow
def test_status_report_and_verify_do_not_grow_with_the_log(tmp_path: Path):
    small, _ = _log(tmp_path / "small", 1_000)
    large, expected = _log(tmp_path / "large", 100_000)

    status, status_mb = _peak(large, "status", "--json")
    for row in json.loads(status)["flags"]:
        assert row["last_change"]["action"] == expected.last_action[row["flag"]]
    out = tmp_path / "report.json"
    _, report_mb = _peak(large, "report", "--format", "json", "-o", str(out))
    _check_report(json.loads(out.read_text()), expected)
    verified, verify_mb = _peak(large, "audit", "verify")
    assert "ok 100000 records" in verified

    _, status_small = _peak(small, "status", "--json")
    _, verify_small = _peak(small, "audit", "verify")
    assert status_mb - status_small < GROWTH_MB, (status_mb, status_small)
    assert verify_mb - verify_small < GROWTH_MB, (verify_mb, verify_small)
    # The report keeps what it lists (each flag's transitions, guard decisions and violations:
    # 28% of this log, about 100 MB with the document) but not the exposure summaries it folds
    # nor a second copy of the log: before streaming it grew by about 360 MB here.
    small_out = tmp_path / "small.json"
    _, report_small = _peak(small, "report", "--format", "json", "-o", str(small_out))
    assert report_mb - report_small < 6 * GROWTH_MB, (report_mb, report_small)
