"""flagwarden on Ray Data: route a Dataset's rows with one call (extra ``[ray]``).

``assign_dataset(ds, flag_key, key_col, default)`` plans on the driver (``flagwarden.plan``: the
vendor asked once, the flag's stage, kill, salt and arm values frozen) and adds the served
value as a column through ``ds.map_batches(..., batch_format="pyarrow")``: a callable that
carries the frozen plan in a :class:`~flagwarden.governance.batches.BatchRouter` routes each
batch's key column and appends the column to the batch's Arrow table. The Ray workers need no
vendor SDK, no state store and no ``configure()``; the answers are exactly
``flagwarden.assign``'s, row for row, however Ray schedules, retries or re-executes the tasks.
Batches are Ray's blocks (``batch_size=None``): the router's cost per batch is small.

A kill reaches the running job: each Ray worker process reads the flag's kill from the
project's state store at most every ``kill_check_seconds`` (the store is opened from the config
file on the worker; see :mod:`flagwarden.governance.killcheck`) and from then on serves control
(``on_kill="control"``) or fails the task with :class:`~flagwarden.governance.killcheck.
FlagKilled` (``on_kill="abort"``): consuming the dataset then raises an error naming it.

When the vendor's own rule depends on the record key, the router asks the client key by key
(with the planned default's type: an object flag's answers become JSON text), with one
``flagwarden.configure()`` per Ray worker process from the same config file, done once, under
a lock (:func:`~flagwarden.governance.workers.worker_runtime`); those answers are counted by
the workers.

Ray Data is lazy: ``assign_dataset`` returns a dataset whose batches are routed when it is
consumed (written, iterated, materialized), with the plan frozen at the call. Exposures are
counted once, on the driver: with ``record=True`` (the default) the call runs, before it
returns, one pass over the key column alone (``select_columns``: sources that can, such as
Parquet, read only that column) that routes each batch and counts its rows per outcome; the
driver sums them and records them once (``flagwarden.record_exposures``). It is an extra
execution of the dataset's upstream, as in Spark: ``ds.materialize()`` first when the input is
expensive, or pass ``record=False`` (and count yourself). Object flags (dict or list values)
become JSON text columns. Every block's new column has the same Arrow type, from the values
the plan can serve (:func:`~flagwarden.governance.batches.value_type`: control 1 and treatment
1.5 are double in every block, even one served only control, and an empty block's column is
typed too), so the dataset has one schema and its Parquet files read back as one table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flagwarden.governance.arms import ArmRule, arm_names, arm_rule
from flagwarden.governance.batches import OUTCOMES, BatchRouter, OnKill, prepare, record_outcomes
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled

if TYPE_CHECKING:
    import pyarrow as pa
    from openfeature.evaluation_context import EvaluationContext
    from ray.data import Dataset

__all__ = ["FlagKilled", "assign_dataset"]


def assign_dataset(
    ds: Dataset,
    flag_key: str,
    key_col: str,
    default: Any,
    *,
    context: EvaluationContext | None = None,
    out: str = "variant",
    arm: str | None = None,
    on_kill: OnKill = "control",
    kill_check_seconds: float = DEFAULT_INTERVAL,
    record: bool = True,
    run_id: str | None = None,
) -> Dataset:
    """``ds`` with the value served for each row's key in column ``out`` (and, given ``arm``,
    ``treatment`` / ``control`` in that column): as ``flagwarden.assign`` over the key column.

    Needs ``flagwarden.configure()`` on the driver, from a config file the workers can read
    too (for the kill check and per-key flags). ``run_id`` (or an enclosing
    ``flagwarden.run``) pins the decision for a pipeline run. The result is lazy; with
    ``record=True`` the call executes the counting pass over the key column before it returns.
    """
    from ray.data import Dataset as RayDataset

    if not isinstance(ds, RayDataset):
        raise TypeError(f"ds must be a Ray Dataset, not {type(ds).__name__}")
    if not isinstance(key_col, str):
        raise TypeError(f"key_col must be a column name (str), not {key_col!r}")
    assignment, router = prepare(
        "flagwarden.ray.assign_dataset",
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
    if record:
        rows = (
            ds.select_columns([key_col])
            .map_batches(CountOutcomes(router, key_col), batch_format="pyarrow", batch_size=None)
            .take_all()
        )
        totals = {code: sum(int(row[f"c{code}"]) for row in rows) for code in range(OUTCOMES)}
        record_outcomes(assignment, totals)
    append = AssignBatch(router, key_col, out, arm, arm_rule(assignment, shipped))
    return ds.map_batches(
        append, batch_format="pyarrow", batch_size=None, udf_modifying_row_count=False
    )


# -- on the driver (shared with flagwarden.dask) -------------------------------------------


# -- on the workers ------------------------------------------------------------------------


class AssignBatch:
    """The batch function: the table with the served values (and arms) appended (its class
    name is the operator's in Ray's execution plans: ``MapBatches(AssignBatch)``)."""

    def __init__(
        self, router: BatchRouter, key_col: str, out: str, arm: str | None, arm_rule: ArmRule
    ) -> None:
        self.router = router
        self.key_col = key_col
        self.out = out
        self.arm = arm
        self.arm_rule = arm_rule

    def __call__(self, table: pa.Table) -> pa.Table:
        import pyarrow as pa

        values, outcome = self.router.route(_keys(table, self.key_col))
        table = _put(table, self.out, values)
        if self.arm is not None:
            arms = arm_names(values, outcome, self.arm_rule)
            table = _put(table, self.arm, pa.array(arms, pa.string()))
        return table


class CountOutcomes:
    """The counting pass's batch function: one row of counts per outcome code."""

    def __init__(self, router: BatchRouter, key_col: str) -> None:
        self.router = router
        self.key_col = key_col

    def __call__(self, table: pa.Table) -> pa.Table:
        import pyarrow as pa

        counts = self.router.count(_keys(table, self.key_col))
        columns = {f"c{code}": [n] for code, n in enumerate(counts)}
        return pa.table(columns, schema=pa.schema([(c, pa.int64()) for c in columns]))


def _keys(table: pa.Table, key_col: str) -> pa.Array:
    import pyarrow as pa

    column = table.column(key_col)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _put(table: pa.Table, name: str, values: Any) -> pa.Table:
    at = table.schema.get_field_index(name)
    if at >= 0:
        return table.set_column(at, name, values)
    return table.append_column(name, values)
