"""Routing batches of keys on a job's workers, for every batch engine (Spark, Dask, Ray).

A :class:`BatchRouter` carries a frozen :class:`~flagwarden.governance.assignment.Assignment`
to the workers and applies it to each batch (an Arrow array of keys, or a pandas column read as
``flagwarden.assign`` reads one): the bucketing alone (the compiled kernels loaded once per
worker), the kill check (:mod:`flagwarden.governance.killcheck`: control from then on, or
:class:`~flagwarden.governance.killcheck.FlagKilled`), and, for a flag whose vendor rule
depends on the key, the client asked key by key, with one ``configure()`` per worker process
from the project's config file (:func:`worker_runtime`: once, under a lock, never replacing a
runtime another thread uses or one flagwarden's routers did not create). Each batch gives the
served values, of one type for the whole job (:func:`value_type`), and an outcome code per
row; the driver sums the codes and records the exposures once (:func:`record_outcomes`), so
counts add up however many workers served.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from flagwarden.governance import columns
from flagwarden.governance.assign import plan, record_exposures
from flagwarden.governance.assignment import Assignment
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled, kill_check
from flagwarden.governance.workers import worker_runtime
from flagwarden.logs import get_logger

if TYPE_CHECKING:
    from openfeature.evaluation_context import EvaluationContext

__all__ = [
    "CAPPED",
    "CONSTANT",
    "KILLED",
    "MISSING",
    "OUTCOMES",
    "TREATED",
    "BatchRouter",
    "OnKill",
    "as_json",
    "check_arguments",
    "config_file",
    "for_workers",
    "is_pandas",
    "pandas_dtype",
    "prepare",
    "record_outcomes",
    "value_type",
]

_log = get_logger("flagwarden.batches")

OnKill = Literal["control", "abort"]

# What a row's answer counts as (summed on the driver by record_outcomes).
TREATED, CAPPED, MISSING, KILLED, CONSTANT = 0, 1, 2, 3, 4
OUTCOMES = 5  # how many codes there are


class BatchRouter:
    """Picklable; applied on the workers to each batch of keys (see the module doc).

    ``assignment`` is the plan as planned; :attr:`assignment` is what the column holds (object
    values as JSON text, :func:`for_workers`), :attr:`value_type` the type of every batch's
    values (:func:`value_type`)."""

    def __init__(
        self,
        assignment: Assignment,
        config: str,
        on_kill: OnKill = "control",
        kill_check_seconds: float = DEFAULT_INTERVAL,
    ) -> None:
        _check_on_kill(on_kill)
        _check_interval(kill_check_seconds)
        # Per-key answers are asked with the planned default (its type picks the client's
        # getter); the column's values are the shipped ones (JSON text for object flags).
        self.plan = assignment
        self.assignment = for_workers(assignment)
        self.json = self.assignment is not assignment
        self.value_type = value_type(self.assignment)
        self.config = config
        self.on_kill = on_kill
        self.interval = float(kill_check_seconds)
        # The job's own kill check: a kill seen stays seen for this job ("control from that
        # batch on"), even if the flag is revived before the job ends.
        self.job = uuid.uuid4().hex

    def count(self, keys: Any) -> list[int]:
        """How many of ``keys`` got each outcome code, by code (an engine's counting pass)."""
        _, outcome = self.route(keys)
        codes = np.asarray(outcome.to_numpy(zero_copy_only=False), dtype=np.int64)
        return [int(n) for n in np.bincount(codes, minlength=OUTCOMES)]

    def route(self, keys: Any) -> tuple[Any, Any]:
        """The served values and each row's outcome code (an Arrow int8 array). ``keys`` is an
        Arrow array (the values come back as one) or a pandas column (read as
        ``flagwarden.assign`` reads it; the values come back as a pandas column of its index)."""
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
            return self._constant(keys, a.control), _codes(KILLED, n)
        if a.mode == "per_key":
            with worker_runtime(self.config):
                # a list of answers, asked with the planned default's type
                answers = self.plan.apply(columns.as_strings(keys))
            if self.json:
                answers = [_json_text(value) for value in answers]
            return self._column(keys, answers), _codes(CONSTANT, n)
        if a.mode == "constant" or n == 0:
            return self._constant(keys, a.value if n else a.default), _codes(CONSTANT, n)
        values, inside = columns.route_masked(keys, a.salt, a.limit, a.treatment, a.control)
        codes = np.where(inside, TREATED, np.where(_missing(keys), MISSING, CAPPED))
        return self._typed(values), pa.array(codes.astype(np.int8))

    # -- the values, of the job's one type --------------------------------------------------

    def _constant(self, keys: Any, value: Any) -> Any:
        if is_pandas(keys):
            return self._typed(columns.constant(keys, value))
        import pyarrow as pa

        if self.value_type is None:
            return pa.array([value] * len(keys))
        return pa.repeat(pa.scalar(value, _arrow_type(self.value_type)), len(keys))

    def _column(self, keys: Any, values: list[Any]) -> Any:
        if is_pandas(keys):
            import pandas as pd

            return self._typed(pd.Series(values, index=keys.index, name=keys.name))
        import pyarrow as pa

        if self.value_type is None:
            return pa.array(values)
        return pa.array(values, _arrow_type(self.value_type))

    def _typed(self, values: Any) -> Any:
        """``values`` (a pandas or Arrow column) as the job's value type."""
        if self.value_type is None:
            return values
        if is_pandas(values):
            dtype = pandas_dtype(self.value_type)
            if values.dtype == dtype:
                return values
            if self.value_type in ("bool", "int64") and values.isna().any():
                return values  # a null (no value) has no bool or int64: as pandas infers
            return values.astype(dtype)
        import pyarrow as pa

        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        target = _arrow_type(self.value_type)
        return values if values.type == target else values.cast(target)


def _codes(code: int, n: int) -> Any:
    import pyarrow as pa

    return pa.array(np.full(n, code, dtype=np.int8))


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value, sort_keys=True)


def is_pandas(values: Any) -> bool:
    return type(values).__module__.split(".")[0] == "pandas"


def _missing(keys: Any) -> Any:
    """Whether each key is no unit (null, or empty text): a numpy bool array, for an Arrow
    array or a pandas column (pandas' NA, NaN, NaT and None are missing there, as in assign)."""
    if is_pandas(keys):
        return _missing_pandas(keys)
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


def _missing_pandas(keys: Any) -> Any:
    import pandas as pd

    missing = keys.isna().to_numpy(dtype=bool)
    dtype = keys.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        blank = [at for at, c in enumerate(dtype.categories) if isinstance(c, str) and c == ""]
        if blank:
            missing = missing | np.isin(keys.cat.codes.to_numpy(), blank)
        return missing
    if isinstance(dtype, np.dtype) and dtype.kind != "O":
        return missing  # numbers, dates: never text
    if isinstance(dtype, np.dtype):
        values = keys.to_numpy()
    else:  # an extension column: Arrow-backed text is read in place
        import pyarrow as pa

        try:
            arrow = pa.array(keys.array)
        except (pa.ArrowException, TypeError, ValueError):
            arrow = None
        if isinstance(arrow, pa.ChunkedArray):
            arrow = arrow.combine_chunks()
        if arrow is not None and _text(arrow.type):
            return missing | _missing(arrow)
        values = np.empty(len(keys), dtype=object)
        values[:] = keys.tolist()
    empty: Any
    try:
        empty = np.asarray(values == "", dtype=bool)
    except (TypeError, ValueError):  # objects whose == is not a plain bool
        empty = None
    if empty is None or empty.shape != missing.shape:
        empty = np.fromiter(
            (isinstance(v, str) and v == "" for v in values), dtype=bool, count=len(values)
        )
    return missing | empty


def _text(type_: Any) -> bool:
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(type_):
        return _text(type_.value_type)
    view = hasattr(t, "is_string_view") and t.is_string_view(type_)
    return bool(t.is_string(type_) or t.is_large_string(type_) or view)


def value_type(assignment: Assignment) -> str | None:
    """The type of the values every batch of a job gets, from the values its plan can serve (the
    default, the plan's answer, the policy's treatment and control): ``"bool"``, ``"int64"``,
    ``"double"`` (numbers of which one is a float), ``"string"`` (text, and object flags' JSON
    text); None when they have no common type (each batch then keeps the type of its values).
    One type for the whole job, whatever the batch, its mode or the kill: a batch served only
    control 1 of a flag whose treatment is 1.5 is double too, and a table of them can be
    written and read back."""
    a = assignment
    values = [v for v in (a.default, a.value, a.treatment, a.control) if v is not None]
    if not values:
        return None
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "double" if any(isinstance(v, float) for v in values) else "int64"
    return None


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    return {"bool": pa.bool_(), "int64": pa.int64(), "double": pa.float64()}.get(name, pa.string())


def pandas_dtype(name: str | None, fallback: Any = None) -> Any:
    """The pandas dtype of a :func:`value_type` (pandas' own for text: ``str`` on pandas 3),
    or ``fallback`` for None."""
    import pandas as pd

    if name is None:
        return fallback
    if name == "string":
        return pd.Series(["control"]).dtype
    return np.dtype({"bool": "bool", "int64": "int64", "double": "float64"}[name])


def prepare(
    what: str,
    flag_key: str,
    default: Any,
    context: EvaluationContext | None,
    run_id: str | None,
    on_kill: OnKill,
    kill_check_seconds: float,
    *,
    out: str = "variant",
    arm: str | None = None,
    record: bool = True,
) -> tuple[Assignment, BatchRouter]:
    """An engine adapter's driver side (``what`` names it in errors): the arguments checked
    before anything is planned or pinned (:func:`check_arguments`), the config file the workers
    will open, the plan, and the router that carries it (object values as JSON text) to the
    workers."""
    check_arguments(
        flag_key,
        default,
        context,
        run_id,
        on_kill,
        kill_check_seconds,
        out=out,
        arm=arm,
        record=record,
    )
    config = config_file(what)
    assignment = plan(flag_key, default, context=context, run_id=run_id)
    router = BatchRouter(assignment, config, on_kill, kill_check_seconds)
    return assignment, router


def check_arguments(
    flag_key: Any,
    default: Any,
    context: Any,
    run_id: Any,
    on_kill: Any,
    kill_check_seconds: Any,
    *,
    out: Any = "variant",
    arm: Any = None,
    record: Any = True,
) -> None:
    """TypeError or ValueError, naming the argument and its value, for any an engine adapter
    cannot use: checked before anything is planned, pinned or audited."""
    from openfeature.evaluation_context import EvaluationContext

    from flagwarden.governance.runs import _checked

    if not isinstance(flag_key, str):
        raise TypeError(f"flag_key must be a str, not {flag_key!r}")
    if not flag_key:
        raise ValueError("flag_key must not be empty")
    if not isinstance(default, bool | str | int | float | dict | list):
        raise TypeError(
            f"unsupported default {default!r}: use a bool, str, int, float, dict or list"
        )
    if context is not None and not isinstance(context, EvaluationContext):
        raise TypeError(f"context must be an EvaluationContext or None, not {context!r}")
    if run_id is not None:
        _checked(run_id)
    _check_on_kill(on_kill)
    _check_interval(kill_check_seconds)
    if not isinstance(out, str) or not out:
        raise TypeError(f"out must be a non-empty column name (str), not {out!r}")
    if arm is not None and (not isinstance(arm, str) or not arm):
        raise TypeError(f"arm must be a non-empty column name (str) or None, not {arm!r}")
    if arm is not None and arm == out:
        raise ValueError(f"arm and out name the same column ({arm!r}): give them two names")
    if not isinstance(record, bool):
        raise TypeError(f"record must be True or False, not {record!r}")


def _check_on_kill(on_kill: Any) -> None:
    if on_kill not in ("control", "abort"):
        raise ValueError(f"on_kill must be 'control' or 'abort', not {on_kill!r}")


def _check_interval(seconds: Any) -> None:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        raise TypeError(f"kill_check_seconds must be a number of seconds, not {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"kill_check_seconds must be a finite number of seconds >= 0, not {seconds!r}"
        )


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


# -- shared by the engines' adapters (Spark, Dask, Ray) ------------------------------


def config_file(what: str) -> str:
    """The driver's config file, which the workers open too (refused: no configure(), or a
    runtime configured without a file, from a mapping, a model or the embedded default: the
    workers have nothing to open)."""
    from flagwarden.errors import FlagwardenError
    from flagwarden.runtime import current

    runtime = current()
    if runtime is None:
        raise FlagwardenError(f"{what} needs flagwarden.configure() first")
    if runtime.settings.source is None:
        raise FlagwardenError(
            f"{what} needs a config file the workers can read: flagwarden.configure(path) "
            "with the path of a file every worker can open (this process was configured "
            "without a file, from a mapping, a model or the embedded default, which the "
            "workers cannot read)"
        )
    return str(runtime.settings.source)


def for_workers(assignment: Assignment) -> Assignment:
    """The plan as its column holds it: an object flag's values (a dict or list default) as
    JSON text, as every engine's column holds them."""
    return as_json(assignment) if isinstance(assignment.default, dict | list) else assignment


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
