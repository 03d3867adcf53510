"""flagwarden on Dask: route a Dask DataFrame's rows with one call (extra ``[dask]``).

``assign_partitions(ddf, flag_key, key_col, default)`` plans on the client
(``flagwarden.plan``: the vendor asked once, the flag's stage, kill, salt and arm values frozen)
and adds the served value as a column through ``ddf.map_partitions``: each partition's key
column goes to Arrow and through a :class:`~flagwarden.governance.batches.BatchRouter` that
carries the frozen plan, so the workers need no vendor SDK, no state store and no
``configure()``. The answers are exactly ``flagwarden.assign``'s, row for row, however Dask
schedules, retries or recomputes the partitions. The new column has the dtype pandas infers for
the served values (as ``assign`` gives for a pandas column) and the partition's index.

A kill reaches the running job: each worker process reads the flag's kill from the project's
state store at most every ``kill_check_seconds`` (the store is opened from the config file on
the worker; see :mod:`flagwarden.governance.killcheck`) and from then on serves control
(``on_kill="control"``) or fails the task with :class:`~flagwarden.governance.killcheck.
FlagKilled` (``on_kill="abort"``): the computation then raises it on the client.

When the vendor's own rule depends on the record key, the router asks the client key by key,
with one ``flagwarden.configure()`` per worker process from the same config file (done lazily
by the first such partition). :class:`FlagwardenPlugin` configures every worker when it starts
instead, and shuts flagwarden down cleanly when it stops (flushing the exposures those
per-key answers counted on the worker); other flags need no plugin.

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

from flagwarden.governance.assignment import Assignment
from flagwarden.governance.batches import (
    ArmRule,
    BatchRouter,
    OnKill,
    arm_names,
    arm_rule,
    prepare,
    record_outcomes,
)
from flagwarden.governance.killcheck import DEFAULT_INTERVAL, FlagKilled

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd
    from openfeature.evaluation_context import EvaluationContext

__all__ = ["FlagKilled", "FlagwardenPlugin", "assign_partitions"]

_CODES = 5  # TREATED, CAPPED, MISSING, KILLED, CONSTANT


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
    )
    shipped = router.assignment
    meta = ddf._meta.assign(**{out: _empty(_value_dtype(shipped))})
    if arm is not None:
        meta = meta.assign(**{arm: _empty(_string_dtype())})
    if record:
        counts = ddf[key_col].map_partitions(
            _count_partition, router, meta=_counts_meta(), enforce_metadata=False
        )
        totals = counts.compute().sum()
        record_outcomes(assignment, {code: int(totals[code]) for code in range(_CODES)})
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

    Needed only for flags the vendor decides per key (the routers would otherwise configure
    each worker lazily, at its first such partition, and the worker's counts would be flushed
    only if the process exits cleanly) and for a clean shutdown; plain bucketed flags need no
    ``configure()`` on the workers. ``config`` is a file the workers can read (made absolute
    here, on the client).
    """

    name = "flagwarden"  # registering another one replaces it (its teardown, then setup)

    def __init__(self, config: str | Path) -> None:
        self.config = str(Path(config).absolute())

    def setup(self, worker: Any) -> None:
        import flagwarden

        flagwarden.configure(self.config)

    def teardown(self, worker: Any) -> None:
        import flagwarden

        flagwarden.shutdown()


# -- on the client -------------------------------------------------------------------------


def _value_dtype(assignment: Assignment) -> Any:
    """The dtype pandas infers for the values the plan can serve (the meta's)."""
    import pandas as pd

    a = assignment
    if a.mode == "constant":
        values = [a.value]
    elif a.mode == "bucket":
        values = [a.treatment, a.control]
    else:
        values = [a.default]
    if a.stage is not None:
        values.append(a.control)  # a kill during the job
    values = [v for v in values if v is not None] or [a.default]
    return pd.Series(values).dtype


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
    import pyarrow as pa

    values, outcome = router.route(pa.array(part[key_col], from_pandas=True))
    columns = {out: _as_pandas(values, part.index)}
    if arm is not None:
        arms = arm_names(values, outcome, arm_rule)
        columns[arm] = pd.Series(arms, index=part.index, dtype=_string_dtype())
    return part.assign(**columns)


def _count_partition(keys: pd.Series, router: BatchRouter) -> pd.DataFrame:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    _, outcome = router.route(pa.array(keys, from_pandas=True))
    codes = np.asarray(outcome.to_numpy(zero_copy_only=False), dtype=np.int64)
    counts = np.bincount(codes, minlength=_CODES)
    return pd.DataFrame({code: [int(counts[code])] for code in range(_CODES)})


def _as_pandas(values: Any, index: pd.Index) -> pd.Series:
    """An Arrow array of served values as the pandas column pandas would build from them."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    plain = (
        pa.types.is_boolean(values.type)
        or pa.types.is_integer(values.type)
        or pa.types.is_floating(values.type)
        or pa.types.is_string(values.type)
        or pa.types.is_large_string(values.type)
    )
    if plain and values.null_count == 0:
        series = values.to_pandas()  # the dtypes pandas infers for bool, int, float, str
        series.index = index
        return series
    return pd.Series(values.to_pylist(), index=index)


def _empty(dtype: Any) -> pd.Series:
    import pandas as pd

    return pd.Series([], dtype=dtype)


def _string_dtype() -> Any:
    import pandas as pd

    return pd.Series(["control"]).dtype


def _counts_meta() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({code: pd.Series([], dtype="int64") for code in range(_CODES)})
