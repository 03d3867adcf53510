"""Forked children get working vendor clients and see changes made after the fork."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from tests.conftest import Project
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

FLAG = "new-scoring-model"


class Setup:
    def __init__(self, kind: str, project: Project) -> None:
        self.kind = kind
        self.project = project
        self.server: Any = None
        if kind == "launchdarkly":
            self.server = LaunchDarklyServer().start()
            self.server.set_flag(boolean_flag(FLAG, serve=False))
            project.profile(kind, self.server.profile())
        elif kind == "split":
            self.server = SplitServer().start()
            self.server.set_split(split_definition(FLAG, on_percent=0))
            project.profile(kind, self.server.profile())
        else:
            self.flag_file = project.root / "flags.json"
            self._write_file(on=False)
            project.profile(kind, {"type": "file", "path": "../flags.json", "poll_interval": 0.05})
        project.config(kind)

    def _write_file(self, *, on: bool) -> None:
        variant = "on" if on else "off"
        doc = {
            "flags": {
                FLAG: {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": variant,
                }
            }
        }
        self.flag_file.write_text(json.dumps(doc))

    def turn_on(self) -> None:
        if self.kind == "launchdarkly":
            self.server.set_flag(boolean_flag(FLAG, serve=True))
        elif self.kind == "split":
            self.server.set_split(split_definition(FLAG, on_percent=100))
        else:
            self._write_file(on=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(params=["launchdarkly", "split", "file"])
def setup(request: pytest.FixtureRequest, project: Project):
    s = Setup(request.param, project)
    yield s
    s.close()


def watch_flag(client: Any, timeout: float = 20.0, ready: Any = None) -> dict[str, Any]:
    """In a child: evaluate until the flag turns on; report what was seen. ``ready()`` is
    called after the first answer: the parent changes the flag only then (a child that is
    slow to be scheduled must not see the change first)."""
    ctx = EvaluationContext("order-1")
    first = client.get_boolean_details(FLAG, True, ctx)
    if ready is not None:
        ready()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        details = client.get_boolean_details(FLAG, False, ctx)
        if details.value:
            return {
                "first": first.value,
                "first_error": first.error_code,
                "turned_on": True,
                "source": details.flag_metadata["flagwarden.source"],
            }
        time.sleep(0.05)
    return {"first": first.value, "first_error": first.error_code, "turned_on": False}


@pytest.mark.slow
def test_os_fork_child_sees_change_made_after_fork(setup: Setup):
    client = flagwarden.configure(setup.project.root / "flagwarden.yaml")
    assert client.get_boolean_value(FLAG, True, EvaluationContext("order-1")) is False
    read_end, write_end = os.pipe()
    started = multiprocessing.get_context("fork").Event()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            result = watch_flag(client, ready=started.set)
        except BaseException as exc:
            result = {"exception": repr(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    assert started.wait(20)
    setup.turn_on()
    with os.fdopen(read_end) as pipe:
        result = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert result == {
        "first": False,
        "first_error": None,
        "turned_on": True,
        "source": "file" if setup.kind == "file" else "vendor",
    }


_answered: Any = None  # a fork-inherited Event: a pool task has given its first answer


def _pool_task(_: int) -> dict[str, Any]:
    runtime = flagwarden.current()
    assert runtime is not None
    answered: list[float] = []

    def ready() -> None:
        answered.append(time.time())
        _answered.set()

    result = watch_flag(runtime.client, ready=ready)
    return {**result, "pid": os.getpid(), "answered": answered[0]}


@pytest.mark.slow
def test_prefork_pool_workers_see_change(setup: Setup):
    global _answered
    flagwarden.configure(setup.project.root / "flagwarden.yaml")
    ctx = multiprocessing.get_context("fork")
    _answered = ctx.Event()
    with ctx.Pool(2) as pool:
        pending = pool.map_async(_pool_task, range(2))
        assert _answered.wait(20)
        turned_on_at = time.time()
        setup.turn_on()
        results = pending.get(timeout=60)
    assert all(r["turned_on"] for r in results), results
    # One worker may take both tasks; a task that answered before the change saw it off.
    early = [r for r in results if r["answered"] < turned_on_at]
    assert early and all(r["first"] is False for r in early), results


@pytest.mark.slow
def test_forked_child_sees_a_kill_issued_after_the_fork(project: Project):
    from tests.conftest import governed_project

    config = governed_project(project, serve=True)
    client = flagwarden.configure(config)
    flagwarden.current().rollout.advance(FLAG, actor="t", reason="all", to=100, force=True)
    ctx = EvaluationContext("order-1")
    assert client.get_boolean_value(FLAG, False, ctx) is True
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        deadline = time.monotonic() + 20
        seen = "never"
        while time.monotonic() < deadline:
            if client.get_boolean_details(FLAG, True, ctx).flag_metadata["flagwarden.killed"]:
                seen = "killed"
                break
            time.sleep(0.02)
        os.write(write_end, seen.encode())
        os._exit(0)
    os.close(write_end)
    time.sleep(0.3)
    flagwarden.current().rollout.kill(FLAG, actor="t", reason="after fork")
    with os.fdopen(read_end) as pipe:
        assert pipe.read() == "killed"
    os.waitpid(pid, 0)
