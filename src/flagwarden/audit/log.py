"""The append-only, hash-chained audit log (SQLite or PostgreSQL).

Each record carries the SHA-256 of its own content and of the record before it, so an edited,
deleted or reordered record breaks the chain at a place :meth:`AuditLog.verify` names. Appends
from many processes are serialized by the database (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL
transaction-scoped advisory lock), so the chain never forks.

Reading scales with what is asked, not with the log: :meth:`AuditLog.records` streams in
batches of :data:`BATCH` (keyset pagination on ``seq``, the lock held per batch only), with the
flag, kind and time filters in SQL and served by indexes on ``(flag, seq)``,
``(flag, kind, seq)``, ``(kind, seq)`` and ``(at, seq)``. :meth:`AuditLog.verify` streams the
same way, in bounded memory. Old records can be moved to a file (:mod:`flagwarden.audit.archive`)
without breaking the chain: the ``archive`` record that closes the cut states where it starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import json
import sqlite3
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flagwarden.errors import FlagwardenError
from flagwarden.storage import create_tables, redact_text, redact_url, store_failure

__all__ = [
    "BATCH",
    "GENESIS",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "AuditRecords",
    "UnreadableData",
    "Verification",
    "open_audit_log",
]

GENESIS = "0" * 64
BATCH = 1000  # records fetched per query while streaming
COLUMNS = "seq, at, kind, flag, actor, data, prev_hash, hash, ref"
_TABLE = (
    "CREATE TABLE IF NOT EXISTS flagwarden_audit ("
    "seq BIGINT PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, flag TEXT, actor TEXT, "
    "data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, ref TEXT{collate})"
)
# A ref compares byte by byte on both backends (PostgreSQL's default collation may not), so a
# prefix is a contiguous range of the unique index.
_REF_COLUMN = {"sqlite": "ref TEXT", "postgres": 'ref TEXT COLLATE "C"'}
_INDEXES = {
    "flagwarden_audit_ref": "(ref) WHERE ref IS NOT NULL",
    "flagwarden_audit_flag_seq": "(flag, seq)",
    "flagwarden_audit_flag_kind_seq": "(flag, kind, seq)",
    "flagwarden_audit_kind_seq": "(kind, seq)",
    "flagwarden_audit_at_seq": "(at, seq)",
}
_ADVISORY_KEY = 0x666C6167  # "flag"


def _index_sql(name: str) -> str:
    unique = "UNIQUE " if name == "flagwarden_audit_ref" else ""
    return f"CREATE {unique}INDEX IF NOT EXISTS {name} ON flagwarden_audit {_INDEXES[name]}"


class AuditError(FlagwardenError):
    """The audit log could not be written or read."""


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
        """A record from its stored columns (:data:`COLUMNS`), never raising on bad content."""
        seq, at, kind, flag, actor, body, prev_hash, digest, ref = row
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
        return cls(seq, moment, kind, flag, actor, data, prev_hash, digest, ref)


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head: str = GENESIS  # the hash of the last verified record (all of them: the whole log)
    archived_through: int = 0  # records up to this seq were archived (the live log starts after)


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
        return self._log._stream(self._query)

    def __bool__(self) -> bool:
        return self.first() is not None

    def first(self) -> AuditRecord | None:
        """The first record in the order asked for (the newest with ``newest_first``)."""
        limited = replace(self._query, limit=1)
        return next(self._log._stream(limited), None)


@dataclass(frozen=True)
class _Query:
    since: datetime | None = None
    until: datetime | None = None
    flag: str | None = None
    kinds: tuple[str, ...] | None = None
    newest_first: bool = False
    limit: int | None = None


class AuditLog:
    """Append and read records; the backend is picked by URL."""

    def __init__(self, url: str, base_dir: Path | None = None) -> None:
        self.url = url
        self._lock = threading.Lock()
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            self._kind = "sqlite"
            self._path = path if path.is_absolute() or base_dir is None else base_dir / path
        elif url.startswith(("postgresql://", "postgres://")):
            self._kind = "postgres"
        else:
            raise AuditError(f"{redact_url(url)}: expected sqlite:///PATH or postgresql://...")
        self._ph = "?" if self._kind == "sqlite" else "%s"
        self._conn: Any = self._connect()

    # -- connection and schema -------------------------------------------------------------

    def _connect(self) -> Any:
        if self._kind == "sqlite":
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn: Any = sqlite3.connect(
                    self._path, timeout=30, check_same_thread=False, isolation_level=None
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
                self._migrate_sqlite(conn)
                return conn
            except (OSError, sqlite3.Error) as exc:
                raise AuditError(store_failure(self.url, exc)) from None
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            self._migrate_postgres(conn)
            return conn
        except psycopg.Error as exc:
            raise AuditError(store_failure(self.url, exc)) from None

    @staticmethod
    def _migrate_sqlite(conn: Any) -> None:
        """Create the table and its indexes, or bring an older table up to date (the ``ref``
        column, the indexes). Checked without a lock first: usually there is nothing to do."""

        def current() -> bool:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(flagwarden_audit)")}
            indexes = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = 'flagwarden_audit'"
                )
            }
            return "ref" in columns and set(_INDEXES) <= indexes

        if current():
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see it done
        try:
            conn.execute(_TABLE.format(collate=_REF_COLUMN["sqlite"][len("ref TEXT") :]))
            columns = {row[1] for row in conn.execute("PRAGMA table_info(flagwarden_audit)")}
            if "ref" not in columns:
                conn.execute("ALTER TABLE flagwarden_audit ADD COLUMN ref TEXT")
            for name in _INDEXES:
                conn.execute(_index_sql(name))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _migrate_postgres(conn: Any) -> None:
        """As :meth:`_migrate_sqlite`; DDL only when something is missing, because even a
        no-op ``ALTER TABLE`` takes an exclusive lock on the table."""
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'ref' AND NOT "
            "attisdropped AND attrelid = to_regclass('flagwarden_audit')), "
            "(SELECT count(*) FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL)",
            (list(_INDEXES),),
        ).fetchone()
        if row[0] and row[1] == len(_INDEXES):
            return
        create_tables(
            conn,
            _TABLE.format(collate=' COLLATE "C"'),
            f"ALTER TABLE flagwarden_audit ADD COLUMN IF NOT EXISTS {_REF_COLUMN['postgres']}",
            *(_index_sql(name) for name in _INDEXES),
        )

    def after_fork_in_child(self) -> None:
        """A forked child must not share its parent's database connection."""
        self._lock = threading.Lock()
        self._conn = self._connect()

    def _begin(self) -> None:
        """Open a write transaction that excludes every other appender (call under the lock)."""
        if self._kind == "sqlite":
            self._conn.execute("BEGIN IMMEDIATE")
        else:
            if self._conn.closed or self._conn.broken:  # the server restarted: a new session
                self._conn = self._connect()
            self._conn.execute("BEGIN")
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))

    def _fail(self, action: str, exc: BaseException) -> AuditError:
        return AuditError(
            f"{redact_url(self.url)}: cannot {action} "
            f"({type(exc).__name__}: {redact_text(str(exc), self.url)})"
        )

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        flag: str | None = None,
        actor: str | None = None,
        ref: str | None = None,
    ) -> AuditRecord:
        """Append a record and return it.

        With ``ref``, at most one record ever carries it: when one already does, that record is
        returned and nothing is appended (checked and inserted in one locked transaction, so
        two processes recording the same act append it once). The ref is not hashed.
        """
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._begin()
                existing = self._find(ref) if ref is not None else None
                record = existing or self._insert(kind, data, body, flag, actor, ref)
                self._conn.execute("COMMIT")
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self._conn.execute("ROLLBACK")
                raise self._fail("append", exc) from None
        return record

    def _insert(
        self,
        kind: str,
        data: dict[str, Any],
        body: str,
        flag: str | None,
        actor: str | None,
        ref: str | None,
    ) -> AuditRecord:
        """Chain a record onto the last one (inside a transaction opened by :meth:`_begin`)."""
        ph = self._ph
        at = datetime.now(UTC)  # taken under the lock: times follow the chain's order
        row = self._conn.execute(
            "SELECT seq, hash FROM flagwarden_audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        digest = AuditRecord.digest(seq, at.isoformat(), kind, flag, actor, body, prev)
        self._conn.execute(
            f"INSERT INTO flagwarden_audit ({COLUMNS}) "
            f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph})",
            (seq, at.isoformat(), kind, flag, actor, body, prev, digest, ref),
        )
        return AuditRecord(seq, at, kind, flag, actor, data, prev, digest, ref)

    # -- reading ---------------------------------------------------------------------------

    def _find(self, ref: str) -> AuditRecord | None:
        row = self._conn.execute(
            f"SELECT {COLUMNS} FROM flagwarden_audit WHERE ref = {self._ph}", (ref,)
        ).fetchone()
        return AuditRecord.from_row(row) if row else None

    def find(self, ref: str) -> AuditRecord | None:
        """The record carrying ``ref``, if there is one (in the live log: not archived)."""
        with self._lock:
            try:
                return self._find(ref)
            except Exception as exc:
                raise self._fail("read", exc) from None

    def refs(self, prefix: str) -> set[str]:
        """Every ref in the live log that starts with ``prefix`` (a range of the ref index)."""
        ph = self._ph
        clauses, args = ["ref IS NOT NULL"], []
        if prefix:
            clauses.append(f"ref >= {ph}")
            args.append(prefix)
            upper = _successor(prefix)
            if upper is not None:
                clauses.append(f"ref < {ph}")
                args.append(upper)
        sql = f"SELECT ref FROM flagwarden_audit WHERE {' AND '.join(clauses)}"
        with self._lock:
            try:
                rows = self._conn.execute(sql, tuple(args)).fetchall()
            except Exception as exc:
                raise self._fail("read", exc) from None
        return {row[0] for row in rows if row[0].startswith(prefix)}

    def records(
        self,
        since: datetime | None = None,
        flag: str | None = None,
        *,
        until: datetime | None = None,
        kind: str | Collection[str] | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> AuditRecords:
        """The records with ``since <= at <= until``, of ``flag`` and ``kind`` (one or several),
        oldest first (or ``newest_first``), at most ``limit``: streamed, see
        :class:`AuditRecords`. Changed in 0.1.0: lazy, no longer a list."""
        kinds = None if kind is None else (kind,) if isinstance(kind, str) else tuple(kind)
        return AuditRecords(self, _Query(since, until, flag, kinds, newest_first, limit))

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, args).fetchall())
            except Exception as exc:
                raise self._fail("read", exc) from None

    def _stream(self, query: _Query) -> Iterator[AuditRecord]:
        if query.kinds is not None and len(query.kinds) != 1:
            # One index-ordered stream per kind, merged by seq: no sort in the database.
            streams = [
                self._stream(replace(query, kinds=(kind,), limit=None))
                for kind in dict.fromkeys(query.kinds)
            ]
            merged = heapq.merge(*streams, key=lambda r: r.seq, reverse=query.newest_first)
            yield from itertools.islice(merged, query.limit)
            return
        ph = self._ph
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
            ((edge,),) = self._execute(
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
            rows = self._execute(sql, (*args, cursor) if cursor is not None else tuple(args))
            for row in rows:
                yield AuditRecord.from_row(row)
            if len(rows) < size:
                return
            cursor = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)

    def rows(
        self, after_seq: int | None = None, through_seq: int | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """The stored rows (:data:`COLUMNS`, as stored: what the hashes cover) in seq order,
        in batches; for verification and archiving."""
        ph = self._ph
        cursor = after_seq
        upper = f" AND seq <= {int(through_seq)}" if through_seq is not None else ""
        while True:
            where = f"seq > {ph}" if cursor is not None else "1 = 1"
            rows = self._execute(
                f"SELECT {COLUMNS} FROM flagwarden_audit WHERE {where}{upper} "
                f"ORDER BY seq LIMIT {BATCH}",
                (cursor,) if cursor is not None else (),
            )
            yield from rows
            if len(rows) < BATCH:
                return
            cursor = rows[-1][0]

    def last_seq_before(self, moment: datetime) -> int | None:
        """The last seq of the unbroken run of oldest records written before ``moment`` (what
        an archive cut at ``moment`` takes), or None when the first record is not that old."""
        ((first_newer,),) = self._execute(
            f"SELECT MIN(seq + 0) FROM flagwarden_audit WHERE at >= {self._ph}",
            (_utc_text(moment),),
        )
        if first_newer is not None:
            return int(first_newer) - 1
        ((last,),) = self._execute("SELECT MAX(seq) FROM flagwarden_audit", ())
        return None if last is None else int(last)

    def cut(
        self, first_seq: int, last_seq: int, last_hash: str, data: dict[str, Any], *, actor: str
    ) -> AuditRecord:
        """Delete records ``first_seq..last_seq`` (already written to an archive) and append
        the ``archive`` record that says where the live chain now starts, in one transaction.

        Refused (:class:`AuditError`, nothing changed) when the log no longer starts at
        ``first_seq`` or record ``last_seq`` no longer has ``last_hash``: someone archived or
        changed those records since they were written out.
        """
        ph = self._ph
        data = {**data, "first_seq": first_seq, "last_seq": last_seq, "last_hash": last_hash}
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._begin()
                (first,) = self._conn.execute("SELECT MIN(seq) FROM flagwarden_audit").fetchone()
                row = self._conn.execute(
                    f"SELECT hash FROM flagwarden_audit WHERE seq = {ph}", (last_seq,)
                ).fetchone()
                if first != first_seq or row is None or row[0] != last_hash:
                    raise AuditError(
                        f"records {first_seq}-{last_seq} changed while they were archived "
                        f"(the log now starts at {first}); nothing was archived"
                    )
                # Appended before the delete, so it chains onto the last record, archived or not.
                record = self._insert("archive", data, body, None, actor, None)
                self._conn.execute(f"DELETE FROM flagwarden_audit WHERE seq <= {ph}", (last_seq,))
                self._conn.execute("COMMIT")
            except AuditError:
                with contextlib.suppress(Exception):
                    self._conn.execute("ROLLBACK")
                raise
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self._conn.execute("ROLLBACK")
                raise self._fail("archive", exc) from None
        return record

    # -- verification ----------------------------------------------------------------------

    def start(self) -> tuple[int, str, AuditRecord | None]:
        """Where the live chain starts: ``(first seq, the hash it must follow, the archive
        record that says so)``; ``(1, GENESIS, None)`` for a log that was never archived."""
        cut = self.records(kind="archive", newest_first=True).first()
        if cut is None:
            return 1, GENESIS, None
        last_seq, last_hash = cut.data.get("last_seq"), cut.data.get("last_hash")
        if not isinstance(last_seq, int) or not isinstance(last_hash, str):
            return 1, GENESIS, cut  # verify names the archive record as unreadable
        return last_seq + 1, last_hash, cut

    def verify(self) -> Verification:
        """Walk the chain; name the first record that was edited, deleted or moved.

        A log cut by an archive starts after the last archived record: the first remaining
        record must follow the hash the latest ``archive`` record states (that record is
        itself chained, so the statement cannot be edited unnoticed)."""
        expected_seq, prev, cut = self.start()
        archived = expected_seq - 1
        checked = 0
        if cut is not None and archived == 0:
            return Verification(
                False,
                0,
                cut.seq,
                f"archive record {cut.seq} does not say where the cut is",
            )
        for seq, at, kind, flag, actor, data, prev_hash, digest, _ref in self.rows():
            if seq != expected_seq:
                where = (
                    f" (the archive record {cut.seq} says the log starts at record {expected_seq})"
                    if cut is not None and checked == 0
                    else ""
                )
                return Verification(
                    False,
                    checked,
                    expected_seq,
                    f"record {expected_seq} is missing (next is {seq}){where}",
                    head=prev,
                    archived_through=archived,
                )
            if prev_hash != prev:
                return Verification(
                    False,
                    checked,
                    seq,
                    f"record {seq} does not follow record {seq - 1} (chain broken)",
                    head=prev,
                    archived_through=archived,
                )
            if AuditRecord.digest(seq, at, kind, flag, actor, data, prev_hash) != digest:
                return Verification(
                    False,
                    checked,
                    seq,
                    f"record {seq} was modified (hash mismatch)",
                    head=prev,
                    archived_through=archived,
                )
            if _ref is not None and _stated_ref(data) not in (None, _ref):
                # The ref column is not hashed; the ref the (hashed) data states must agree.
                return Verification(
                    False,
                    checked,
                    seq,
                    f"record {seq}'s ref was changed (it does not match its data)",
                    head=prev,
                    archived_through=archived,
                )
            prev, expected_seq = digest, seq + 1
            checked += 1
        return Verification(True, checked, head=prev, archived_through=archived)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _stated_ref(data: str) -> str | None:
    """The ref a record's data states (records of state changes carry theirs), if any."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    ref = doc.get("ref") if isinstance(doc, dict) else None
    return ref if isinstance(ref, str) else None


def open_audit_log(url: str, base_dir: Path | None = None) -> AuditLog:
    return AuditLog(url, base_dir)
