"""flagwarden on Spark: route a DataFrame's rows with one call (extra ``[spark]``).

``assign_column(df, flag_key, key_col, default)`` plans on the driver (``flagwarden.plan``: the
vendor asked once, the flag's stage, kill, salt and arm values frozen) and adds the served
value as a column through an Arrow UDF (``pyspark.sql.functions.arrow_udf``, Spark >= 4.1; a
``pandas_udf`` on older Sparks, or with ``udf="pandas"``) whose closure carries the frozen
plan: no vendor SDK, no state store, no ``configure()`` on the executors, no ``sparkContext``
(Spark Connect sessions work too). Spark's retries and speculative tasks recompute partitions
from the same plan, so a job's answers are the same whatever is recomputed: exactly
``flagwarden.assign``'s, row for row.

A kill reaches the running job: each Python worker reads the flag's kill from the project's
state store at most every ``kill_check`` seconds (the store is opened from the config file on
the worker; see :mod:`flagwarden.governance.killcheck`) and from then on serves control
(``on_kill="control"``) or fails the task with :class:`~flagwarden.governance.killcheck.
FlagKilled` (``on_kill="abort"``, for transactional sinks).

When the vendor's own rule depends on the record key, the UDF asks the client key by key,
with one ``flagwarden.configure()`` per Python worker (from the same config file).

Exposures are counted once, on the driver: with ``record=True`` (the default) one aggregate
over the new column counts the rows per outcome and ``flagwarden.record_exposures`` records
them, so counts add up however many executors served the rows. That aggregate is a job of its
own, run by ``assign_column``: it recomputes the DataFrame's lineage (``cache()`` the input to
avoid it), counts even if the caller's own job never runs, and a kill landing between it and
the caller's job makes the counts differ from what that job served. Object flags (dict or
list values) become JSON text columns. With ``on_kill="abort"`` the job fails with Spark's
own exception (``PythonException`` on a classic session) whose message carries
``FlagKilled``'s; a flag already killed when planned serves control and never aborts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from flagwarden.governance.assignment import Assignment
from flagwarden.governance.batches import (
    CONSTANT,
    TREATED,
    BatchRouter,
    OnKill,
    prepare,
    record_outcomes,
)
from flagwarden.governance.batches import constant_arm as arm_of_plan
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
    ``"arrow"`` or ``"pandas"`` to choose (both give the same column).
    """
    from pyspark.sql import functions as F

    assignment, router = prepare(
        "flagwarden.spark.assign_column",
        flag_key,
        default,
        context,
        run_id,
        on_kill,
        kill_check_seconds,
    )
    shipped = router.assignment
    routing = _routing_udf(router, _spark_type(default), udf)
    key = F.col(key_col) if isinstance(key_col, str) else key_col
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


def _spark_type(default: Any) -> Any:
    from pyspark.sql import types as T

    if isinstance(default, bool):
        return T.BooleanType()
    if isinstance(default, str | dict | list):
        return T.StringType()
    if isinstance(default, int):
        return T.LongType()
    if isinstance(default, float):
        return T.DoubleType()
    raise TypeError(f"unsupported default {default!r}: use a bool, str, int, float, dict or list")


def _routing_udf(router: BatchRouter, value_type: Any, kind: UdfKind) -> Any:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if kind not in ("auto", "arrow", "pandas"):
        raise ValueError(f"udf={kind!r}: expected 'auto', 'arrow' or 'pandas'")
    has_arrow_udf = hasattr(F, "arrow_udf")
    if kind == "arrow" and not has_arrow_udf:
        raise RuntimeError("udf='arrow' needs Spark >= 4.1 (pyspark.sql.functions.arrow_udf)")
    schema = T.StructType(
        [T.StructField("value", value_type), T.StructField("outcome", T.ByteType())]
    )
    name = f"flagwarden_{router.assignment.flag}"
    if kind == "pandas" or not has_arrow_udf:
        return F.pandas_udf(_pandas_routing(router, name), schema)  # type: ignore[call-overload]
    import pyarrow as pa

    def routed(keys: Any) -> Any:
        values, outcome = router.route(keys)
        return pa.StructArray.from_arrays([values, outcome], names=["value", "outcome"])

    # Spark reads the UDF's kind (scalar: Arrow array in, Arrow array out) from its hints.
    routed.__annotations__ = {"keys": pa.Array, "return": pa.Array}
    routed.__name__ = routed.__qualname__ = name
    return F.arrow_udf(routed, schema)  # type: ignore[call-overload]


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
