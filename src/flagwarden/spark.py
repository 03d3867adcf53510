"""flagwarden on Spark: route a DataFrame's rows with one call (extra ``[spark]``).

``assign_column(df, flag_key, key_col, default)`` plans on the driver (``flagwarden.plan``: the
vendor asked once, the flag's stage, kill, salt and arm values frozen) and adds the served
value as a column through an Arrow UDF (``pyspark.sql.functions.arrow_udf``, Spark >= 4.1; a
``pandas_udf`` on older Sparks, or with ``udf="pandas"``) whose closure carries the frozen
plan: no vendor SDK, no state store, no ``configure()`` on the executors, no ``sparkContext``
(Spark Connect sessions work too). Spark's retries and speculative tasks recompute partitions
from the same plan, so a job's answers are the same whatever is recomputed: exactly
``flagwarden.assign``'s over the keys the UDF reads, row for row.

Key columns should be strings or integers. Both UDFs read those as the same keys (the tests
compare them): a string as it is, an integer as its decimal digits (``str(int)``; the
``pandas_udf`` gets an integer column as text from Spark, as pandas would turn a batch's
integers into floats when it holds a null), a null or ``""`` as no unit. A timestamp becomes
its wall-clock time in the session time zone, without offset (``2024-01-01 10:00:00``, or
``2024-01-01 10:00:00.250000``), in both UDFs (tested too). Any other type becomes ``str()`` of
the Python value the UDF reads, which is not tested to agree between the two: a date
``2024-01-01``, a decimal with its scale (``1.10``), a double as Python writes it (``0.25``);
a double NaN is a key (``nan``) in the Arrow UDF but no unit in the ``pandas_udf`` (pandas
cannot tell it from a null). Cast such a column to a string of your own making first.

A kill reaches the running job: each Python worker reads the flag's kill from the project's
state store at most every ``kill_check`` seconds (the store is opened from the config file on
the worker; see :mod:`flagwarden.governance.killcheck`) and from then on serves control
(``on_kill="control"``) or fails the task with :class:`~flagwarden.governance.killcheck.
FlagKilled` (``on_kill="abort"``, for transactional sinks).

When the vendor's own rule depends on the record key, the UDF asks the client key by key
(with the planned default's type: an object flag's answers become JSON text), with one
``flagwarden.configure()`` per Python worker process from the same config file, done once,
under a lock (:func:`~flagwarden.governance.workers.worker_runtime`).

Exposures are counted once, on the driver: with ``record=True`` (the default) one aggregate
over the new column counts the rows per outcome and ``flagwarden.record_exposures`` records
them, so counts add up however many executors served the rows. That aggregate is a job of its
own, run by ``assign_column``: it recomputes the DataFrame's lineage (``cache()`` the input to
avoid it), counts even if the caller's own job never runs, and a kill landing between it and
the caller's job makes the counts differ from what that job served. The column's type comes
from the values the plan can serve (:func:`~flagwarden.governance.batches.value_type`: bool,
long, double when one of the numbers is a float, string); object flags (dict or list values)
become JSON text columns. With ``on_kill="abort"`` the job fails with Spark's
own exception (``PythonException`` on a classic session) whose message carries
``FlagKilled``'s; a flag already killed when planned serves control and never aborts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from flagwarden.governance.arms import constant_arm as arm_of_plan
from flagwarden.governance.assignment import Assignment
from flagwarden.governance.batches import (
    CONSTANT,
    TREATED,
    BatchRouter,
    OnKill,
    prepare,
    record_outcomes,
)
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled

if TYPE_CHECKING:
    from openfeature.evaluation_context import EvaluationContext
    from pyspark.sql import Column, DataFrame

__all__ = ["FlagKilled", "assign_column"]

_INTERNAL = "__flagwarden_routed"
UdfKind = Literal["auto", "arrow", "pandas"]


def assign_column(
    df: DataFrame,
    flag_key: str,
    key_col: str | Column,
    default: Any,
    *,
    context: EvaluationContext | None = None,
    out: str = "variant",
    arm: str | None = None,
    on_kill: OnKill = "control",
    kill_check_seconds: float = DEFAULT_INTERVAL,
    record: bool = True,
    run_id: str | None = None,
    udf: UdfKind = "auto",
) -> DataFrame:
    """``df`` with the value served for each row's key in column ``out`` (and, given ``arm``,
    ``treatment`` / ``control`` in that column): as ``flagwarden.assign`` over the key column.

    Needs ``flagwarden.configure()`` on the driver, from a config file the executors can read
    too (for the kill check and per-key flags). ``run_id`` (or an enclosing
    ``flagwarden.run``) pins the decision for a pipeline run. ``udf`` picks the UDF: ``"auto"``
    an Arrow UDF where Spark has ``arrow_udf`` (>= 4.1) and a ``pandas_udf`` otherwise;
    ``"arrow"`` or ``"pandas"`` to choose (the same column for string, integer and timestamp
    keys; see the module doc for other key types). Every argument is checked before anything
    is planned or pinned (TypeError or ValueError naming it).
    """
    from pyspark.sql import functions as F

    pandas = _udf_kind(udf) == "pandas"
    if not _spark_object(df, "DataFrame"):
        raise TypeError(f"df must be a Spark DataFrame, not {type(df).__name__}")
    if not (isinstance(key_col, str) or _spark_object(key_col, "Column")):
        raise TypeError(f"key_col must be a column name (str) or a Column, not {key_col!r}")
    assignment, router = prepare(
        "flagwarden.spark.assign_column",
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
    shipped = router.assignment
    routing = _routing_udf(router, _spark_type(router.value_type, default), pandas)
    key = F.col(key_col) if isinstance(key_col, str) else key_col
    if pandas and _integral(df.select(key).schema.fields[0].dataType):
        # pandas turns a batch's integers into floats when it holds a null ("123.0"): the
        # pandas_udf reads them as Spark's text of them instead, the Arrow UDF's keys exactly
        key = key.cast("string")
    result = df.withColumn(_INTERNAL, routing(key))
    result = result.withColumn(out, F.col(f"{_INTERNAL}.value"))
    if arm is not None:
        outcome = F.col(f"{_INTERNAL}.outcome")
        if assignment.mode == "per_key":  # each row's own answer: its arm by its value
            value = F.col(f"{_INTERNAL}.value")
            by_value = F.lit("none")
            if shipped.treatment is not None:
                by_value = (
                    F.when(value == F.lit(shipped.treatment), F.lit("treatment"))
                    .when(value == F.lit(shipped.control), F.lit("control"))
                    .otherwise(F.lit("none"))
                )
            constant_arm = by_value
        else:
            constant_arm = F.lit(arm_of_plan(assignment))
        result = result.withColumn(
            arm,
            F.when(outcome == TREATED, F.lit("treatment"))
            .when(outcome == CONSTANT, constant_arm)
            .otherwise(F.lit("control")),
        )
    if record:
        _record(assignment, result)
    return result.drop(_INTERNAL)


def _record(assignment: Assignment, result: DataFrame) -> None:
    rows = result.groupBy(f"{_INTERNAL}.outcome").count().collect()
    record_outcomes(assignment, {int(row[0]): int(row[1]) for row in rows})


def _spark_type(value_type: str | None, default: Any) -> Any:
    """The column's Spark type: the router's value type (the one every batch gets), or, when
    the plan's values have none in common, the default's."""
    from pyspark.sql import types as T

    by_value = {
        "bool": T.BooleanType(),
        "int64": T.LongType(),
        "double": T.DoubleType(),
        "string": T.StringType(),
    }
    if value_type is not None:
        return by_value[value_type]
    if isinstance(default, bool):
        return T.BooleanType()
    if isinstance(default, str | dict | list):
        return T.StringType()
    if isinstance(default, int):
        return T.LongType()
    if isinstance(default, float):
        return T.DoubleType()
    raise TypeError(f"unsupported default {default!r}: use a bool, str, int, float, dict or list")


def _spark_object(value: Any, name: str) -> bool:
    """Whether ``value`` is a pyspark ``name`` (a DataFrame, a Column) of a classic or a Spark
    Connect session (on Spark 3.5 the Connect classes are not the classic ones' subclasses)."""
    return any(
        c.__name__ == name and c.__module__.startswith("pyspark.") for c in type(value).__mro__
    )


def _integral(data_type: Any) -> bool:
    from pyspark.sql import types as T

    return isinstance(data_type, T.ByteType | T.ShortType | T.IntegerType | T.LongType)


def _udf_kind(kind: Any) -> Literal["arrow", "pandas"]:
    """The UDF ``udf=`` asks for, on this Spark (checked before anything is planned)."""
    from pyspark.sql import functions as F

    if kind not in ("auto", "arrow", "pandas"):
        raise ValueError(f"udf={kind!r}: expected 'auto', 'arrow' or 'pandas'")
    has_arrow_udf = hasattr(F, "arrow_udf")
    if kind == "arrow" and not has_arrow_udf:
        raise RuntimeError("udf='arrow' needs Spark >= 4.1 (pyspark.sql.functions.arrow_udf)")
    return "pandas" if kind == "pandas" or not has_arrow_udf else "arrow"


def _routing_udf(router: BatchRouter, value_type: Any, pandas: bool) -> Any:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType(
        [T.StructField("value", value_type), T.StructField("outcome", T.ByteType())]
    )
    name = f"flagwarden_{router.assignment.flag}"
    if pandas:
        return F.pandas_udf(_pandas_routing(router, name), schema)  # type: ignore[call-overload]
    import pyarrow as pa

    def routed(keys: Any) -> Any:
        values, outcome = router.route(_local_time(keys))
        return pa.StructArray.from_arrays([values, outcome], names=["value", "outcome"])

    # Spark reads the UDF's kind (scalar: Arrow array in, Arrow array out) from its hints.
    routed.__annotations__ = {"keys": pa.Array, "return": pa.Array}
    routed.__name__ = routed.__qualname__ = name
    return F.arrow_udf(routed, schema)  # type: ignore[call-overload]


def _local_time(keys: Any) -> Any:
    """A timestamp column as the pandas_udf reads it: the wall-clock time in the session time
    zone, without offset (the Arrow UDF gets it with the session's zone attached)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(keys.type) and keys.type.tz is not None:
        return pc.local_timestamp(keys)
    return keys


def _pandas_routing(router: BatchRouter, name: str) -> Any:
    """A Series-to-DataFrame ``pandas_udf`` body (a struct result is a DataFrame): the keys go
    through Arrow and the same router as the Arrow UDF's."""
    import pandas as pd
    import pyarrow as pa

    def routed(keys: Any) -> Any:
        values, outcome = router.route(pa.Array.from_pandas(keys))
        return pd.DataFrame(
            {"value": values.to_pandas(), "outcome": outcome.to_numpy(zero_copy_only=False)}
        )

    routed.__annotations__ = {"keys": pd.Series, "return": pd.DataFrame}
    routed.__name__ = routed.__qualname__ = name
    return routed
