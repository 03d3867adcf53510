from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import flagwarden
from tests.servers.launchdarkly import LaunchDarklyServer
from tests.servers.split import SplitServer
from tests.servers.webhook import Receiver

# The vendor SDKs log every refused reconnect; the tests provoke many on purpose.
for name in ("ldclient", "splitio", "launchdarkly-openfeature-server"):
    logging.getLogger(name).setLevel(logging.CRITICAL)


ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    config: Path,
    *args: str,
    actor: str | None = None,
    token: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``flagwarden ARGS -c CONFIG`` in a process of its own, as an operator would run it
    (``token``: as that token's identity, ``$FLAGWARDEN_TOKEN``)."""
    env = dict(os.environ)
    if actor is not None:
        env["FLAGWARDEN_ACTOR"] = actor
    if token is not None:
        env["FLAGWARDEN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail with the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("FLAGWARDEN_"):
            monkeypatch.delenv(key)
    yield
    flagwarden.shutdown()


@pytest.fixture
def ld_server() -> Iterator[LaunchDarklyServer]:
    server = LaunchDarklyServer().start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local webhook that records what ``notify:`` targets receive."""
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def split_server() -> Iterator[SplitServer]:
    server = SplitServer().start()
    yield server
    server.stop()


class Project:
    """A throwaway flagwarden project: flagwarden.yaml plus providers/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "providers").mkdir(parents=True, exist_ok=True)

    def profile(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.root / "providers" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def config(self, provider: str, **extra: Any) -> Path:
        doc: dict[str, Any] = {"provider": provider}
        doc.setdefault(
            "fallback", {"snapshot": "file:.flagwarden/snapshot.json", "snapshot_debounce": 0.05}
        )
        doc.update(extra)
        path = self.root / "flagwarden.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    @property
    def snapshot_file(self) -> Path:
        return self.root / ".flagwarden" / "snapshot.json"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


# -- governance fixtures ------------------------------------------------------------------

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose tables live in a schema of their own, dropped afterwards."""
    import uuid

    import psycopg

    schema = f"fw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def redis_url() -> Iterator[str]:
    import uuid

    import redis

    prefix = f"fwtest{uuid.uuid4().hex[:12]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}"
    client = redis.Redis()
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def state_url(request: pytest.FixtureRequest, project: Project) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{project.root}/.flagwarden/state.db"
    return request.getfixturevalue("redis_url" if request.param == "redis" else "pg_url")


POLICY = {
    "flag": "new-scoring-model",
    "owner": "data-platform@example.com",
    "description": "Score orders with model v2",
    "expires": "2099-03-01",
    "variants": {"control": False, "treatment": True},
    "stages": [1, 5, 25, 50, 100],
    "soak": "30m",
}


def governed_project(
    project: Project,
    *,
    serve: Any = True,
    policy: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    """A project whose flag file serves ``serve`` to everyone, governed by POLICY."""
    import json

    (project.root / "policies").mkdir(exist_ok=True)
    doc = {**POLICY, **(policy or {})}
    (project.root / "policies" / f"{doc['flag']}.yaml").write_text(yaml.safe_dump(doc))
    variants = {"served": serve, "other": not serve if isinstance(serve, bool) else "x"}
    flags = {
        "flags": {
            doc["flag"]: {"state": "ENABLED", "variants": variants, "defaultVariant": "served"}
        }
    }
    (project.root / "flags.json").write_text(json.dumps(flags))
    project.profile("file", {"type": "file", "path": "../flags.json", "poll_interval": 0.05})
    config.setdefault("fallback", {"snapshot": None})
    return project.config("file", **config)


def key_rule_project(project: Project, server: LaunchDarklyServer) -> Path:
    """A project governed by POLICY whose flag LaunchDarkly serves by a 40% rollout on the
    targeting key (a vendor rule that depends on the key): its config file."""
    from tests.servers.launchdarkly import boolean_flag

    flag = str(POLICY["flag"])
    server.set_flag(boolean_flag(flag, rollout_percent=40))
    project.profile("launchdarkly", server.profile())
    (project.root / "policies").mkdir(exist_ok=True)
    (project.root / "policies" / f"{flag}.yaml").write_text(yaml.safe_dump(POLICY))
    return project.config("launchdarkly", fallback={"snapshot": None})


def counted(run: Any) -> tuple[dict[Any, int], dict[Any, int]]:
    """What ``run()`` counted in the configured process: the exposure summary's rows and the
    violations (both emptied first)."""
    import flagwarden

    runtime = flagwarden.current()
    assert runtime is not None
    telemetry, violations = runtime.telemetry, runtime.governed.violations
    telemetry.recorder.fold()
    telemetry.summary._counts.clear()
    violations.flush()
    violations.totals.clear()
    run()
    telemetry.recorder.fold()
    violations.flush()
    return dict(telemetry.summary._counts), dict(violations.totals)
