"""Rollout state (stage, killed, paused) in SQLite, Redis or PostgreSQL.

Every change is an atomic compare-and-set on the state's version: of two concurrent
transitions exactly one wins. Workers never read the store on the evaluation path: a
:class:`StateCache` keeps every governed flag's state in memory and refreshes it when the
store says something changed (Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or SQLite's
``data_version`` polled every ``poll_interval``).
"""

from __future__ import annotations

import json
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
from flagwarden.storage import redact_url, store_failure

__all__ = [
    "FlagState",
    "StateCache",
    "StateStore",
    "StateStoreUnavailable",
    "keep_listening",
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


def keep_listening(
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


def open_state_store(url: str, base_dir: Path | None = None) -> StateStore:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``redis://...[?prefix=NAME]``,
    ``postgresql://...``."""
    from flagwarden.governance.redis_store import RedisStateStore
    from flagwarden.governance.sql_store import PostgresStateStore, SQLiteStateStore

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
