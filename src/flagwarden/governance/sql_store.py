"""The state store in SQLite (one machine, many processes) or PostgreSQL (many machines).

Both keep the same three tables and run the same SQL (only the placeholder and the way a
transaction starts differ): ``flagwarden_state`` (one row per flag, plus the generation row
with the empty flag key, which no policy can name), ``flagwarden_outbox`` (audit records of
changes not yet in the audit log) and ``flagwarden_workers`` (what each worker last saw).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from flagwarden.governance.state import (
    WORKER_TTL,
    ChangeCallback,
    ErrorCallback,
    FlagState,
    OutboxEntry,
    StateCallback,
    StateStore,
    StateStoreUnavailable,
    keep_listening,
    new_generation,
    parse_outbox,
    parse_states,
)
from flagwarden.logs import get_logger
from flagwarden.storage import create_tables, redact_text, redact_url, store_failure

__all__ = ["PostgresStateStore", "SQLiteStateStore"]

_log = get_logger("flagwarden.state")
T = TypeVar("T")

_TABLES = (
    "CREATE TABLE IF NOT EXISTS flagwarden_state ("
    "flag TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS flagwarden_outbox ("
    "ref TEXT PRIMARY KEY, flag TEXT NOT NULL, created_at TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS flagwarden_workers ("
    "worker TEXT PRIMARY KEY, at TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS flagwarden_documents ("
    "kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, key))",
)
_GENERATION_ROW = ""  # the flag key of the generation row: no policy can name it
# What every state row is now, in one small read: which flag, which version, which change.
_FINGERPRINT = (
    "SELECT flag, version, CASE WHEN json_valid(data) THEN json_extract(data, '$.ref') "
    "ELSE data END FROM flagwarden_state"
)


class _SQLStateStore(StateStore):
    """The SQL both backends share; subclasses connect and open transactions."""

    ph = "?"
    _locking = ""  # SQLite's write transaction (BEGIN IMMEDIATE) already excludes writers

    def _read(self, fn: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _write(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)`` in one transaction."""
        raise NotImplementedError

    def _notify(self, conn: Any, flag: str) -> None:
        """Announce a change (PostgreSQL NOTIFY; SQLite's readers poll data_version)."""

    def _ensure_generation(self, conn: Any) -> None:
        conn.execute(
            "INSERT INTO flagwarden_state (flag, version, data) "
            f"VALUES ({self.ph}, 0, {self.ph}) ON CONFLICT (flag) DO NOTHING",
            (_GENERATION_ROW, new_generation()),
        )

    def _states(self, rows: list[Any]) -> dict[str, FlagState]:
        generation = next((data for flag, data in rows if flag == _GENERATION_ROW), "")
        states, unreadable = parse_states(
            ((flag, data) for flag, data in rows if flag != _GENERATION_ROW), generation
        )
        self.last_generation, self.last_unreadable = generation, unreadable
        return states

    def load(self, flag: str) -> FlagState | None:
        ph = self.ph
        rows = self._read(
            lambda c: c.execute(
                f"SELECT flag, data FROM flagwarden_state WHERE flag IN ({ph}, {ph})",
                (flag, _GENERATION_ROW),
            ).fetchall()
        )
        return self._states(rows).get(flag)

    def load_all(self) -> dict[str, FlagState]:
        rows = self._read(lambda c: c.execute("SELECT flag, data FROM flagwarden_state").fetchall())
        return self._states(rows)

    def compare_and_set(
        self,
        new: FlagState,
        outbox: OutboxEntry | None = None,
        *,
        previous: FlagState | None = None,
    ) -> bool:
        ph = self.ph

        def cas(conn: Any) -> bool:
            self._ensure_generation(conn)
            if new.version == 1:
                cur = conn.execute(
                    "INSERT INTO flagwarden_state (flag, version, data) "
                    f"VALUES ({ph}, 1, {ph}) ON CONFLICT (flag) DO NOTHING",
                    (new.flag, new.to_json()),
                )
            else:
                if previous is not None and self._stored_ref(conn, new.flag) != previous.ref:
                    return False  # the same version number, another change (a restored copy)
                cur = conn.execute(
                    f"UPDATE flagwarden_state SET version = {ph}, data = {ph} "
                    f"WHERE flag = {ph} AND version = {ph}",
                    (new.version, new.to_json(), new.flag, new.version - 1),
                )
            if cur.rowcount != 1:
                return False
            if outbox is not None:
                conn.execute(
                    "INSERT INTO flagwarden_outbox (ref, flag, created_at, data) "
                    f"VALUES ({ph}, {ph}, {ph}, {ph})",
                    (outbox.ref, outbox.flag, outbox.created_at.isoformat(), outbox.to_json()),
                )
            self._notify(conn, new.flag)
            return True

        return self._write(cas)

    def _stored_ref(self, conn: Any, flag: str) -> str | None:
        """The ref of the change stored for ``flag`` (in the write transaction: locked)."""
        row = conn.execute(
            f"SELECT data FROM flagwarden_state WHERE flag = {self.ph}{self._locking}", (flag,)
        ).fetchone()
        try:
            ref = json.loads(row[0]).get("ref") if row else None
        except (ValueError, AttributeError):
            return None
        return ref if isinstance(ref, str) else None

    def pending_outbox(self) -> list[OutboxEntry]:
        rows = self._read(lambda c: c.execute("SELECT data FROM flagwarden_outbox").fetchall())
        return parse_outbox(r[0] for r in rows)

    def clear_outbox(self, ref: str) -> None:
        ph = self.ph
        self._write(lambda c: c.execute(f"DELETE FROM flagwarden_outbox WHERE ref = {ph}", (ref,)))

    def heartbeat(self, worker: str, report: dict[str, Any]) -> None:
        ph = self.ph
        now = datetime.now(UTC)
        stale = (now - timedelta(seconds=WORKER_TTL * 10)).isoformat()

        def beat(conn: Any) -> None:
            conn.execute(
                "INSERT INTO flagwarden_workers (worker, at, data) "
                f"VALUES ({ph}, {ph}, {ph}) "
                "ON CONFLICT (worker) DO UPDATE SET at = excluded.at, data = excluded.data",
                (worker, now.isoformat(), json.dumps(report, sort_keys=True, default=str)),
            )
            conn.execute(f"DELETE FROM flagwarden_workers WHERE at < {ph}", (stale,))

        self._write(beat)

    def workers(self) -> dict[str, dict[str, Any]]:
        ph = self.ph
        since = (datetime.now(UTC) - timedelta(seconds=WORKER_TTL)).isoformat()
        rows = self._read(
            lambda c: c.execute(
                f"SELECT worker, data FROM flagwarden_workers WHERE at >= {ph} ORDER BY worker",
                (since,),
            ).fetchall()
        )
        return {worker: json.loads(data) for worker, data in rows}

    def documents(self, kind: str) -> dict[str, str]:
        ph = self.ph
        rows = self._read(
            lambda c: c.execute(
                f"SELECT key, data FROM flagwarden_documents WHERE kind = {ph} ORDER BY key",
                (kind,),
            ).fetchall()
        )
        return dict(rows)

    def put_document(
        self, kind: str, key: str, doc: str, *, expected: str | None, announce: str = ""
    ) -> bool:
        ph = self.ph

        def put(conn: Any) -> bool:
            if expected is None:
                cur = conn.execute(
                    "INSERT INTO flagwarden_documents (kind, key, data) "
                    f"VALUES ({ph}, {ph}, {ph}) ON CONFLICT (kind, key) DO NOTHING",
                    (kind, key, doc),
                )
            else:
                cur = conn.execute(
                    f"UPDATE flagwarden_documents SET data = {ph} "
                    f"WHERE kind = {ph} AND key = {ph} AND data = {ph}",
                    (doc, kind, key, expected),
                )
            if cur.rowcount == 1 and announce:
                self._notify(conn, announce)
            return bool(cur.rowcount == 1)

        return self._write(put)


# -- SQLite ------------------------------------------------------------------------------


class SQLiteStateStore(_SQLStateStore):
    """One file, many processes on one machine (WAL)."""

    def __init__(self, path: Path, poll_interval: float = 0.25) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn, self._inode = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def _file_id(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def _connect(self) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _TABLES:
                conn.execute(statement)
            self._ensure_generation(conn)
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):  # the original error is the news
                conn.execute("ROLLBACK")
            conn.close()
            raise
        return conn, self._file_id()

    def _current(self) -> sqlite3.Connection:
        """The connection, reopened when the file was replaced (a restore from a copy, or
        deleted and recreated): an open connection keeps reading the old file."""
        if self._file_id() != self._inode:
            self._conn.close()
            self._conn, self._inode = self._connect()
        return self._conn

    def _read(self, fn: Callable[[Any], T]) -> T:
        try:
            with self._lock:
                return fn(self._current())
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def _write(self, fn: Callable[[Any], T]) -> T:
        try:
            with self._lock:
                conn = self._current()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def watch(
        self,
        callback: ChangeCallback,
        on_error: ErrorCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        def poll() -> None:
            conn: sqlite3.Connection | None = None
            seen: Any = None  # data_version: changes with any write (heartbeats, the outbox)
            states: Any = None  # every flag's version and change: only this changing is news
            inode: tuple[int, int] | None = None
            first = True
            while not self._stop.wait(0 if first else self.poll_interval):
                try:
                    if conn is None or self._file_id() != inode:
                        if conn is not None:
                            conn.close()
                        conn, inode = self._connect()
                        seen = states = None  # another file, or a lost connection
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version == seen:
                        continue
                    seen, before = version, states
                    states = conn.execute(_FINGERPRINT).fetchall()
                except (OSError, sqlite3.Error) as exc:
                    if on_error is not None:
                        on_error(store_failure(self.url, exc))
                    conn, first = None, False  # and wait a poll interval before trying again
                    continue
                try:
                    if states != before and not first:
                        callback(None)
                except Exception as exc:
                    # The callback's own failure (a bug): said, and the poll goes on.
                    _log.error(
                        "flagwarden.state_watch_failed",
                        store=redact_url(self.url),
                        error=redact_text(f"{type(exc).__name__}: {exc}")[:500],
                    )
                first = False
            if conn is not None:
                conn.close()

        self._thread = threading.Thread(target=poll, name="flagwarden-state-sqlite", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:  # never under a read or write of another thread (a crash in sqlite3)
            self._conn.close()


# -- PostgreSQL --------------------------------------------------------------------------


# PostgreSQL URLs whose tables this process has created (or found): the DDL runs once per
# process, not on every connection (a fleet reconnecting after a restart would queue on it).
_SCHEMA_READY: set[str] = set()


class PostgresStateStore(_SQLStateStore):
    """Many machines; changes announced with LISTEN/NOTIFY."""

    CHANNEL = "flagwarden_state"
    ph = "%s"
    _locking = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Any = None  # connected on first use, so a worker can start while it is down

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
        if self.url not in _SCHEMA_READY:  # once per process, again after a dropped table
            create_tables(conn, *_TABLES)
            with conn.transaction():
                self._ensure_generation(conn)
            _SCHEMA_READY.add(self.url)
        return conn

    def _call(self, fn: Callable[[Any], T], *, transaction: bool) -> T:
        import psycopg

        with self._lock:
            for again in (True, False):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    if not transaction:
                        return fn(self._conn)
                    with self._conn.transaction():
                        return fn(self._conn)
                except psycopg.Error as exc:
                    if self._conn is not None and not self._conn.closed:
                        self._conn.close()
                    self._conn = None
                    if isinstance(exc, psycopg.errors.UndefinedTable):
                        _SCHEMA_READY.discard(self.url)  # the next connect creates them
                        if again:
                            continue  # the tables were dropped under us: once more
                    raise StateStoreUnavailable(store_failure(self.url, exc)) from None
            raise AssertionError("unreachable")

    def _read(self, fn: Callable[[Any], T]) -> T:
        return self._call(fn, transaction=False)

    def _write(self, fn: Callable[[Any], T]) -> T:
        return self._call(fn, transaction=True)

    def _notify(self, conn: Any, flag: str) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, flag))

    def watch(
        self,
        callback: ChangeCallback,
        on_error: ErrorCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        import psycopg

        def listen() -> None:
            with self._connect() as conn:
                conn.execute(f"LISTEN {self.CHANNEL}")
                callback(None)  # anything notified while we were away
                while not self._stop.is_set():
                    for notify in conn.notifies(timeout=1.0, stop_after=1):
                        callback(notify.payload)

        keep_listening(
            "flagwarden-state-postgres", self.url, self._stop, listen, (psycopg.Error,), on_error
        )

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.close()
