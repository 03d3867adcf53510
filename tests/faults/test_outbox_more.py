"""More of "no change without its record": an automatic rollback while the audit log refuses
writes, reconcilers racing each other over the same outbox, and `audit verify` across an
archive cut. Real CLI processes, real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

import flagwarden
from flagwarden.audit.log import GENESIS, AuditLog, AuditRecord
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from tests.conftest import POLICY, Project, governed_project, run_cli

FLAG = POLICY["flag"]
OTHER = "fraud-rules-v3"
ROOT = Path(__file__).resolve().parents[2]
NULL_GUARD = {"name": "null-rate", "metric": "null_rate", "max": 0.05, "min_samples": 10}
REFUSAL = "attempt to write a readonly database"

# `flagwarden ARGS` through the CLI's own entry point, started only when the gate file appears:
# the interpreter and flagwarden are already loaded, so the processes really run together.
GATED_CLI = """
import os, sys, time
from flagwarden.cli import main
# The CLI imports its commands' modules lazily: load what `audit verify` runs on beforehand.
import flagwarden.cli.audit_keys, flagwarden.audit.verify, flagwarden.governance.project
import flagwarden.governance.rollout

gate = sys.argv.pop(1)
print("ready", flush=True)
while not os.path.exists(gate):
    time.sleep(0.001)
main()
"""


# -- helpers ------------------------------------------------------------------------------


def _refuse_inserts(backend: str, where: str) -> None:
    """From now on the audit table refuses every insert (as a read-only replica would)."""
    if backend == "sqlite":
        with sqlite3.connect(where) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON flagwarden_audit "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )
        return
    with psycopg.connect(where, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION flagwarden_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON flagwarden_audit "
            "FOR EACH ROW EXECUTE FUNCTION flagwarden_test_refuse()"
        )


def _allow_inserts(backend: str, where: str) -> None:
    if backend == "sqlite":
        with sqlite3.connect(where) as conn:
            conn.execute("DROP TRIGGER refuse")
        return
    with psycopg.connect(where, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse ON flagwarden_audit")


def _transitions(audit_url: str, flag: str = FLAG) -> list[AuditRecord]:
    log = AuditLog(audit_url)
    try:
        return [r for r in log.records(flag=flag) if r.kind == "transition"]
    finally:
        log.close()


def _state(config: Path, flag: str = FLAG) -> dict:
    result = run_cli(config, "status", flag, "--json")
    assert result.returncode == 0, result.stderr
    (state,) = json.loads(result.stdout)["flags"]
    return state


def _add_policy(project: Project, flag: str) -> None:
    doc = {**POLICY, "flag": flag, "description": f"{flag}, a second governed flag"}
    (project.root / "policies" / f"{flag}.yaml").write_text(yaml.safe_dump(doc))


def _age(audit_db: Path, state_db: Path, by: timedelta) -> None:
    """Move everything that happened so far ``by`` into the past, as if the project had been
    running that long: every audit record's time (the chain rehashed, as it would have been
    written then) and every stored state's change times."""
    with sqlite3.connect(audit_db) as conn:
        rows = conn.execute(
            "SELECT seq, at, kind, flag, actor, data FROM flagwarden_audit ORDER BY seq"
        ).fetchall()
        prev = GENESIS
        for seq, at, kind, flag, actor, data in rows:
            moved = (datetime.fromisoformat(at) - by).isoformat()
            digest = AuditRecord.digest(seq, moved, kind, flag, actor, data, prev)
            conn.execute(
                "UPDATE flagwarden_audit SET at = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (moved, prev, digest, seq),
            )
            prev = digest
    with sqlite3.connect(state_db) as conn:
        for flag, data in conn.execute(
            "SELECT flag, data FROM flagwarden_state WHERE flag != ''"
        ).fetchall():
            doc = json.loads(data)
            for key in ("updated_at", "stage_entered_at"):
                if doc.get(key):
                    doc[key] = (datetime.fromisoformat(doc[key]) - by).isoformat()
            conn.execute(
                "UPDATE flagwarden_state SET data = ? WHERE flag = ?", (json.dumps(doc), flag)
            )


# -- 1. the red button works while the log is down ----------------------------------------


def test_an_unwritable_audit_log_does_not_stop_an_automatic_rollback(project: Project):
    config = governed_project(project, policy={"guards": [NULL_GUARD]})
    audit_db = project.root / ".flagwarden" / "audit.db"
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    flagwarden.configure(config)  # the pipeline, reporting what it measures at 1%
    flagwarden.record_metric(FLAG, "null_rate", 0.001, variant="control", count=500)
    flagwarden.record_metric(FLAG, "null_rate", 0.4, variant="treatment", count=500)
    _refuse_inserts("sqlite", str(audit_db))

    watched = run_cli(config, "watch", "--once", "--json")
    assert watched.returncode == 3, watched.stdout + watched.stderr  # it acted
    (decision,) = json.loads(watched.stdout)
    assert decision["action"] == "rollback", decision
    assert decision["guards"][0]["verdict"] == "breach"
    state = _state(config)
    assert (state["stage"], state["killed"], state["version"]) == (0, False, 2)
    # Nothing reached the audit log: the rollback's record waits in the outbox.
    assert [r.data["after"]["version"] for r in _transitions(f"sqlite:///{audit_db}")] == [1]

    _allow_inserts("sqlite", str(audit_db))
    verified = run_cli(config, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "wrote 1 record that waited" in verified.stderr + verified.stdout
    records = _transitions(f"sqlite:///{audit_db}")
    assert [r.data["after"]["version"] for r in records] == [1, 2]
    rollback = records[-1]
    assert rollback.actor == "flagwarden-watch" and rollback.data["action"] == "rollback"
    assert rollback.data["after"]["stage"] == 0 and "null-rate=0.4" in rollback.data["reason"]
    # The verdicts that led to it travel in the rollback's own record.
    assert rollback.data["guards"][0]["guard"] == "null-rate"
    assert rollback.data["guards"][0]["verdict"] == "breach"


# -- 2. reconcilers racing over one outbox --------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_reconcilers_write_each_record_once(
    project: Project, backend: str, request: pytest.FixtureRequest
):
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
        config = governed_project(project, state=url, audit=url)
        audit_url, where = url, url
    else:
        config = governed_project(project)
        audit_db = project.root / ".flagwarden" / "audit.db"
        audit_url, where = f"sqlite:///{audit_db}", str(audit_db)
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0  # version 1
    _refuse_inserts(backend, where)

    gov = Governance.open(load_settings(config))
    try:
        rollout = gov.rollout()
        for i in range(20):  # versions 2..21, each taking effect with its record pending
            done = getattr(rollout, ("pause", "resume")[i % 2])(
                FLAG, actor="ops", reason=f"change {i}"
            )
            assert done.changed and done.audit_error is not None, done
            assert REFUSAL in done.audit_error
        assert len(gov.store.pending_outbox()) == 20
    finally:
        gov.close()
    version = 21
    assert _state(config)["version"] == version
    assert len(_transitions(audit_url)) == 1
    _allow_inserts(backend, where)

    gate = project.root / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATED_CLI, str(gate), "audit", "verify", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        gate.touch()  # all three at once (and none left waiting if one did not start)
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out, err))
    for code, out, err in results:
        assert code == 0, out + err

    records = _transitions(audit_url)
    versions = Counter(r.data["after"]["version"] for r in records)
    assert sorted(versions) == list(range(1, version + 1))
    assert max(versions.values()) == 1, {v: n for v, n in versions.items() if n > 1}
    refs = Counter(r.ref for r in records)
    assert len(refs) == version and None not in refs
    # Between them they report the 20 pending records written (a process that found a record
    # already written by another counts it too, so the sum can be more); the outbox is empty.
    said = [re.search(r"wrote (\d+) records?", out + err) for _, out, err in results]
    assert sum(int(m.group(1)) for m in said if m) >= 20, results
    gov = Governance.open(load_settings(config))
    try:
        assert gov.store.pending_outbox() == []
        assert gov.rollout().unrecorded() == []
    finally:
        gov.close()
    again = run_cli(config, "audit", "verify")
    assert again.returncode == 0 and "wrote" not in again.stdout + again.stderr


# -- 3. verify across an archive cut --------------------------------------------------------


def test_verify_after_an_archive_does_not_call_archived_changes_missing(project: Project):
    config = governed_project(project)
    _add_policy(project, OTHER)
    audit_db = project.root / ".flagwarden" / "audit.db"
    state_db = project.root / ".flagwarden" / "state.db"
    run = lambda *a: run_cli(config, *a, actor="alice")  # noqa: E731
    assert run("advance", FLAG, "--reason", "go").returncode == 0  # version 1
    _age(audit_db, state_db, timedelta(days=10))  # ...ten days ago
    aged = run("audit", "verify")
    assert aged.returncode == 0, aged.stdout + aged.stderr  # a consistent history

    cut = (datetime.now(UTC) - timedelta(days=5)).isoformat()
    moved = run("audit", "archive", "--before", cut, "-o", str(project.root / "old.jsonl"))
    assert moved.returncode == 0, moved.stderr
    assert "archived 1 record (1-1)" in moved.stdout
    assert _transitions(f"sqlite:///{audit_db}") == []  # the flag's last change: archived
    assert _state(config)["version"] == 1

    archived = run("audit", "verify")
    assert archived.returncode == 0, archived.stdout + archived.stderr
    assert "no audit record" not in archived.stderr

    # A change after the cut chains back (prev_ref, prev_at) into the archived one: fine too.
    assert run("pause", FLAG, "--reason", "hold on").returncode == 0  # FLAG version 2
    chained = run("audit", "verify")
    assert chained.returncode == 0, chained.stdout + chained.stderr

    # A change after the cut whose record is deleted by hand (the newest record, so the chain
    # itself still verifies) is named: the archive excuses only what is older than the cut.
    assert run("advance", OTHER, "--reason", "go").returncode == 0  # OTHER version 1
    with sqlite3.connect(audit_db) as conn:
        (seq, flag) = conn.execute(
            "SELECT seq, flag FROM flagwarden_audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        assert flag == OTHER
        conn.execute("DELETE FROM flagwarden_audit WHERE seq = ?", (seq,))
    missing = run("audit", "verify")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert f"{OTHER} version 1: no audit record" in missing.stderr
    assert "1 state version(s) have no audit record" in missing.stderr
    assert f"{FLAG} version" not in missing.stderr
