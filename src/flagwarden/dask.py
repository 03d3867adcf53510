"""flagwarden on Dask: route a Dask DataFrame's rows with one call (extra ``[dask]``).

``assign_partitions(ddf, flag_key, key_col, default)`` plans on the client
(``flagwarden.plan``: the vendor asked once, the flag's stage, kill, salt and arm values frozen)
and adds the served value as a column through ``ddf.map_partitions``: each partition's key
column (a pandas column, read exactly as ``flagwarden.assign`` reads one: its answers by
construction) goes through a :class:`~flagwarden.governance.batches.BatchRouter` that carries
the frozen plan, so the workers need no vendor SDK, no state store and no ``configure()``. The
answers are exactly ``flagwarden.assign``'s, row for row, however Dask schedules, retries or
recomputes the partitions. The new column has the partition's index and one dtype in every
partition, the meta's: the one pandas gives the values the plan can serve
(:func:`~flagwarden.governance.batches.value_type`; control 1 and treatment 1.5 are float64 in
every partition, even one served only control).

A kill reaches the running job: each worker process reads the flag's kill from the project's
state store at most every ``kill_check_seconds`` (the store is opened from the config file on
the worker; see :mod:`flagwarden.governance.killcheck`) and from then on serves control
(``on_kill="control"``) or fails the task with :class:`~flagwarden.governance.killcheck.
FlagKilled` (``on_kill="abort"``): the computation then raises it on the client.

When the vendor's own rule depends on the record key, the router asks the client key by key,
with one ``flagwarden.configure()`` per worker process from the same config file, done lazily
by the first such partition, once, under a lock (a worker's other threads wait for it; a
runtime another thread uses is never replaced). :class:`FlagwardenPlugin` configures every
worker when it starts instead, and shuts flagwarden down cleanly when it stops (flushing the
exposures those per-key answers counted on the worker); it never touches a runtime it did not
create (in-process workers, ``LocalCluster(processes=False)``, use the client's). Other flags
need no plugin.

Exposures are counted once, on the client: with ``record=True`` (the default) the call
computes, before it returns, one pass over the key column (only that column: Dask can prune
the others upstream) that routes each partition and counts its rows per outcome on the
workers; the client sums them and records them once (``flagwarden.record_exposures``), so
counts add up however many workers served the rows. It is an extra pass over the input, as in
Spark: ``ddf.persist()`` first when the input is expensive, or pass ``record=False`` (and
count yourself). Object flags (dict or list values) become JSON text columns.

Dask's ``LocalCluster`` starts its workers with ``spawn``, not ``fork``: they import
flagwarden afresh, which needs none of flagwarden's fork hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from flagwarden.governance.arms import ArmRule, arm_names, arm_rule
from flagwarden.governance.batches import (
    OUTCOMES,
    BatchRouter,
    OnKill,
    pandas_dtype,
    prepare,
    record_outcomes,
)
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled
from flagwarden.governance.workers import plugin_setup, plugin_teardown

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd
    from openfeature.evaluation_context import EvaluationContext

__all__ = ["FlagKilled", "FlagwardenPlugin", "assign_partitions"]


def assign_partitions(
    ddf: dd.DataFrame,
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
) -> dd.DataFrame:
    """``ddf`` with the value served for each row's key in column ``out`` (and, given ``arm``,
    ``treatment`` / ``control`` in that column): as ``flagwarden.assign`` over the key column.

    Needs ``flagwarden.configure()`` in the client process, from a config file the workers can
    read too (for the kill check and per-key flags). ``run_id`` (or an enclosing
    ``flagwarden.run``) pins the decision for a pipeline run. With ``record=True`` the call
    computes the outcome counts (an extra pass over the key column) before it returns.
    """
    import dask.dataframe as dask_frames

    if not isinstance(ddf, dask_frames.DataFrame):
        raise TypeError(f"ddf must be a Dask DataFrame, not {type(ddf).__name__}")
    if not isinstance(key_col, str):
        raise TypeError(f"key_col must be a column name (str), not {key_col!r}")
    if key_col not in ddf.columns:
        raise KeyError(f"{key_col!r} is not a column of the DataFrame")
    assignment, router = prepare(
        "flagwarden.dask.assign_partitions",
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
    meta = ddf._meta.assign(**{out: _empty(_value_dtype(router))})
    if arm is not None:
        meta = meta.assign(**{arm: _empty(_string_dtype())})
    if record:
        counts = ddf[key_col].map_partitions(
            _count_partition, router, meta=_counts_meta(), enforce_metadata=False
        )
        totals = counts.compute().sum()
        record_outcomes(assignment, {code: int(totals[code]) for code in range(OUTCOMES)})
    return ddf.map_partitions(
        _route_partition,
        router,
        key_col,
        out,
        arm,
        arm_rule(assignment, shipped),
        meta=meta,
        align_dataframes=False,
    )


class FlagwardenPlugin(WorkerPlugin):
    """``flagwarden.configure(config)`` on each worker as it starts, ``flagwarden.shutdown()``
    as it stops: ``client.register_plugin(FlagwardenPlugin("flagwarden.yaml"))``.

    Useful only for flags the vendor decides per key (without it the routers configure each
    worker lazily, once, at its first such partition, and the worker's counts are flushed only
    if the process exits cleanly) and for a clean shutdown; plain bucketed flags need no
    ``configure()`` on the workers. ``config`` is a file the workers can read (made absolute
    here, on the client).

    The plugin never touches a runtime it did not create: a worker process that already runs
    flagwarden (in-process workers, ``LocalCluster(processes=False)``, share the client's) is
    left as it is, and its teardown shuts down only the runtime its setup configured.
    """

    name = "flagwarden"  # registering another one replaces it (its teardown, then setup)

    def __init__(self, config: str | Path) -> None:
        self.config = str(Path(config).absolute())

    def setup(self, worker: Any) -> None:
        plugin_setup(self.config)

    def teardown(self, worker: Any) -> None:
        plugin_teardown()


# -- on the client -------------------------------------------------------------------------


def _value_dtype(router: BatchRouter) -> Any:
    """The dtype of the new column in every partition (the meta's): the one of the router's
    value type, or, when the plan's values have none in common, the dtype pandas infers for
    them."""
    import pandas as pd

    a = router.assignment
    values = [v for v in (a.value, a.treatment, a.control) if v is not None] or [a.default]
    return pandas_dtype(router.value_type, fallback=pd.Series(values).dtype)


# -- on the workers ------------------------------------------------------------------------


def _route_partition(
    part: pd.DataFrame,
    router: BatchRouter,
    key_col: str,
    out: str,
    arm: str | None,
    arm_rule: ArmRule,
) -> pd.DataFrame:
    import pandas as pd

    values, outcome = router.route(part[key_col])  # read as assign reads a pandas column
    columns = {out: values}
    if arm is not None:
        arms = arm_names(values, outcome, arm_rule)
        columns[arm] = pd.Series(arms, index=part.index, dtype=_string_dtype())
    return part.assign(**columns)


def _count_partition(keys: pd.Series, router: BatchRouter) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({code: [n] for code, n in enumerate(router.count(keys))})


def _empty(dtype: Any) -> pd.Series:
    import pandas as pd

    return pd.Series([], dtype=dtype)


def _string_dtype() -> Any:
    import pandas as pd

    return pd.Series(["control"]).dtype


def _counts_meta() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({code: pd.Series([], dtype="int64") for code in range(OUTCOMES)})
