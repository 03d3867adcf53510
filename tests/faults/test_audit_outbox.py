"""No change without its record: the audit records of a change are stored with it (the
state store's outbox) and reach the audit log even when the process dies in between or the
audit log cannot be written at the time; exit codes say whether the change took effect."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import flagwarden
from flagwarden.audit.log import AuditLog
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from tests.conftest import POLICY, Project, governed_project, run_cli, wait_for

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]

# Pause and resume as fast as one process can, forever: the test kills it at random points.
CHURN = """
import sys
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance

gov = Governance.open(load_settings(sys.argv[1]))
rollout = gov.rollout()
print("started", flush=True)
i = 0
while True:
    for action in ("pause", "resume"):
        getattr(rollout, action)(sys.argv[2], actor="churn", reason=f"churn {i}")
        i += 1
"""


def states_and_records(config: Path) -> tuple[int, set[int]]:
    """The flag's version, and the versions the audit log has a transition record for."""
    gov = Governance.open(load_settings(config))
    try:
        state = gov.rollout().state(FLAG)
        assert gov.audit is not None
        versions = {
            r.data["after"]["version"]
            for r in gov.audit.records(flag=FLAG)
            if r.kind == "transition"
        }
        return state.version, versions
    finally:
        gov.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_during_transitions_loses_no_record(
    project: Project, backend: str, request: pytest.FixtureRequest
):
    stores = {}
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
        stores = {"state": url, "audit": url}
    config = governed_project(project, **stores)
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    rng = random.Random(9)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills = 0
    # At least 12 kills, and on until over 100 transitions were made (a busy machine makes
    # fewer per process): each kill cut one at a random point.
    while kills < 12 or (kills < 60 and states_and_records(config)[0] <= 100):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHURN, str(config), FLAG],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    version, recorded = states_and_records(config)
    assert version > 100  # many transitions, each of them cut at a random point
    # The next command completes whatever the killed processes left in the outbox...
    result = run_cli(config, "audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    version_after, recorded = states_and_records(config)
    assert version_after == version
    # ...and then every state version has its record, exactly once.
    assert recorded == set(range(1, version + 1))
    gov = Governance.open(load_settings(config))
    try:
        assert gov.audit is not None
        transitions = [r for r in gov.audit.records(flag=FLAG) if r.kind == "transition"]
        assert len(transitions) == version
        assert gov.rollout().unrecorded() == []
    finally:
        gov.close()


def _refuse_writes(audit_db: Path) -> None:
    """The audit table refuses every insert from now on (as a read-only replica would)."""
    with sqlite3.connect(audit_db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON flagwarden_audit "
            "BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END"
        )


def _allow_writes(audit_db: Path) -> None:
    with sqlite3.connect(audit_db) as conn:
        conn.execute("DROP TRIGGER refuse")


def test_an_unwritable_audit_log_does_not_turn_a_kill_into_a_failure(
    project: Project, state_url: str
):
    """The records wait in whichever store holds the state (SQLite, Redis, PostgreSQL) while
    the audit log (SQLite here) refuses them."""
    config = governed_project(project, state=state_url)
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    audit_db = project.root / ".flagwarden" / "audit.db"
    _refuse_writes(audit_db)
    result = run_cli(config, "kill", FLAG, "--reason", "null spike")
    assert result.returncode == 0, result.stderr  # the flag IS killed: the exit code says so
    assert "killed" in result.stdout and "pending" in result.stderr
    status = json.loads(run_cli(config, "status", FLAG, "--json").stdout)
    assert status["flags"][0]["killed"] is True
    # A refused change is still a failure: nothing changed.
    refused = run_cli(config, "advance", FLAG, "--reason", "x")
    assert refused.returncode == 1
    _allow_writes(audit_db)
    result = run_cli(config, "audit", "verify")
    assert result.returncode == 0, result.stderr
    log = AuditLog(f"sqlite:///{audit_db}")
    try:
        kills = [r for r in log.records(flag=FLAG) if r.data.get("action") == "kill"]
        assert len(kills) == 1 and kills[0].data["reason"] == "null spike"
    finally:
        log.close()


def test_a_pending_record_is_said_by_report_and_status_and_a_start_recovers_it(
    project: Project,
):
    config = governed_project(project)
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    audit_db = project.root / ".flagwarden" / "audit.db"
    _refuse_writes(audit_db)
    assert run_cli(config, "kill", FLAG, "--reason", "null spike").returncode == 0

    # While the record cannot be written, the report does not call the log verified.
    shown = run_cli(config, "report", "--format", "json")
    assert shown.returncode == 1, shown.stderr  # written, and said to be incomplete
    assert "error: the audit log is incomplete: 1 change record(s)" in shown.stderr
    audit = json.loads(shown.stdout)["audit"]
    assert audit["verified"] is False and audit["pending_records"] == 1
    assert "1 change record(s) still wait in the state store's outbox" in audit["problem"]
    assert "change records still wait in the outbox" in shown.stderr
    md = run_cli(config, "report", "--format", "md").stdout
    assert "- Audit chain: **INCOMPLETE**" in md
    status = run_cli(config, "status", FLAG)
    assert status.returncode == 0 and "change records still wait in the outbox" in status.stderr

    # Writable again: a worker's start writes it (on a thread of its own), before any
    # transition or verify.
    _allow_writes(audit_db)
    flagwarden.configure(config)
    log = AuditLog(f"sqlite:///{audit_db}")
    try:

        def kills() -> list[Any]:
            return [r for r in log.records(flag=FLAG) if r.data.get("action") == "kill"]

        wait_for(lambda: kills())
        (kill,) = kills()
        assert kill.data["reason"] == "null spike"
    finally:
        log.close()
        flagwarden.shutdown()
    audit = json.loads(run_cli(config, "report", "--format", "json").stdout)["audit"]
    assert audit["verified"] is True and audit["pending_records"] == 0


def test_an_audit_log_that_cannot_be_opened_does_not_block_a_kill(project: Project, pg_url: str):
    """Every PostgreSQL transaction read-only: the audit log cannot even create its table."""
    read_only = pg_url.replace("options=", "options=-cdefault_transaction_read_only%3Don%20")
    config = governed_project(project, audit=read_only)
    result = run_cli(config, "kill", FLAG, "--reason", "audit db is read-only")
    assert result.returncode == 0, result.stderr
    assert "pending" in result.stderr
    config = governed_project(project, audit=pg_url)
    result = run_cli(config, "audit", "verify")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_url) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM flagwarden_audit WHERE kind = 'transition'"
        ).fetchone()
    assert count == 1


def test_an_actor_and_reason_that_are_not_utf8_are_recorded_not_refused(project: Project):
    config = governed_project(project)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flagwarden.cli",
            "kill",
            FLAG,
            "--reason",
            os.fsdecode(b"r\xe9ason"),  # latin-1 from an old terminal
            "--actor",
            os.fsdecode(b"ops-\xff\xfe"),
            "-c",
            str(config),
        ],
        capture_output=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    log = AuditLog(f"sqlite:///{project.root / '.flagwarden' / 'audit.db'}")
    try:
        (record,) = [r for r in log.records(flag=FLAG) if r.kind == "transition"]
        assert record.actor == "ops-\ufffd\ufffd"
        assert record.data["reason"] == "r\ufffdason"
    finally:
        log.close()
    assert run_cli(config, "audit", "verify").returncode == 0


def test_an_unreadable_outbox_entry_does_not_fail_a_kill_or_the_watch(project: Project):
    config = governed_project(project)
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    with sqlite3.connect(project.root / ".flagwarden" / "state.db") as conn:
        conn.execute(
            "INSERT INTO flagwarden_outbox (ref, flag, created_at, data) "
            "VALUES ('junk', 'x', '2026-01-01T00:00:00+00:00', '{\"ref\": \"junk\"}')"
        )
    result = run_cli(config, "kill", FLAG, "--reason", "nulls")
    assert result.returncode == 0, result.stderr
    assert "a flagwarden bug" not in result.stderr
    assert run_cli(config, "watch", "--once").returncode == 0
    verified = run_cli(config, "audit", "verify")
    assert verified.returncode == 0, verified.stderr  # the kill and its record are whole


def test_a_change_that_landed_although_its_answer_said_no_is_taken(project: Project):
    """Redis retries a script whose answer was lost: the retry finds the change already made
    and answers no. The change's ref tells that it landed: done, not "nothing changed"."""
    from flagwarden.governance.changes import ChangeRecorder

    config = governed_project(project)
    gov = Governance.open(load_settings(config))
    try:
        assert gov.store is not None
        recorder = ChangeRecorder(gov.store, gov.audit)
        before = gov.rollout().state(FLAG)
        after = before.changed(actor="t", reason="kill", killed=True)
        records = [{"kind": "transition", "data": {"action": "kill"}, "actor": "t"}]
        first = recorder.entry(before, after, records)
        assert gov.store.compare_and_set(after, first)  # the first try landed
        entry = recorder.store_change(before, after, records)  # the retry is refused...
        assert entry is not None  # ...and the change is known to be stored
        other = before.changed(actor="t", reason="pause", paused=True)
        assert recorder.store_change(before, other, records) is None  # really refused
    finally:
        gov.close()
