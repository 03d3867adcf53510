"""Routing Arrow batches of keys on a job's workers, for every batch engine (Spark, Dask, Ray).

A :class:`BatchRouter` carries a frozen :class:`~flagwarden.governance.assignment.Assignment`
to the workers and applies it to each batch: the bucketing alone (the compiled kernels loaded
once per worker), the kill check (:mod:`flagwarden.governance.killcheck`: control from then on,
or :class:`~flagwarden.governance.killcheck.FlagKilled`), and, for a flag whose vendor rule
depends on the key, one ``configure()`` per worker from the project's config file. Each batch
gives the served values and an outcome code per row; the driver sums the codes and records
the exposures once (:func:`record_outcomes`), so counts add up however many workers served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from flagwarden.governance.assign import record_exposures
from flagwarden.governance.assignment import Assignment
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled, kill_check

__all__ = [
    "CAPPED",
    "CONSTANT",
    "KILLED",
    "MISSING",
    "TREATED",
    "BatchRouter",
    "OnKill",
    "record_outcomes",
]

OnKill = Literal["control", "abort"]

# What a row's answer counts as (summed on the driver by record_outcomes).
TREATED, CAPPED, MISSING, KILLED, CONSTANT = 0, 1, 2, 3, 4


class BatchRouter:
    """Picklable; applied on the workers to each Arrow array of keys (see the module doc)."""

    def __init__(
        self,
        assignment: Assignment,
        config: str,
        on_kill: OnKill = "control",
        kill_check_seconds: float = DEFAULT_INTERVAL,
    ) -> None:
        if on_kill not in ("control", "abort"):
            raise ValueError(f"on_kill must be 'control' or 'abort', not {on_kill!r}")
        self.assignment = assignment
        self.config = config
        self.on_kill = on_kill
        self.interval = kill_check_seconds

    def route(self, keys: Any) -> tuple[Any, Any]:
        """The served values (an Arrow array) and each row's outcome code (int8)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        a = self.assignment
        n = len(keys)
        _load_kernels()
        if a.stage is not None and kill_check(self.config, a.flag, self.interval).killed():
            if self.on_kill == "abort":
                raise FlagKilled(
                    f"{a.flag} was killed while this job ran (on_kill='abort'): the task stops "
                    "so that a transactional sink writes nothing"
                )
            return pa.array([a.control] * n), pa.array([KILLED] * n, pa.int8())
        if a.mode == "per_key":
            _configure_worker(self.config)
            return a.apply(keys), pa.array([CONSTANT] * n, pa.int8())
        values, _, _ = a.route(keys)
        if a.mode == "constant":
            return values, pa.array([CONSTANT] * n, pa.int8())
        missing = pc.is_null(keys)
        if pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
            missing = pc.or_(missing, pc.equal(keys, ""))
        missing = pc.fill_null(missing, True)
        treated = pc.and_(pc.equal(values, pa.scalar(a.treatment, values.type)), pc.invert(missing))
        outcome = pc.if_else(
            missing,
            pa.scalar(MISSING, pa.int8()),
            pc.if_else(treated, pa.scalar(TREATED, pa.int8()), pa.scalar(CAPPED, pa.int8())),
        )
        return values, outcome


def record_outcomes(assignment: Assignment, by_outcome: Mapping[int, int]) -> None:
    """Record, once, the rows a job routed, summed by outcome code over its batches."""
    record_exposures(
        assignment,
        sum(by_outcome.values()),
        treated=by_outcome.get(TREATED, 0),
        missing=by_outcome.get(MISSING, 0),
        killed=by_outcome.get(KILLED, 0),
    )


def _load_kernels() -> None:
    """The compiled bucketing kernels, once per worker (about 0.25 s from numba's cache):
    engines' batches (Spark's are 10,000 rows) are below the size for which ``assign`` loads
    them by itself, and they route six times faster."""
    from flagwarden.governance import murmur

    murmur.load_kernels()


def _configure_worker(config: str) -> None:
    """One ``configure()`` per worker, for flags the vendor decides per key."""
    import flagwarden

    runtime = flagwarden.current()
    if runtime is None or str(runtime.settings.source) != config:
        flagwarden.configure(config)
