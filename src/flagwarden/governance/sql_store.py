"""The state store in SQLite (one machine, many processes) or PostgreSQL (many machines)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from flagwarden.governance.state import (
    ChangeCallback,
    ErrorCallback,
    FlagState,
    StateStore,
    StateStoreUnavailable,
    keep_listening,
)
from flagwarden.storage import create_tables, store_failure

__all__ = ["PostgresStateStore", "SQLiteStateStore"]

_log = structlog.get_logger("flagwarden.state")


# -- SQLite ------------------------------------------------------------------------------


class SQLiteStateStore(StateStore):
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
            self._conn = self._connect()
            with self._lock, self._conn:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS flagwarden_state ("
                    "flag TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreUnavailable(f"{self.url}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateStoreUnavailable(f"{self.url}: {exc}") from None

    def load(self, flag: str) -> FlagState | None:
        rows = self._query("SELECT data FROM flagwarden_state WHERE flag = ?", (flag,))
        return FlagState.from_json(rows[0][0]) if rows else None

    def load_all(self) -> dict[str, FlagState]:
        rows = self._query("SELECT data FROM flagwarden_state")
        states = [FlagState.from_json(r[0]) for r in rows]
        return {s.flag: s for s in states}

    def compare_and_set(self, new: FlagState) -> bool:
        try:
            with self._lock:
                if new.version == 1:
                    cur = self._conn.execute(
                        "INSERT INTO flagwarden_state (flag, version, data) VALUES (?, 1, ?) "
                        "ON CONFLICT(flag) DO NOTHING",
                        (new.flag, new.to_json()),
                    )
                else:
                    cur = self._conn.execute(
                        "UPDATE flagwarden_state SET version = ?, data = ? "
                        "WHERE flag = ? AND version = ?",
                        (new.version, new.to_json(), new.flag, new.version - 1),
                    )
                return cur.rowcount == 1
        except sqlite3.Error as exc:
            raise StateStoreUnavailable(f"{self.url}: {exc}") from None

    def watch(self, callback: ChangeCallback, on_error: ErrorCallback | None = None) -> None:
        def poll() -> None:
            try:
                conn = self._connect()
                last = conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:
                _log.error("flagwarden.state_watch_failed", store=self.url, error=str(exc))
                return
            while not self._stop.wait(self.poll_interval):
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if version != last:
                    last = version
                    callback(None)
            conn.close()

        self._thread = threading.Thread(target=poll, name="flagwarden-state-sqlite", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._conn.close()


# -- PostgreSQL --------------------------------------------------------------------------


class PostgresStateStore(StateStore):
    """Many machines; changes announced with LISTEN/NOTIFY."""

    CHANNEL = "flagwarden_state"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Any = None  # connected on first use, so a worker can start while it is down

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
        create_tables(
            conn,
            "CREATE TABLE IF NOT EXISTS flagwarden_state ("
            "flag TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL)",
        )
        return conn

    def _call(self, fn: Callable[[], Any]) -> Any:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                return fn()
            except psycopg.Error as exc:
                if self._conn is not None and not self._conn.closed:
                    self._conn.close()
                self._conn = None
                raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def load(self, flag: str) -> FlagState | None:
        row = self._call(
            lambda: self._conn.execute(
                "SELECT data FROM flagwarden_state WHERE flag = %s", (flag,)
            ).fetchone()
        )
        return FlagState.from_json(row[0]) if row else None

    def load_all(self) -> dict[str, FlagState]:
        rows = self._call(
            lambda: self._conn.execute("SELECT data FROM flagwarden_state").fetchall()
        )
        states = [FlagState.from_json(r[0]) for r in rows]
        return {s.flag: s for s in states}

    def compare_and_set(self, new: FlagState) -> bool:
        def cas() -> bool:
            with self._conn.transaction():
                if new.version == 1:
                    cur = self._conn.execute(
                        "INSERT INTO flagwarden_state (flag, version, data) VALUES (%s, 1, %s) "
                        "ON CONFLICT (flag) DO NOTHING",
                        (new.flag, new.to_json()),
                    )
                else:
                    cur = self._conn.execute(
                        "UPDATE flagwarden_state SET version = %s, data = %s "
                        "WHERE flag = %s AND version = %s",
                        (new.version, new.to_json(), new.flag, new.version - 1),
                    )
                if cur.rowcount != 1:
                    return False
                self._conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, new.flag))
                return True

        return bool(self._call(cas))

    def watch(self, callback: ChangeCallback, on_error: ErrorCallback | None = None) -> None:
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
