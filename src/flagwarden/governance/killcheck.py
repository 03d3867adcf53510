"""A kill that reaches a running job: a worker's look at one flag's kill, at most every
``interval`` seconds, without ``configure()``.

A job's workers apply a frozen :class:`~flagwarden.governance.assignment.Assignment` (no vendor,
no store), so a kill made while the job runs would not reach them by itself. A
:class:`KillCheck` reads the flag's state from the project's state store (one read, at most every
``interval`` seconds; ``FLAGWARDEN_KILL`` in the worker's environment counts too) and says
whether the flag is killed; the caller then serves control from that batch on, or fails the
task (:class:`FlagKilled`), as the job asked. Only a kill counts: an advance or a rollback made
during the job does not change a frozen plan.

The store is opened from the project's config file on the worker (its ``${VAR}`` references
read the worker's environment), so no store URL or password travels with the job. A store the
worker cannot read is reported once and the last answer stands (not killed, until a read says
otherwise): a kill check never stops a job by itself.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flagwarden.errors import FlagwardenError
from flagwarden.logs import get_logger

if TYPE_CHECKING:
    from flagwarden.governance.state import StateStore

__all__ = ["DEFAULT_INTERVAL", "FlagKilled", "KillCheck", "kill_check"]

_log = get_logger("flagwarden.killcheck")

DEFAULT_INTERVAL = 0.5
"""Seconds between two store reads of one worker for one flag."""


class FlagKilled(FlagwardenError):
    """The flag was killed while the job ran, and the job asked to stop (``on_kill="abort"``)."""


class KillCheck:
    """Whether one flag is killed, read from the state store at most every ``interval`` s."""

    def __init__(self, config: str | Path, flag: str, interval: float = DEFAULT_INTERVAL):
        self.config = str(config)
        self.flag = flag
        self.interval = interval
        self._killed = False
        self._checked_at = float("-inf")
        self._store: StateStore | None = None
        self._reported = ""
        self._lock = threading.Lock()
        self.reads = 0  # store reads made (for the bench and the tests)

    def killed(self) -> bool:
        """True once the flag is killed (in the store, or by ``FLAGWARDEN_KILL`` here)."""
        if self._env_killed():
            return True
        now = time.monotonic()
        if now - self._checked_at < self.interval:
            return self._killed
        with self._lock:
            if now - self._checked_at >= self.interval:
                self._read()
                self._checked_at = time.monotonic()
        return self._killed

    def _env_killed(self) -> bool:
        from flagwarden.governance.project import env_killed_flags

        return self.flag in env_killed_flags()

    def _read(self) -> None:
        try:
            store = self._open()
            state = store.load(self.flag)
            self.reads += 1
        except Exception as exc:  # the last answer stands; reported once per problem
            problem = f"{type(exc).__name__}: {exc}"[:300]
            if problem != self._reported:
                self._reported = problem
                _log.error("flagwarden.kill_check_failed", flag=self.flag, error=problem)
            self._store = None  # opened again at the next read
            return
        self._reported = ""
        self._killed = bool(state is not None and state.killed)

    def _open(self) -> StateStore:
        if self._store is None:
            from flagwarden.config import load_settings
            from flagwarden.governance.state import open_state_store

            settings = load_settings(self.config)
            self._store = open_state_store(settings.config.state, settings.base_dir)
        return self._store


_checks: dict[tuple[str, str, float], KillCheck] = {}
_checks_pid = os.getpid()
_checks_lock = threading.Lock()


def kill_check(config: str | Path, flag: str, interval: float = DEFAULT_INTERVAL) -> KillCheck:
    """This process's :class:`KillCheck` for ``flag`` (one per process, config and interval:
    a worker's batches share its store connection and its last read)."""
    global _checks_pid
    key = (str(config), flag, interval)
    with _checks_lock:
        if _checks_pid != os.getpid():  # a forked worker: the parent's connections are not its
            _checks.clear()
            _checks_pid = os.getpid()
        check = _checks.get(key)
        if check is None:
            check = _checks[key] = KillCheck(config, flag, interval)
        return check
