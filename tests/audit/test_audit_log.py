"""The audit log's hash chain: tampering is found and named; concurrent appends keep it whole."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys

import psycopg
import pytest

from flagwarden.audit.log import AuditLog
from tests.conftest import Project, governed_project


@pytest.fixture(params=["sqlite", "postgres"])
def audit_url(request: pytest.FixtureRequest, project: Project) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{project.root}/audit.db"
    return request.getfixturevalue("pg_url")


def execute(url: str, sql: str) -> None:
    """Tamper with the table directly, as someone with database access could."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)


def filled(url: str, n: int = 6) -> AuditLog:
    log = AuditLog(url)
    for i in range(n):
        log.append("transition", {"action": "advance", "i": i}, flag="f", actor="alice")
    return log


def test_intact_chain_verifies(audit_url):
    log = filled(audit_url)
    result = log.verify()
    assert (result.ok, result.checked) == (True, 6)
    assert result.head == list(log.records())[-1].hash
    log.close()


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "problem"),
    [
        ("UPDATE flagwarden_audit SET actor = 'mallory' WHERE seq = 3", 3, "modified"),
        (
            'UPDATE flagwarden_audit SET data = \'{"action":"rollback","i":4}\' WHERE seq = 4',
            4,
            "modified",
        ),
        ("DELETE FROM flagwarden_audit WHERE seq = 2", 2, "missing"),
        # Reorder: swap two records' positions.
        (
            "UPDATE flagwarden_audit SET seq = -4 WHERE seq = 4; "
            "UPDATE flagwarden_audit SET seq = 4 WHERE seq = 5; "
            "UPDATE flagwarden_audit SET seq = 5 WHERE seq = -4",
            4,
            "does not follow",
        ),
        # Delete one and renumber the rest, to hide the gap.
        (
            "DELETE FROM flagwarden_audit WHERE seq = 3; "
            "UPDATE flagwarden_audit SET seq = -(seq - 1) WHERE seq > 3; "
            "UPDATE flagwarden_audit SET seq = -seq WHERE seq < 0",
            3,
            "does not follow",
        ),
    ],
    ids=["edited-actor", "edited-data", "deleted", "reordered", "deleted-renumbered"],
)
def test_tampering_is_found_and_named(audit_url, tamper, bad_seq, problem):
    log = filled(audit_url)
    for statement in tamper.split("; "):
        execute(audit_url, statement)
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == bad_seq
    assert problem in result.problem
    log.close()


def _storm(url: str, worker: int, n: int) -> None:
    log = AuditLog(url)
    for i in range(n):
        log.append("violation", {"kind": "capped", "count": i, "worker": worker}, flag="f")
    log.close()


@pytest.mark.slow
def test_concurrent_append_storm_keeps_one_chain(audit_url):
    AuditLog(audit_url).close()  # create the table before the storm
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_storm, args=(audit_url, w, 60)) for w in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    log = AuditLog(audit_url)
    result = log.verify()
    assert (result.ok, result.checked) == (True, 360), result
    assert {r.data["worker"] for r in log.records()} == set(range(6))
    log.close()


def test_cli_audit_verify(project: Project):
    config = governed_project(project)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "flagwarden.cli", *a, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run("advance", "new-scoring-model", "--reason", "go").returncode == 0
    assert run("kill", "new-scoring-model", "--reason", "stop").returncode == 0
    ok = run("audit", "verify")
    assert ok.returncode == 0 and "2 records" in ok.stdout
    execute(
        f"sqlite:///{project.root}/.flagwarden/audit.db",
        "UPDATE flagwarden_audit SET actor = 'x' WHERE seq = 1",
    )
    bad = run("audit", "verify")
    assert bad.returncode == 1 and "record 1" in bad.stderr


def test_records_are_json_and_filterable(project: Project):
    log = filled(f"sqlite:///{project.root}/a.db", 3)
    log.append("outage", {"provider": "ld"})
    assert [r.kind for r in log.records(flag="f")] == ["transition"] * 3
    assert json.dumps(list(log.records())[-1].data) == '{"provider": "ld"}'
    log.close()
