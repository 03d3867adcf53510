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
otherwise; reads back off to at most every 30 s while it fails): a kill check never stops a
job by itself. A SQLite store file that is not on the worker is such a failure (it is never
created there). A kill once seen stays seen for the job (``job=``): control from that batch on,
even if the flag is revived before the job ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
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

MAX_BACKOFF = 30.0
"""The longest wait between two reads after the store failed to answer."""


class FlagKilled(FlagwardenError):
    """The flag was killed while the job ran, and the job asked to stop (``on_kill="abort"``)."""


class KillCheck:
    """Whether one flag is killed, read from the state store at most every ``interval`` s."""

    def __init__(self, config: str | Path, flag: str, interval: float = DEFAULT_INTERVAL):
        self.config = str(config)
        self.flag = flag
        self.interval = interval
        self._killed = False
        self._next_at = float("-inf")  # monotonic time of the next store read
        self._failures = 0
        self._store: StateStore | None = None
        self._reported = ""
        self._lock = threading.Lock()
        self.reads = 0  # store reads made (for the bench and the tests)

    def killed(self) -> bool:
        """True once the flag is killed (in the store, or by ``FLAGWARDEN_KILL`` here); then
        True for good: a job's kill check is the job's, and a kill stops it for its rest."""
        if self._killed:
            return True
        if self._env_killed():
            self._killed = True
            return True
        if time.monotonic() < self._next_at:
            return False
        with self._lock:
            if time.monotonic() >= self._next_at:
                self._read()
                # after failures, wait longer (a store that does not answer costs each batch
                # its connect timeout otherwise): interval x 2^failures, at most 30 s
                wait = min(MAX_BACKOFF, self.interval * 2 ** min(self._failures, 16))
                self._next_at = time.monotonic() + max(self.interval, wait)
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
            self._failures += 1
            problem = f"{type(exc).__name__}: {exc}"[:300]
            if problem != self._reported:
                self._reported = problem
                _log.error("flagwarden.kill_check_failed", flag=self.flag, error=problem)
            self._store = None  # opened again at the next read
            return
        self._failures = 0
        self._reported = ""
        self._killed = bool(state is not None and state.killed)

    def _open(self) -> StateStore:
        if self._store is None:
            from flagwarden.config import load_settings
            from flagwarden.governance.state import open_state_store

            settings = load_settings(self.config)
            url = settings.config.state
            if url.startswith("sqlite:///"):  # never create an empty store on a worker
                path = Path(url[len("sqlite:///") :])
                path = path if path.is_absolute() else settings.base_dir / path
                if not path.exists():
                    raise FileNotFoundError(f"the state store file is not on this worker: {path}")
            self._store = open_state_store(url, settings.base_dir)
        return self._store


_checks: OrderedDict[tuple[str, str, float, str], KillCheck] = OrderedDict()
_checks_pid = os.getpid()
_checks_lock = threading.Lock()
_KEPT = 64  # kill checks kept per process (the most recently used jobs')


def kill_check(
    config: str | Path, flag: str, interval: float = DEFAULT_INTERVAL, *, job: str = ""
) -> KillCheck:
    """This process's :class:`KillCheck` for ``flag`` in ``job`` (one per process, config,
    interval and job: a worker's batches of a job share its store connection, its last read
    and a kill once seen)."""
    global _checks_pid
    key = (str(config), flag, interval, job)
    with _checks_lock:
        if _checks_pid != os.getpid():  # a forked worker: the parent's connections are not its
            _checks.clear()
            _checks_pid = os.getpid()
        check = _checks.get(key)
        if check is None:
            check = _checks[key] = KillCheck(config, flag, interval)
            while len(_checks) > _KEPT:
                _checks.popitem(last=False)
        _checks.move_to_end(key)
        return check
