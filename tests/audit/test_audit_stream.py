"""Reading the log in batches, by index: what records() selects, and unreadable records."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

from flagwarden.audit.log import BATCH, GENESIS, AuditLog, AuditRecord
from tests.audit.seed import seed
from tests.audit.test_audit_log import audit_url  # noqa: F401  (the fixture)
from tests.conftest import POLICY, Project, governed_project, run_cli

NOW = datetime.now(UTC)
FLAG = POLICY["flag"]


def test_records_filters_order_and_batches(audit_url):  # noqa: F811
    n = 2 * BATCH + 7  # crosses batch boundaries
    start = NOW - timedelta(hours=n)
    seed(
        audit_url,
        [
            (
                start + timedelta(hours=i),
                ("transition", "violation", "guard")[i % 3],
                ("a", "b", None)[i % 3 // 2 + i % 2] if i % 5 else None,
                {"i": i},
            )
            for i in range(n)
        ],
    )
    log = AuditLog(audit_url)
    everything = list(log.records())
    assert [r.data["i"] for r in everything] == list(range(n))
    assert [r.seq for r in log.records(newest_first=True, limit=3)] == [n, n - 1, n - 2]
    records = log.records(flag="a")
    assert list(records) == list(records)  # iterable again: each pass queries afresh
    assert [r.seq for r in records] == [r.seq for r in everything if r.flag == "a"]
    kinds = log.records(kind=("guard", "transition"))
    assert [r.seq for r in kinds] == [r.seq for r in everything if r.kind != "violation"]
    newest = [r.seq for r in log.records(kind=["guard", "transition"], newest_first=True)]
    assert newest == sorted((r.seq for r in everything if r.kind != "violation"), reverse=True)
    since, until = start + timedelta(hours=100), start + timedelta(hours=1500)
    window = log.records(since, "b", until=until, kind="violation")
    assert [r.seq for r in window] == [
        r.seq
        for r in everything
        if since <= r.at <= until and r.flag == "b" and r.kind == "violation"
    ]
    assert log.records(kind="outage").first() is None and not log.records(kind="outage")
    assert log.records(flag="a") and log.records(since=NOW + timedelta(days=1)).first() is None
    latest = log.records(flag="a", kind="transition", newest_first=True).first()
    assert latest == [r for r in everything if r.flag == "a" and r.kind == "transition"][-1]
    assert log.verify().ok and log.verify().checked == n
    log.close()


def _garbage(path: str, seq: int, data: str, *, rehash: bool) -> None:
    """Someone writes non-JSON into a record; with ``rehash`` they also recompute the chain."""
    conn = sqlite3.connect(path)
    conn.execute("UPDATE flagwarden_audit SET data = ? WHERE seq = ?", (data, seq))
    if rehash:
        prev = GENESIS
        rows = conn.execute(
            "SELECT seq, at, kind, flag, actor, data FROM flagwarden_audit ORDER BY seq"
        ).fetchall()
        for s, at, kind, flag, actor, body in rows:
            digest = AuditRecord.digest(s, at, kind, flag, actor, body, prev)
            conn.execute(
                "UPDATE flagwarden_audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                (prev, digest, s),
            )
            prev = digest
    conn.commit()
    conn.close()


def test_a_record_that_is_not_json_is_shown_as_unreadable(project: Project):
    config = governed_project(project, policy={"soak": "0s"})
    for action in ("advance", "advance", "pause"):
        assert run_cli(config, action, FLAG, "--reason", "go", actor="alice").returncode == 0
    db = str(project.root / ".flagwarden" / "audit.db")
    _garbage(db, 2, "{not json", rehash=False)
    log = AuditLog(f"sqlite:///{db}")
    bad = [r for r in log.records() if not r.readable]
    assert [(r.seq, r.data) for r in bad] == [(2, {})] and bad[0].data.raw == "{not json"
    assert log.verify().problem == "record 2 was modified (hash mismatch)"
    log.close()

    result = run_cli(config, "report", "--format", "json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["audit"]["unreadable_records"] == [
        {"seq": 2, "kind": "transition", "flag": FLAG, "problem": "its data is not JSON"}
    ]
    assert doc["audit"]["problem"] == (
        "record 2 was modified (hash mismatch); unreadable, left out of this report: "
        "record 2 (its data is not JSON)"
    )
    (flag,) = doc["flags"]
    assert [c["action"] for c in flag["changes"]] == ["advance", "pause"]
    md = run_cli(config, "report")
    assert md.returncode == 1 and "record 2 (its data is not JSON)" in md.stdout
    html = run_cli(config, "report", "--format", "html")
    assert html.returncode == 1 and "record 2 (its data is not JSON)" in html.stdout
    status = run_cli(config, "status", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["flags"][0]["last_change"]["action"] == "pause"

    # Garbage under a recomputed chain: the hashes agree, but the record no longer states the
    # change it records (verify names the state version), and the report does not agree.
    _garbage(db, 2, "[1, 2", rehash=True)
    verified = run_cli(config, "audit", "verify")
    assert verified.returncode == 1
    assert f"{FLAG} version 2: no audit record" in verified.stderr
    forged = run_cli(config, "report", "--format", "json")
    assert forged.returncode == 1
    audit = json.loads(forged.stdout)["audit"]
    assert audit["verified"] is False and audit["first_bad_record"] == 2
    assert (
        audit["problem"] == "unreadable, left out of this report: record 2 (its data is not JSON)"
    )
