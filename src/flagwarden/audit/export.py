"""Exports: a copy of the audit log (or a period of it) as a JSON Lines file, verifiable offline.

An export has the format of an archive file (:mod:`flagwarden.audit.archive`): one record per
line as stored, every column (``seq``, ``at``, ``kind``, ``flag``, ``actor``, ``data`` as the
exact JSON text the hash covers, ``prev_hash``, ``hash``, ``ref``, ``signature``), then one
manifest line (``"format": "flagwarden-audit-export/1"``, ``count``, ``first_seq``,
``last_seq``, ``first_prev_hash``, ``head``, ``sha256`` of the lines before it, ``since``,
``until``, ``created_at``, ``unsigned``, ``first_signed_seq``, ``signature``: Ed25519 when the
log has a signer). Unlike an archive it removes nothing. :func:`verify_file` checks an export
(or an archive) without a database. As :func:`~flagwarden.audit.archive.archive`, an export
with a signer checks every signature it copies and refuses an unsigned record after a signed
one (in the range or before it): a signed manifest must not vouch for a forged history.

A copy kept elsewhere is what catches the one change signatures cannot: the newest records
deleted from the live log (the rest still chains and every signature still verifies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flagwarden.audit import archive
from flagwarden.audit.archive import EXPORT_FORMAT as FORMAT
from flagwarden.audit.archive import (
    ArchiveError,
    _check_file,
    _Signatures,
    _write_copy,
)
from flagwarden.audit.log import GENESIS, AuditLog
from flagwarden.audit.signing import PublicKey, fingerprint

__all__ = ["FORMAT", "ExportResult", "FileCheck", "export", "verify_file"]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    count: int
    first_seq: int | None
    last_seq: int | None
    head: str
    signed: bool  # the manifest carries a signature


@dataclass(frozen=True)
class FileCheck:
    """An export or archive file checked on its own (no database)."""

    ok: bool
    path: Path
    format: str | None = None
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    signed: int = 0  # records that carry a signature
    manifest_signed: bool = False
    key: str | None = None  # the fingerprint of the key the signatures were checked with
    problem: str | None = None

    @property
    def signatures(self) -> str:
        """As :attr:`~flagwarden.audit.records.Verification.signatures`."""
        if self.key is not None:
            return "verified" if self.ok else f"failed: {self.problem}"
        return "not checked" if self.signed or self.manifest_signed else "unsigned"


def export(
    log: AuditLog,
    path: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
) -> ExportResult:
    """Write the live log's records with ``since <= at <= until`` (default: all) to a new
    file at ``path``, with a manifest signed by the log's signer if it has one. Refused
    (:class:`ArchiveError`, nothing written) for an existing ``path`` or a chain that does not
    verify within the range (a signed copy must not vouch for a tampered log): with a signer,
    that includes every signature checked with its public key, and no unsigned record after a
    signed one."""
    now = now or datetime.now(UTC)
    if path.exists():
        raise ArchiveError(f"{path} already exists: an export is never overwritten")
    picked = log.records(since, until=until)
    first = picked.first()
    last = log.records(since, until=until, newest_first=True).first()
    start_seq, start_hash, _ = log.start()
    first_seq = first.seq if first is not None else None
    last_seq = last.seq if last is not None else None
    key = log.signer.public_key if log.signer is not None else None
    signed_before = log.signed_before(first.seq) if key is not None and first else None
    rows: Iterable[Sequence[Any]] = ()
    prev = GENESIS
    if first is not None and last is not None:
        rows = log.rows(after_seq=first.seq - 1, through_seq=last.seq)
        prev = start_hash if first.seq == start_seq else first.prev_hash
    copied = _write_copy(
        log,
        path,
        rows,
        kind="export",
        first_seq=first_seq,
        last_seq=last_seq,
        prev=prev,
        signatures=_Signatures(key, signed_before),
        period={
            "since": since.astimezone(UTC).isoformat() if since else None,
            "until": until.astimezone(UTC).isoformat() if until else None,
        },
        now=now,
        complete=False,
    )
    return ExportResult(
        path, copied.count, first_seq, last_seq, copied.head, log.signer is not None
    )


def verify_file(path: Path, public_key: PublicKey | None = None) -> FileCheck:
    """Check an export (or an archive) file on its own: its lines hash to the manifest, its
    records chain (from record 1's genesis when it starts there). With ``public_key`` the
    manifest must be signed by it, and so must every record of an export (an archive may hold
    records written before signing was turned on, before its first signed record: its signed
    manifest vouches for them)."""
    path = Path(path)
    key = fingerprint(public_key) if public_key is not None else None
    try:
        checked = _check_file(path, public_key)
    except ArchiveError as exc:
        return FileCheck(False, path, key=key, problem=str(exc))
    m = checked.manifest
    done = FileCheck(
        True,
        path,
        m.get("format"),
        int(m.get("count") or 0),
        m.get("first_seq"),
        m.get("last_seq"),
        m.get("head"),
        checked.signed,
        m.get("signature") is not None,
        key,
    )

    def failed(problem: str) -> FileCheck:
        return FileCheck(False, path, done.format, key=key, problem=f"{path}: {problem}")

    if done.format not in (FORMAT, archive.FORMAT):
        return failed(f"not a flagwarden audit export or archive (format {done.format!r})")
    if done.first_seq == 1 and m.get("first_prev_hash") != GENESIS:
        return failed("record 1 does not start the chain")
    if key is not None and done.format == FORMAT and checked.unsigned is not None:
        return failed(f"record {checked.unsigned} is not signed")
    return done
