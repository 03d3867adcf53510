"""flagwarden.ray.assign_dataset on a local Ray instance (2 CPUs): the same answers as assign()
row for row; a kill reaches the running job; counts recorded once on the driver add up to
assign()'s."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

import flagwarden
from flagwarden.errors import FlagwardenError
from flagwarden.ray import assign_dataset
from tests.conftest import POLICY, Project, counted, governed_project, key_rule_project
from tests.governance.test_assign import stage
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag

pytestmark = [
    pytest.mark.xdist_group("ray"),
    pytest.mark.slow,
    # Ray Data's own DataContext warns about its deprecated fields when a task fails.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]
FLAG = POLICY["flag"]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One local Ray instance for the module (2-4 s to start, ~700 MB)."""
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    yield ray
    ray.shutdown()


def key_at(i: int) -> str | None:
    if i % 997 == 0:
        return None
    return "" if i % 1009 == 0 else f"order-{i}"


def keys_dataset(ray: Any, n: int, blocks: int = 4) -> tuple[list[str | None], Any]:
    """``n`` keys (some None, some "") and a Dataset of (id, k) in ``blocks`` blocks."""
    import pyarrow as pa

    keys = [key_at(i) for i in range(n)]
    table = pa.table({"id": pa.array(range(n), pa.int64()), "k": pa.array(keys, pa.string())})
    size = -(-n // blocks)
    parts = [table.slice(at, size) for at in range(0, n, size)]
    return keys, ray.data.from_arrow(parts)


def served(ds: Any, column: str = "variant") -> tuple[list[Any], list[Any], Any]:
    """The keys and ``column`` in id order, and the whole table."""
    import pyarrow as pa
    import ray

    whole = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("id")
    return whole.column("k").to_pylist(), whole.column(column).to_pylist(), whole


def test_200k_rows_route_as_assign_does(ray_session: Any, project: Project):
    import pyarrow as pa

    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    keys, ds = keys_dataset(ray_session, 200_000, blocks=8)
    routed = assign_dataset(ds, FLAG, "k", False, arm="arm", record=False)
    got_keys, values, table = served(routed)
    assert got_keys == keys and table.num_rows == 200_000
    assert table.schema.field("variant").type == pa.bool_()
    assert values == flagwarden.assign(FLAG, keys, False)
    assert None in keys and "" in keys
    assert 0.2 < sum(values) / len(values) < 0.3
    arms = table.column("arm").to_pylist()
    assert arms == ["treatment" if v else "control" for v in values]
    by_id = served(assign_dataset(ds, FLAG, "id", False, out="by_id", record=False), "by_id")
    assert by_id[1] == flagwarden.assign(FLAG, list(range(200_000)), False)


def test_a_shared_unit_and_object_values(ray_session: Any, project: Project):
    from openfeature.evaluation_context import EvaluationContext

    policy = {"unit": "tenant", "variants": {"control": {"m": 1}, "treatment": {"m": 2}}}
    flagwarden.configure(governed_project(project, serve={"m": 2}, policy=policy))
    stage(50)
    keys, ds = keys_dataset(ray_session, 2_000, blocks=2)
    seen = set()
    for tenant in ("acme", "a", "b", "c"):
        context = EvaluationContext(attributes={"tenant": tenant})
        routed = assign_dataset(ds, FLAG, "k", {"m": 0}, context=context, record=False)
        values = served(routed)[1]
        want = flagwarden.assign(FLAG, keys, {"m": 0}, context=context)
        assert [json.loads(v) for v in values] == want
        seen.add(values[0])
    assert seen == {'{"m": 1}', '{"m": 2}'}


def test_counts_are_recorded_once_on_the_driver(ray_session: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    keys, ds = keys_dataset(ray_session, 50_000)

    by_assign = counted(lambda: flagwarden.assign(FLAG, keys, False))
    routed: list[Any] = []
    by_ray = counted(lambda: routed.append(assign_dataset(ds, FLAG, "k", False)))
    assert by_ray == by_assign
    assert by_assign[1] == {(FLAG, "missing_unit"): keys.count(None) + keys.count("")}
    # consuming the (lazy) result records nothing more
    assert counted(lambda: served(routed[0])) == ({}, {})


def _slow_dataset(ray: Any, blocks: int = 24, rows: int = 40) -> Any:
    """Keys whose blocks take ~0.4 s each: the job runs for several seconds."""

    def slow(table: Any) -> Any:
        import pyarrow as pa

        time.sleep(0.01 * table.num_rows)
        ids = table.column("id").to_pylist()
        return table.append_column("k", pa.array([f"order-{i}" for i in ids]))

    ds = ray.data.range(blocks * rows, override_num_blocks=blocks)
    return ds.map_batches(slow, batch_format="pyarrow", batch_size=None)


def test_a_kill_reaches_the_running_job(ray_session: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    every = [f"order-{i}" for i in range(24 * 40)]
    expected = dict(zip(every, flagwarden.assign(FLAG, every, False), strict=True))
    routed = assign_dataset(
        _slow_dataset(ray_session), FLAG, "k", False, record=False, kill_check_seconds=0.05
    )
    before = after = 0
    for n, batch in enumerate(routed.iter_batches(batch_size=None, batch_format="pyarrow")):
        if n == 4:  # four blocks done (and two more running): kill
            flagwarden.current().rollout.kill(FLAG, actor="t", reason="bad batch")
        keys, values = batch.column("k").to_pylist(), batch.column("variant").to_pylist()
        assert len(values) == 40
        if values == [expected[k] for k in keys] and any(values):
            before += 1  # routed before the kill reached it: as it was
        else:
            assert values == [False] * len(values)  # after: control for every row
            after += 1
    assert before >= 4 and after >= 1, (before, after)
    assert before + after == 24


def test_a_kill_can_abort_the_job(ray_session: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    routed = assign_dataset(
        _slow_dataset(ray_session),
        FLAG,
        "k",
        False,
        record=False,
        on_kill="abort",
        kill_check_seconds=0.05,
    )
    killer = threading.Timer(
        1.0, lambda: flagwarden.current().rollout.kill(FLAG, actor="t", reason="bad batch")
    )
    killer.start()
    with pytest.raises(Exception, match="was killed while this job ran") as failed:
        routed.materialize()
    killer.join()
    assert "FlagKilled" in str(failed.value)


@pytest.fixture(scope="module")
def ld_server() -> Iterator[LaunchDarklyServer]:
    """Up until the Ray tests end: the Ray workers that configured flagwarden for the per-key
    test keep their LaunchDarkly client (Ray reuses its workers)."""
    server = LaunchDarklyServer().start()
    yield server
    server.stop()


def test_a_vendor_rule_on_the_key_is_asked_per_key_on_the_workers(
    ray_session: Any, project: Project, ld_server: LaunchDarklyServer
):
    flagwarden.configure(key_rule_project(project, ld_server))
    stage(100)
    keys, ds = keys_dataset(ray_session, 3_000, blocks=2)
    _, values, table = served(assign_dataset(ds, FLAG, "k", False, arm="arm"))
    assert values == flagwarden.assign(FLAG, keys, False)
    assert 0.3 < sum(values) / len(values) < 0.5
    # each row's arm by its own answer (the policy's treatment and control values)
    assert table.column("arm").to_pylist() == ["treatment" if v else "control" for v in values]


def test_every_block_has_one_value_type(ray_session: Any, project: Project, tmp_path: Any):
    """control 1, treatment 1.5: a block served only control is double like the others (not
    int64), and so is an empty block; the dataset has one schema and its Parquet files read
    back as one table."""
    import pyarrow as pa
    import pyarrow.dataset as pds

    policy = {"variants": {"control": 1, "treatment": 1.5}}
    flagwarden.configure(governed_project(project, serve=1.5, policy=policy))
    stage(25)
    keys = [f"order-{i}" for i in range(400)]
    served_keys = flagwarden.assign(FLAG, keys, 0.0)
    capped = [k for k, v in zip(keys, served_keys, strict=True) if v == 1][:50]
    blocks = [
        pa.table({"k": pa.array(capped)}),
        pa.table({"k": pa.array(keys[:50])}),
        pa.table({"k": pa.array([], pa.string())}),
    ]
    routed = assign_dataset(ray_session.data.from_arrow(blocks), FLAG, "k", 0.0)
    tables = [t for t in ray_session.get(routed.to_arrow_refs()) if t.num_rows]
    assert len(tables) == 2  # (Ray routes no empty block)
    assert {t.schema.field("variant").type for t in tables} == {pa.float64()}
    assert routed.schema().base_schema.field("variant").type == pa.float64()
    routed.write_parquet(str(tmp_path / "out"))
    back = pds.dataset(str(tmp_path / "out")).to_table()
    assert back.schema.field("variant").type == pa.float64() and back.num_rows == 100
    assert back.column("variant").to_pylist() == flagwarden.assign(
        FLAG, back.column("k").to_pylist(), 0.0
    )


def test_a_per_key_object_flag_is_asked_with_the_planned_default(
    ray_session: Any, project: Project, ld_server: LaunchDarklyServer
):
    """A dict flag the vendor decides per key: the workers ask with the dict default (its JSON
    text asked for a string: a type mismatch, the default for every key)."""
    flag = boolean_flag(FLAG, rollout_percent=40)
    flag["variations"] = [{"m": 1}, {"m": 2}]
    ld_server.set_flag(flag)
    project.profile("launchdarkly", ld_server.profile())
    (project.root / "policies").mkdir(exist_ok=True)
    policy = {**POLICY, "variants": {"control": {"m": 1}, "treatment": {"m": 2}}}
    (project.root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(policy))
    flagwarden.configure(project.config("launchdarkly", fallback={"snapshot": None}))
    stage(100)
    keys, ds = keys_dataset(ray_session, 1_000, blocks=2)
    _, values, table = served(assign_dataset(ds, FLAG, "k", {"m": 0}, arm="arm", record=False))
    want = flagwarden.assign(FLAG, keys, {"m": 0})
    assert [json.loads(v) for v in values] == want
    assert {v["m"] for v in want} == {0, 1, 2}  # 0: the default, for the missing keys
    arms = table.column("arm").to_pylist()
    by_value = {1: "control", 2: "treatment", 0: "none"}
    assert arms == [by_value[v["m"]] for v in want]


def test_a_config_file_is_required(
    ray_session: Any, project: Project, monkeypatch: pytest.MonkeyPatch
):
    _, ds = keys_dataset(ray_session, 10, blocks=1)
    with pytest.raises(FlagwardenError, match=r"needs flagwarden.configure\(\) first"):
        assign_dataset(ds, FLAG, "k", False)
    monkeypatch.chdir(project.root)
    flagwarden.configure()  # the embedded default: no file a worker could open
    with pytest.raises(FlagwardenError, match="a config file the workers can read"):
        assign_dataset(ds, FLAG, "k", False)
