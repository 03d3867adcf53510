"""The append-only, hash-chained audit log (SQLite or PostgreSQL).

Each record carries the SHA-256 of its own content and of the record before it, so an edited,
deleted or reordered record breaks the chain at a place :meth:`AuditLog.verify` names. Appends
from many processes are serialized by the database (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL
transaction-scoped advisory lock), so the chain never forks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flagwarden.errors import FlagwardenError
from flagwarden.storage import create_tables, redact_url, store_failure

__all__ = ["AuditError", "AuditLog", "AuditRecord", "Verification", "open_audit_log"]

GENESIS = "0" * 64
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS flagwarden_audit ("
    "seq BIGINT PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, flag TEXT, actor TEXT, "
    "data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
)
_ADVISORY_KEY = 0x666C6167  # "flag"


class AuditError(FlagwardenError):
    """The audit log could not be written or read."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    kind: str  # transition | violation | outage | exposure_summary | guard | ...
    flag: str | None
    actor: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    @staticmethod
    def digest(
        seq: int, at: str, kind: str, flag: str | None, actor: str | None, data: str, prev: str
    ) -> str:
        payload = json.dumps([seq, at, kind, flag, actor, data, prev], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head: str = GENESIS  # the hash of the last verified record (all of them: the whole log)


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

    def _connect(self) -> Any:
        if self._kind == "sqlite":
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn: Any = sqlite3.connect(
                    self._path, timeout=30, check_same_thread=False, isolation_level=None
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute(_SCHEMA)
                return conn
            except (OSError, sqlite3.Error) as exc:
                raise AuditError(f"{self.url}: {exc}") from None
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            create_tables(conn, _SCHEMA)
            return conn
        except psycopg.Error as exc:
            raise AuditError(store_failure(self.url, exc)) from None

    def after_fork_in_child(self) -> None:
        """A forked child must not share its parent's database connection."""
        self._lock = threading.Lock()
        self._conn = self._connect()

    def append(
        self, kind: str, data: dict[str, Any], *, flag: str | None = None, actor: str | None = None
    ) -> AuditRecord:
        at = datetime.now(UTC)
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        ph = self._ph
        with self._lock:
            try:
                if self._kind == "sqlite":
                    self._conn.execute("BEGIN IMMEDIATE")
                else:
                    self._conn.execute("BEGIN")
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
                row = self._conn.execute(
                    "SELECT seq, hash FROM flagwarden_audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
                digest = AuditRecord.digest(seq, at.isoformat(), kind, flag, actor, body, prev)
                self._conn.execute(
                    f"INSERT INTO flagwarden_audit "
                    f"(seq, at, kind, flag, actor, data, prev_hash, hash) "
                    f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph})",
                    (seq, at.isoformat(), kind, flag, actor, body, prev, digest),
                )
                self._conn.execute("COMMIT")
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self._conn.execute("ROLLBACK")
                raise AuditError(
                    f"{redact_url(self.url)}: cannot append ({type(exc).__name__}: {exc})"
                ) from None
        return AuditRecord(seq, at, kind, flag, actor, data, prev, digest)

    def records(self, since: datetime | None = None, flag: str | None = None) -> list[AuditRecord]:
        sql = "SELECT seq, at, kind, flag, actor, data, prev_hash, hash FROM flagwarden_audit"
        clauses, args = [], []
        if since is not None:
            clauses.append(f"at >= {self._ph}")
            args.append(since.isoformat())
        if flag is not None:
            clauses.append(f"flag = {self._ph}")
            args.append(flag)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", tuple(args)).fetchall()
        return [
            AuditRecord(
                r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]
            )
            for r in rows
        ]

    def verify(self) -> Verification:
        """Walk the chain; name the first record that was edited, deleted or moved."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, at, kind, flag, actor, data, prev_hash, hash "
                "FROM flagwarden_audit ORDER BY seq"
            ).fetchall()
        prev, expected_seq = GENESIS, 1
        for seq, at, kind, flag, actor, data, prev_hash, digest in rows:
            if seq != expected_seq:
                return Verification(
                    False,
                    expected_seq - 1,
                    expected_seq,
                    f"record {expected_seq} is missing (next is {seq})",
                    head=prev,
                )
            if prev_hash != prev:
                return Verification(
                    False,
                    seq - 1,
                    seq,
                    f"record {seq} does not follow record {seq - 1} (chain broken)",
                    head=prev,
                )
            if AuditRecord.digest(seq, at, kind, flag, actor, data, prev_hash) != digest:
                return Verification(
                    False, seq - 1, seq, f"record {seq} was modified (hash mismatch)", head=prev
                )
            prev, expected_seq = digest, seq + 1
        return Verification(True, len(rows), head=prev)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_audit_log(url: str, base_dir: Path | None = None) -> AuditLog:
    return AuditLog(url, base_dir)
