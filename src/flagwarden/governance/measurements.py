"""Data-quality measurements from ``flagwarden.record_metric``, stored where ``watch`` reads them.

They live beside the rollout state (same SQLite file, Redis or PostgreSQL), so a ``watch``
process on another machine sees what the pipelines reported. Each measurement is stamped with
the stage it was taken under and that stage's *epoch* (the state version at which the stage
was entered), so a guard judges only what was measured at the stage the flag is at now: a
rollback and a re-advance start a clean window.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.storage import create_tables, redact_url, store_failure

__all__ = ["Measurement", "MeasurementStore", "open_measurement_store"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS flagwarden_measurements ("
    "flag TEXT NOT NULL, name TEXT NOT NULL, variant TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, "
    "value DOUBLE PRECISION NOT NULL, n INTEGER NOT NULL, stage DOUBLE PRECISION, epoch BIGINT)"
)
# The latest verdict of each flag's guards, as the last watch pass saw them (for status).
_VERDICTS = (
    "CREATE TABLE IF NOT EXISTS flagwarden_guard_verdicts ("
    "flag TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL)"
)
_INDEX = (
    "CREATE INDEX IF NOT EXISTS flagwarden_measurements_lookup "
    "ON flagwarden_measurements (flag, name, variant, at)"
)


@dataclass(frozen=True)
class Measurement:
    """One ``record_metric`` call: the mean ``value`` of ``n`` observations of one variant."""

    at: float  # unix time
    variant: str
    value: float
    n: int
    stage: float | None = None  # the stage it was taken under (None: not stamped)
    epoch: int | None = None


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
        *,
        stage: float | None = None,
        epoch: int | None = None,
    ) -> None:
        """Record ``value``, the mean of ``count`` observations (a batch's null rate, say),
        taken under ``stage`` (entered at state version ``epoch``)."""

    @abstractmethod
    def series(self, flag: str, name: str, since: float, until: float) -> list[Measurement]:
        """Every measurement of ``name`` for ``flag`` in ``[since, until]``, oldest first."""

    def samples(
        self, flag: str, name: str, variant: str, since: float, epoch: int | None = None
    ) -> list[tuple[float, int]]:
        """(value, count) pairs of ``variant`` recorded since ``since`` (unix time), oldest
        first; with ``epoch``, only those stamped with it (or not stamped at all)."""
        return [
            (m.value, m.n)
            for m in self.series(flag, name, since, float("inf"))
            if m.variant == variant and (epoch is None or m.epoch is None or m.epoch == epoch)
        ]

    @abstractmethod
    def save_verdicts(self, flag: str, verdicts: list[dict[str, Any]], at: float) -> None:
        """Keep the verdicts of the flag's guards from the latest watch pass."""

    @abstractmethod
    def verdicts(self, flag: str) -> tuple[float, list[dict[str, Any]]] | None:
        """(when, verdicts) of the latest watch pass over the flag's guards, if any."""

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
                raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def add(
        self,
        flag: str,
        name: str,
        variant: str,
        value: float,
        count: int = 1,
        at: float | None = None,
        *,
        stage: float | None = None,
        epoch: int | None = None,
    ) -> None:
        ph = ", ".join([self._ph] * 8)
        at = time.time() if at is None else at
        self._run(
            "INSERT INTO flagwarden_measurements (flag, name, variant, at, value, n, stage, epoch) "
            f"VALUES ({ph})",
            (flag, name, variant, at, float(value), int(count), stage, epoch),
        )

    def series(self, flag: str, name: str, since: float, until: float) -> list[Measurement]:
        ph = self._ph
        rows = self._run(
            "SELECT at, variant, value, n, stage, epoch FROM flagwarden_measurements "
            f"WHERE flag = {ph} AND name = {ph} AND at >= {ph} AND at <= {ph} ORDER BY at",
            (flag, name, since, min(until, 1e18)),
            fetch=True,
        )
        return [
            Measurement(
                float(r[0]),
                str(r[1]),
                float(r[2]),
                int(r[3]),
                None if r[4] is None else float(r[4]),
                None if r[5] is None else int(r[5]),
            )
            for r in rows
        ]

    def samples(
        self, flag: str, name: str, variant: str, since: float, epoch: int | None = None
    ) -> list[tuple[float, int]]:
        ph = self._ph
        sql = (
            f"SELECT value, n FROM flagwarden_measurements WHERE flag = {ph} AND name = {ph} "
            f"AND variant = {ph} AND at >= {ph}"
        )
        args: tuple[Any, ...] = (flag, name, variant, since)
        if epoch is not None:
            sql += f" AND (epoch = {ph} OR epoch IS NULL)"
            args = (*args, epoch)
        rows = self._run(sql + " ORDER BY at", args, fetch=True)
        return [(float(r[0]), int(r[1])) for r in rows]

    def save_verdicts(self, flag: str, verdicts: list[dict[str, Any]], at: float) -> None:
        ph = self._ph
        self._run(
            f"INSERT INTO flagwarden_guard_verdicts (flag, at, data) VALUES ({ph}, {ph}, {ph}) "
            "ON CONFLICT (flag) DO UPDATE SET at = excluded.at, data = excluded.data",
            (flag, at, json.dumps(verdicts, default=str)),
        )

    def verdicts(self, flag: str) -> tuple[float, list[dict[str, Any]]] | None:
        rows = self._run(
            f"SELECT at, data FROM flagwarden_guard_verdicts WHERE flag = {self._ph}",
            (flag,),
            fetch=True,
        )
        return (float(rows[0][0]), json.loads(rows[0][1])) if rows else None

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
        *,
        stage: float | None = None,
        epoch: int | None = None,
    ) -> None:
        import redis

        at = time.time() if at is None else at
        # id:n:stage:epoch:value (value last: its repr may hold anything but a colon)
        stamp = f"{'' if stage is None else repr(float(stage))}:{'' if epoch is None else epoch}"
        member = f"{uuid.uuid4().hex}:{int(count)}:{stamp}:{float(value)!r}"
        try:
            self._redis.zadd(self._key(flag, name, variant), {member: at})
        except redis.RedisError as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def series(self, flag: str, name: str, since: float, until: float) -> list[Measurement]:
        import redis

        found: list[Measurement] = []
        for variant in ("control", "treatment"):
            try:
                members: list[tuple[bytes, float]] = self._redis.zrangebyscore(  # type: ignore[assignment]
                    self._key(flag, name, variant),
                    since,
                    "+inf" if until == float("inf") else until,
                    withscores=True,
                )
            except redis.RedisError as exc:
                raise StateStoreUnavailable(store_failure(self.url, exc)) from None
            for member, at in members:
                _, n, stage, epoch, value = member.decode().split(":")
                found.append(
                    Measurement(
                        float(at),
                        variant,
                        float(value),
                        int(n),
                        float(stage) if stage else None,
                        int(epoch) if epoch else None,
                    )
                )
        return sorted(found, key=lambda m: m.at)

    def save_verdicts(self, flag: str, verdicts: list[dict[str, Any]], at: float) -> None:
        import redis

        doc = json.dumps({"at": at, "verdicts": verdicts}, default=str)
        try:
            self._redis.set(f"{self._prefix}:verdicts:{flag}", doc)
        except redis.RedisError as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def verdicts(self, flag: str) -> tuple[float, list[dict[str, Any]]] | None:
        import redis

        try:
            raw = self._redis.get(f"{self._prefix}:verdicts:{flag}")
        except redis.RedisError as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None
        if raw is None:
            return None
        doc = json.loads(raw)
        return float(doc["at"]), list(doc["verdicts"])

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
            conn.execute(_VERDICTS)
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
            create_tables(
                conn,
                _SCHEMA,
                _INDEX,
                _VERDICTS,
            )
            return conn

        return _SQLMeasurements(url, connect_postgres, "%s")
    raise StateStoreUnavailable(f"{redact_url(url)}: unsupported store for measurements")
