"""The audit log's records and the lazy reader over them: :class:`AuditRecord` (one stored
row, :data:`COLUMNS`, and the hash that chains it), :class:`UnreadableData`, :class:`Verification`
(the result of walking the chain) and :class:`AuditRecords`, what
:meth:`~flagwarden.audit.log.AuditLog.records` returns: streamed in batches of :data:`BATCH`
(keyset pagination on ``seq``), with the flag, kind and time filters in SQL.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flagwarden.audit.log import AuditLog

__all__ = [
    "BATCH",
    "COLUMNS",
    "GENESIS",
    "AuditRecord",
    "AuditRecords",
    "UnreadableData",
    "Verification",
]

GENESIS = "0" * 64
BATCH = 1000  # records fetched per query while streaming
COLUMNS = "seq, at, kind, flag, actor, data, prev_hash, hash, ref, signature"


class UnreadableData(dict[str, Any]):
    """The ``data`` of a record whose stored text is not a JSON object (flagwarden never writes
    one: someone wrote to the table by hand). Empty, so readers see no fields; ``raw`` keeps the
    stored text and ``problem`` says what is wrong with it."""

    def __init__(self, raw: Any, problem: str) -> None:
        super().__init__()
        self.raw = raw
        self.problem = problem


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    kind: str  # transition | violation | outage | exposure_summary | guard | archive | ...
    flag: str | None
    actor: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str
    ref: str | None = None  # idempotency key of the act it records; not part of the hash
    signature: str | None = None  # Ed25519 over ``hash``, 128 hex digits (audit.signing)

    @property
    def readable(self) -> bool:
        """False when the stored data (or time) could not be read: see :class:`UnreadableData`."""
        return not isinstance(self.data, UnreadableData)

    @staticmethod
    def digest(
        seq: int, at: str, kind: str, flag: str | None, actor: str | None, data: str, prev: str
    ) -> str:
        payload = json.dumps([seq, at, kind, flag, actor, data, prev], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    @classmethod
    def from_row(cls, row: Any) -> AuditRecord:
        """A record from its stored columns (:data:`COLUMNS`), never
        raising on bad content."""
        seq, at, kind, flag, actor, body, prev_hash, digest, ref, signature = row
        data: dict[str, Any]
        try:
            parsed = json.loads(body)
            data = (
                parsed
                if isinstance(parsed, dict)
                else UnreadableData(body, "its data is not a JSON object")
            )
        except (TypeError, ValueError):
            data = UnreadableData(body, "its data is not JSON")
        try:
            moment = datetime.fromisoformat(at)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except (TypeError, ValueError):
            moment = datetime.fromtimestamp(0, UTC)
            data = UnreadableData(body, f"its time {at!r} is not an ISO datetime")
        return cls(seq, moment, kind, flag, actor, data, prev_hash, digest, ref, signature)


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head: str = GENESIS  # the hash of the last verified record (all of them: the whole log)
    archived_through: int = 0  # records up to this seq were archived (the live log starts after)
    signed: int = 0  # records checked that carry a signature
    key: str | None = None  # the fingerprint of the public key signatures were checked with

    @property
    def signatures(self) -> str:
        """``verified`` (with a key, every record's), ``failed: ...`` (with a key), ``not
        checked`` (signed records, no key) or ``unsigned`` (no record carries one)."""
        if self.key is not None:
            return "verified" if self.ok else f"failed: {self.problem}"
        return "not checked" if self.signed else "unsigned"


def _utc_text(moment: datetime) -> str:
    """A bound for the ``at`` column: stored times are ISO in UTC, which sort as text."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (code point
    order, which is UTF-8 byte order), or None when there is none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:
            code = 0xE000  # surrogates cannot be stored
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class AuditRecords:
    """The records a :meth:`AuditLog.records` call selects, read lazily.

    Each iteration runs the query afresh and streams it in batches (records appended meanwhile
    may appear at the end); ``bool()`` asks whether any record matches; ``list()`` materialises.
    """

    def __init__(self, log: AuditLog, query: _Query) -> None:
        self._log = log
        self._query = query

    def __iter__(self) -> Iterator[AuditRecord]:
        return _stream(self._log, self._query)

    def __bool__(self) -> bool:
        return self.first() is not None

    def first(self) -> AuditRecord | None:
        """The first record in the order asked for (the newest with ``newest_first``)."""
        limited = replace(self._query, limit=1)
        return next(_stream(self._log, limited), None)


@dataclass(frozen=True)
class _Query:
    since: datetime | None = None
    until: datetime | None = None
    flag: str | None = None
    kinds: tuple[str, ...] | None = None
    newest_first: bool = False
    limit: int | None = None


def _stream(log: AuditLog, query: _Query) -> Iterator[AuditRecord]:
    """The records ``query`` selects, streamed in batches of :data:`BATCH` (keyset pagination
    on ``seq``, the log's lock held per batch only)."""
    if query.kinds is not None and len(query.kinds) != 1:
        # One index-ordered stream per kind, merged by seq: no sort in the database.
        streams = [
            _stream(log, replace(query, kinds=(kind,), limit=None))
            for kind in dict.fromkeys(query.kinds)
        ]
        merged = heapq.merge(*streams, key=lambda r: r.seq, reverse=query.newest_first)
        yield from itertools.islice(merged, query.limit)
        return
    ph = log._ph
    clauses: list[str] = []
    args: list[Any] = []
    if query.flag is not None:
        clauses.append(f"flag = {ph}")
        args.append(query.flag)
    if query.kinds is not None:
        clauses.append(f"kind = {ph}")
        args.append(query.kinds[0])
    # A time bound becomes the seq range it selects, so the batches below walk seq order
    # (`at || ''` keeps the database from using the at index and sorting by seq). The
    # lower edge is found in the (at, seq) index over the period (`seq + 0` stops SQLite
    # walking the whole older log by seq); the upper edge by seq, from the newest back.
    edges = (
        (query.since, "MIN(seq + 0)", ">=", "seq >="),
        (query.until, "MAX(seq)", "<=", "seq <="),
    )
    for bound, pick, op, keep in edges:
        if bound is None:
            continue
        ((edge,),) = log._execute(
            f"SELECT {pick} FROM flagwarden_audit WHERE at {op} {ph}", (_utc_text(bound),)
        )
        if edge is None:
            return
        clauses += [f"{keep} {ph}", f"at || '' {op} {ph}"]
        args += [edge, _utc_text(bound)]
    order, after = ("DESC", "<") if query.newest_first else ("ASC", ">")
    remaining = query.limit
    cursor: int | None = None
    while remaining is None or remaining > 0:
        size = BATCH if remaining is None else min(BATCH, remaining)
        where = [*clauses, f"seq {after} {ph}"] if cursor is not None else clauses
        sql = f"SELECT {COLUMNS} FROM flagwarden_audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {order} LIMIT {int(size)}"
        rows = log._execute(sql, (*args, cursor) if cursor is not None else tuple(args))
        for row in rows:
            yield AuditRecord.from_row(row)
        if len(rows) < size:
            return
        cursor = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)
