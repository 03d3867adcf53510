"""A kill from another process reaches every worker process, on each backend; store outages."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from tests.conftest import POLICY, Project, governed_project, run_cli, wait_for
from tests.governance.worker import spawn
from tests.servers.launchdarkly import free_port

FLAG = POLICY["flag"]


def cli_kill(config: Path, reason: str) -> subprocess.CompletedProcess[str]:
    """`flagwarden kill` from another process, as an operator would run it."""
    return run_cli(config, "kill", FLAG, "--reason", reason)


@pytest.mark.slow
def test_kill_reaches_every_worker(project: Project, state_url: str):
    config = governed_project(project, serve=True, state=state_url)
    gov = Governance.open(load_settings(config))
    try:
        gov.rollout().advance(FLAG, actor="t", reason="all in", to=100, force=True)
        workers = spawn(config, 3)
        try:
            for worker in workers:
                assert worker.stdout.readline().strip() == "ready"
            killed_at = time.time()
            result = cli_kill(config, "null spike")
            assert result.returncode == 0, result.stderr
            seen = []
            for worker in workers:
                line = worker.stdout.readline().split()
                assert line and line[0] == "control", line
                seen.append(float(line[1]) - killed_at)
                worker.wait(30)
        finally:
            for worker in workers:
                worker.kill()
        # The bench measures this properly; here: every worker, within seconds, no restart.
        assert max(seen) < 5.0, seen
    finally:
        gov.close()


@pytest.fixture
def private_redis() -> tuple[str, callable]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed")
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        wait_for(lambda: _pings(redis.Redis(port=port)), timeout=10)
        return proc

    procs = [start()]
    yield f"redis://127.0.0.1:{port}/0", lambda: procs.append(start()), procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.mark.slow
def test_store_outage_keeps_last_state_and_kill_fails_loudly(project: Project, private_redis):
    url, restart, procs = private_redis
    config = governed_project(project, serve=True, state=url)
    client = flagwarden.configure(config)
    runtime = flagwarden.current()
    runtime.rollout.advance(FLAG, actor="t", reason="all in", to=100, force=True)
    ctx = EvaluationContext("unit-1")
    assert client.get_boolean_value(FLAG, False, ctx) is True

    procs[0].kill()
    procs[0].wait()
    cache = runtime.governed.cache
    wait_for(lambda: not cache.healthy, timeout=10)
    # The last known state still applies: no flapping to control or to the vendor's answer.
    assert client.get_boolean_details(FLAG, False, ctx).flag_metadata["flagwarden.stage"] == 100
    result = cli_kill(config, "nulls")
    assert result.returncode == 1
    assert "could not be stored" in result.stderr

    restart()
    wait_for(lambda: cache.healthy, timeout=20)
    assert cli_kill(config, "nulls").returncode == 0
    # The restarted Redis lost everything (no persistence), but the kill was stored now.
    wait_for(lambda: client.get_boolean_value(FLAG, True, ctx) is False, timeout=10)
