"""flagwarden.dask.assign_partitions on a LocalCluster of 2 spawned worker processes: the same
answers as assign() row for row; a kill reaches the running job; counts recorded once on the
client add up to assign()'s; FlagwardenPlugin configures and shuts down the workers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flagwarden
from flagwarden.dask import FlagKilled, FlagwardenPlugin, assign_partitions
from flagwarden.errors import FlagwardenError
from tests.conftest import POLICY, Project, counted, governed_project, key_rule_project
from tests.governance.test_assign import stage
from tests.servers.launchdarkly import LaunchDarklyServer

pytestmark = [pytest.mark.xdist_group("dask"), pytest.mark.slow]
FLAG = POLICY["flag"]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes of one thread each, started by Dask as it does by default (spawn)."""
    import dask
    from distributed import Client, LocalCluster

    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def key_at(i: int) -> str | None:
    if i % 997 == 0:
        return None
    return "" if i % 1009 == 0 else f"order-{i}"


def keys_frame(n: int, partitions: int = 4) -> tuple[Any, Any]:
    """A pandas frame of ``n`` keys (some None, some "") indexed 10, 20, 30..., and the Dask
    frame of it."""
    import dask.dataframe as dd
    import pandas as pd

    frame = pd.DataFrame(
        {"id": range(n), "k": [key_at(i) for i in range(n)]}, index=range(10, 10 * n + 1, 10)
    )
    return frame, dd.from_pandas(frame, npartitions=partitions)


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")  # the keys, on purpose
def test_200k_rows_route_as_assign_does(client: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame, ddf = keys_frame(200_000, partitions=8)
    routed = assign_partitions(ddf, FLAG, "k", False, arm="arm", record=False)
    assert routed.npartitions == 8
    assert str(routed._meta["variant"].dtype) == "bool"
    got = routed.compute()
    want = flagwarden.assign(FLAG, frame["k"], False)
    assert got["variant"].dtype == want.dtype == bool
    assert got.index.equals(frame.index)
    assert got["variant"].tolist() == want.tolist()
    assert got["k"].isna().sum() > 0 and (got["k"] == "").sum() > 0
    assert 0.2 < got["variant"].mean() < 0.3
    assert got["arm"].tolist() == ["treatment" if v else "control" for v in got["variant"]]
    by_id = assign_partitions(ddf, FLAG, "id", False, out="by_id", record=False).compute()
    assert by_id["by_id"].tolist() == flagwarden.assign(FLAG, frame["id"], False).tolist()


def test_a_shared_unit_and_object_values(client: Any, project: Project):
    from openfeature.evaluation_context import EvaluationContext

    policy = {"unit": "tenant", "variants": {"control": {"m": 1}, "treatment": {"m": 2}}}
    flagwarden.configure(governed_project(project, serve={"m": 2}, policy=policy))
    stage(50)
    frame, ddf = keys_frame(2_000, partitions=2)
    seen = set()
    for tenant in ("acme", "a", "b", "c"):
        context = EvaluationContext(attributes={"tenant": tenant})
        routed = assign_partitions(ddf, FLAG, "k", {"m": 0}, context=context, record=False)
        values = routed.compute()["variant"].tolist()
        want = flagwarden.assign(FLAG, frame["k"], {"m": 0}, context=context)
        assert [json.loads(v) for v in values] == want.tolist()
        assert len({json.dumps(v) for v in want}) == 1  # the whole batch: one tenant, one arm
        seen.add(values[0])
    assert seen == {'{"m": 1}', '{"m": 2}'}


def test_counts_are_recorded_once_on_the_client(client: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame, ddf = keys_frame(50_000)
    keys = frame["k"]  # a pandas column: its None are NaN, missing as in the Dask column

    by_assign = counted(lambda: flagwarden.assign(FLAG, keys, False))
    by_dask = counted(lambda: assign_partitions(ddf, FLAG, "k", False))
    assert by_dask == by_assign
    missing = int(keys.isna().sum() + (keys == "").sum())
    assert missing > 50 and by_assign[1] == {(FLAG, "missing_unit"): missing}
    assert counted(lambda: assign_partitions(ddf, FLAG, "k", False, record=False)) == ({}, {})


def _slow_frame(partitions: int = 24, rows: int = 40) -> Any:
    """Keys whose partitions take ~0.4 s each: the job runs for several seconds."""
    import dask.dataframe as dd
    import pandas as pd

    def slow(part: pd.DataFrame) -> pd.DataFrame:
        time.sleep(0.01 * len(part))
        return part.assign(k=[f"order-{i}" for i in part["id"]])

    ids = pd.DataFrame({"id": range(partitions * rows)})
    ddf = dd.from_pandas(ids, npartitions=partitions)
    return ddf.map_partitions(slow, meta={"id": "int64", "k": "str"})


def _kill_when_done(futures: list[Any], done: int) -> None:
    deadline = time.monotonic() + 60
    while sum(f.done() for f in futures) < done:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.02)
    flagwarden.current().rollout.kill(FLAG, actor="t", reason="bad batch")


def test_a_kill_reaches_the_running_job(client: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    every = [f"order-{i}" for i in range(24 * 40)]
    expected = dict(zip(every, flagwarden.assign(FLAG, every, False), strict=True))
    routed = assign_partitions(
        _slow_frame(), FLAG, "k", False, record=False, kill_check_seconds=0.05
    )
    futures = client.compute(routed.to_delayed())
    _kill_when_done(futures, 4)
    parts = client.gather(futures)
    before = after = 0
    for part in parts:
        values = part["variant"].tolist()
        if values == [expected[k] for k in part["k"]] and any(values):
            before += 1  # routed before the kill reached it: as it was
        else:
            assert values == [False] * len(values)  # after: control for every row
            after += 1
    assert before >= 4 and after >= 1, (before, after)
    assert flagwarden.current().rollout.state(FLAG).killed


def test_a_kill_can_abort_the_job(client: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    routed = assign_partitions(
        _slow_frame(), FLAG, "k", False, record=False, on_kill="abort", kill_check_seconds=0.05
    )
    futures = client.compute(routed.to_delayed())
    _kill_when_done(futures, 2)
    with pytest.raises(FlagKilled, match="was killed while this job ran"):
        client.gather(futures)


def _worker_state() -> dict[str, Any]:
    import multiprocessing
    import os

    import flagwarden

    current = flagwarden.current()
    return {
        "start_method": multiprocessing.get_start_method(allow_none=True),
        "pid": os.getpid(),
        "source": None if current is None else str(current.settings.source),
        "runtime": id(current),
    }


def test_the_plugin_configures_spawned_workers_for_per_key_flags(
    client: Any, project: Project, ld_server: LaunchDarklyServer
):
    """The vendor's own 40% rollout decides per key: the workers ask their own client,
    configured by the plugin in each spawned worker, and shut down when it is removed."""
    config = key_rule_project(project, ld_server)
    flagwarden.configure(config)
    stage(100)
    client.run(flagwarden.shutdown)  # what earlier tests may have configured lazily
    for state in client.run(_worker_state).values():
        # spawned (a forked child would have this process's start method: None)
        assert state["start_method"] == "spawn" and state["pid"] != os.getpid()
        assert state["source"] is None
    client.register_plugin(FlagwardenPlugin(config))
    try:
        states = client.run(_worker_state)
        assert [s["source"] for s in states.values()] == [str(Path(config).absolute())] * 2
        frame, ddf = keys_frame(3_000, partitions=4)
        got = assign_partitions(ddf, FLAG, "k", False, arm="arm").compute()
        values = got["variant"].tolist()
        assert values == flagwarden.assign(FLAG, frame["k"], False).tolist()
        assert 0.3 < sum(values) / len(values) < 0.5
        # each row's arm by its own answer (the policy's treatment and control values)
        assert got["arm"].tolist() == ["treatment" if v else "control" for v in values]
        assert client.run(_worker_state) == states  # routed by the plugin's runtime
    finally:
        client.unregister_worker_plugin(FlagwardenPlugin.name)
    assert [s["source"] for s in client.run(_worker_state).values()] == [None, None]


def test_every_partition_has_the_meta_dtype(client: Any, project: Project):
    """control 1, treatment 1.5: a partition served only control is float64 like the meta (not
    int64), and so is an empty one; the values are assign's."""
    import dask.dataframe as dd
    import pandas as pd

    policy = {"variants": {"control": 1, "treatment": 1.5}}
    flagwarden.configure(governed_project(project, serve=1.5, policy=policy))
    stage(25)
    keys = [f"order-{i}" for i in range(400)]
    served = flagwarden.assign(FLAG, keys, 0.0)
    capped = [k for k, v in zip(keys, served, strict=True) if v == 1][:50]
    frame = pd.DataFrame({"k": capped + keys[:50], "g": [0] * 50 + [1] * 50})
    ddf = dd.from_pandas(frame, npartitions=2, sort=False)
    for routed in (
        assign_partitions(ddf, FLAG, "k", 0.0, record=False),
        assign_partitions(ddf[ddf["g"] == 1], FLAG, "k", 0.0, record=False),  # one empty
    ):
        assert routed._meta["variant"].dtype == "float64"
        parts = [part.compute() for part in routed.to_delayed()]
        assert [str(part["variant"].dtype) for part in parts] == ["float64", "float64"]
        got = pd.concat(parts)
        assert got["variant"].tolist() == flagwarden.assign(FLAG, got["k"], 0.0).tolist()
    assert 0 in {len(part) for part in parts}


def test_object_key_columns_route_as_assign_reads_them(client: Any, project: Project):
    """A partition's key column is read exactly as assign reads a pandas column: a mixed
    int/str object column routes (pyarrow.array raised on it), decimals keep their own text
    ("1.10", not "1.1" rescaled) and timedeltas pandas' text."""
    import decimal

    import dask
    import dask.dataframe as dd
    import pandas as pd

    flagwarden.configure(governed_project(project, serve=True))
    stage(50)
    columns = {
        "mixed": pd.Series([1, "a", 2, "b", "", None] * 20, dtype=object),
        "decimal": pd.Series([decimal.Decimal("1.1"), decimal.Decimal("1.10")] * 60),
        "timedelta": pd.Series(pd.to_timedelta(range(120), unit="s")),
    }
    with dask.config.set({"dataframe.convert-string": False}):
        for name, keys in columns.items():
            frame = pd.DataFrame({"k": keys})
            ddf = dd.from_pandas(frame, npartitions=2, sort=False)
            got = assign_partitions(ddf, FLAG, "k", False, record=False).compute()
            want = flagwarden.assign(FLAG, frame["k"], False)
            assert got["variant"].tolist() == want.tolist(), name
            by_dask = counted(lambda ddf=ddf: assign_partitions(ddf, FLAG, "k", False))
            by_assign = counted(lambda frame=frame: flagwarden.assign(FLAG, frame["k"], False))
            assert by_dask == by_assign, name


def test_a_worker_of_several_threads_configures_once_for_per_key_flags(
    project: Project, ld_server: LaunchDarklyServer
):
    """One worker process of four threads, no plugin, a flag the vendor decides per key: the
    threads configure the worker once between them (each configuring it shut down the runtime
    another was asking, whose keys got the default)."""
    from distributed import Client, LocalCluster

    flagwarden.configure(key_rule_project(project, ld_server))
    stage(100)
    frame, ddf = keys_frame(8_000, partitions=8)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=4, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as threads,
    ):
        routed = assign_partitions(ddf, FLAG, "k", False, record=False)
        got = threads.compute(routed).result()
        runtimes = threads.run(_worker_state)
    assert got["variant"].tolist() == flagwarden.assign(FLAG, frame["k"], False).tolist()
    assert [s["source"] for s in runtimes.values()] == [str(Path(project.root, "flagwarden.yaml"))]


def test_a_config_file_is_required(project: Project, monkeypatch: pytest.MonkeyPatch):
    _, ddf = keys_frame(10, partitions=1)
    with pytest.raises(FlagwardenError, match=r"needs flagwarden.configure\(\) first"):
        assign_partitions(ddf, FLAG, "k", False)
    monkeypatch.chdir(project.root)
    flagwarden.configure()  # the embedded default: no file a worker could open
    with pytest.raises(FlagwardenError, match="a config file the workers can read"):
        assign_partitions(ddf, FLAG, "k", False)
    with pytest.raises(KeyError, match="'nope' is not a column"):
        assign_partitions(ddf, FLAG, "nope", False)


def test_the_plugin_leaves_a_runtime_it_did_not_create(project: Project):
    """In-process workers (``processes=False``) share the client's process: the plugin neither
    replaces the client's runtime when it starts nor shuts it down when it stops."""
    from distributed import Client, LocalCluster

    config = governed_project(project, serve=True)
    flagwarden.configure(config)
    before = flagwarden.current()
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as in_process,
    ):
        in_process.register_plugin(FlagwardenPlugin(config))
        assert flagwarden.current() is before
        in_process.unregister_worker_plugin(FlagwardenPlugin.name)
        assert flagwarden.current() is before
    assert flagwarden.current() is before
