"""Signed audit logs: every record carries an Ed25519 signature of its hash, so someone with
write access to the database but not the key cannot edit, delete, reorder, forge or rewrite
records unnoticed; exports and archives verify offline; keys never leak into messages."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flagwarden.audit.archive import archive, verify_archives
from flagwarden.audit.export import export, verify_file
from flagwarden.audit.log import GENESIS, AuditError, AuditLog, AuditRecord
from flagwarden.audit.signing import (
    Signer,
    fingerprint,
    load_private_key,
    load_public_key,
    public_key_from_settings,
    signature_ok,
    signer_from_settings,
    write_keypair,
)
from flagwarden.config import load_settings
from flagwarden.errors import ConfigError
from tests.audit.seed import seed
from tests.audit.test_audit_log import audit_url, execute  # noqa: F401  (the fixture)
from tests.conftest import POLICY, ROOT, Project, governed_project, run_cli

NOW = datetime.now(UTC)
FLAG = "new-scoring-model"


def new_signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def signed_log(url: str, signer: Signer | None, n: int = 6) -> AuditLog:
    log = AuditLog(url, signer=signer)
    for i in range(n):
        log.append("transition", {"action": "advance", "i": i}, flag="f", actor="alice")
    return log


def _connect(url: str) -> tuple[Any, str]:
    if url.startswith("sqlite"):
        return sqlite3.connect(url[len("sqlite:///") :]), "?"
    return psycopg.connect(url), "%s"


def rows(url: str) -> list[tuple[Any, ...]]:
    conn, _ = _connect(url)
    try:
        return list(
            conn.execute(
                "SELECT seq, at, kind, flag, actor, data, prev_hash, hash, ref, signature "
                "FROM flagwarden_audit ORDER BY seq"
            ).fetchall()
        )
    finally:
        conn.close()


def rewrite(url: str, edits: dict[int, str], signer: Signer | None) -> None:
    """Rewrite the whole chain consistently, as someone with database access but not the
    key would: new data for ``edits``, every hash recomputed, signatures by ``signer`` (a
    key of the attacker's own) or none."""
    conn, ph = _connect(url)
    try:
        prev = GENESIS
        for seq, at, kind, flag, actor, data, _p, _h, _ref, _sig in rows(url):
            data = edits.get(seq, data)
            digest = AuditRecord.digest(seq, at, kind, flag, actor, data, prev)
            signature = signer.sign(digest) if signer is not None else None
            conn.execute(
                f"UPDATE flagwarden_audit SET data = {ph}, prev_hash = {ph}, hash = {ph}, "
                f"signature = {ph} WHERE seq = {ph}",
                (data, prev, digest, signature, seq),
            )
            prev = digest
        conn.commit()
    finally:
        conn.close()


def forge_append(url: str, signer: Signer | None) -> int:
    """Append a record that chains correctly onto the last one, signed by ``signer``."""
    *_, last = rows(url)
    seq, prev = last[0] + 1, last[7]
    at, body = datetime.now(UTC).isoformat(), '{"action":"advance","to":100}'
    digest = AuditRecord.digest(seq, at, "transition", "f", "mallory", body, prev)
    signature = signer.sign(digest) if signer is not None else None
    conn, ph = _connect(url)
    try:
        conn.execute(
            "INSERT INTO flagwarden_audit (seq, at, kind, flag, actor, data, prev_hash, hash, "
            f"signature) VALUES ({', '.join([ph] * 9)})",
            (seq, at, "transition", "f", "mallory", body, prev, digest, signature),
        )
        conn.commit()
    finally:
        conn.close()
    return seq


# -- signing and verifying -----------------------------------------------------------------


def test_every_record_is_signed_and_the_log_verifies_with_the_key(audit_url):  # noqa: F811
    signer = new_signer()
    log = signed_log(audit_url, signer)
    records = list(log.records())
    assert len(records) == 6
    for record in records:
        assert record.signature is not None and len(record.signature) == 128
        assert signature_ok(signer.public_key, record.hash, record.signature)
    # The signature is Ed25519 over the hash's 64 hex characters, as documented.
    signer.public_key.verify(bytes.fromhex(records[0].signature), records[0].hash.encode())
    result = log.verify(signer.public_key)
    assert (result.ok, result.checked, result.signed) == (True, 6, 6), result
    assert result.signatures == "verified" and result.key == fingerprint(signer.public_key)
    unkeyed = log.verify()
    assert unkeyed.ok and unkeyed.signatures == "not checked" and unkeyed.signed == 6
    log.close()


def test_an_unsigned_log_says_unsigned_and_fails_with_a_key(audit_url):  # noqa: F811
    log = signed_log(audit_url, None, 3)
    result = log.verify()
    assert result.ok and result.signed == 0 and result.signatures == "unsigned"
    keyed = log.verify(new_signer().public_key)
    assert not keyed.ok and keyed.first_bad_seq == 1
    assert keyed.problem == "record 1 is not signed"
    assert keyed.signatures == "failed: record 1 is not signed"
    log.close()


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "problem"),
    [
        (
            'UPDATE flagwarden_audit SET data = \'{"action":"rollback","i":3}\' WHERE seq = 3',
            3,
            "modified",
        ),
        ("DELETE FROM flagwarden_audit WHERE seq = 2", 2, "missing"),
        (
            "UPDATE flagwarden_audit SET seq = -4 WHERE seq = 4; "
            "UPDATE flagwarden_audit SET seq = 4 WHERE seq = 5; "
            "UPDATE flagwarden_audit SET seq = 5 WHERE seq = -4",
            4,
            "does not follow",
        ),
        ("UPDATE flagwarden_audit SET signature = NULL WHERE seq = 5", 5, "is not signed"),
        (
            "UPDATE flagwarden_audit SET signature = "
            "(SELECT signature FROM flagwarden_audit WHERE seq = 1) WHERE seq = 2",
            2,
            "signature does not verify",
        ),
    ],
    ids=["edited", "deleted", "reordered", "signature-removed", "signature-moved"],
)
def test_direct_tampering_is_found_with_the_key(audit_url, tamper, bad_seq, problem):  # noqa: F811
    signer = new_signer()
    log = signed_log(audit_url, signer)
    for statement in tamper.split("; "):
        execute(audit_url, statement)
    result = log.verify(signer.public_key)
    assert not result.ok and result.first_bad_seq == bad_seq, result
    assert problem in result.problem
    assert result.signatures.startswith("failed: ")
    log.close()


@pytest.mark.parametrize("forger", ["unsigned", "other-key"])
def test_a_forged_record_appended_is_found(audit_url, forger):  # noqa: F811
    signer = new_signer()
    log = signed_log(audit_url, signer)
    seq = forge_append(audit_url, None if forger == "unsigned" else new_signer())
    assert log.verify().ok  # the hash chain alone cannot tell
    result = log.verify(signer.public_key)
    assert not result.ok and result.first_bad_seq == seq == 7
    assert result.problem == (
        "record 7 is not signed"
        if forger == "unsigned"
        else "record 7's signature does not verify (forged, or made with another key)"
    )
    log.close()


@pytest.mark.parametrize("forger", ["unsigned", "other-key"])
def test_a_consistent_rewrite_without_the_key_is_found(audit_url, forger):  # noqa: F811
    signer = new_signer()
    log = signed_log(audit_url, signer)
    rewrite(
        audit_url,
        {2: '{"action":"advance","i":99}'},
        None if forger == "unsigned" else new_signer(),
    )
    assert log.verify().ok  # every hash was recomputed: the chain alone says nothing
    assert list(log.records())[1].data == {"action": "advance", "i": 99}
    result = log.verify(signer.public_key)
    assert not result.ok and result.first_bad_seq == 1  # every record was re-signed or not
    log.close()


def test_a_record_deleted_and_the_rest_renumbered_and_rehashed_is_found(audit_url):  # noqa: F811
    signer = new_signer()
    log = signed_log(audit_url, signer)
    execute(audit_url, "DELETE FROM flagwarden_audit WHERE seq = 3")
    execute(audit_url, "UPDATE flagwarden_audit SET seq = -(seq - 1) WHERE seq > 3")
    execute(audit_url, "UPDATE flagwarden_audit SET seq = -seq WHERE seq < 0")
    rewrite(audit_url, {}, None)  # hashes recomputed; old signatures cannot be kept valid
    assert log.verify().ok and log.verify().checked == 5
    result = log.verify(signer.public_key)
    assert not result.ok and result.first_bad_seq == 1 and "not signed" in result.problem
    log.close()


def test_truncating_the_newest_records_is_not_caught_by_signatures_alone(
    audit_url,  # noqa: F811
    tmp_path: Path,
):
    """What docs/audit.md says signatures cannot catch: a copy kept elsewhere does."""
    signer = new_signer()
    log = signed_log(audit_url, signer)
    export(log, tmp_path / "copy.jsonl")
    execute(audit_url, "DELETE FROM flagwarden_audit WHERE seq = 6")
    truncated = log.verify(signer.public_key)
    assert truncated.ok and truncated.checked == 5  # still a valid, signed prefix
    saved = verify_file(tmp_path / "copy.jsonl", signer.public_key)
    assert saved.ok and saved.last_seq == 6 and saved.head != truncated.head  # the copy shows it
    log.close()


# -- migration -----------------------------------------------------------------------------

# The table as flagwarden wrote it before signatures (refs and indexes already there).
BEFORE_SIGNATURES = (
    "CREATE TABLE flagwarden_audit ("
    "seq BIGINT PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, flag TEXT, actor TEXT, "
    "data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, ref TEXT)"
)


def test_an_older_table_gets_the_signature_column(audit_url):  # noqa: F811
    at = "2026-01-01T00:00:00+00:00"
    digest = AuditRecord.digest(1, at, "outage", None, None, "{}", GENESIS)
    execute(audit_url, BEFORE_SIGNATURES)
    execute(
        audit_url,
        "INSERT INTO flagwarden_audit VALUES "
        f"(1, '{at}', 'outage', NULL, NULL, '{{}}', '{GENESIS}', '{digest}', NULL)",
    )
    signer = new_signer()
    log = AuditLog(audit_url, signer=signer)
    record = log.append("transition", {"action": "kill"}, flag="f", actor="alice")
    assert record.seq == 2 and signature_ok(signer.public_key, record.hash, record.signature)
    old, new = list(log.records())
    assert old.signature is None and new.signature == record.signature
    unkeyed = log.verify()
    assert unkeyed.ok and (unkeyed.checked, unkeyed.signed) == (2, 1)
    assert unkeyed.signatures == "not checked"
    keyed = log.verify(signer.public_key)  # signing turned on later: the old record is not
    assert not keyed.ok and keyed.problem == "record 1 is not signed"
    log.close()
    AuditLog(audit_url).close()  # opening again changes nothing
    assert rows(audit_url)[1][9] == record.signature


# -- archives and exports ------------------------------------------------------------------


def test_archive_manifests_are_signed_and_vouch_for_unsigned_old_records(
    audit_url,  # noqa: F811
    tmp_path: Path,
):
    """The way onto signing for an existing log: archive what was written before the key."""
    seed(
        audit_url,
        [(NOW - (12 - i) * timedelta(days=1), "transition", "f", {"i": i}) for i in range(10)],
    )
    signer = new_signer()
    log = AuditLog(audit_url, signer=signer)
    log.append("outage", {"provider": "ld"})
    assert log.verify(signer.public_key).problem == "record 1 is not signed"
    done = archive(log, NOW - timedelta(days=2), tmp_path / "old.jsonl", actor="alice")
    assert done is not None and done.count == 10 and done.record.signature is not None
    assert log.verify(signer.public_key).ok  # the live log is all signed now
    lines = (tmp_path / "old.jsonl").read_text().splitlines()
    manifest = json.loads(lines[-1])["manifest"]
    assert manifest["signature"] is not None and len(manifest["signature"]) == 128
    check = verify_archives(log, [tmp_path / "old.jsonl"], signer.public_key)
    assert check.ok and check.signed == 1 and check.key == signer.fingerprint, check
    assert verify_archives(log, [tmp_path / "old.jsonl"]).ok
    other = verify_archives(log, [tmp_path / "old.jsonl"], new_signer().public_key)
    assert not other.ok and "manifest's signature does not verify" in other.problem
    assert verify_file(tmp_path / "old.jsonl", signer.public_key).ok  # offline too

    # The manifest edited (the cut moved) with its hashes kept: the signature catches it.
    manifest["before"] = NOW.isoformat()
    lines[-1] = json.dumps({"manifest": manifest}, separators=(",", ":"))
    (tmp_path / "old.jsonl").write_text("\n".join(lines) + "\n")
    edited = verify_archives(log, [tmp_path / "old.jsonl"], signer.public_key)
    assert not edited.ok and "manifest's signature does not verify" in edited.problem
    log.close()


def test_an_unsigned_archive_fails_with_a_key(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/a.db"
    seed(url, [(NOW - timedelta(days=5), "transition", "f", {"i": 1})])
    log = AuditLog(url)
    done = archive(log, NOW - timedelta(days=2), tmp_path / "a.jsonl", actor="alice")
    assert done is not None
    check = verify_archives(log, [tmp_path / "a.jsonl"], new_signer().public_key)
    assert not check.ok and check.problem.endswith("the manifest is not signed")
    log.close()


def _export_lines(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines[:-1], lines[-1]["manifest"]


def _write_export(path: Path, records: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    """Write an export as an attacker would: records and manifest made consistent again."""
    import hashlib

    body = b"".join(
        (json.dumps(r, separators=(",", ":")) + "\n").encode() for r in records
    )  # the exact line format
    manifest = {**manifest, "sha256": hashlib.sha256(body).hexdigest(), "count": len(records)}
    if "unsigned" in manifest:  # what the records say about their signatures
        signed = [r["seq"] for r in records if r.get("signature") is not None]
        manifest["unsigned"] = len(records) - len(signed)
        manifest["first_signed_seq"] = signed[0] if signed else None
    if records:
        manifest["head"], manifest["last_seq"] = records[-1]["hash"], records[-1]["seq"]
    path.write_bytes(body + (json.dumps({"manifest": manifest}) + "\n").encode())


def test_export_verifies_offline_and_tampering_is_found(audit_url, tmp_path: Path):  # noqa: F811
    signer = new_signer()
    log = signed_log(audit_url, signer)
    path = tmp_path / "export.jsonl"
    done = export(log, path)
    assert (done.count, done.first_seq, done.last_seq, done.signed) == (6, 1, 6, True)
    log.close()
    records, manifest = _export_lines(path)
    assert set(records[0]) == {
        "seq", "at", "kind", "flag", "actor", "data", "prev_hash", "hash", "ref", "signature"
    }  # fmt: skip
    assert manifest["format"] == "flagwarden-audit-export/1" and manifest["head"] == done.head
    ok = verify_file(path, signer.public_key)
    assert ok.ok and ok.records == 6 and ok.signatures == "verified", ok
    unkeyed = verify_file(path)
    assert unkeyed.ok and unkeyed.signatures == "not checked"
    assert not verify_file(path, new_signer().public_key).ok

    # An edited record, hashes and manifest recomputed (the attacker has no key).
    forged = [dict(r) for r in records]
    forged[2]["actor"] = "mallory"
    prev = GENESIS
    for r in forged:
        r["prev_hash"] = prev
        r["hash"] = prev = AuditRecord.digest(
            r["seq"], r["at"], r["kind"], r["flag"], r["actor"], r["data"], prev
        )
    stripped = [{**r, "signature": None} for r in forged]
    _write_export(path, stripped, {**manifest, "signature": None})
    assert verify_file(path).ok  # consistent: only the key can tell
    bad = verify_file(path, signer.public_key)
    assert not bad.ok and bad.problem.endswith("the manifest is not signed")
    _write_export(path, stripped, manifest)  # the manifest's old signature kept
    bad = verify_file(path, signer.public_key)
    assert not bad.ok and "manifest's signature does not verify" in bad.problem
    _write_export(path, forged, manifest)  # the records' old signatures kept too
    bad = verify_file(path, signer.public_key)
    assert not bad.ok and "record 3's signature does not verify" in bad.problem

    # The newest record dropped from the copy, the manifest fixed up: its signature fails.
    _write_export(path, records[:-1], manifest)
    bad = verify_file(path, signer.public_key)
    assert not bad.ok and "manifest's signature does not verify" in bad.problem

    # A plain edit of one line: its hash no longer matches, key or not.
    _write_export(path, records, manifest)
    assert verify_file(path, signer.public_key).ok  # as exported
    path.write_text(path.read_text().replace('"actor":"alice"', '"actor":"bob"', 1))
    assert verify_file(path).problem.endswith("record 1 was modified (hash mismatch)")


def test_an_export_of_a_period_and_of_an_unsigned_log(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/a.db"
    seed(url, [(NOW - timedelta(days=d), "transition", "f", {"d": d}) for d in (5, 4, 3, 2)])
    log = AuditLog(url)
    part = export(
        log,
        tmp_path / "p.jsonl",
        since=NOW - timedelta(days=4, hours=1),
        until=NOW - timedelta(days=3),
    )
    assert (part.count, part.first_seq, part.last_seq, part.signed) == (2, 2, 3, False)
    check = verify_file(tmp_path / "p.jsonl")
    assert (
        check.ok and check.signatures == "unsigned" and (check.first_seq, check.last_seq) == (2, 3)
    )
    keyed = verify_file(tmp_path / "p.jsonl", new_signer().public_key)
    assert not keyed.ok and "not signed" in keyed.problem
    with pytest.raises(Exception, match="already exists"):
        export(log, tmp_path / "p.jsonl")
    execute(url, "UPDATE flagwarden_audit SET actor = 'x' WHERE seq = 2")
    with pytest.raises(Exception, match="does not verify"):
        export(log, tmp_path / "q.jsonl")  # a signed copy must not vouch for a tampered log
    assert not (tmp_path / "q.jsonl").exists()
    log.close()


def _report(log: AuditLog, public_key: Any = None) -> Any:
    from flagwarden.governance.policy import Policy
    from flagwarden.governance.state import FlagState
    from flagwarden.report import build_report

    policy = Policy.model_validate({**POLICY, "flag": "f"})
    return build_report(log, {"f": policy}, {"f": FlagState("f")}, public_key=public_key)


def test_the_report_says_whether_the_log_was_signed_and_verified(tmp_path: Path):
    from flagwarden.report import render_html, render_markdown

    signer = new_signer()
    url = f"sqlite:///{tmp_path}/audit.db"
    log = signed_log(url, signer, 3)
    cases = [
        (signer.public_key, True, "verified", "- Signatures: **verified** (Ed25519"),
        (None, True, "not checked", "- Signatures: present, **not checked**"),
    ]
    for key, signed, signatures, said in cases:
        doc = _report(log, key)
        body = doc.to_json()["audit"]
        assert (body["signed"], body["signatures"], body["verified"]) == (
            signed,
            signatures,
            True,
        )
        assert said in render_markdown(doc)
        assert '<th scope="row">Signatures</th>' in render_html(doc)
    forged = _report(log, new_signer().public_key)
    assert not forged.audit.verified and forged.audit.first_bad_record == 1
    assert forged.audit.signatures.startswith("failed: record 1's signature does not verify")
    assert "record 1&#39;s signature does not verify" in render_html(forged)
    log.close()
    unsigned = signed_log(f"sqlite:///{tmp_path}/plain.db", None, 2)
    doc = _report(unsigned)
    assert (doc.audit.signed, doc.audit.signatures) == (False, "unsigned")
    assert "- Signatures: none (the log is not signed)" in render_markdown(doc)
    unsigned.close()


# -- keys ----------------------------------------------------------------------------------


def test_keys_load_from_pem_text_files_and_base64(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    seed_b64 = base64.b64encode(
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.key").write_text(pem)
    (tmp_path / "keys" / "a.pub").write_bytes(public_pem)
    (tmp_path / "keys" / "raw.pub").write_text(base64.b64encode(public_raw).decode() + "\n")
    want = fingerprint(key.public_key())
    for value in (pem, seed_b64, "keys/a.key", str(tmp_path / "keys" / "a.key")):
        loaded = load_private_key(value, base_dir=tmp_path)
        assert fingerprint(loaded.public_key()) == want, value[:20]
    openssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    assert fingerprint(load_private_key(openssh).public_key()) == want
    for value in (
        Path("keys/a.pub"),
        Path("keys/raw.pub"),
        public_pem.decode(),
        base64.b64encode(public_raw).decode(),
    ):
        assert fingerprint(load_public_key(value, base_dir=tmp_path)) == want


def test_key_errors_name_the_field_and_never_the_key(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    seed_33 = base64.b64encode(os.urandom(33)).decode()
    broken_pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBrokenBrokenBroken\n-----END"
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    ec_key = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    cases = {
        seed_33: "expected an Ed25519 private key",
        "sk_live_0123456789abcdefXYZ": "expected an Ed25519 private key",
        broken_pem: "not a readable PEM private key",
        encrypted: "encrypted PEM",
        ec_key: "not Ed25519",
    }
    for value, said in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_private_key(value, base_dir=tmp_path, file="flagwarden.yaml")
        message = str(caught.value)
        assert caught.value.field == "audit.signing_key" and said in message, message
        for part in value.splitlines():
            if len(part) > 8 and not part.startswith("-----"):
                assert part not in message
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "private.pub").write_text(encrypted)
    with pytest.raises(ConfigError, match="is a private key"):
        load_public_key(Path("private.pub"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"no such file: missing\.pub"):
        load_public_key(Path("missing.pub"), base_dir=tmp_path)
    assert load_public_key(public_pem.decode())  # PEM text works as well as a file


def test_settings_load_the_signer_and_hide_the_key(project: Project, monkeypatch):
    key = Ed25519PrivateKey.generate()
    seed_b64 = base64.b64encode(
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    ).decode()
    monkeypatch.setenv("FLAGWARDEN_AUDIT_KEY", seed_b64)
    config = project.config(
        "file",
        audit={"url": "sqlite:///.flagwarden/audit.db", "signing_key": "${FLAGWARDEN_AUDIT_KEY}"},
    )
    settings = load_settings(config)
    assert settings.config.audit.url == "sqlite:///.flagwarden/audit.db"
    assert seed_b64 not in repr(settings) and seed_b64 not in str(settings.config)
    assert seed_b64 not in settings.config.model_dump_json()
    signer = signer_from_settings(settings)
    assert signer is not None and signer.fingerprint == fingerprint(key.public_key())
    assert seed_b64 not in repr(signer)
    public = public_key_from_settings(settings)  # no public_key: the signing key's half
    assert public is not None and fingerprint(public) == signer.fingerprint
    # The string form still means {url: ...}; an empty key (${VAR:-}) means no signing.
    plain = load_settings({"provider": "file", "audit": "sqlite:///x.db"}).config.audit
    assert (plain.url, plain.signing_key, plain.public_key) == ("sqlite:///x.db", None, None)
    off = load_settings({"provider": "file", "audit": {"url": "sqlite:///x.db", "signing_key": ""}})
    assert off.config.audit.signing_key is None
    with pytest.raises(ConfigError) as caught:
        load_settings({"provider": "file", "audit": {"url": "sqlite:///x.db", "signing_key": 5}})
    assert caught.value.field == "audit.signing_key"


# -- the command line ----------------------------------------------------------------------


def flagwarden(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path):
    made = flagwarden("audit", "keygen", "-o", "keys/audit", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "keys" / "audit.key", tmp_path / "keys" / "audit.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key(str(private))
    assert fingerprint(load_public_key(public)) == fingerprint(key.public_key())
    text = private.read_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    body = "".join(text.splitlines()[1:-1])
    assert body not in made.stdout + made.stderr
    for said in ("keys/audit.key", "keys/audit.pub", "FLAGWARDEN_AUDIT_KEY", "signing_key"):
        assert said in made.stdout
    again = flagwarden("audit", "keygen", "-o", "keys/audit", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert private.read_text() == text  # never overwritten

    printed = flagwarden("audit", "keygen", "-o", "other", "--stdout", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    seed_line = printed.stdout.strip()
    assert len(printed.stdout.splitlines()) == 1 and len(base64.b64decode(seed_line)) == 32
    assert not (tmp_path / "other.key").exists() and (tmp_path / "other.pub").exists()
    assert seed_line not in printed.stderr
    assert fingerprint(load_private_key(seed_line).public_key()) == fingerprint(
        load_public_key(tmp_path / "other.pub")
    )


def test_the_cli_signs_verifies_exports_and_reports(project: Project, monkeypatch):
    made = flagwarden("audit", "keygen", "-o", "keys/audit", cwd=project.root)
    assert made.returncode == 0, made.stderr
    key_file = project.root / "keys" / "audit.key"
    monkeypatch.setenv("FLAGWARDEN_AUDIT_KEY", str(key_file))
    audit = {
        "url": "sqlite:///.flagwarden/audit.db",
        "signing_key": "${FLAGWARDEN_AUDIT_KEY}",
        "public_key": "keys/audit.pub",
    }
    config = governed_project(project, audit=audit, policy={"soak": "0s"})
    for action in ("advance", "advance", "kill"):
        done = run_cli(config, action, FLAG, "--reason", "go", actor="alice")
        assert done.returncode == 0, done.stderr
    checked = run_cli(config, "check")
    assert checked.returncode == 0 and "audit records are signed" in checked.stdout
    verified = run_cli(config, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "3 records" in verified.stdout and "signatures verified" in verified.stdout

    exported = run_cli(config, "audit", "export", "-o", str(project.root / "e.jsonl"))
    assert exported.returncode == 0 and "signed manifest" in exported.stdout, exported.stderr
    offline = flagwarden(
        "audit", "verify", "--export", "e.jsonl", "--public-key", "keys/audit.pub",
        cwd=project.root,
    )  # fmt: skip
    assert offline.returncode == 0 and "signatures verified" in offline.stdout, offline.stderr
    to_stdout = run_cli(config, "audit", "export", "--since", "1d")
    assert to_stdout.returncode == 0 and len(to_stdout.stdout.splitlines()) == 4
    assert json.loads(to_stdout.stdout.splitlines()[-1])["manifest"]["count"] == 3

    report = run_cli(config, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["audit"]["signed"] is True
    assert json.loads(report.stdout)["audit"]["signatures"] == "verified"

    # Without the key configured, verify says what it can.
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "audit": audit["url"]}))
    unkeyed = run_cli(config, "audit", "verify")
    assert unkeyed.returncode == 0
    assert "signed records present, not checked: pass --public-key" in unkeyed.stdout

    # A chain rewritten without the key: the hash chain verifies, the signatures do not.
    rewrite(f"sqlite:///{project.root}/.flagwarden/audit.db", {}, new_signer())
    assert run_cli(config, "audit", "verify").returncode == 0
    keyed = run_cli(config, "audit", "verify", "--public-key", str(project.root / "keys/audit.pub"))
    assert keyed.returncode == 1 and "record 1's signature does not verify" in keyed.stderr
    tampered = flagwarden(
        "audit", "verify", "--export", "e.jsonl", "--public-key", "keys/audit.pub",
        cwd=project.root,
    )  # fmt: skip
    assert tampered.returncode == 0  # the copy made before is still good evidence
    assert run_cli(config, "audit", "export", "-o", str(project.root / "x.jsonl")).returncode == 0
    forged = flagwarden(
        "audit", "verify", "--export", "x.jsonl", "--public-key", "keys/audit.pub",
        cwd=project.root,
    )  # fmt: skip
    assert forged.returncode == 1 and "does not verify" in forged.stderr


def test_a_bad_key_is_named_and_never_shown(project: Project, monkeypatch):
    secret = "c2VjcmV0LXNpZ25pbmcta2V5LW5vdC0zMi1ieXRlcy1sb25nISE="  # 38 bytes: not a seed
    monkeypatch.setenv("FLAGWARDEN_AUDIT_KEY", secret)
    audit = {"url": "sqlite:///.flagwarden/audit.db", "signing_key": "${FLAGWARDEN_AUDIT_KEY}"}
    config = governed_project(project, audit=audit)
    checked = run_cli(config, "check")
    assert checked.returncode == 1
    assert "audit.signing_key: expected an Ed25519 private key" in checked.stderr
    verified = run_cli(config, "audit", "verify")
    assert verified.returncode == 1 and "audit.signing_key" in verified.stderr
    # A kill still goes through (its record waits in the outbox); the log says why.
    killed = run_cli(config, "kill", FLAG, "--reason", "stop", actor="alice")
    assert killed.returncode == 0, killed.stderr
    assert "audit.signing_key" in killed.stderr + killed.stdout
    for result in (checked, verified, killed):
        assert secret not in result.stdout + result.stderr
        assert secret[:20] not in result.stdout + result.stderr


# -- a signed log's history cannot be laundered ---------------------------------------------


def sign_rows(url: str, signer: Signer, seqs: range) -> None:
    """Sign stored records after the fact, as a signing process would have when it wrote them
    (the signature covers only the hash)."""
    conn, ph = _connect(url)
    try:
        for seq, *_, digest, _ref, _sig in rows(url):
            if seq in seqs:
                conn.execute(
                    f"UPDATE flagwarden_audit SET signature = {ph} WHERE seq = {ph}",
                    (signer.sign(digest), seq),
                )
        conn.commit()
    finally:
        conn.close()


def old_signed_log(url: str, signer: Signer, signed_from: int = 1) -> AuditLog:
    """Ten records 12 to 3 days old (signed from record ``signed_from`` on: a log that got its
    key then), and a new signed record written now."""
    seed(
        url, [(NOW - (12 - i) * timedelta(days=1), "transition", "f", {"i": i}) for i in range(10)]
    )
    sign_rows(url, signer, range(signed_from, 11))
    log = AuditLog(url, signer=signer)
    log.append("outage", {"provider": "ld"})
    assert log.verify(signer.public_key).ok == (signed_from == 1)
    return log


def forge_history(url: str, seq: int, resign: Signer | None = None, *, truncate: int = 0) -> None:
    """What someone with write access and no key does: rewrite record ``seq``'s data,
    recompute every hash from there, set those signatures NULL (or sign them with a key of
    their own), and optionally delete the newest ``truncate`` records."""
    if truncate:
        execute(url, f"DELETE FROM flagwarden_audit WHERE seq > {rows(url)[-1][0] - truncate}")
    stored = rows(url)
    conn, ph = _connect(url)
    try:
        prev = stored[0][6]  # GENESIS, or the head of the last archive
        for s, at, kind, flag, actor, data, _p, digest, _ref, signature in stored:
            if s >= seq:
                data = '{"i":99}' if s == seq else data
                digest = AuditRecord.digest(s, at, kind, flag, actor, data, prev)
                signature = resign.sign(digest) if resign is not None else None
                conn.execute(
                    f"UPDATE flagwarden_audit SET data = {ph}, prev_hash = {ph}, hash = {ph}, "
                    f"signature = {ph} WHERE seq = {ph}",
                    (data, prev, digest, signature, s),
                )
            prev = digest
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("forger", "truncate", "said"),
    [
        (None, 0, "record 3 is not signed, but record 1 before it is"),
        (None, 1, "record 3 is not signed, but record 1 before it is"),
        ("other-key", 0, "record 3's signature does not verify (forged, or made with another key)"),
    ],
    ids=["signatures-removed", "and-newest-truncated", "re-signed-with-another-key"],
)
def test_archive_and_export_refuse_to_launder_a_forged_history(
    audit_url,  # noqa: F811
    tmp_path: Path,
    forger: str | None,
    truncate: int,
    said: str,
):
    signer = new_signer()
    log = old_signed_log(audit_url, signer)
    forge_history(audit_url, 3, new_signer() if forger else None, truncate=truncate)
    assert log.verify().ok  # the hash chain alone cannot tell
    assert not log.verify(signer.public_key).ok
    before = rows(audit_url)
    with pytest.raises(AuditError, match=re.escape(said)) as caught:
        archive(log, NOW - timedelta(days=2), tmp_path / "old.jsonl", actor="alice")
    assert "nothing was archived" in str(caught.value)
    assert not (tmp_path / "old.jsonl").exists() and rows(audit_url) == before
    with pytest.raises(AuditError, match=re.escape(said)):
        export(log, tmp_path / "all.jsonl")
    assert not (tmp_path / "all.jsonl").exists()
    # A period that starts after the signed records: they still count.
    with pytest.raises(AuditError, match=re.escape(said.replace("record 3", "record 5"))):
        export(log, tmp_path / "part.jsonl", since=NOW - timedelta(days=8, hours=12))
    log.close()


def _old_archive(log: AuditLog, last_seq: int, path: Path, signer: Signer) -> None:
    """What archive() did before it checked signatures: records written out as stored, a
    manifest (without the unsigned count) signed over them, and the cut."""
    import hashlib

    from flagwarden.audit.archive import _line

    first_seq, first_prev, _ = log.start()
    lines = [_line(row) for row in log.rows(through_seq=last_seq)]
    head = json.loads(lines[-1])["hash"]
    manifest: dict[str, Any] = {
        "format": "flagwarden-audit-archive/1",
        "count": len(lines),
        "first_seq": first_seq,
        "last_seq": last_seq,
        "first_prev_hash": first_prev,
        "head": head,
        "sha256": hashlib.sha256(b"".join(lines)).hexdigest(),
        "before": NOW.isoformat(),
        "created_at": NOW.isoformat(),
        "signature": None,
    }
    manifest["signature"] = signer.sign_manifest(manifest)
    path.write_bytes(b"".join(lines) + (json.dumps({"manifest": manifest}) + "\n").encode())
    log.cut(first_seq, last_seq, head, {"file": path.name, "count": len(lines)}, actor="alice")


def test_an_archive_that_laundered_a_forgery_fails_with_the_key(audit_url, tmp_path: Path):  # noqa: F811
    signer = new_signer()
    log = old_signed_log(audit_url, signer)
    forge_history(audit_url, 3, truncate=1)  # records 3-10 unsigned, the newest one gone
    path = tmp_path / "laundered.jsonl"
    _old_archive(log, 10, path, signer)
    assert log.verify(signer.public_key).ok  # the live log is only the signed archive record
    check = verify_archives(log, [path], signer.public_key)
    assert not check.ok and "record 3 is not signed, but record 1 before it is" in check.problem
    offline = verify_file(path, signer.public_key)
    assert not offline.ok and "record 3 is not signed, but record 1 before it is" in offline.problem
    assert verify_archives(log, [path]).ok  # without the key only the chain is checked
    log.close()


def test_unsigned_records_after_archived_signed_ones_are_refused(tmp_path: Path):
    """Signed records already archived: the archive record says so, and every record after
    them must be signed, in the next archive and across archive files."""
    url = f"sqlite:///{tmp_path}/a.db"
    signer = new_signer()
    log = old_signed_log(url, signer, signed_from=6)
    first = archive(log, NOW - timedelta(days=5, hours=12), tmp_path / "1.jsonl", actor="alice")
    assert first is not None
    assert (first.count, first.unsigned, first.first_signed_seq) == (7, 5, 6)
    forge_history(url, 8)  # records 8 on (the archive record too) rewritten, unsigned
    with pytest.raises(AuditError, match="record 8 is not signed, but record 6 before it is"):
        archive(log, NOW - timedelta(days=2), tmp_path / "2.jsonl", actor="alice")
    with pytest.raises(AuditError, match="record 8 is not signed, but record 6 before it is"):
        export(log, tmp_path / "e.jsonl")
    # As the old archive() would have done it: each file is fine on its own, not together.
    _old_archive(log, 10, tmp_path / "2.jsonl", signer)
    assert verify_file(tmp_path / "2.jsonl", signer.public_key).ok
    files = [tmp_path / "1.jsonl", tmp_path / "2.jsonl"]
    assert verify_archives(log, files).ok
    check = verify_archives(log, files, signer.public_key)
    assert not check.ok and check.problem.startswith(
        f"{tmp_path / '2.jsonl'}: record 8 is not signed, but record 6 in "
    ), check
    log.close()


def test_the_unsigned_prefix_of_a_log_that_got_its_key_later_still_archives(
    audit_url,  # noqa: F811
    tmp_path: Path,
):
    signer = new_signer()
    log = old_signed_log(audit_url, signer, signed_from=6)  # records 1-5 before the key
    assert log.verify(signer.public_key).problem == "record 1 is not signed"
    done = archive(log, NOW - timedelta(days=2), tmp_path / "old.jsonl", actor="alice")
    assert done is not None and (done.count, done.unsigned, done.first_signed_seq) == (10, 5, 6)
    assert (done.record.data["unsigned"], done.record.data["first_signed_seq"]) == (5, 6)
    records, manifest = _export_lines(tmp_path / "old.jsonl")
    assert (manifest["unsigned"], manifest["first_signed_seq"]) == (5, 6)
    assert [r["signature"] is None for r in records] == [True] * 5 + [False] * 5
    assert log.verify(signer.public_key).ok
    check = verify_archives(log, [tmp_path / "old.jsonl"], signer.public_key)
    assert check.ok and check.unsigned == 5, check
    assert verify_file(tmp_path / "old.jsonl", signer.public_key).ok
    # The unsigned count is part of the signed manifest.
    lines = (tmp_path / "old.jsonl").read_text().splitlines()
    lines[-1] = json.dumps({"manifest": {**manifest, "unsigned": 0}})
    (tmp_path / "old.jsonl").write_text("\n".join(lines) + "\n")
    assert "unsigned count" in verify_file(tmp_path / "old.jsonl").problem
    # The archive record says signed records were archived: an unsigned live record now
    # follows them, and an export refuses it.
    execute(audit_url, "UPDATE flagwarden_audit SET signature = NULL WHERE seq = 11")
    with pytest.raises(AuditError, match="record 11 is not signed, but record 6 before it is"):
        export(log, tmp_path / "e.jsonl")
    log.close()


# -- a process without the key ---------------------------------------------------------------


def test_appending_without_the_key_to_a_signed_log_is_refused(audit_url, tmp_path: Path):  # noqa: F811
    signer = new_signer()
    signed_log(audit_url, signer, 2).close()
    keyless = AuditLog(audit_url)
    said = "the audit log is signed: this process has no audit.signing_key (docs/audit.md#signing)"
    with pytest.raises(AuditError) as caught:
        keyless.append("exposure_summary", {"rows": []})
    assert str(caught.value) == said
    with pytest.raises(AuditError, match=re.escape(said)):
        archive(keyless, NOW - timedelta(days=2), tmp_path / "a.jsonl", actor="alice")
    assert len(rows(audit_url)) == 2 and keyless.verify(signer.public_key).ok
    keyless.close()
    plain = signed_log(f"sqlite:///{tmp_path}/plain.db", None, 2)  # an unsigned log: as before
    assert plain.verify().ok and plain.verify().checked == 2
    plain.close()


def test_a_change_made_without_the_key_is_recorded_signed_later(project: Project):
    from flagwarden.governance.project import Governance

    _, key_file, pub_file = write_keypair(project.root / "keys" / "audit")
    audit = {"url": "sqlite:///.flagwarden/audit.db", "signing_key": str(key_file)}
    keyed_config = governed_project(project, audit=audit, policy={"soak": "0s"})
    keyless_config = project.root / "keyless.yaml"
    keyless_config.write_text(
        yaml.safe_dump({**yaml.safe_load(keyed_config.read_text()), "audit": audit["url"]})
    )
    public_key = load_public_key(pub_file)

    keyed = Governance.open(load_settings(keyed_config))
    keyed.rollout().advance(FLAG, actor="alice", reason="go")
    keyed.close()

    keyless = Governance.open(load_settings(keyless_config))
    try:
        assert keyless.audit is not None and keyless.store is not None
        done = keyless.rollout().kill(FLAG, actor="bob", reason="nulls")
        assert done.changed and done.after.killed  # the kill went through
        assert done.audit_error is not None and "no audit.signing_key" in done.audit_error
        (entry,) = keyless.store.pending_outbox()  # its record waits
        assert entry.records[0]["data"]["action"] == "kill"
        assert keyless.audit.verify(public_key).ok  # nothing unsigned was written
        assert keyless.rollout().reconcile().error is not None  # still refused
    finally:
        keyless.close()

    keyed = Governance.open(load_settings(keyed_config))
    try:
        assert keyed.audit is not None and keyed.store is not None
        assert keyed.rollout().reconcile().written == 1
        assert keyed.store.pending_outbox() == []
        kill = keyed.audit.records(kind="transition", newest_first=True).first()
        assert kill is not None and kill.data["action"] == "kill" and kill.actor == "bob"
        assert signature_ok(public_key, kill.hash, kill.signature)
        result = keyed.audit.verify(public_key)
        assert result.ok and result.signed == result.checked == 2, result
        assert keyed.rollout().unrecorded() == []
    finally:
        keyed.close()


# -- the ref column ---------------------------------------------------------------------------


def test_append_once_puts_the_ref_into_the_hashed_data(audit_url):  # noqa: F811
    log = AuditLog(audit_url, signer=new_signer())
    record, appended = log.append_once("approval", {"event": "requested"}, ref="approval:1")
    assert appended and record.data == {"event": "requested", "ref": "approval:1"}
    assert json.loads(rows(audit_url)[0][5]) == record.data  # in the text the hash covers
    same = log.append("approval", {"event": "requested", "ref": "approval:2"}, ref="approval:2")
    assert same.data["ref"] == "approval:2"
    with pytest.raises(ValueError, match="data states ref 'x'"):
        log.append("approval", {"ref": "x"}, ref="approval:3")
    assert log.find("approval:3") is None
    log.close()


def test_a_ref_moved_onto_a_signed_record_fails_verify(audit_url):  # noqa: F811
    """A ref set on an old record makes append_once skip the real act later: verify finds it."""
    signer = new_signer()
    log = signed_log(audit_url, signer, 3)
    log.append("approval", {"event": "requested"}, ref="approval:1")
    execute(audit_url, "UPDATE flagwarden_audit SET ref = 'approval:2' WHERE seq = 2")
    for key in (None, signer.public_key):
        result = log.verify(key)
        assert not result.ok and result.first_bad_seq == 2, result
        assert result.problem == "record 2's ref was changed (it does not match its data)"
    # The data states another ref: found on any record.
    execute(audit_url, "UPDATE flagwarden_audit SET ref = 'approval:9' WHERE seq = 4")
    execute(audit_url, "UPDATE flagwarden_audit SET ref = NULL WHERE seq = 2")
    assert log.verify().first_bad_seq == 4
    log.close()


def test_an_unsigned_record_with_a_ref_only_in_its_column_still_verifies(audit_url):  # noqa: F811
    """Records written before refs went into the data (approvals) are unsigned: they pass."""
    log = signed_log(audit_url, None, 2)
    execute(audit_url, "UPDATE flagwarden_audit SET ref = 'approval:old' WHERE seq = 1")
    assert log.verify().ok
    log.close()
