"""Exposure events: OpenFeature attribute names, deduplication in bounded memory, summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flagwarden.telemetry.dedup import ExposureDeduper
from tests.conftest import POLICY, Project, governed_project

ROOT = Path(__file__).resolve().parents[2]
FLAG = POLICY["flag"]


def test_dedup_memory_is_bounded_and_dedups():
    deduper = ExposureDeduper(window_seconds=3600, slots=4096)
    before = deduper.memory_bytes
    assert 4096 * 8 - 80 < before <= 4096 * 8  # the budget, in whole sets of 16 ways
    assert deduper.first_in_window(FLAG, "k1", "treatment") is True
    assert deduper.first_in_window(FLAG, "k1", "treatment") is False  # same key, same variant
    assert deduper.first_in_window(FLAG, "k1", "control") is True  # the variant changed
    assert deduper.first_in_window("other", "k1", "treatment") is True
    logged = sum(deduper.first_in_window(FLAG, f"key-{i}", "control") for i in range(100_000))
    assert logged == 100_000  # a collision may re-log early, never hide a new key
    assert deduper.memory_bytes == before  # 100k keys, same memory


def test_window_expiry():
    deduper = ExposureDeduper(window_seconds=0)
    assert deduper.first_in_window(FLAG, "k", "v") is True
    assert deduper.first_in_window(FLAG, "k", "v") is True  # a zero window never dedups


def test_exposure_events_and_summary_in_json_logs(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "for _ in range(3):\n"
        "    for k in ('a', 'b', 'c'):\n"
        f"        c.get_boolean_value({FLAG!r}, True, E(k))\n"
        "flagwarden.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # logs go to stderr, the pipeline's stdout stays its own
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    exposures = [e for e in events if e["event"] == "feature_flag.evaluation"]
    assert sorted(e["feature_flag.context.id"] for e in exposures) == ["a", "b", "c"]
    first = exposures[0]
    assert first["feature_flag.key"] == FLAG
    assert first["feature_flag.result.variant"] == "control"  # stage 0: everyone gets control
    assert first["feature_flag.result.reason"] == "split"  # the conventions' lowercase
    assert "error.type" not in first  # only on an error
    assert first["feature_flag.provider.name"] == "file"
    assert first["flagwarden.source"] == "file"
    (summary,) = [e for e in events if e["event"] == "feature_flag.summary"]
    assert summary["rows"] == [
        {
            "flag": FLAG,
            "variant": "control",
            "reason": "SPLIT",
            "source": "file",
            "arm": "control",
            "capped": True,
            "count": 9,
        }
    ]
    # The summary went to the audit log too, for the compliance report.
    from flagwarden.audit.log import AuditLog

    log = AuditLog(f"sqlite:///{project.root}/.flagwarden/audit.db")
    (record,) = [r for r in log.records() if r.kind == "exposure_summary"]
    assert record.data["rows"][0]["count"] == 9
    log.close()


def test_prefork_multiprocess_metrics_are_summed(project: Project, tmp_path: Path):
    from tests.servers.launchdarkly import free_port

    port = free_port()
    config = governed_project(
        project, serve=True, telemetry={"prometheus": {"port": port, "addr": "127.0.0.1"}}
    )
    multiproc = tmp_path / "prom-multiproc"
    multiproc.mkdir()
    script = (
        "import multiprocessing, urllib.request\n"
        "import flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"flagwarden.configure({str(config)!r})\n"
        "def work(i):\n"
        "    c = flagwarden.current().client\n"
        f"    values = [c.get_boolean_value({FLAG!r}, True, E(f'k{{j}}')) for j in range(100)]\n"
        "    return values.count(False)\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    assert sum(pool.map(work, range(4))) == 400\n"
        f"text = urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode()\n"
        "total = sum(float(l.rsplit(' ', 1)[1]) for l in text.splitlines()\n"
        "            if l.startswith('feature_flag_evaluations_total{'))\n"
        "print(total)\n"
        "flagwarden.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip()) == 400.0
