"""Refs: an act recorded under a ref is recorded once, however many processes reconcile it."""

from __future__ import annotations

import multiprocessing
import sqlite3

import psycopg
import pytest

from flagwarden.audit.log import AuditLog
from tests.audit.test_audit_log import audit_url  # noqa: F401  (the fixture)
from tests.conftest import Project

# The table as flagwarden wrote it before refs and indexes existed.
OLD_SCHEMA = (
    "CREATE TABLE flagwarden_audit ("
    "seq BIGINT PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, flag TEXT, actor TEXT, "
    "data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
)


def test_append_with_a_known_ref_returns_the_existing_record(audit_url):  # noqa: F811
    log = AuditLog(audit_url)
    first = log.append("transition", {"action": "kill"}, flag="f", actor="alice", ref="intent:1")
    again = log.append("transition", {"action": "other"}, flag="g", actor="bob", ref="intent:1")
    assert again == first and again.ref == "intent:1"
    assert again.data == {"action": "kill", "ref": "intent:1"}  # the ref, hashed, in the data
    plain = log.append("outage", {"provider": "ld"})
    assert plain.ref is None and plain.seq == first.seq + 1
    assert [r.seq for r in log.records()] == [first.seq, plain.seq]
    assert log.find("intent:1") == first and log.find("intent:2") is None
    assert log.verify().ok
    log.close()


def test_the_ref_is_not_hashed(audit_url):  # noqa: F811
    """Editing a ref breaks nothing the chain protects: the ref is derived from hashed data."""
    log = AuditLog(audit_url)
    log.append("transition", {"action": "kill", "intent": "a"}, flag="f", ref="intent:a")
    execute(audit_url, "UPDATE flagwarden_audit SET ref = NULL")
    assert log.verify().ok and log.find("intent:a") is None
    log.close()


def test_refs_by_prefix(audit_url):  # noqa: F811
    log = AuditLog(audit_url)
    for ref in ["intent:1", "intent:2", "intent;3", "intent", "intenz:4", "other:1", "intent:é"]:
        log.append("transition", {"ref": ref}, flag="f", ref=ref)
    log.append("transition", {}, flag="f")
    assert log.refs("intent:") == {"intent:1", "intent:2", "intent:é"}
    assert log.refs("intent") == {"intent:1", "intent:2", "intent;3", "intent", "intent:é"}
    assert log.refs("nothing") == set()
    assert len(log.refs("")) == 7
    log.close()


def _append_ref(url: str, ref: str, start, results) -> None:  # type: ignore[no-untyped-def]
    log = AuditLog(url)
    start.wait()
    record = log.append(
        "transition",
        {"action": "kill", "pid": multiprocessing.current_process().name},
        flag="f",
        ref=ref,
    )
    results.put(record.seq)
    log.close()


def test_two_processes_appending_the_same_ref_append_once(audit_url):  # noqa: F811
    AuditLog(audit_url).close()  # the table exists before the race
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        start, results = ctx.Event(), ctx.Queue()
        workers = [
            ctx.Process(target=_append_ref, args=(audit_url, f"intent:{round_}", start, results))
            for _ in range(4)
        ]
        for w in workers:
            w.start()
        start.set()
        for w in workers:
            w.join(60)
            assert w.exitcode == 0
        seqs = {results.get(timeout=5) for _ in workers}
        assert len(seqs) == 1  # every process got the same, one record
    log = AuditLog(audit_url)
    assert [r.ref for r in log.records()] == [f"intent:{i}" for i in range(3)]
    assert log.verify().ok
    log.close()


def execute(url: str, *statements: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)


def _open(url: str, results) -> None:  # type: ignore[no-untyped-def]
    AuditLog(url).close()
    results.put("ok")


def test_an_older_table_is_migrated_once_by_concurrent_openers(audit_url):  # noqa: F811
    """A table from before refs gets the column and the indexes; records keep verifying."""
    from flagwarden.audit.log import GENESIS, AuditRecord

    at = "2026-01-01T00:00:00+00:00"
    digest = AuditRecord.digest(1, at, "outage", None, None, "{}", GENESIS)
    execute(
        audit_url,
        OLD_SCHEMA,
        "INSERT INTO flagwarden_audit VALUES "
        f"(1, '{at}', 'outage', NULL, NULL, '{{}}', '{GENESIS}', '{digest}')",
    )
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    openers = [ctx.Process(target=_open, args=(audit_url, results)) for _ in range(4)]
    for p in openers:
        p.start()
    for p in openers:
        p.join(60)
        assert p.exitcode == 0
    log = AuditLog(audit_url)
    record = log.append("transition", {}, flag="f", ref="intent:x")
    assert log.append("transition", {"again": 1}, flag="f", ref="intent:x") == record
    assert log.verify().ok and log.verify().checked == 2
    log.close()
    if audit_url.startswith("sqlite"):
        conn = sqlite3.connect(audit_url[len("sqlite:///") :])
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        conn.close()
    else:
        with psycopg.connect(audit_url) as conn:
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'flagwarden_audit' "
                    "AND schemaname = current_schema()"
                )
            }
    assert {
        "flagwarden_audit_ref",
        "flagwarden_audit_flag_seq",
        "flagwarden_audit_flag_kind_seq",
        "flagwarden_audit_kind_seq",
        "flagwarden_audit_at_seq",
    } <= names


def test_a_ref_is_unique_in_the_table_itself(project: Project):
    """Even a writer that skips the check cannot store a ref twice (the unique index)."""
    url = f"sqlite:///{project.root}/a.db"
    log = AuditLog(url)
    log.append("transition", {}, flag="f", ref="intent:1")
    with pytest.raises(sqlite3.IntegrityError):
        execute(
            url,
            "UPDATE flagwarden_audit SET ref = 'intent:1' WHERE seq = 1",
            "INSERT INTO flagwarden_audit SELECT seq + 1, at, kind, flag, actor, data, "
            "prev_hash, hash, ref, signature FROM flagwarden_audit",
        )
    log.close()
