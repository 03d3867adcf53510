"""Archive cuts: old records move to a file, the live chain keeps verifying, the file joins it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flagwarden.audit.archive import ArchiveError, archive, verify_archives
from flagwarden.audit.log import AuditLog
from tests.audit.seed import seed
from tests.audit.test_audit_log import audit_url  # noqa: F401  (the fixture)
from tests.conftest import Project, governed_project, run_cli

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def history(url: str, days: int = 10) -> None:
    """One record a day for ``days`` days, ending two days ago; then one written now."""
    seed(
        url,
        [
            (NOW - (days + 2 - i) * DAY, "transition", "f", {"action": "advance", "i": i})
            for i in range(days)
        ],
    )
    log = AuditLog(url)
    log.append("outage", {"provider": "ld"})
    log.close()


def test_archive_moves_old_records_and_the_chain_still_verifies(audit_url, tmp_path: Path):  # noqa: F811
    history(audit_url)
    log = AuditLog(audit_url)
    cut_at = NOW - 7 * DAY  # records 1..5 are older (12, 11, 10, 9, 8 days ago)
    done = archive(log, cut_at, tmp_path / "a1.jsonl", actor="alice")
    assert done is not None and (done.count, done.first_seq, done.last_seq) == (5, 1, 5)
    assert done.record.kind == "archive" and done.record.seq == 12
    assert done.record.data["last_seq"] == 5 and done.record.data["last_hash"] == done.head
    assert done.record.data["file"] == "a1.jsonl" and done.record.data["count"] == 5
    assert [r.seq for r in log.records()] == [6, 7, 8, 9, 10, 11, 12]
    result = log.verify()
    assert (result.ok, result.checked, result.archived_through) == (True, 7, 5), result

    lines = (tmp_path / "a1.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    manifest = json.loads(lines[-1])["manifest"]
    assert manifest["sha256"] == hashlib.sha256(b"".join(lines[:-1])).hexdigest()
    assert (manifest["count"], manifest["first_seq"], manifest["last_seq"]) == (5, 1, 5)
    assert manifest["head"] == done.head and manifest["signature"] is None
    first = json.loads(lines[0])
    assert set(first) == {
        "seq", "at", "kind", "flag", "actor", "data", "prev_hash", "hash", "ref", "signature"
    }  # fmt: skip
    assert json.loads(first["data"]) == {"action": "advance", "i": 0}

    # A second cut archives the rest of the old records and the first archive record... no:
    # only what is older than the cut; the files together join the live chain.
    done2 = archive(log, NOW - 3 * DAY, tmp_path / "a2.jsonl", actor="alice")
    assert done2 is not None and (done2.first_seq, done2.last_seq) == (6, 9)
    assert log.verify().ok and log.verify().archived_through == 9
    check = verify_archives(log, [tmp_path / "a2.jsonl", tmp_path / "a1.jsonl"])
    assert (check.ok, check.files, check.records, check.first_seq, check.last_seq) == (
        True, 2, 9, 1, 9
    )  # fmt: skip
    missing = verify_archives(log, [tmp_path / "a1.jsonl"])
    assert not missing.ok and "missing" in missing.problem
    log.close()


def test_a_tampered_archive_file_is_named(project: Project, tmp_path: Path):
    url = f"sqlite:///{project.root}/audit.db"
    history(url)
    log = AuditLog(url)
    path = tmp_path / "a.jsonl"
    archive(log, NOW - 7 * DAY, path, actor="alice")
    original = path.read_text()
    lines = original.splitlines(keepends=True)
    edited = json.loads(lines[2])
    edited["actor"] = "mallory"
    path.write_text("".join([*lines[:2], json.dumps(edited) + "\n", *lines[3:]]))
    bad = verify_archives(log, [path])
    assert not bad.ok and "a.jsonl:3: record 3 was modified" in bad.problem
    path.write_text("".join(lines[:-1]))  # the manifest cut off
    assert "no manifest" in verify_archives(log, [path]).problem
    # Rewritten consistently (hashes and manifest recomputed): it no longer joins the chain.
    from tests.audit.seed import seed as reseed

    forged = f"sqlite:///{tmp_path}/forged.db"
    reseed(
        forged, [(NOW - 20 * DAY, "transition", "f", {"action": "kill", "i": i}) for i in range(5)]
    )
    forged_log = AuditLog(forged)
    archive(forged_log, NOW - 7 * DAY, tmp_path / "forged.jsonl", actor="mallory")
    forged_log.close()
    joined = verify_archives(log, [tmp_path / "forged.jsonl"])
    assert not joined.ok and "does not join the live log" in joined.problem
    log.close()


def test_archive_refuses_the_future_the_last_day_and_a_broken_chain(project: Project):
    url = f"sqlite:///{project.root}/audit.db"
    history(url)
    log = AuditLog(url)
    with pytest.raises(ArchiveError, match="in the future"):
        archive(log, NOW + DAY, project.root / "x.jsonl", actor="a")
    with pytest.raises(ArchiveError, match="within the last 24 hours"):
        archive(log, NOW - timedelta(hours=2), project.root / "x.jsonl", actor="a")
    assert archive(log, NOW - 30 * DAY, project.root / "x.jsonl", actor="a") is None
    conn = sqlite3.connect(project.root / "audit.db")
    conn.execute("UPDATE flagwarden_audit SET actor = 'mallory' WHERE seq = 2")
    conn.commit()
    conn.close()
    with pytest.raises(ArchiveError, match="record 2 was modified"):
        archive(log, NOW - 7 * DAY, project.root / "x.jsonl", actor="a")
    assert not (project.root / "x.jsonl").exists()
    assert len(list(log.records())) == 11  # nothing moved: the evidence stays
    log.close()


def test_deleting_old_records_without_an_archive_is_still_found(project: Project):
    url = f"sqlite:///{project.root}/audit.db"
    history(url)
    conn = sqlite3.connect(project.root / "audit.db")
    conn.execute("DELETE FROM flagwarden_audit WHERE seq <= 3")
    conn.commit()
    conn.close()
    log = AuditLog(url)
    result = log.verify()
    assert not result.ok and result.first_bad_seq == 1 and "missing" in result.problem
    log.close()


def test_cli_archive_and_verify(project: Project):
    config = governed_project(project)
    url = f"sqlite:///{project.root}/.flagwarden/audit.db"
    history(url)
    run = lambda *a: run_cli(config, *a, actor="alice")  # noqa: E731
    future = run("audit", "archive", "--before", (NOW + DAY).date().isoformat())
    assert future.returncode == 1 and "in the future" in future.stderr
    assert run("audit", "archive", "--before", "yesterday").returncode == 2
    out = project.root / "old.jsonl"
    cut = (NOW - 7.5 * DAY).isoformat()
    moved = run("audit", "archive", "--before", cut, "-o", str(out))
    assert moved.returncode == 0, moved.stderr
    assert "archived 5 records (1-5)" in moved.stdout
    again = run("audit", "archive", "--before", "30d", "-o", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    ok = run("audit", "verify")
    assert ok.returncode == 0 and "7 records (records 1-5 archived)" in ok.stdout
    joined = run("audit", "verify", "--archive", str(out))
    assert joined.returncode == 0, joined.stderr
    assert "5 archived records in 1 file (records 1-5) verify and join" in joined.stdout
    (project.root / "old.jsonl").write_text(out.read_text().replace('"i\\":1', '"i\\":7'))
    bad = run("audit", "verify", "--archive", str(out))
    assert bad.returncode == 1 and "record 2 was modified" in bad.stderr
    # The archive record itself is chained: editing what it says breaks the live chain.
    conn = sqlite3.connect(project.root / ".flagwarden" / "audit.db")
    conn.execute(
        "UPDATE flagwarden_audit SET data = replace(data, '\"last_seq\":5', '\"last_seq\":4')"
    )
    conn.commit()
    conn.close()
    broken = run("audit", "verify")
    assert broken.returncode == 1 and "record 5 is missing" in broken.stderr
