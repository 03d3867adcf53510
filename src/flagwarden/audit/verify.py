"""Verifying the audit log's hash chain: :func:`verify_chain` walks the stored rows and names
the first record that was edited, deleted or moved; :func:`chain_start` finds where the live chain
starts once old records were archived (the ``archive`` record that closes the cut states it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from flagwarden.audit.records import GENESIS, AuditRecord, Verification
from flagwarden.audit.signing import fingerprint, signature_ok

if TYPE_CHECKING:
    from flagwarden.audit.log import AuditLog
    from flagwarden.audit.signing import PublicKey

__all__ = ["chain_start", "verify_chain"]


def chain_start(log: AuditLog) -> tuple[int, str, AuditRecord | None]:
    """Where the live chain starts: ``(first seq, the hash it must follow, the archive
    record that says so)``; ``(1, GENESIS, None)`` for a log that was never archived."""
    cut = log.records(kind="archive", newest_first=True).first()
    if cut is None:
        return 1, GENESIS, None
    last_seq, last_hash = cut.data.get("last_seq"), cut.data.get("last_hash")
    if not isinstance(last_seq, int) or not isinstance(last_hash, str):
        return 1, GENESIS, cut  # verify names the archive record as unreadable
    return last_seq + 1, last_hash, cut


def verify_chain(log: AuditLog, public_key: PublicKey | None = None) -> Verification:
    """Walk the chain; name the first record that was edited, deleted or moved.

    A log cut by an archive starts after the last archived record: the first remaining
    record must follow the hash the latest ``archive`` record states (that record is
    itself chained, so the statement cannot be edited unnoticed).

    With ``public_key`` every record must carry a signature of its hash by that key: an
    unsigned record, or one signed by another key, fails (a chain rewritten with recomputed
    hashes cannot be signed without the private key). Without it, the result counts the
    signed records (:attr:`Verification.signatures`).

    A record's ``ref`` column (not hashed) must be the ref its data states (hashed): one set
    on an old record to make :meth:`~flagwarden.audit.log.AuditLog.append_once` skip a future
    act is found, on any record whose data states a ref and on every signed record."""
    key = fingerprint(public_key) if public_key is not None else None
    expected_seq, prev, cut = log.start()
    archived = expected_seq - 1
    checked = signed = 0

    def failed(seq: int, problem: str) -> Verification:
        return Verification(False, checked, seq, problem, prev, archived, signed, key)

    if cut is not None and archived == 0:
        return failed(cut.seq, f"archive record {cut.seq} does not say where the cut is")
    for seq, at, kind, flag, actor, data, prev_hash, digest, _ref, signature in log.rows():
        if seq != expected_seq:
            where = (
                f" (the archive record {cut.seq} says the log starts at record {expected_seq})"
                if cut is not None and checked == 0
                else ""
            )
            return failed(expected_seq, f"record {expected_seq} is missing (next is {seq}){where}")
        if prev_hash != prev:
            return failed(seq, f"record {seq} does not follow record {seq - 1} (chain broken)")
        if AuditRecord.digest(seq, at, kind, flag, actor, data, prev_hash) != digest:
            return failed(seq, f"record {seq} was modified (hash mismatch)")
        stated = _stated_ref(data) if _ref is not None else None
        # The ref column is not hashed; the ref the (hashed) data states must agree. A record
        # whose data states none passes only unsigned: older versions wrote approval records
        # so, but signed records are newer, written by an append_once that always adds it.
        if _ref is not None and (stated not in (None, _ref) or (stated is None and signature)):
            return failed(seq, f"record {seq}'s ref was changed (it does not match its data)")
        if public_key is not None and signature is None:
            return failed(seq, f"record {seq} is not signed")
        if public_key is not None and not signature_ok(public_key, digest, signature):
            return failed(
                seq, f"record {seq}'s signature does not verify (forged, or made with another key)"
            )
        prev, expected_seq = digest, seq + 1
        checked += 1
        signed += signature is not None
    return Verification(True, checked, None, None, prev, archived, signed, key)


def _stated_ref(data: str) -> str | None:
    """The ref a record's data states (records of state changes carry theirs), if any."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    ref = doc.get("ref") if isinstance(doc, dict) else None
    return ref if isinstance(ref, str) else None
