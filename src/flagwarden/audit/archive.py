"""Archive cuts: old audit records moved to a JSON Lines file without breaking the chain.

An archive file holds one record per line, as stored (``seq``, ``at``, ``kind``, ``flag``,
``actor``, ``data`` as the exact JSON text the hash covers, ``prev_hash``, ``hash``, ``ref``),
then one manifest line::

    {"manifest": {"format": "flagwarden-audit-archive/1", "count": N, "first_seq": A,
     "last_seq": B, "first_prev_hash": ..., "head": ..., "sha256": ..., "before": ...,
     "created_at": ..., "unsigned": 0, "first_signed_seq": A, "signature": ...}}

``head`` is the chain head at the cut (the last archived record's hash) and ``sha256`` the
SHA-256 of every line before the manifest; ``unsigned`` counts the records without a signature
and ``first_signed_seq`` is the first record with one (null when none has). The records leave
the table in the transaction that appends an ``archive`` record stating ``last_seq`` and
``last_hash``, so the live log still verifies from there, and the file can be checked against
it (:func:`verify_archives`).
``signature`` is the Ed25519 signature of the manifest (:mod:`flagwarden.audit.signing`) when
the log has a signer, else null (the file is then trusted because it joins the chain). Lines
of files written before signatures existed have no ``signature`` field; they still verify.

A signed manifest must not vouch for a forged history: with a signer, :func:`archive` checks
every signature it archives with the signer's public key, and refuses a record whose signature
does not verify or that is unsigned after a signed record (signatures removed, or records
rewritten without the key). Unsigned records before the first signed one (a log that was
written before signing was turned on) are archived, and counted in the manifest; verifying with
a key accepts unsigned records only as such a prefix.
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

from flagwarden.audit.log import COLUMNS, GENESIS, KEYLESS, AuditError, AuditLog, AuditRecord
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
EXPORT_FORMAT = "flagwarden-audit-export/1"
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
    unsigned: int = 0  # records without a signature (written before signing was turned on)
    first_signed_seq: int | None = None  # the first archived record with one


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
    unsigned: int = 0  # archived records without a signature (before signing was turned on)


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


class _Signatures:
    """The signatures of records met in chain order: how many are missing and the first
    present; with ``key``, what is wrong with one (a signature that does not verify, or none
    after a signed record, in this range or before it: ``signed_before``)."""

    def __init__(self, key: PublicKey | None, signed_before: int | None = None) -> None:
        self.key = key
        self.signed_before = signed_before
        self.first_signed: int | None = None
        self.unsigned = 0

    def problem(self, seq: int, digest: str, signature: Any) -> str | None:
        if signature is None:
            self.unsigned += 1
            earlier = self.first_signed if self.first_signed is not None else self.signed_before
            if self.key is None or earlier is None:
                return None
            return (
                f"record {seq} is not signed, but record {earlier} before it is (a signature "
                "removed, or records rewritten without the key)"
            )
        if self.key is not None and not signature_ok(self.key, digest, signature):
            return f"record {seq}'s signature does not verify (forged, or made with another key)"
        if self.first_signed is None:
            self.first_signed = seq
        return None


@dataclass(frozen=True)
class _Copy:
    count: int
    head: str  # the hash of the last record copied (the first's prev_hash when none)
    manifest: dict[str, Any]


def _write_copy(
    log: AuditLog,
    path: Path,
    rows: Iterable[Sequence[Any]],
    *,
    kind: str,
    first_seq: int | None,
    last_seq: int | None,
    prev: str,
    signatures: _Signatures,
    period: dict[str, Any],
    now: datetime,
    complete: bool,
) -> _Copy:
    """Write ``rows`` and their manifest (signed when the log has a signer) to a new file at
    ``path``, the archive's and the export's one way: each row's chain and signature checked
    before it is written, a partial file linked into place only when whole (never over an
    existing file). ``kind``: ``archive`` or ``export`` (the format and the messages);
    ``period``: the manifest's fields for the range copied; ``complete``: refuse when the rows
    stop before ``last_seq`` (records deleted meanwhile)."""
    done = "archived" if kind == "archive" else "exported"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    digest = hashlib.sha256()
    count, first_prev = 0, prev
    try:
        with partial.open("wb") as file:
            expected = first_seq
            for row in rows:
                assert expected is not None  # rows come only with a first record
                problem = _chain_problem(row, expected, prev) or signatures.problem(
                    row[0], row[7], row[9]
                )
                if problem is not None:
                    raise ArchiveError(
                        f"the audit chain does not verify ({problem}); nothing was {done}: "
                        "run `flagwarden audit verify` and keep the evidence"
                    )
                line = _line(row)
                file.write(line)
                digest.update(line)
                prev, expected, count = row[7], row[0] + 1, count + 1
            if complete and last_seq is not None and expected != last_seq + 1:
                raise ArchiveError(
                    f"records {expected}-{last_seq} vanished while archiving; nothing was {done}"
                )
            manifest: dict[str, Any] = {
                "format": FORMAT if kind == "archive" else EXPORT_FORMAT,
                "count": count,
                "first_seq": first_seq,
                "last_seq": last_seq,
                "first_prev_hash": first_prev,
                "head": prev,
                "sha256": digest.hexdigest(),
                **period,
                "created_at": now.astimezone(UTC).isoformat(),
                "unsigned": signatures.unsigned,
                "first_signed_seq": signatures.first_signed,
                "signature": None,
            }
            if log.signer is not None:
                manifest["signature"] = log.signer.sign_manifest(manifest)
            file.write((json.dumps({"manifest": manifest}, separators=(",", ":")) + "\n").encode())
            file.flush()
            os.fsync(file.fileno())
        os.link(partial, path)  # never replaces a file that appeared meanwhile
    except FileExistsError:
        raise ArchiveError(f"{path} already exists: an {kind} is never overwritten") from None
    except OSError as exc:
        raise ArchiveError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return _Copy(count, prev, manifest)


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
    (archiving must never bury the evidence of tampering): with a signer, that includes every
    signature checked with its public key, and no unsigned record after a signed one."""
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
    if log.signer is None:
        last = log.records(newest_first=True).first()
        if last is not None and last.signature is not None:  # the cut's record would be refused
            raise ArchiveError(f"{KEYLESS}; nothing was archived")
    first_seq, prev, _ = log.start()
    last_seq = log.last_seq_before(before)
    if last_seq is None or last_seq < first_seq:
        return None
    key = log.signer.public_key if log.signer is not None else None
    signatures = _Signatures(key, log.signed_before(first_seq) if key is not None else None)
    copied = _write_copy(
        log,
        path,
        log.rows(through_seq=last_seq),
        kind="archive",
        first_seq=first_seq,
        last_seq=last_seq,
        prev=prev,
        signatures=signatures,
        period={"before": before.astimezone(UTC).isoformat()},
        now=now,
        complete=True,
    )
    count, prev, manifest = copied.count, copied.head, copied.manifest
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
                "unsigned": signatures.unsigned,
                "first_signed_seq": signatures.first_signed,
            },
            actor=actor,
        )
    except AuditError:
        with contextlib.suppress(OSError):
            path.unlink()  # the records are still live: the file must not claim otherwise
        raise
    return ArchiveResult(
        path, count, first_seq, last_seq, prev, record, signatures.unsigned, signatures.first_signed
    )


@dataclass(frozen=True)
class _File:
    path: Path
    manifest: dict[str, Any]
    signed: int = 0  # records that carry a signature
    unsigned: int | None = None  # the first record that does not
    first_signed: int | None = None  # the first record that does
    unsigned_count: int = 0


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
    with ``key``, the manifest's signature and every signature a record carries verify, and
    unsigned records come only before the first signed one."""
    digest = hashlib.sha256()
    manifest: dict[str, Any] | None = None
    count, expected, prev, signed, unsigned = 0, None, None, 0, None
    signatures = _Signatures(key)
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
        problem = signatures.problem(row[0], row[7], signature)
        if problem is not None:
            raise ArchiveError(f"{path}:{number}: {problem}")
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
    # Manifests written before these fields existed have neither.
    stated = (manifest.get("unsigned"), manifest.get("first_signed_seq"))
    if "unsigned" in manifest and stated != (signatures.unsigned, signatures.first_signed):
        raise ArchiveError(
            f"{path}: the manifest's unsigned count or first signed record does not match the "
            "records"
        )
    return _File(path, manifest, signed, unsigned, signatures.first_signed, signatures.unsigned)


def verify_archives(
    log: AuditLog, paths: Iterable[Path], public_key: PublicKey | None = None
) -> ArchiveCheck:
    """Check each archive file, that they follow one another, and that the last one joins
    the live log where its latest ``archive`` record says it starts. With ``public_key``
    each manifest must be signed by it and so must every record a file carries a signature
    for; records archived before signing was turned on may be unsigned (the signed manifest
    vouches for them), but only before the first signed record of all the files."""
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
    unsigned = sum(f.unsigned_count for f in files)
    check = ArchiveCheck(
        True, len(files), records, first["first_seq"], last["last_seq"], None, signed, key, unsigned
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
    signed_in: _File | None = None  # the first file with a signed record
    for f in files if public_key is not None else ():
        if signed_in is not None and f.unsigned is not None:
            return broken(
                f"{f.path}: record {f.unsigned} is not signed, but record "
                f"{signed_in.first_signed} in {signed_in.path} before it is (a signature "
                "removed, or records rewritten without the key)"
            )
        signed_in = signed_in or (f if f.first_signed is not None else None)
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
