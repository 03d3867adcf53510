"""The in-process cache of every governed flag's state: the evaluation path reads only this.

The store is authoritative (see :class:`StateCache`); changes arrive by the store's change
notification, and a full reload every ``reload_interval`` (3 s) backs it up (pub/sub can drop
messages); the worker's heartbeat for ``status`` goes with the first reload at least
``heartbeat_interval`` (10 s) after the last one.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flagwarden.background import health_snapshot, run_supervised
from flagwarden.governance.state import FlagState, StateStore, StateStoreUnavailable
from flagwarden.logs import get_logger
from flagwarden.storage import redact_url

__all__ = ["StateCache", "worker_id"]

_log = get_logger("flagwarden.state")


def worker_id() -> str:
    """This process, as ``status`` lists it."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StateCache:
    """Every governed flag's state in memory; the evaluation path reads only this.

    The store is authoritative: each read (a flag, or everything) takes a ticket before it
    asks the store, and replaces the cached state unless a read that started later (or this
    process's own write) got there first. A read's version is not compared: a store recreated
    empty or restored from an older copy counts lower again, and its answer (a kill above
    all) must still win (a state pushed with a notification is another matter: :meth:`take`).
    A full reload also resets flags the store no longer has to stage 0.
    """

    def __init__(
        self,
        store: StateStore | None,
        flags: Iterable[str],
        *,
        reload_interval: float = 3.0,
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.store = store
        self.flags = frozenset(flags)
        self._listeners: list[Callable[[dict[str, FlagState]], None]] = []
        self.reload_interval = reload_interval
        self.heartbeat_interval = heartbeat_interval
        self._states: dict[str, FlagState] = {flag: FlagState(flag) for flag in self.flags}
        # Flags outside ``flags`` (no policy here) that the store says are killed: a kill
        # reaches them too. Only the killed ones are kept, so memory stays bounded.
        self._killed_elsewhere: frozenset[str] = frozenset()
        self._elsewhere_taken: dict[str, int] = {}  # flag -> ticket of a read since the reload
        self._tickets = itertools.count(1)
        self._taken: dict[str, int] = {}  # flag -> ticket of the read (or write) cached
        self._healthy = True
        self._error: str | None = None
        self._unreadable: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.generation = ""

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
            self.report()
            self.store.watch(self.refresh, self._lost, self.take)
            self._start_backstop()

    def _start_backstop(self) -> None:
        """A full reload every ``reload_interval`` (notifications can be dropped by pub/sub, and
        a store file replaced under us sends none), a heartbeat every ``heartbeat_interval``."""
        reported = [time.monotonic()]  # start() has just reported

        def step() -> None:
            self.refresh(None)
            if time.monotonic() - reported[0] >= self.heartbeat_interval:
                reported[0] = time.monotonic()
                self.report()
            if not self._healthy:  # kept serving the last state: the thread's health says so
                raise StateStoreUnavailable(self._error or "the state store cannot be read")

        run_supervised("flagwarden-state-backstop", step, self.reload_interval, self._stop)

    def killed_elsewhere(self, flag: str) -> bool:
        """Whether ``flag``, one outside ``flags``, is killed in the store."""
        return flag in self._killed_elsewhere

    def _note_elsewhere(self, flag: str, killed: bool, ticket: int) -> None:
        with self._lock:
            if self._elsewhere_taken.get(flag, 0) >= ticket:
                return  # a read that started later got there first
            self._elsewhere_taken[flag] = ticket
            if killed != (flag in self._killed_elsewhere):
                self._killed_elsewhere = (
                    self._killed_elsewhere | {flag} if killed else self._killed_elsewhere - {flag}
                )

    def refresh(self, flag: str | None) -> None:
        """Reload one flag (or all) from the store; on failure keep the last known state."""
        if self.store is None:
            return
        if flag is not None and flag not in self.flags:
            ticket = next(self._tickets)
            try:
                other = self.store.load(flag)
            except StateStoreUnavailable as exc:
                self._mark(False, str(exc))
                return
            if flag in self.store.last_unreadable:
                return  # kept at its last state, as a governed flag's row is
            self._note_elsewhere(flag, other is not None and other.killed, ticket)
            return
        ticket = next(self._tickets)
        try:
            if flag is None:
                loaded = self.store.load_all()
            else:
                one = self.store.load(flag)
                loaded = {flag: one} if one else {}
        except StateStoreUnavailable as exc:
            self._mark(False, str(exc))
            return
        unreadable = dict(self.store.last_unreadable)  # rows kept at their last state
        for name, problem in unreadable.items():
            if name in self.flags and self._unreadable.get(name) != problem:
                _log.error("flagwarden.state_unreadable", flag=name, error=problem)
        self._unreadable = unreadable
        with self._lock:
            states = dict(self._states)
            generation = next((s.generation for s in loaded.values()), "")
            if flag is None:
                generation = generation or self.store.last_generation
                for name in self.flags - loaded.keys() - unreadable.keys():
                    # Not in the store (any more): stage 0, control for everyone.
                    loaded[name] = FlagState(name, generation=generation)
            for name, state in loaded.items():
                if name in self.flags and self._taken.get(name, 0) < ticket:
                    states[name] = state
                    self._taken[name] = ticket
            if generation or flag is None:
                self.generation = generation
            if flag is None:
                # Killed flags outside ``flags``: as read, except where a later read (a
                # notification's) already answered, or the row cannot be read (kept).
                killed = {
                    name
                    for name, state in loaded.items()
                    if name not in self.flags and state.killed
                }
                for name, taken in self._elsewhere_taken.items():
                    if taken > ticket:
                        killed.discard(name)
                        if name in self._killed_elsewhere:
                            killed.add(name)
                killed |= self._killed_elsewhere & (unreadable.keys() - self.flags)
                self._killed_elsewhere = frozenset(killed)
                self._elsewhere_taken = {
                    name: taken for name, taken in self._elsewhere_taken.items() if taken > ticket
                }
            self._states = states  # one assignment: readers see the old dict or the new one
        try:
            self._mark(True, None)  # logs "recovered": a log that fails must not hold the plans
        finally:
            self._updated()

    def take(self, state: FlagState) -> None:
        """A state the store pushed with its change notification (Redis), taken before the read
        that the same notification triggers: sooner by a round trip. A push is taken only
        when it cannot be stale news: a higher version of the cached generation, or another
        generation. Anything else (a push delayed past a later change, or a store restored
        from an older copy, which counts lower again) waits for the read, whose answer wins
        whatever its version: a kill still arrives, a round trip later."""
        if state.flag not in self.flags:
            self._note_elsewhere(state.flag, state.killed, next(self._tickets))
            return
        ticket = next(self._tickets)
        with self._lock:
            cached = self._states.get(state.flag)
            if (
                cached is not None
                and state.generation == cached.generation
                and state.version <= cached.version
            ):
                return
            self._taken[state.flag] = ticket
            self._states = {**self._states, state.flag: state}
        self._updated()

    def ticket(self) -> int:
        """Taken before a write: :meth:`put` of what it stored loses to any read that started
        after it (and so may already hold a later change by another process)."""
        return next(self._tickets)

    def put(self, state: FlagState, ticket: int) -> None:
        """Take a state this process just stored (no need to wait for the notification)."""
        with self._lock:
            if self._taken.get(state.flag, 0) >= ticket:
                return
            self._taken[state.flag] = ticket
            self._states = {**self._states, state.flag: state}
        self._updated()

    def report(self) -> None:
        """Tell the store what this worker sees, for ``status``."""
        if self.store is None:
            return
        doc: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(),
            "generation": self.generation,
            "healthy": self._healthy,
            "versions": {name: s.version for name, s in sorted(self._states.items())},
            "killed": sorted(name for name, s in self._states.items() if s.killed),
        }
        doc["threads"] = {
            name: {"healthy": h.healthy, "failures": h.failures, "last_error": h.last_error}
            for name, h in sorted(health_snapshot().items())
        }
        try:
            self.store.heartbeat(worker_id(), doc)
        except StateStoreUnavailable as exc:
            self._mark(False, str(exc))

    def subscribe(self, listener: Callable[[dict[str, FlagState]], None]) -> None:
        """Call ``listener`` with every flag's state after each change, in the thread that
        made it (keep it short: the governing provider's plans, the state gauges)."""
        self._listeners.append(listener)

    def _updated(self) -> None:
        for listener in self._listeners:
            try:
                listener(self._states)
            except Exception as exc:
                _log.error("flagwarden.state_listener_failed", error=str(exc))

    def _lost(self, error: str) -> None:
        self._mark(False, error)

    def _mark(self, healthy: bool, error: str | None) -> None:
        self._error = error
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
        self._stop = threading.Event()
        if self.store is not None:
            self.store = self.store.after_fork_in_child()
            self.refresh(None)  # a change made just before the fork is not news to the poller
            self.store.watch(self.refresh, self._lost, self.take)
            self._start_backstop()

    def close(self) -> None:
        self._stop.set()
        if self.store is not None:
            self.store.close()
