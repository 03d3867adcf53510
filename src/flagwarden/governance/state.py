"""Rollout state (stage, killed, paused) in SQLite, Redis or PostgreSQL.

Every change is an atomic compare-and-set on the state's version: of two concurrent
transitions exactly one wins. Workers never read the store on the evaluation path: a
:class:`StateCache` keeps every governed flag's state in memory and refreshes it when the
store says something changed (Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or SQLite's
``data_version`` polled every ``poll_interval``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import structlog

from flagwarden.errors import FlagwardenError
from flagwarden.storage import create_tables, redact_url, store_failure

__all__ = [
    "FlagState",
    "StateCache",
    "StateStore",
    "StateStoreUnavailable",
    "open_state_store",
]

_log = structlog.get_logger("flagwarden.state")

ChangeCallback = Callable[[str | None], None]  # a flag, or None for "reload everything"
ErrorCallback = Callable[[str], None]


class StateStoreUnavailable(FlagwardenError):
    """The state store could not be read or written."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FlagState:
    """A governed flag's rollout state. Stage 0 means control for everyone (not started)."""

    flag: str
    stage: float = 0.0
    killed: bool = False
    paused: bool = False
    version: int = 0
    stage_entered_at: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None
    reason: str | None = None
    history: tuple[float, ...] = field(default=())
    guard_failures: dict[str, int] = field(default_factory=dict)  # consecutive breaches
    # The version at which the current stage was entered: measurements stamped with it were
    # taken under this stage (0: not known, for states written before 0.1.0).
    stage_version: int = 0

    def to_json(self) -> str:
        doc = asdict(self)
        for key in ("stage_entered_at", "updated_at"):
            doc[key] = doc[key].isoformat() if doc[key] else None
        doc["history"] = list(self.history)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> FlagState:
        doc = json.loads(text)
        for key in ("stage_entered_at", "updated_at"):
            doc[key] = datetime.fromisoformat(doc[key]) if doc.get(key) else None
        doc["history"] = tuple(doc.get("history") or ())
        doc["guard_failures"] = dict(doc.get("guard_failures") or {})
        doc["stage_version"] = int(doc.get("stage_version") or 0)
        return cls(**doc)

    def summary(self) -> dict[str, Any]:
        """The fields a person cares about, for audit before/after."""
        return {
            "stage": self.stage,
            "killed": self.killed,
            "paused": self.paused,
            "version": self.version,
        }

    def changed(self, *, actor: str, reason: str, **changes: Any) -> FlagState:
        """The next version of this state; a new stage starts a new guard window, and a new
        stage or a pause or resume starts the consecutive-breach counts afresh."""
        now = _now()
        if "stage" in changes and changes["stage"] != self.stage:
            changes.setdefault("stage_entered_at", now)
            changes.setdefault("stage_version", self.version + 1)
            changes.setdefault("guard_failures", {})
        if "paused" in changes and changes["paused"] != self.paused:
            changes.setdefault("guard_failures", {})
        return replace(
            self,
            version=self.version + 1,
            updated_at=now,
            updated_by=actor,
            reason=reason,
            **changes,
        )


class StateStore(ABC):
    url: str

    @abstractmethod
    def load(self, flag: str) -> FlagState | None: ...

    @abstractmethod
    def load_all(self) -> dict[str, FlagState]: ...

    @abstractmethod
    def compare_and_set(self, new: FlagState) -> bool:
        """Store ``new`` if the stored version is ``new.version - 1`` (0: absent); True if so."""

    @abstractmethod
    def watch(self, callback: ChangeCallback, on_error: ErrorCallback | None = None) -> None:
        """Call ``callback`` on changes made by anyone, from a background thread;
        ``on_error`` when the store cannot be reached (the watcher keeps retrying)."""

    @abstractmethod
    def close(self) -> None: ...

    def after_fork_in_child(self) -> StateStore:
        """A fresh store for a forked child (connections and threads do not survive fork)."""
        return open_state_store(self.url)


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


def _keep_listening(
    name: str,
    url: str,
    stop: threading.Event,
    listen: Callable[[], None],
    errors: tuple[type[BaseException], ...],
    on_error: ErrorCallback | None,
) -> None:
    """Run ``listen`` on a thread until ``stop``; reconnect with backoff when it fails."""

    def loop() -> None:
        backoff = 0.1
        while not stop.is_set():
            began = time.monotonic()
            try:
                listen()
            except errors as exc:
                if stop.is_set():
                    return
                if on_error is not None:
                    on_error(store_failure(url, exc))
                _log.warning(
                    "flagwarden.state_watch_reconnecting",
                    store=redact_url(url),
                    error=type(exc).__name__,
                )
                if time.monotonic() - began > 10:
                    backoff = 0.1  # it had been working: retry quickly
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    threading.Thread(target=loop, name=name, daemon=True).start()


# -- Redis -------------------------------------------------------------------------------

_CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) - 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


class RedisStateStore(StateStore):
    """Many machines; changes announced on a pub/sub channel."""

    def __init__(self, url: str, prefix: str = "flagwarden") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._cas = self._redis.register_script(_CAS_SCRIPT)
        self._channel = f"{prefix}:state-changes"
        self._stop = threading.Event()
        self._pubsub: Any = None

    def _key(self, flag: str) -> str:
        return f"{self.prefix}:state:{flag}"

    def _call(self, fn: Callable[[], Any]) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def load(self, flag: str) -> FlagState | None:
        raw = self._call(lambda: self._redis.hget(self._key(flag), "data"))
        return FlagState.from_json(raw) if raw else None

    def load_all(self) -> dict[str, FlagState]:
        flags = sorted(
            f.decode() for f in self._call(lambda: self._redis.smembers(f"{self.prefix}:flags"))
        )
        if not flags:
            return {}
        pipe = self._redis.pipeline()
        for flag in flags:
            pipe.hget(self._key(flag), "data")
        raws = self._call(pipe.execute)
        return {
            flag: FlagState.from_json(raw) for flag, raw in zip(flags, raws, strict=True) if raw
        }

    def compare_and_set(self, new: FlagState) -> bool:
        keys = [self._key(new.flag), f"{self.prefix}:flags", self._channel]
        args: list[str | int] = [new.version, new.to_json(), new.flag]
        return bool(self._call(lambda: self._cas(keys=keys, args=args)))

    def watch(self, callback: ChangeCallback, on_error: ErrorCallback | None = None) -> None:
        import redis

        def listen() -> None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            pubsub.subscribe(self._channel)
            callback(None)  # anything published while we were away
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    callback(message["data"].decode())

        _keep_listening(
            "flagwarden-state-redis",
            self.url,
            self._stop,
            listen,
            (redis.RedisError, OSError, ValueError),
            on_error,
        )

    def close(self) -> None:
        self._stop.set()
        self._redis.close()


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

        _keep_listening(
            "flagwarden-state-postgres", self.url, self._stop, listen, (psycopg.Error,), on_error
        )

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.close()


def open_state_store(url: str, base_dir: Path | None = None) -> StateStore:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``redis://...[?prefix=NAME]``,
    ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SQLiteStateStore(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", ["flagwarden"])[0]
        plain = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        store = RedisStateStore(plain, prefix=prefix)
        store.url = url  # keep the prefix for re-opening after fork
        return store
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStateStore(url)
    raise StateStoreUnavailable(
        f"{redact_url(url)}: expected sqlite:///PATH, redis://HOST:PORT/DB or postgresql://..."
    )


# -- the in-process cache ----------------------------------------------------------------


class StateCache:
    """Every governed flag's state in memory; the evaluation path reads only this."""

    def __init__(
        self,
        store: StateStore | None,
        flags: Iterable[str],
        on_update: Callable[[dict[str, FlagState]], None] | None = None,
    ) -> None:
        self.store = store
        self.flags = frozenset(flags)
        self.on_update = on_update
        self._states: dict[str, FlagState] = {flag: FlagState(flag) for flag in self.flags}
        self._healthy = True
        self._lock = threading.Lock()
        self.refreshes = 0

    def get(self, flag: str) -> FlagState:
        state = self._states.get(flag)
        return state if state is not None else FlagState(flag)

    def all(self) -> dict[str, FlagState]:
        return dict(self._states)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def start(self) -> None:
        self.refresh(None)
        if self.store is not None:
            self.store.watch(self.refresh, self._lost)

    def refresh(self, flag: str | None) -> None:
        """Reload one flag (or all) from the store; on failure keep the last known state."""
        if self.store is None:
            return
        try:
            if flag is None:
                loaded = self.store.load_all()
            elif flag in self.flags:
                one = self.store.load(flag)
                loaded = {flag: one} if one else {}
            else:
                return
        except StateStoreUnavailable as exc:
            self._mark(False, str(exc))
            return
        with self._lock:
            states = dict(self._states)
            for name, state in loaded.items():
                if name in self.flags:
                    current = states.get(name)
                    if current is None or state.version >= current.version:
                        states[name] = state
            self._states = states  # one assignment: readers see the old dict or the new one
        self.refreshes += 1
        self._mark(True, None)
        self._updated()

    def put(self, state: FlagState) -> None:
        """Take a state this process just stored (no need to wait for the notification)."""
        with self._lock:
            current = self._states.get(state.flag)
            if current is None or state.version >= current.version:
                self._states = {**self._states, state.flag: state}
        self._updated()

    def _updated(self) -> None:
        if self.on_update is not None:
            try:
                self.on_update(self._states)
            except Exception as exc:
                _log.error("flagwarden.state_listener_failed", error=str(exc))

    def _lost(self, error: str) -> None:
        self._mark(False, error)

    def _mark(self, healthy: bool, error: str | None) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            _log.info(
                "flagwarden.state_store_recovered",
                store=redact_url(self.store.url if self.store else ""),
            )
        else:
            _log.warning(
                "flagwarden.state_store_unreachable",
                store=redact_url(self.store.url if self.store else ""),
                error=error,
                serving="last known state",
            )

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        if self.store is not None:
            self.store = self.store.after_fork_in_child()
            self.store.watch(self.refresh, self._lost)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
