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

import json
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from flagwarden.governance import columns
from flagwarden.governance.assign import plan, record_exposures
from flagwarden.governance.assignment import Assignment
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled, kill_check

if TYPE_CHECKING:
    from openfeature.evaluation_context import EvaluationContext

__all__ = [
    "CAPPED",
    "CONSTANT",
    "KILLED",
    "MISSING",
    "TREATED",
    "ArmRule",
    "BatchRouter",
    "OnKill",
    "arm_names",
    "arm_rule",
    "as_json",
    "config_file",
    "constant_arm",
    "for_workers",
    "prepare",
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
        _check_on_kill(on_kill)
        self.assignment = assignment
        self.config = config
        self.on_kill = on_kill
        self.interval = kill_check_seconds
        # The job's own kill check: a kill seen stays seen for this job ("control from that
        # batch on"), even if the flag is revived before the job ends.
        self.job = uuid.uuid4().hex

    def route(self, keys: Any) -> tuple[Any, Any]:
        """The served values (an Arrow array) and each row's outcome code (int8)."""
        import pyarrow as pa

        a = self.assignment
        n = len(keys)
        _load_kernels()
        check = kill_check(self.config, a.flag, self.interval, job=self.job)
        if a.stage is not None and not a.killed and check.killed():
            if self.on_kill == "abort":
                raise FlagKilled(
                    f"{a.flag} was killed while this job ran (on_kill='abort'): the task stops "
                    "so that a transactional sink writes nothing"
                )
            return pa.array([a.control] * n), pa.array([KILLED] * n, pa.int8())
        if a.mode == "per_key":
            _configure_worker(self.config)
            return a.apply(keys), pa.array([CONSTANT] * n, pa.int8())
        if a.mode == "constant" or n == 0:
            values, _, _ = a.route(keys)
            return values, pa.array([CONSTANT] * n, pa.int8())
        values, inside = columns.route_masked(keys, a.salt, a.limit, a.treatment, a.control)
        codes = np.where(inside, TREATED, np.where(_missing(keys), MISSING, CAPPED))
        return values, pa.array(codes.astype(np.int8))


def _missing(keys: Any) -> Any:
    """Whether each key is no unit (null, or empty text): a numpy bool array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = pa.types
    if t.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if hasattr(t, "is_string_view") and t.is_string_view(keys.type):
        keys = keys.cast(pa.large_string())
    missing = pc.is_null(keys)
    if t.is_string(keys.type) or t.is_large_string(keys.type):
        missing = pc.or_(missing, pc.fill_null(pc.equal(keys, ""), True))
    return missing.to_numpy(zero_copy_only=False)


def prepare(
    what: str,
    flag_key: str,
    default: Any,
    context: EvaluationContext | None,
    run_id: str | None,
    on_kill: OnKill,
    kill_check_seconds: float,
) -> tuple[Assignment, BatchRouter]:
    """An engine adapter's driver side (``what`` names it in errors): the arguments checked
    before anything is planned or pinned, the config file the workers will open, the plan,
    and the router that carries it (object values as JSON text) to the workers."""
    _check_on_kill(on_kill)
    config = config_file(what)
    assignment = plan(flag_key, default, context=context, run_id=run_id)
    router = BatchRouter(for_workers(assignment, default), config, on_kill, kill_check_seconds)
    return assignment, router


def _check_on_kill(on_kill: str) -> None:
    if on_kill not in ("control", "abort"):
        raise ValueError(f"on_kill must be 'control' or 'abort', not {on_kill!r}")


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


# -- shared by the engines' adapters (Spark, Dask, Ray) ------------------------------

ArmRule = str | tuple[Any, Any]  # an arm, or a per-key plan's (treatment, control) values


def config_file(what: str) -> str:
    """The driver's config file, which the workers open too (refused: no configure(), or the
    embedded default, which a worker could not find)."""
    from flagwarden.errors import FlagwardenError
    from flagwarden.runtime import current

    runtime = current()
    if runtime is None:
        raise FlagwardenError(f"{what} needs flagwarden.configure() first")
    if runtime.settings.source is None:
        raise FlagwardenError(
            f"{what} needs a config file the workers can read (flagwarden.configure(path)), "
            "not the embedded default"
        )
    return str(runtime.settings.source)


def for_workers(assignment: Assignment, default: Any) -> Assignment:
    """The plan the workers apply: object values as JSON text, as flagwarden.spark does."""
    return as_json(assignment) if isinstance(default, dict | list) else assignment


def arm_rule(assignment: Assignment, shipped: Assignment) -> ArmRule:
    """The arm of the rows served the plan's one answer: its arm, or, when the vendor is asked
    per key, each row's by its value (the shipped treatment and control values)."""
    if assignment.mode == "per_key":
        return (shipped.treatment, shipped.control)
    return constant_arm(assignment)


def constant_arm(assignment: Assignment) -> str:
    outcome = assignment.outcome
    return outcome.arm if outcome is not None else "none"


def as_json(assignment: Assignment) -> Assignment:
    """Object values as JSON text (Spark columns hold no free-form objects)."""

    def text(value: Any) -> Any:
        return None if value is None else json.dumps(value, sort_keys=True)

    return replace(
        assignment,
        default=text(assignment.default),
        value=text(assignment.value),
        treatment=text(assignment.treatment),
        control=text(assignment.control),
    )


def arm_names(values: Any, outcome: Any, arm_rule: ArmRule) -> Any:
    """Each row's arm (an object ndarray of str) from its outcome code; the rows served the
    plan's one answer get ``arm_rule`` (an arm), or, for a per-key plan, the arm of their value
    (``arm_rule`` is then the (treatment, control) values; "none" for any other value)."""
    import numpy as np

    codes = outcome.to_numpy(zero_copy_only=False)
    constant: Any = arm_rule
    if isinstance(arm_rule, tuple):
        treatment, control = arm_rule
        constant = np.array(
            [arm_of(value, treatment, control) for value in values.to_pylist()], dtype=object
        )
    arms = np.where(codes == TREATED, "treatment", np.where(codes == CONSTANT, constant, "control"))
    return arms.astype(object)


def arm_of(value: Any, treatment: Any, control: Any) -> str:
    def same(a: Any, b: Any) -> bool:
        return b is not None and isinstance(a, bool) == isinstance(b, bool) and a == b

    if same(value, treatment):
        return "treatment"
    return "control" if same(value, control) else "none"
