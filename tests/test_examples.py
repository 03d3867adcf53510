"""The examples, run for real: a plain ETL script, a Prefect 3 flow, a Celery prefork worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of examples/, so runs write their state and audit log there, not in the repo."""
    dest = tmp_path / "examples"
    shutil.copytree(
        ROOT / "examples", dest, ignore=shutil.ignore_patterns(".flagwarden", "__pycache__")
    )
    return dest


def cli(examples: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(examples / "flagwarden.yaml", *args)
    assert result.returncode == 0, result.stderr
    return result


def test_etl_script_routes_a_dataframe_and_reports_quality(examples: Path):
    cli(examples, "advance", "new-scoring-model", "--reason", "start", "--to", "25", "--force")
    result = subprocess.run(
        [sys.executable, str(examples / "etl_script.py"), "40000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    share = summary["treatment"]["rows"] / 40_000
    assert 0.23 < share < 0.27
    assert summary["treatment"]["null_rate"] == 0.0
    watch = cli(examples, "watch", "--once")
    assert "new-scoring-model: healthy" in watch.stdout  # 10,000 samples, no nulls


@pytest.mark.slow
def test_prefect_flow_with_component_flags(examples: Path, tmp_path: Path):
    cli(examples, "advance", "transform-v2", "--reason", "start")  # 10%
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Prefect's temporary API server gets 20 s to start by default: too short for a busy
        # two-core machine (its first start runs the database migrations).
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    result = subprocess.run(
        [sys.executable, str(examples / "prefect_flow.py"), "2000"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 2000  # validation-strict is off: nothing dropped
    assert 120 < summary["v2"] < 290  # 10% of 2,000, give or take
    assert summary["geo_source"] == ["geo-v2"]


@pytest.mark.slow
def test_celery_prefork_workers_see_a_kill_issued_after_they_forked(examples: Path):
    cli(examples, "advance", "new-scoring-model", "--reason", "all in", "--to", "100", "--force")
    queue = f"flagwarden-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CELERY_QUEUE": queue, "PYTHONPATH": str(examples)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_worker",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "-Q",
            queue,
        ],
        cwd=examples,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sys.path.insert(0, str(examples))
    os.environ["CELERY_QUEUE"] = queue
    try:
        import celery_worker

        def run(n: int) -> list[dict[str, object]]:
            pending = [celery_worker.score_order.delay(f"order-{i}") for i in range(n)]
            return [p.get(timeout=30) for p in pending]

        def pool() -> set[int]:
            stats = celery_worker.app.control.inspect(timeout=5).stats() or {}
            return {pid for s in stats.values() for pid in s["pool"]["processes"]}

        before = run(20)
        assert all(r["v2"] is True for r in before)
        children = pool()
        assert len(children) == 2
        cli(examples, "kill", "new-scoring-model", "--reason", "nulls in v2 scores")
        wait_for(lambda: all(r["killed"] and r["v2"] is False for r in run(20)), timeout=20)
        after = run(20)
        # The same children, forked before the kill, now serve control: no restart, no deploy.
        assert {r["pid"] for r in after} <= children
        assert pool() == children
    finally:
        sys.path.remove(str(examples))
        sys.modules.pop("celery_worker", None)
        os.environ.pop("CELERY_QUEUE", None)
        worker.terminate()
        worker.wait(30)
