"""The append-only, hash-chained audit log (SQLite or PostgreSQL): :class:`AuditLog` owns the
connection and schema, appends (serialized across processes by SQLite ``BEGIN IMMEDIATE`` or a
PostgreSQL advisory lock, so the chain never forks), reads and cuts archived records. The record
types and the streaming reader live in :mod:`flagwarden.audit.records` (re-exported here), chain
verification in :mod:`flagwarden.audit.verify`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flagwarden.audit.records import (
    BATCH,
    COLUMNS,
    GENESIS,
    AuditRecord,
    AuditRecords,
    UnreadableData,
    Verification,
    _Query,
    _successor,
    _utc_text,
)
from flagwarden.errors import FlagwardenError
from flagwarden.storage import create_tables, redact_text, redact_url, store_failure

if TYPE_CHECKING:  # signing (cryptography) is loaded with a key or a verification, not before
    from flagwarden.audit.signing import PublicKey, Signer

__all__ = [
    "BATCH",
    "GENESIS",
    "KEYLESS",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "AuditRecords",
    "UnreadableData",
    "Verification",
    "open_audit_log",
]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS flagwarden_audit ("
    "seq BIGINT PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, flag TEXT, actor TEXT, "
    "data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, ref TEXT{collate}, "
    "signature TEXT)"
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
# Why a process without the key may not append to a signed log: its unsigned record would
# follow signed ones, and verifying with the key would fail on it forever. Transitions keep
# their records in the state store's outbox until a process with the key writes them.
KEYLESS = "the audit log is signed: this process has no audit.signing_key (docs/audit.md#signing)"
# An append gives up after this long on PostgreSQL (SQLite waits as long for its lock): a hung
# audit database must not hang a transition, whose change is already stored and whose records
# then wait in the outbox, nor the watch loop.
APPEND_TIMEOUT_MS = 30_000


def _index_sql(name: str) -> str:
    unique = "UNIQUE " if name == "flagwarden_audit_ref" else ""
    return f"CREATE {unique}INDEX IF NOT EXISTS {name} ON flagwarden_audit {_INDEXES[name]}"


class AuditError(FlagwardenError):
    """The audit log could not be written or read."""


class AuditLog:
    """Append and read records; the backend is picked by URL. With a ``signer`` every record
    appended carries its Ed25519 signature (:mod:`flagwarden.audit.signing`)."""

    def __init__(
        self, url: str, base_dir: Path | None = None, *, signer: Signer | None = None
    ) -> None:
        self.url = url
        self.signer = signer
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
            return {"ref", "signature"} <= columns and set(_INDEXES) <= indexes

        if current():
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see it done
        try:
            conn.execute(_TABLE.format(collate=_REF_COLUMN["sqlite"][len("ref TEXT") :]))
            columns = {row[1] for row in conn.execute("PRAGMA table_info(flagwarden_audit)")}
            if "ref" not in columns:
                conn.execute("ALTER TABLE flagwarden_audit ADD COLUMN ref TEXT")
            if "signature" not in columns:
                conn.execute("ALTER TABLE flagwarden_audit ADD COLUMN signature TEXT")
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
            "SELECT (SELECT count(*) = 2 FROM pg_attribute WHERE attname IN ('ref', 'signature') "
            "AND NOT attisdropped AND attrelid = to_regclass('flagwarden_audit')), "
            "(SELECT count(*) FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL)",
            (list(_INDEXES),),
        ).fetchone()
        if row[0] and row[1] == len(_INDEXES):
            return
        create_tables(
            conn,
            _TABLE.format(collate=' COLLATE "C"'),
            f"ALTER TABLE flagwarden_audit ADD COLUMN IF NOT EXISTS {_REF_COLUMN['postgres']}",
            "ALTER TABLE flagwarden_audit ADD COLUMN IF NOT EXISTS signature TEXT",
            *(_index_sql(name) for name in _INDEXES),
        )

    def after_fork_in_child(self) -> None:
        """A forked child must not share its parent's database connection."""
        self._lock = threading.Lock()
        self._conn = self._connect()

    @contextlib.contextmanager
    def _transaction(self, action: str, *, bounded: bool = True) -> Iterator[None]:
        """One locked write transaction: committed when the block ends, else rolled back and
        its error raised (an :class:`AuditError` as it is, any other as ``action`` failing)."""
        with self._lock:
            try:
                self._begin(bounded=bounded)
                yield
                self._conn.execute("COMMIT")
            except AuditError:
                with contextlib.suppress(Exception):
                    self._conn.execute("ROLLBACK")
                raise
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self._conn.execute("ROLLBACK")
                raise self._fail(action, exc) from None

    def _begin(self, *, bounded: bool = True) -> None:
        """Open a write transaction that excludes every other appender (call under the lock)."""
        if self._kind == "sqlite":
            self._conn.execute("BEGIN IMMEDIATE")
        else:
            if self._conn.closed or self._conn.broken:  # the server restarted: a new session
                self._conn = self._connect()
            self._conn.execute("BEGIN")
            if bounded:  # an archive's delete may take long; an append must not
                self._conn.execute(f"SET LOCAL statement_timeout = {APPEND_TIMEOUT_MS}")
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
        two processes recording the same act append it once). The ref column is not hashed,
        so the record's data states the ref too (``data["ref"]``, added when missing; a
        different ``data["ref"]`` is a :class:`ValueError`): that copy is hashed and signed.

        Refused (:class:`AuditError`) without a ``signer`` when the last record is signed: an
        unsigned record after signed ones would make the log fail verification for good (see
        :data:`KEYLESS`).
        """
        return self.append_once(kind, data, flag=flag, actor=actor, ref=ref)[0]

    def append_once(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        flag: str | None = None,
        actor: str | None = None,
        ref: str | None = None,
    ) -> tuple[AuditRecord, bool]:
        """:meth:`append`, and whether it appended (False: the ref was already recorded)."""
        if ref is not None:
            stated = data.get("ref", ref)
            if stated != ref:
                raise ValueError(f"data states ref {stated!r}, but the record's ref is {ref!r}")
            data = {**data, "ref": ref}  # hashed and signed, unlike the ref column
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        with self._transaction("append"):
            existing = self._find(ref) if ref is not None else None
            record = existing or self._insert(kind, data, body, flag, actor, ref)
        return record, existing is None

    def _insert(
        self,
        kind: str,
        data: dict[str, Any],
        body: str,
        flag: str | None,
        actor: str | None,
        ref: str | None,
    ) -> AuditRecord:
        """Chain a record onto the last one (inside a transaction opened by :meth:`_begin`);
        without a signer, refused when the last record is signed (:data:`KEYLESS`)."""
        ph = self._ph
        at = datetime.now(UTC)  # taken under the lock: times follow the chain's order
        row = self._conn.execute(
            "SELECT seq, hash, signature FROM flagwarden_audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None and row[2] is not None and self.signer is None:
            raise AuditError(KEYLESS)
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        digest = AuditRecord.digest(seq, at.isoformat(), kind, flag, actor, body, prev)
        signature = self.signer.sign(digest) if self.signer is not None else None
        self._conn.execute(
            f"INSERT INTO flagwarden_audit ({COLUMNS}) VALUES ({', '.join([ph] * 10)})",
            (seq, at.isoformat(), kind, flag, actor, body, prev, digest, ref, signature),
        )
        return AuditRecord(seq, at, kind, flag, actor, data, prev, digest, ref, signature)

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

    def signed_before(self, seq: int) -> int | None:
        """A signed record before record ``seq``: the first in the live log, else the one the
        latest ``archive`` record states (``first_signed_seq``: archived signed records);
        None when neither has one. Once a record is signed, every later one must be."""
        ((first,),) = self._execute(
            "SELECT MIN(seq) FROM flagwarden_audit "
            f"WHERE signature IS NOT NULL AND seq < {self._ph}",
            (seq,),
        )
        if first is not None:
            return int(first)
        cut = self.records(kind="archive", newest_first=True).first()
        stated = cut.data.get("first_signed_seq") if cut is not None else None
        return stated if isinstance(stated, int) and stated < seq else None

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
        with self._transaction("archive", bounded=False):
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
        return record

    # -- verification ----------------------------------------------------------------------

    def start(self) -> tuple[int, str, AuditRecord | None]:
        """Where the live chain starts: ``(first seq, the hash it must follow, the archive
        record that says so)``; ``(1, GENESIS, None)`` for a log that was never archived."""
        from flagwarden.audit.verify import chain_start

        return chain_start(self)

    def verify(self, public_key: PublicKey | None = None) -> Verification:
        """Walk the chain; name the first record that was edited, deleted or moved, and with
        ``public_key`` the first unsigned or badly signed one (see
        :func:`~flagwarden.audit.verify.verify_chain`)."""
        from flagwarden.audit.verify import verify_chain

        return verify_chain(self, public_key)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_audit_log(
    url: str, base_dir: Path | None = None, *, signer: Signer | None = None
) -> AuditLog:
    return AuditLog(url, base_dir, signer=signer)
