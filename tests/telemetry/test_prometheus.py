"""Exposure metrics through a real Prometheus and Pushgateway; a PromQL guard that rolls back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from tests.conftest import POLICY, Project, governed_project, wait_for
from tests.servers.launchdarkly import free_port

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]


def pipeline(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.pipeline", str(config), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def set_stage(config: Path, stage: float) -> None:
    gov = Governance.open(load_settings(config))
    try:
        gov.rollout().advance(FLAG, actor="test", reason="test", to=stage, force=True)
    finally:
        gov.close()


@pytest.mark.slow
def test_prometheus_scrapes_what_the_pipeline_evaluated(project: Project, prometheus):
    port = free_port()
    config = governed_project(
        project, serve=True, telemetry={"prometheus": {"port": port, "addr": "127.0.0.1"}}
    )
    set_stage(config, 25)
    proc = pipeline(config, "count", "1000")
    try:
        served = json.loads(proc.stdout.readline())
        prometheus.start([port])
        total = f'sum(feature_flag_evaluations_total{{feature_flag_key="{FLAG}"}})'
        wait_for(lambda: prometheus.value(total) == 1000, timeout=30, interval=0.5)
        for variant, n in served.items():
            query = (
                f'sum(feature_flag_evaluations_total{{feature_flag_key="{FLAG}",'
                f'feature_flag_result_variant="{variant}",flagwarden_source="file"}})'
            )
            assert prometheus.value(query) == n
        assert prometheus.value(f'flagwarden_flag_stage_percent{{feature_flag_key="{FLAG}"}}') == 25
        assert prometheus.value('flagwarden_provider_state{state="READY"}') == 1
        # No label is a targeting key: every series' labels are bounded.
        for series in prometheus.query("feature_flag_evaluations_total"):
            assert not any("order-" in str(v) for v in series["metric"].values())
    finally:
        proc.stdin.close()
        proc.wait(30)


@pytest.mark.slow
def test_batch_run_pushes_to_the_pushgateway(project: Project, pushgateway):
    config = governed_project(
        project,
        serve=True,
        telemetry={"prometheus": {"pushgateway": pushgateway, "job": "orders-etl"}},
    )
    set_stage(config, 50)
    proc = pipeline(config, "batch", "400")
    served = json.loads(proc.stdout.readline())
    assert proc.wait(60) == 0
    text = urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("feature_flag_evaluations_total{") and 'job="orders-etl"' in line:
            variant = line.split('feature_flag_result_variant="')[1].split('"')[0]
            counts[variant] = counts.get(variant, 0) + float(line.rsplit(" ", 1)[1])
    assert counts == {k: float(v) for k, v in served.items()}


@pytest.mark.slow
def test_promql_guard_breach_puts_every_worker_on_control(project: Project, prometheus):
    ports = [free_port(), free_port()]
    guard = {
        "name": "null-rate",
        "promql": (
            f'max(flagwarden_data_quality{{feature_flag_key="{FLAG}",'
            'name="null_rate",variant="treatment"})'
        ),
        "max": 0.02,
        "window": "0s",  # an instant query: nothing reaches back before the stage
    }
    workers = []
    for i, port in enumerate(ports):
        # One project folder per worker (its own metrics port), sharing the state store.
        sub = Project(project.root / f"w{i}")
        config = governed_project(
            sub,
            serve=True,
            policy={"guards": [guard]},
            state=f"sqlite:///{project.root}/state.db",
            audit=f"sqlite:///{project.root}/audit.db",
            telemetry={
                "prometheus": {"port": port, "addr": "127.0.0.1", "query_url": prometheus.url}
            },
        )
        workers.append(config)
    set_stage(workers[0], 100)
    procs = [pipeline(config, "serve") for config in workers]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "serving"
        prometheus.start(ports)
        watch = [sys.executable, "-m", "flagwarden.cli", "watch", "--once", "-c", str(workers[0])]
        metric = f'max(flagwarden_data_quality{{feature_flag_key="{FLAG}"}})'
        wait_for(lambda: prometheus.value(metric) is not None, timeout=30, interval=0.5)
        healthy = subprocess.run(watch, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert healthy.returncode == 0 and "healthy" in healthy.stdout, healthy
        for config in workers:  # the pipeline starts producing nulls
            (config.parent / "BAD").touch()
        wait_for(lambda: (prometheus.value(metric) or 0) > 0.02, timeout=30, interval=0.5)
        breach = subprocess.run(watch, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert "rollback" in breach.stdout, breach
        for proc in procs:
            assert proc.stdout.readline().strip() == "control"
    finally:
        for proc in procs:
            proc.kill()
    gov = Governance.open(load_settings(workers[0]))
    try:
        state = gov.rollout().state(FLAG)
        assert state.stage == 0 and state.updated_by == "flagwarden-watch"
        rollback = [r for r in gov.audit.records(flag=FLAG) if r.data.get("action") == "rollback"]
        assert rollback[0].data["guards"][0]["verdict"] == "breach"
        assert rollback[0].data["guards"][0]["value"] == pytest.approx(0.3)
    finally:
        gov.close()
