"""A worker process's flagwarden runtime, for per-key batches and ``FlagwardenPlugin``.

:func:`worker_runtime` configures it once per process from the job's config file, under one
lock: the threads of a worker (Dask's, Spark's, Ray's) wait for the first one's
``configure()`` instead of each replacing the runtime another uses; :func:`plugin_setup` and
:func:`plugin_teardown` are the Dask plugin's, which shuts down only the runtime it created.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flagwarden.governance.assignment import AssignmentError
from flagwarden.logs import get_logger

__all__ = ["plugin_setup", "plugin_teardown", "worker_runtime"]

_log = get_logger("flagwarden.batches")


class _WorkerRuntime:
    """The runtime a worker process's per-key batches ask, configured once per process from the
    job's config file, under one lock: the threads of a worker (Dask's, Spark's, Ray's) wait
    for the first one's ``configure()`` instead of each replacing the runtime another uses.

    The routers replace only a runtime they created themselves, and only while no batch uses it
    (a later job of another config on a reused worker); a runtime the process's own code or
    :class:`~flagwarden.dask.FlagwardenPlugin` created is never replaced (a per-key batch of
    another config is refused). The plugin shuts down only the runtime it created."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.changed = threading.Condition()
        self.users = 0  # per-key batches asking the current runtime now
        self.ours: Any = None  # the runtime the routers configured
        self.plugin: Any = None  # the runtime the plugin configured
        self.plugin_holds = 0  # the plugin's setups holding it (in-process workers share it)

    def after_fork_in_child(self) -> None:
        self.changed = threading.Condition()  # the parent's threads (and their holds) are gone
        self.users = 0


_WORKER = _WorkerRuntime()
os.register_at_fork(after_in_child=_WORKER.after_fork_in_child)


def _source(runtime: Any) -> str | None:
    source = runtime.settings.source
    return None if source is None else str(source)


@contextmanager
def worker_runtime(config: str) -> Iterator[None]:
    """This process's runtime configured from ``config`` (configured now, once, if none is),
    held while the block asks it: never replaced meanwhile. AssignmentError when the process
    runs flagwarden from another configuration that flagwarden's routers did not create."""
    import flagwarden

    w = _WORKER
    with w.changed:
        while True:
            runtime = flagwarden.current()
            if runtime is not None and _source(runtime) == config:
                break
            if runtime is None or (runtime is w.ours and w.users == 0):
                flagwarden.configure(config)  # replaces (shuts down) only an idle one of ours
                w.ours = flagwarden.current()
                break
            if runtime is not w.ours:
                raise AssignmentError(
                    f"this process runs flagwarden configured from {_source(runtime) or 'no file'}"
                    f" (not by flagwarden's batch routing), and a per-key batch of a job "
                    f"planned from {config} would ask it: flagwarden never replaces a runtime "
                    "it did not create; configure the workers from the job's config file"
                )
            w.changed.wait()  # ours, of another job's config, in use by that job's batches
        w.users += 1
    try:
        yield
    finally:
        with w.changed:
            w.users -= 1
            w.changed.notify_all()


def plugin_setup(config: str) -> None:
    """``FlagwardenPlugin.setup``: configure this worker process from ``config`` unless it
    already runs flagwarden (in-process workers share the client's runtime: left alone)."""
    import flagwarden

    w = _WORKER
    with w.changed:
        runtime = flagwarden.current()
        if runtime is None:
            flagwarden.configure(config)
            w.plugin, w.plugin_holds = flagwarden.current(), 1
        elif runtime is w.plugin:
            w.plugin_holds += 1
        elif _source(runtime) != config:
            _log.warning(
                "flagwarden.plugin_left_runtime",
                config=config,
                running=_source(runtime),
                note="this worker process already runs flagwarden: the plugin leaves it",
            )


def plugin_teardown(wait: float = 30.0) -> None:
    """``FlagwardenPlugin.teardown``: shut down the runtime the plugin created (once the last
    setup holding it is torn down, and per-key batches using it are done, at most ``wait``
    seconds), never another."""
    import flagwarden

    w = _WORKER
    with w.changed:
        if w.plugin is None:
            return
        w.plugin_holds -= 1
        if w.plugin_holds > 0:
            return
        created, w.plugin = w.plugin, None
        w.changed.wait_for(lambda: w.users == 0, timeout=wait)
        if flagwarden.current() is created:
            flagwarden.shutdown()
