"""Transitions on each state backend: rules, refusals, violations, races, audit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from flagwarden.governance.rollout import TransitionRefused, resolve_actor
from flagwarden.governance.state import FlagState, open_state_store
from tests.conftest import POLICY, Project, governed_project, run_cli

FLAG = POLICY["flag"]


def cli(project: Project, *args: str, actor: str = "ci-bot") -> subprocess.CompletedProcess[str]:
    return run_cli(project.root / "flagwarden.yaml", *args, actor=actor)


@pytest.fixture
def governance(project: Project, state_url: str):
    governed_project(project, state=state_url)
    gov = Governance.open(load_settings(project.root / "flagwarden.yaml"))
    yield gov
    gov.close()


def test_advance_rules_and_violations(governance: Governance):
    rollout = governance.rollout()
    assert rollout.advance(FLAG, actor="alice", reason="start").after.stage == 1
    with pytest.raises(TransitionRefused, match="soaked at 1% for 0s of 30m00s"):
        rollout.advance(FLAG, actor="alice", reason="too soon")
    later = rollout.state(FLAG).stage_entered_at + timedelta(minutes=31)
    done = rollout.advance(FLAG, actor="alice", reason="soaked", now=later)
    assert (done.after.stage, done.violations) == (5, ())
    forced = rollout.advance(FLAG, actor="bob", reason="hurry", force=True)
    assert forced.after.stage == 25
    assert [str(v) for v in forced.violations] == ["soak_cut_short: 0s of 30m00s"]
    skipped = rollout.advance(FLAG, actor="bob", reason="skip", to=100, force=True)
    assert skipped.after.stage == 100
    assert "stage_skipped: 25% -> 100%, skipping 50%" in [str(v) for v in skipped.violations]
    # At the last stage, advancing again is a no-op: a retry must not fail.
    again = rollout.advance(FLAG, actor="bob", reason="more")
    assert not again.changed and "last stage" in again.note
    assert not rollout.advance(FLAG, actor="bob", reason="more", to=100).changed
    with pytest.raises(TransitionRefused, match="not an approved stage"):
        rollout.rollback(FLAG, actor="bob", reason="x", to=30)
    assert rollout.rollback(FLAG, actor="carol", reason="nulls").after.stage == 50
    assert rollout.rollback(FLAG, actor="carol", reason="all off", to=0).after.stage == 0
    noop = rollout.rollback(FLAG, actor="carol", reason="again")
    assert not noop.changed and "already gets control" in noop.note

    records = governance.audit.records(flag=FLAG)
    transitions = [r for r in records if r.kind == "transition"]
    assert [r.data["action"] for r in transitions] == ["advance"] * 4 + ["rollback"] * 2
    assert transitions[0].actor == "alice" and transitions[0].data["reason"] == "start"
    assert (
        transitions[0].data["before"]["stage"] == 0 and transitions[0].data["after"]["stage"] == 1
    )
    violations = [r.data["kind"] for r in records if r.kind == "violation"]
    assert sorted(violations) == ["soak_cut_short", "soak_cut_short", "stage_skipped"]
    assert governance.audit.verify().ok


def test_kill_revive_pause_resume(governance: Governance):
    rollout = governance.rollout()
    rollout.advance(FLAG, actor="a", reason="go")
    assert rollout.kill(FLAG, actor="a", reason="null spike").after.killed
    again = rollout.kill(FLAG, actor="b", reason="again")  # a retried kill: ok, no change
    assert not again.changed and "already killed (by a: null spike)" in again.note
    with pytest.raises(TransitionRefused, match="revive it"):
        rollout.advance(FLAG, actor="a", reason="go", force=True)
    assert not rollout.revive(FLAG, actor="a", reason="fixed").after.killed
    assert not rollout.revive(FLAG, actor="a", reason="fixed").changed
    assert rollout.pause(FLAG, actor="a", reason="investigating").after.paused
    assert not rollout.pause(FLAG, actor="a", reason="investigating").changed
    with pytest.raises(TransitionRefused, match="paused"):
        rollout.advance(FLAG, actor="a", reason="go")
    assert rollout.resume(FLAG, actor="a", reason="done").after.paused is False
    assert not rollout.resume(FLAG, actor="a", reason="done").changed
    state = rollout.state(FLAG)
    assert (state.stage, state.version) == (1, 5)  # advance, kill, revive, pause, resume
    actions = [r.data["action"] for r in governance.audit.records(flag=FLAG)]
    assert actions == ["advance", "kill", "revive", "pause", "resume"]  # no-ops not audited


def test_compare_and_set_exactly_one_wins(governance: Governance):
    store = governance.store
    base = FlagState(FLAG)
    first = base.changed(actor="a", reason="a", stage=1)
    second = base.changed(actor="b", reason="b", stage=5)
    assert store.compare_and_set(first) is True
    assert store.compare_and_set(second) is False
    assert store.load(FLAG).updated_by == "a"
    other = open_state_store(store.url)  # another connection, as another process would have
    try:
        nxt = other.load(FLAG).changed(actor="c", reason="c", stage=5)
        assert other.compare_and_set(nxt) is True
        assert store.compare_and_set(first.changed(actor="a", reason="late", stage=25)) is False
    finally:
        other.close()


@pytest.mark.slow
def test_racing_cli_advances_one_wins(project: Project, state_url: str):
    governed_project(project, state=state_url)
    config = str(project.root / "flagwarden.yaml")
    env = {**os.environ, "FLAGWARDEN_ACTOR": "racer"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flagwarden.cli",
                "advance",
                FLAG,
                "--reason",
                f"racer {i}",
                "-c",
                config,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(6)
    ]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results].count(0) == 1, results
    for rc, stderr in results:
        if rc:
            assert rc == 1 and "refused" in stderr
    result = cli(project, "status", FLAG, "--json")
    assert '"stage": 1.0' in result.stdout and '"version": 1' in result.stdout


def test_cli_exit_codes_and_actor(project: Project):
    governed_project(project)
    assert cli(project, "advance", FLAG, "--reason", "go", actor="dana").returncode == 0
    refused = cli(project, "advance", FLAG, "--reason", "again")
    assert refused.returncode == 1 and "soaked" in refused.stderr
    assert cli(project, "advance", FLAG).returncode == 2  # --reason is required
    # The red button needs no policy: a flag without one is killed, and the command says what
    # that means (pause, resume, advance and rollback still refuse it).
    other = cli(project, "kill", "no-such-flag", "--reason", "x")
    assert other.returncode == 0 and "no-such-flag has no policy here" in other.stderr
    assert cli(project, "advance", "no-such-flag", "--reason", "x").returncode == 1
    killed = cli(project, "kill", FLAG, "--reason", "nulls", "--actor", "erin")
    assert killed.returncode == 0
    # stdout is the command's own output; the structured log line goes to stderr.
    assert killed.stdout == (
        "ok new-scoring-model killed: everyone gets control (stage 1% returns on revive) "
        "(version 2)\n"
    )
    assert '"event": "flagwarden.transition"' in killed.stderr
    retried = cli(project, "kill", FLAG, "--reason", "nulls")
    assert retried.returncode == 0
    assert retried.stdout == (
        "ok new-scoring-model is already killed (by erin: nulls); nothing changed\n"
    )
    assert cli(project, "pause", FLAG).returncode == 2  # every transition needs --reason
    assert cli(project, "resume", FLAG).returncode == 2
    gov = Governance.open(load_settings(project.root / "flagwarden.yaml"))
    try:
        actors = [(r.actor, r.flag) for r in gov.audit.records() if r.kind == "transition"]
    finally:
        gov.close()
    assert actors == [("dana", FLAG), ("ci-bot", "no-such-flag"), ("erin", FLAG)]


def test_actor_resolution(monkeypatch):
    monkeypatch.delenv("FLAGWARDEN_ACTOR", raising=False)
    assert resolve_actor("x") == "x"
    monkeypatch.setenv("FLAGWARDEN_ACTOR", "envy")
    assert resolve_actor(None) == "envy"
    monkeypatch.delenv("FLAGWARDEN_ACTOR")
    assert resolve_actor(None)


def _open_everything(url: str, start_at: float) -> None:
    from flagwarden.audit.log import AuditLog
    from flagwarden.governance.measurements import open_measurement_store

    time.sleep(max(0.0, start_at - time.time()))  # all processes start together
    store = open_state_store(url)
    store.load_all()
    AuditLog(url).close()
    measurements = open_measurement_store(url)
    measurements.samples("f", "m", "treatment", 0)
    measurements.close()
    store.close()


@pytest.mark.slow
def test_many_processes_create_the_postgres_tables_at_once(pg_url: str):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3
    procs = [ctx.Process(target=_open_everything, args=(pg_url, start_at)) for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0] * 8


def test_a_reason_is_required_and_cannot_be_blank(project: Project):
    governed_project(project)
    for blank in ("", "   "):
        result = cli(project, "kill", FLAG, "--reason", blank)
        assert result.returncode == 2 and "say why" in result.stderr
    gov = Governance.open(load_settings(project.root / "flagwarden.yaml"))
    try:
        with pytest.raises(TransitionRefused, match="a reason is required"):
            gov.rollout().advance(FLAG, actor="a", reason=" ")
        assert not gov.audit.records()
    finally:
        gov.close()


def test_a_kill_is_never_refused_by_a_concurrent_counter_update(governance: Governance):
    """The watch stores breach counts by compare-and-set; a kill landing meanwhile retries
    on the new state instead of failing with 'another change landed first'."""
    import threading
    from dataclasses import replace

    rollout = governance.rollout()
    rollout.advance(FLAG, actor="a", reason="go")
    other = open_state_store(governance.store.url)
    stop = threading.Event()

    def count_breaches() -> None:
        n = 0
        while not stop.is_set():
            state = other.load(FLAG)
            n += 1
            other.compare_and_set(
                replace(state, version=state.version + 1, guard_failures={"g": n})
            )
            time.sleep(0.005)  # a watch stores counts once a pass; this is 200 a second

    thread = threading.Thread(target=count_breaches)
    thread.start()
    try:
        for _ in range(20):
            done = rollout.kill(FLAG, actor="a", reason="stop")
            assert done.after.killed
            rollout.revive(FLAG, actor="a", reason="again")
    finally:
        stop.set()
        thread.join()
        other.close()


def test_a_change_whose_audit_record_fails_says_it_took_effect(project: Project):
    import sqlite3

    governed_project(project)
    assert cli(project, "advance", FLAG, "--reason", "go").returncode == 0
    conn = sqlite3.connect(project.root / ".flagwarden" / "audit.db")
    conn.execute("DROP TABLE flagwarden_audit")
    conn.execute("CREATE TABLE flagwarden_audit (seq BIGINT PRIMARY KEY)")  # unwritable shape
    conn.commit()
    conn.close()
    result = cli(project, "kill", FLAG, "--reason", "nulls")
    assert result.returncode == 0, result.stderr  # the kill is stored: the exit code says so
    assert result.stdout.startswith("ok new-scoring-model killed")
    assert "cannot open the audit store" in result.stderr
    assert "the change took effect; its audit record is pending" in result.stderr
    state = open_state_store(f"sqlite:///{project.root}/.flagwarden/state.db")
    try:
        assert state.load(FLAG).killed
    finally:
        state.close()


def test_an_unreachable_audit_store_is_named_and_the_kill_still_goes_through(project: Project):
    from tests.servers.launchdarkly import free_port

    port = free_port()
    governed_project(project, audit=f"postgresql://fw:s3cret@127.0.0.1:{port}/db?password=s3cret")
    result = cli(project, "kill", FLAG, "--reason", "nulls")
    assert result.returncode == 0, result.stderr  # killed: the exit code tells the truth
    assert "cannot open the audit store: postgresql://" in result.stderr
    assert f"127.0.0.1:{port}/db" in result.stderr
    assert "OperationalError: connection failed" in result.stderr
    assert "its audit record is pending" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    store = open_state_store(f"sqlite:///{project.root}/.flagwarden/state.db")
    try:
        assert store.load(FLAG).killed
        (entry,) = store.pending_outbox()  # the record waits for the audit store
        assert entry.records[0]["data"]["action"] == "kill"
    finally:
        store.close()
