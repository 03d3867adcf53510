"""Data-quality measurements from ``flagwarden.record_metric``, stored where ``watch`` reads them.

They live beside the rollout state (same SQLite file, Redis or PostgreSQL), so a ``watch``
process on another machine sees what the pipelines reported. Guards read a time window.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from flagwarden.governance.state import StateStoreUnavailable, create_tables, redact_url

__all__ = ["MeasurementStore", "open_measurement_store"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS flagwarden_measurements ("
    "flag TEXT NOT NULL, name TEXT NOT NULL, variant TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, "
    "value DOUBLE PRECISION NOT NULL, n INTEGER NOT NULL)"
)
_INDEX = (
    "CREATE INDEX IF NOT EXISTS flagwarden_measurements_lookup "
    "ON flagwarden_measurements (flag, name, variant, at)"
)


class MeasurementStore(ABC):
    url: str

    @abstractmethod
    def add(
        self,
        flag: str,
        name: str,
        variant: str,
        value: float,
        count: int = 1,
        at: float | None = None,
    ) -> None:
        """Record ``value``, the mean of ``count`` observations (a batch's null rate, say)."""

    @abstractmethod
    def samples(self, flag: str, name: str, variant: str, since: float) -> list[tuple[float, int]]:
        """(value, count) pairs recorded since ``since`` (unix time), oldest first."""

    @abstractmethod
    def close(self) -> None: ...


class _SQLMeasurements(MeasurementStore):
    def __init__(self, url: str, connect: Any, placeholder: str) -> None:
        self.url = url
        self._connect = connect
        self._ph = placeholder
        self._lock = threading.Lock()
        self._conn: Any = None

    def _run(self, sql: str, args: tuple[Any, ...], fetch: bool = False) -> list[Any]:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                cursor = self._conn.execute(sql, args)
                return cursor.fetchall() if fetch else []
            except Exception as exc:
                self._conn = None
                raise StateStoreUnavailable(
                    f"{redact_url(self.url)}: {type(exc).__name__}"
                ) from None

    def add(
        self,
        flag: str,
        name: str,
        variant: str,
        value: float,
        count: int = 1,
        at: float | None = None,
    ) -> None:
        ph = self._ph
        self._run(
            f"INSERT INTO flagwarden_measurements (flag, name, variant, at, value, n) "
            f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph})",
            (flag, name, variant, time.time() if at is None else at, float(value), int(count)),
        )

    def samples(self, flag: str, name: str, variant: str, since: float) -> list[tuple[float, int]]:
        ph = self._ph
        rows = self._run(
            f"SELECT value, n FROM flagwarden_measurements WHERE flag = {ph} AND name = {ph} "
            f"AND variant = {ph} AND at >= {ph} ORDER BY at",
            (flag, name, variant, since),
            fetch=True,
        )
        return [(float(r[0]), int(r[1])) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _RedisMeasurements(MeasurementStore):
    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.url = url
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix

    def _key(self, flag: str, name: str, variant: str) -> str:
        return f"{self._prefix}:measure:{flag}:{name}:{variant}"

    def add(
        self,
        flag: str,
        name: str,
        variant: str,
        value: float,
        count: int = 1,
        at: float | None = None,
    ) -> None:
        import redis

        at = time.time() if at is None else at
        member = f"{uuid.uuid4().hex}:{int(count)}:{float(value)!r}"
        try:
            self._redis.zadd(self._key(flag, name, variant), {member: at})
        except redis.RedisError as exc:
            raise StateStoreUnavailable(f"{redact_url(self.url)}: {type(exc).__name__}") from None

    def samples(self, flag: str, name: str, variant: str, since: float) -> list[tuple[float, int]]:
        import redis

        try:
            members = self._redis.zrangebyscore(self._key(flag, name, variant), since, "+inf")
        except redis.RedisError as exc:
            raise StateStoreUnavailable(f"{redact_url(self.url)}: {type(exc).__name__}") from None
        parsed = [bytes(m).decode().split(":", 2) for m in members]  # type: ignore[arg-type]
        return [(float(value), int(n)) for _, n, value in parsed]

    def close(self) -> None:
        self._redis.close()


def open_measurement_store(url: str, base_dir: Path | None = None) -> MeasurementStore:
    """The measurement store beside the state store ``url``."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path

        def connect_sqlite() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute(_SCHEMA)
            conn.execute(_INDEX)
            return conn

        return _SQLMeasurements(url, connect_sqlite, "?")
    if url.startswith(("redis://", "rediss://", "unix://")):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", ["flagwarden"])[0]
        return _RedisMeasurements(
            urlunsplit(parts._replace(query=urlencode(query, doseq=True))), prefix
        )
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        def connect_postgres() -> Any:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=3)
            create_tables(conn, _SCHEMA, _INDEX)
            return conn

        return _SQLMeasurements(url, connect_postgres, "%s")
    raise StateStoreUnavailable(f"{redact_url(url)}: unsupported store for measurements")
