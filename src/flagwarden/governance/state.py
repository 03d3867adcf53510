"""Rollout state (stage, killed, paused) in SQLite, Redis or PostgreSQL.

Every change is an atomic compare-and-set on the state's version: of two concurrent
transitions exactly one wins, and the change's audit records go into the store's outbox in
the same act (:class:`OutboxEntry`), so a change can never lose its record: whoever writes
the records to the audit log next (the transition itself, else the next transition, watch
pass or ``audit verify``) clears them.

Workers never read the store on the evaluation path: a :class:`StateCache` keeps every
governed flag's state in memory and refreshes it when the store says something changed
(Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or SQLite's ``data_version`` polled every
``poll_interval``), and reloads everything every ``reload_interval`` (3 s) as a backstop. The
store is authoritative: the latest read replaces the cache whatever its version, so a store
that lost its data (a new *generation*) or was restored from an older copy is followed, and
a kill written there arrives.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from flagwarden.errors import FlagwardenError
from flagwarden.logs import get_logger
from flagwarden.storage import redact_text, redact_url, store_failure

__all__ = [
    "FlagState",
    "OutboxEntry",
    "StateStore",
    "StateStoreUnavailable",
    "keep_listening",
    "open_state_store",
]

_log = get_logger("flagwarden.state")

ChangeCallback = Callable[[str | None], None]  # a flag, or None for "reload everything"
ErrorCallback = Callable[[str], None]
StateCallback = Callable[["FlagState"], None]  # a state pushed with its change (Redis)


class StateStoreUnavailable(FlagwardenError):
    """The state store could not be read or written."""


def _now() -> datetime:
    return datetime.now(UTC)


def new_generation() -> str:
    """A fresh store generation id: written when a store (or its table) is created."""
    return uuid.uuid4().hex[:16]


def change_ref(flag: str, version: int) -> str:
    """The id of one state change: its audit records carry it. The nonce keeps it unique
    when a store restored from an older copy hands out a version number again."""
    return f"{flag}:{version}:{uuid.uuid4().hex[:12]}"


def ref_version(ref: str) -> int | None:
    """The state version a change ref (or one of its records' refs) names."""
    parts = ref.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


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
    ref: str | None = None  # the change that made this version; its audit records carry it
    generation: str = ""  # the store's generation it was read from (not stored with the state)

    def to_json(self) -> str:
        doc = asdict(self)
        del doc["generation"]
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
        # Fields this version does not know (written by a newer one) are not its business.
        return cls(**{key: value for key, value in doc.items() if key in _FIELDS})

    def with_generation(self, generation: str) -> FlagState:
        return replace(self, generation=generation)

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
            ref=change_ref(self.flag, self.version + 1),
            **changes,
        )


_FIELDS = frozenset(f.name for f in fields(FlagState)) - {"generation"}


def parse_states(
    rows: Iterable[tuple[str, str | bytes]], generation: str
) -> tuple[dict[str, FlagState], dict[str, str]]:
    """Stored rows as states, and the flags whose row cannot be read (with why): one bad row
    must not keep every other flag (and its kill) from loading."""
    states, unreadable = {}, {}
    for flag, raw in rows:
        try:
            states[flag] = FlagState.from_json(raw).with_generation(generation)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            unreadable[flag] = f"{type(exc).__name__}: {exc}"[:300]
    return states, unreadable


def parse_outbox(raws: Iterable[str | bytes]) -> list[OutboxEntry]:
    """Outbox entries oldest first; one that cannot be read is reported and skipped (its
    change then shows in ``audit verify`` as a version without its record)."""
    entries = []
    for raw in raws:
        try:
            entries.append(OutboxEntry.from_json(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            _log.error("flagwarden.outbox_entry_unreadable", error=f"{type(exc).__name__}: {exc}")
    return sorted(entries, key=lambda e: (e.created_at, e.ref))


@dataclass(frozen=True)
class OutboxEntry:
    """The audit records of one state change, stored with the change in the same act."""

    ref: str
    flag: str
    created_at: datetime
    records: tuple[dict[str, Any], ...]  # each {"kind", "data", "actor"}

    def to_json(self) -> str:
        doc = {"ref": self.ref, "flag": self.flag, "created_at": self.created_at.isoformat()}
        return json.dumps({**doc, "records": list(self.records)}, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> OutboxEntry:
        doc = json.loads(text)
        return cls(
            doc["ref"],
            doc["flag"],
            datetime.fromisoformat(doc["created_at"]),
            tuple(doc["records"]),
        )

    def record_refs(self) -> list[str]:
        """One ref per record: the change's ref, then ``ref/1``, ``ref/2``..."""
        return [self.ref if i == 0 else f"{self.ref}/{i}" for i in range(len(self.records))]


WORKER_TTL = 60.0  # a worker that has not reported for this long is not listed


class StateStore(ABC):
    url: str
    last_generation: str = ""  # the generation the last load saw
    # Flags whose row the last load could not read, and why (their last state is kept).
    last_unreadable: Mapping[str, str] = MappingProxyType({})

    @abstractmethod
    def load(self, flag: str) -> FlagState | None: ...

    @abstractmethod
    def load_all(self) -> dict[str, FlagState]:
        """Every stored state, each carrying the store's generation."""

    @abstractmethod
    def compare_and_set(
        self,
        new: FlagState,
        outbox: OutboxEntry | None = None,
        *,
        previous: FlagState | None = None,
    ) -> bool:
        """Store ``new`` if the stored version is ``new.version - 1`` (0: absent) and, given
        ``previous``, the stored change is ``previous.ref`` (a store restored from an older
        copy can hold the same version number with another state); ``outbox`` with it in the
        same act. True if so."""

    @abstractmethod
    def pending_outbox(self) -> list[OutboxEntry]:
        """Outbox entries not yet cleared, oldest first."""

    @abstractmethod
    def clear_outbox(self, ref: str) -> None: ...

    @abstractmethod
    def heartbeat(self, worker: str, report: dict[str, Any]) -> None:
        """Keep what a worker sees (generation, versions, health) for ``status``."""

    @abstractmethod
    def workers(self) -> dict[str, dict[str, Any]]:
        """Worker reports of the last ``WORKER_TTL`` seconds, by worker id."""

    @abstractmethod
    def documents(self, kind: str) -> dict[str, str]:
        """Every stored document of ``kind`` (``token``, ``approval``), raw JSON by key."""

    @abstractmethod
    def put_document(
        self, kind: str, key: str, doc: str, *, expected: str | None, announce: str = ""
    ) -> bool:
        """Store ``doc`` under ``(kind, key)`` if what is stored there is ``expected`` (None:
        nothing yet): a compare-and-set, so of two concurrent writers one wins. True if so.
        ``announce``: a flag whose watchers are told (a change request's flag)."""

    @abstractmethod
    def watch(
        self,
        callback: ChangeCallback,
        on_error: ErrorCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        """Call ``callback`` on changes made by anyone, from a background thread;
        ``on_error`` when the store cannot be reached (the watcher keeps retrying). A store
        whose notification carries the new state (Redis) also calls ``on_state`` with it,
        just before ``callback`` for the same change."""

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
            except Exception as exc:
                # Not the driver's: a bug of ours or of a library. Said, and listened again
                # (the cache's periodic reload covers the gap): never a thread that dies.
                if stop.is_set():
                    return
                _log.error(
                    "flagwarden.state_watch_failed",
                    store=redact_url(url),
                    error=redact_text(f"{type(exc).__name__}: {exc}")[:500],
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    threading.Thread(target=loop, name=name, daemon=True).start()


def open_state_store(url: str, base_dir: Path | None = None) -> StateStore:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``redis://...[?prefix=NAME]``,
    ``postgresql://...``."""
    from flagwarden.governance.sql_store import PostgresStateStore, SQLiteStateStore

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SQLiteStateStore(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from flagwarden.governance.redis_store import RedisStateStore

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
