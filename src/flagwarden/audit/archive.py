"""Archive cuts: old audit records moved to a JSON Lines file without breaking the chain.

An archive file holds one record per line, as stored (``seq``, ``at``, ``kind``, ``flag``,
``actor``, ``data`` as the exact JSON text the hash covers, ``prev_hash``, ``hash``, ``ref``),
then one manifest line::

    {"manifest": {"format": "flagwarden-audit-archive/1", "count": N, "first_seq": A,
     "last_seq": B, "first_prev_hash": ..., "head": ..., "sha256": ..., "before": ...,
     "created_at": ..., "signature": null}}

``head`` is the chain head at the cut (the last archived record's hash) and ``sha256`` the
SHA-256 of every line before the manifest. The records leave the table in the transaction that
appends an ``archive`` record stating ``last_seq`` and ``last_hash``, so the live log still
verifies from there, and the file can be checked against it (:func:`verify_archives`).
``signature`` is the Ed25519 signature of the manifest (:mod:`flagwarden.audit.signing`) when
the log has a signer, else null (the file is then trusted because it joins the chain). Lines
of files written before signatures existed have no ``signature`` field; they still verify.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from flagwarden.audit.log import COLUMNS, GENESIS, AuditError, AuditLog, AuditRecord
from flagwarden.audit.signing import PublicKey, fingerprint, manifest_signature_ok, signature_ok

__all__ = [
    "FORMAT",
    "KEEP",
    "ArchiveCheck",
    "ArchiveError",
    "ArchiveResult",
    "archive",
    "verify_archives",
]

FORMAT = "flagwarden-audit-archive/1"
# Records of the last day stay live: status, the watch and the reconciliation of refs read them.
KEEP = timedelta(hours=24)
_FIELDS = [c.strip() for c in COLUMNS.split(",")]


class ArchiveError(AuditError):
    """An archive could not be written, or a file is not a valid archive."""


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    count: int
    first_seq: int
    last_seq: int
    head: str  # the last archived record's hash: where the live chain continues
    record: AuditRecord  # the archive record appended to the live log


@dataclass(frozen=True)
class ArchiveCheck:
    """Archive files checked on their own and against the live log's start."""

    ok: bool
    files: int
    records: int
    first_seq: int | None = None  # the first archived record given
    last_seq: int | None = None
    problem: str | None = None
    signed: int = 0  # files whose manifest carries a signature
    key: str | None = None  # the fingerprint of the key the signatures were checked with


def _line(row: Sequence[Any], fields: Sequence[str] = _FIELDS) -> bytes:
    return (json.dumps(dict(zip(fields, row, strict=True)), separators=(",", ":")) + "\n").encode()


def _chain_problem(row: Sequence[Any], expected_seq: int, prev: str) -> str | None:
    """What is wrong with ``row`` as the record after ``prev`` at ``expected_seq``, if anything
    (the same judgement as :meth:`AuditLog.verify`)."""
    seq, at, kind, flag, actor, data, prev_hash, digest = row[:8]
    if seq != expected_seq:
        return f"record {expected_seq} is missing (next is {seq})"
    if prev_hash != prev:
        return f"record {seq} does not follow record {seq - 1} (chain broken)"
    if AuditRecord.digest(seq, at, kind, flag, actor, data, prev_hash) != digest:
        return f"record {seq} was modified (hash mismatch)"
    return None


def archive(
    log: AuditLog,
    before: datetime,
    path: Path,
    *,
    actor: str,
    now: datetime | None = None,
) -> ArchiveResult | None:
    """Move the records written before ``before`` to a new file at ``path``; None when there
    are none. Refused (:class:`ArchiveError`, nothing moved) for a moment in the future or in
    the last :data:`KEEP`, an existing ``path``, or a chain that does not verify up to the cut
    (archiving must never bury the evidence of tampering)."""
    now = now or datetime.now(UTC)
    before = before if before.tzinfo else before.replace(tzinfo=UTC)
    if before > now:
        raise ArchiveError(
            f"--before {before:%Y-%m-%d %H:%M:%S} UTC is in the future: archive moves records "
            "older than a moment that has passed"
        )
    if before > now - KEEP:
        raise ArchiveError(
            f"--before {before:%Y-%m-%d %H:%M:%S} UTC is within the last 24 hours: the last "
            "day stays in the live log (status, the watch and reconciliation read it)"
        )
    if path.exists():
        raise ArchiveError(f"{path} already exists: an archive is never overwritten")
    first_seq, prev, _ = log.start()
    last_seq = log.last_seq_before(before)
    if last_seq is None or last_seq < first_seq:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    digest = hashlib.sha256()
    count, first_prev = 0, prev
    try:
        with partial.open("wb") as file:
            expected = first_seq
            for row in log.rows(through_seq=last_seq):
                problem = _chain_problem(row, expected, prev)
                if problem is not None:
                    raise ArchiveError(
                        f"the audit chain does not verify ({problem}); nothing was archived: "
                        "run `flagwarden audit verify` and keep the evidence"
                    )
                line = _line(row)
                file.write(line)
                digest.update(line)
                prev, expected, count = row[7], row[0] + 1, count + 1
            if expected != last_seq + 1:
                raise ArchiveError(
                    f"records {expected}-{last_seq} vanished while archiving; nothing was archived"
                )
            manifest = {
                "format": FORMAT,
                "count": count,
                "first_seq": first_seq,
                "last_seq": last_seq,
                "first_prev_hash": first_prev,
                "head": prev,
                "sha256": digest.hexdigest(),
                "before": before.astimezone(UTC).isoformat(),
                "created_at": now.astimezone(UTC).isoformat(),
                "signature": None,
            }
            if log.signer is not None:
                manifest["signature"] = log.signer.sign_manifest(manifest)
            file.write((json.dumps({"manifest": manifest}, separators=(",", ":")) + "\n").encode())
            file.flush()
            os.fsync(file.fileno())
        os.link(partial, path)  # never replaces a file that appeared meanwhile
    except FileExistsError:
        raise ArchiveError(f"{path} already exists: an archive is never overwritten") from None
    except OSError as exc:
        raise ArchiveError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    try:
        record = log.cut(
            first_seq,
            last_seq,
            prev,
            {
                "file": path.name,
                "count": count,
                "sha256": manifest["sha256"],
                "before": manifest["before"],  # what audit verify may find only in the file
            },
            actor=actor,
        )
    except AuditError:
        with contextlib.suppress(OSError):
            path.unlink()  # the records are still live: the file must not claim otherwise
        raise
    return ArchiveResult(path, count, first_seq, last_seq, prev, record)


@dataclass(frozen=True)
class _File:
    path: Path
    manifest: dict[str, Any]
    signed: int = 0  # records that carry a signature
    unsigned: int | None = None  # the first record that does not


def _read(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed line) of an archive file; raises ArchiveError on bad JSON."""
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                try:
                    yield number, json.loads(raw)
                except ValueError:
                    raise ArchiveError(f"{path}:{number}: not JSON") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_file(path: Path, key: PublicKey | None = None) -> _File:
    """One archive (or export) on its own: the lines hash to the manifest, the records chain;
    with ``key``, the manifest's signature and every signature a record carries verify."""
    digest = hashlib.sha256()
    manifest: dict[str, Any] | None = None
    count, expected, prev, signed, unsigned = 0, None, None, 0, None
    for number, line in _read(path):
        if manifest is not None:
            raise ArchiveError(f"{path}:{number}: a line after the manifest")
        if isinstance(line, dict) and isinstance(line.get("manifest"), dict):
            manifest = line["manifest"]
            continue
        fields = _FIELDS if isinstance(line, dict) and "signature" in line else _FIELDS[:-1]
        try:
            row = [line[name] for name in fields]
        except (KeyError, TypeError):
            raise ArchiveError(f"{path}:{number}: not an audit record") from None
        digest.update(_line(row, fields))
        if expected is None:
            expected, prev = row[0], row[6]
        problem = _chain_problem(row, expected, prev)  # type: ignore[arg-type]
        if problem is not None:
            raise ArchiveError(f"{path}:{number}: {problem}")
        signature = line.get("signature")
        if key is not None and signature is not None and not signature_ok(key, row[7], signature):
            raise ArchiveError(f"{path}:{number}: record {row[0]}'s signature does not verify")
        signed += signature is not None
        unsigned = row[0] if unsigned is None and signature is None else unsigned
        expected, prev, count = row[0] + 1, row[7], count + 1
    if manifest is None:
        raise ArchiveError(f"{path}: no manifest line (the file is incomplete)")
    if key is not None and manifest.get("signature") is None:
        raise ArchiveError(f"{path}: the manifest is not signed")
    if key is not None and not manifest_signature_ok(key, manifest):
        raise ArchiveError(f"{path}: the manifest's signature does not verify")
    if manifest.get("sha256") != digest.hexdigest():
        raise ArchiveError(f"{path}: the records do not match the manifest's SHA-256")
    stated = (manifest.get("count"), manifest.get("head"))
    if stated != (count, prev if count else manifest.get("first_prev_hash")):
        raise ArchiveError(f"{path}: the manifest's count or head does not match the records")
    if count and expected is not None and manifest.get("last_seq") != expected - 1:
        raise ArchiveError(f"{path}: the manifest's last_seq does not match the records")
    return _File(path, manifest, signed, unsigned)


def verify_archives(
    log: AuditLog, paths: Iterable[Path], public_key: PublicKey | None = None
) -> ArchiveCheck:
    """Check each archive file, that they follow one another, and that the last one joins
    the live log where its latest ``archive`` record says it starts. With ``public_key``
    each manifest must be signed by it (records archived before signing was turned on may
    be unsigned: the signed manifest vouches for them)."""
    files: list[_File] = []
    key = fingerprint(public_key) if public_key is not None else None
    try:
        files = sorted(
            (_check_file(Path(p), public_key) for p in paths),
            key=lambda f: f.manifest["first_seq"],
        )
    except ArchiveError as exc:
        return ArchiveCheck(False, 0, 0, problem=str(exc), key=key)
    if not files:
        return ArchiveCheck(True, 0, 0, key=key)
    records = sum(int(f.manifest["count"]) for f in files)
    first, last = files[0].manifest, files[-1].manifest
    signed = sum(f.manifest.get("signature") is not None for f in files)
    check = ArchiveCheck(
        True, len(files), records, first["first_seq"], last["last_seq"], None, signed, key
    )

    def broken(problem: str) -> ArchiveCheck:
        return replace(check, ok=False, problem=problem)

    if first["first_seq"] == 1 and first["first_prev_hash"] != GENESIS:
        return broken(f"{files[0].path}: record 1 does not start the chain")
    for earlier, later in pairwise(files):
        a, b = earlier.manifest, later.manifest
        if b["first_seq"] != a["last_seq"] + 1:
            return broken(
                f"{later.path} starts at record {b['first_seq']} but {earlier.path} ends at "
                f"record {a['last_seq']} (an archive between them is missing or overlaps)"
            )
        if b["first_prev_hash"] != a["head"]:
            return broken(f"{later.path} does not follow {earlier.path} (chain broken)")
    start_seq, start_hash, _ = log.start()
    if last["last_seq"] + 1 != start_seq:
        return broken(
            f"{files[-1].path} ends at record {last['last_seq']} but the live log starts at "
            f"record {start_seq} (an archive between them is missing or overlaps)"
        )
    if last["head"] != start_hash:
        return broken(
            f"{files[-1].path} does not join the live log: its head is not the hash the "
            f"archive record states"
        )
    return check
