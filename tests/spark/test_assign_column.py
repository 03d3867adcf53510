"""flagwarden.spark.assign_column on a local Spark session: the same answers as assign() row
for row, whatever Spark recomputes; a kill reaches the running job; counts recorded once on
the driver add up to assign()'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import flagwarden
from flagwarden.spark import assign_column
from tests.conftest import POLICY, Project, counted, governed_project, key_rule_project
from tests.governance.test_assign import stage
from tests.servers.launchdarkly import LaunchDarklyServer

pytestmark = [pytest.mark.xdist_group("spark"), pytest.mark.slow]
FLAG = POLICY["flag"]


def keys_frame(spark: Any, n: int, partitions: int = 4) -> Any:
    from pyspark.sql import functions as F

    ids = spark.range(0, n, numPartitions=partitions)
    key = F.when(F.col("id") % 997 == 0, F.lit(None)).otherwise(
        F.concat(F.lit("order-"), F.col("id").cast("string"))
    )
    return ids.select("id", key.alias("k"))


def served(frame: Any, column: str = "variant") -> tuple[list[Any], list[Any]]:
    """The keys and ``column``, in id order."""
    table = frame.orderBy("id").select("k", frame[column].alias("_served")).toArrow()
    return table.column("k").to_pylist(), table.column("_served").to_pylist()


def test_a_million_rows_route_as_assign_does(spark: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    routed = assign_column(keys_frame(spark, 1_000_000), FLAG, "k", False, arm="arm")
    keys, values = served(routed)
    assert values == flagwarden.assign(FLAG, keys, False)
    assert 0.2 < sum(values) / len(values) < 0.3
    arms = routed.groupBy("arm").count().collect()
    assert {row["arm"] for row in arms} == {"treatment", "control"}


def test_the_frozen_plan_survives_an_advance_and_task_retries(spark: Any, project: Project):
    """Planned at 25%, the stage advanced before the job runs, the first attempt of every task
    failing: the answers are those of 25%, as assign() gave them then."""
    from pyspark import TaskContext
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame = keys_frame(spark, 20_000, partitions=2)
    expected = flagwarden.assign(FLAG, served(frame, "k")[0], False)

    def flaky(key: str | None) -> str | None:
        if TaskContext.get().attemptNumber() == 0:  # type: ignore[union-attr]
            raise RuntimeError("the first attempt of every task fails")
        return key

    retried = frame.withColumn("k", F.udf(flaky, StringType())("k"))
    routed = assign_column(retried, FLAG, "k", False, record=False)
    stage(50)
    assert served(routed)[1] == expected


def test_a_shared_unit_and_object_values(spark: Any, project: Project):
    from openfeature.evaluation_context import EvaluationContext

    policy = {"unit": "tenant", "variants": {"control": {"m": 1}, "treatment": {"m": 2}}}
    flagwarden.configure(governed_project(project, serve={"m": 2}, policy=policy))
    stage(50)
    frame = keys_frame(spark, 1_000_000)
    for tenant in ("acme", "globex", "initech"):
        context = EvaluationContext(attributes={"tenant": tenant})
        routed = assign_column(frame, FLAG, "k", {"m": 0}, context=context)
        keys, values = served(routed)
        want = flagwarden.assign(FLAG, keys, {"m": 0}, context=context)
        assert [json.loads(v) for v in values] == want  # object values travel as JSON text


def test_the_pandas_udf_serves_the_same_column(spark: Any, project: Project):
    """``udf="pandas"`` (what Spark < 4.1 gets): the same values, arms and counts, for string
    keys and nullable integer keys (pandas gets a batch of longs holding a null as floats,
    "1.152921504606847e+18", beyond 2**53 not even the same number: both UDFs must route the
    integers' own text, as assign does over the collected keys)."""
    from openfeature.evaluation_context import EvaluationContext
    from pyspark.sql import functions as F

    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame = keys_frame(spark, 100_000)
    by_arrow = assign_column(frame, FLAG, "k", False, arm="arm", record=False, udf="arrow")
    by_pandas = assign_column(frame, FLAG, "k", False, arm="arm", record=False, udf="pandas")
    keys, values = served(by_pandas)
    assert values == flagwarden.assign(FLAG, keys, False)
    assert served(by_pandas, "arm") == served(by_arrow, "arm")
    assert counted(lambda: assign_column(frame, FLAG, "k", False, udf="pandas")) == counted(
        lambda: flagwarden.assign(FLAG, keys, False)
    )
    longs = frame.select(
        "id",
        F.when(F.col("id") % 97 == 0, F.lit(None))
        .otherwise(F.col("id") * 7_919 + F.lit(2**60))
        .cast("long")
        .alias("n"),
    )
    by_kind = {
        kind: assign_column(longs, FLAG, "n", False, arm="arm", udf=kind, record=False)
        .orderBy("id")
        .select("n", "variant", "arm")
        .toArrow()
        for kind in ("arrow", "pandas")
    }
    keys = by_kind["arrow"].column("n").to_pylist()
    assert None in keys and max(k for k in keys if k is not None) > 2**60
    want = flagwarden.assign(FLAG, keys, False)
    assert by_kind["arrow"].column("variant").to_pylist() == want
    assert by_kind["pandas"].column("variant").to_pylist() == want
    assert by_kind["pandas"].column("arm") == by_kind["arrow"].column("arm")
    assert counted(lambda: assign_column(longs, FLAG, "n", False, udf="pandas")) == counted(
        lambda: flagwarden.assign(FLAG, keys, False)
    )
    policy = {"unit": "tenant", "variants": {"control": {"m": 1}, "treatment": {"m": 2}}}
    flagwarden.configure(governed_project(project, serve={"m": 2}, policy=policy))
    stage(50)
    context = EvaluationContext(attributes={"tenant": "acme"})
    routed = assign_column(frame.limit(500), FLAG, "k", {"m": 0}, context=context, udf="pandas")
    keys, values = served(routed)
    want = flagwarden.assign(FLAG, keys, {"m": 0}, context=context)
    assert [json.loads(v) for v in values] == want
    with pytest.raises(ValueError, match="expected 'auto', 'arrow' or 'pandas'"):
        assign_column(frame, FLAG, "k", False, udf="numpy")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_the_pandas_udf_reads_timestamp_keys_as_the_arrow_udf(spark: Any, project: Project):
    """A timestamp key is its wall-clock time in the session time zone, without offset, in both
    UDFs (the Arrow UDF gets it with the zone attached: "...-05:00"; the pandas_udf without)."""
    from pyspark.sql import functions as F

    flagwarden.configure(governed_project(project, serve=True))
    stage(50)
    frame = spark.range(0, 20_000, numPartitions=2).select(
        "id",
        F.when(F.col("id") % 89 == 0, F.lit(None))
        .otherwise(F.expr("timestamp_seconds(1700000000 + id * 37 + (id % 4) * 0.25)"))
        .alias("ts"),
    )
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        wall_clock = F.regexp_replace(
            F.date_format("ts", "yyyy-MM-dd HH:mm:ss.SSSSSS"), r"\.000000$", ""
        )
        texts = frame.orderBy("id").select(wall_clock.alias("t")).toArrow()
        keys = texts.column("t").to_pylist()
        assert "2023-11-14 17:13:57.250000" in keys and "2023-11-14 17:15:48" in keys
        want = flagwarden.assign(FLAG, keys, False)
        for kind in ("arrow", "pandas"):
            got = assign_column(frame, FLAG, "ts", False, udf=kind, record=False)
            values = got.orderBy("id").select("variant").toArrow().column(0).to_pylist()
            assert values == want, kind
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


def test_arguments_are_checked_before_anything_is_planned_or_pinned(spark: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame = keys_frame(spark, 10, partitions=1)
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"udf": "numpy"}, ValueError, "expected 'auto', 'arrow' or 'pandas'"),
        ({"kill_check_seconds": "1"}, TypeError, "kill_check_seconds must be a number"),
        ({"kill_check_seconds": float("nan")}, ValueError, "kill_check_seconds must be a finite"),
        ({"key_col": 3}, TypeError, "key_col must be a column name"),
        ({"df": None}, TypeError, "df must be a Spark DataFrame, not NoneType"),
        ({"arm": "variant"}, ValueError, "arm and out name the same column"),
    ]
    for arguments, error, match in bad:
        call = {"df": frame, "key_col": "k", **arguments}
        with pytest.raises(error, match=match):
            assign_column(flag_key=FLAG, default=False, run_id="run-1", **call)
    store = flagwarden.current().governed.cache.store
    assert store is not None and store.documents("run:run-1") == {}  # nothing pinned
    audit = flagwarden.current().governance.audit
    assert audit is not None and list(audit.records(flag=FLAG, kind="run_pinned")) == []


@pytest.fixture(scope="module")
def ld_server() -> Any:
    """Up until the Spark tests end: the Python workers that configured flagwarden for the
    per-key test keep their LaunchDarkly client (Spark reuses its workers)."""
    server = LaunchDarklyServer().start()
    yield server
    server.stop()


def test_a_vendor_rule_on_the_key_is_asked_per_key_on_the_workers(
    spark: Any, project: Project, ld_server: LaunchDarklyServer
):
    flagwarden.configure(key_rule_project(project, ld_server))
    stage(100)
    routed = assign_column(keys_frame(spark, 20_000, partitions=2), FLAG, "k", False)
    keys, values = served(routed)
    assert values == flagwarden.assign(FLAG, keys, False)
    assert 0.3 < sum(values) / len(values) < 0.5


def test_counts_are_recorded_once_on_the_driver(spark: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame = keys_frame(spark, 50_000)
    keys = served(frame, "k")[0]

    by_assign = counted(lambda: flagwarden.assign(FLAG, keys, False))
    by_spark = counted(lambda: assign_column(frame, FLAG, "k", False))
    assert by_spark == by_assign
    assert by_assign[1] == {(FLAG, "missing_unit"): keys.count(None)}


def _slow_frame(spark: Any, partitions: int = 24, rows: int = 40) -> Any:
    """Keys whose computation takes ~10 ms each: the job runs for several seconds."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    def slow(i: int) -> str:
        time.sleep(0.01)
        return f"order-{i}"

    ids = spark.range(0, partitions * rows, numPartitions=partitions)
    return ids.select("id", F.udf(slow, StringType())("id").alias("k"))


def _kill_when_tasks_done(spark: Any, done: int) -> None:
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = 0
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            finished += info.numCompletedTasks if info else 0
        if finished >= done:
            flagwarden.current().rollout.kill(FLAG, actor="t", reason="bad batch")
            return
        time.sleep(0.02)
    raise AssertionError("the job never got going")


def test_a_kill_reaches_the_running_job(spark: Any, project: Project):
    from pyspark.sql import functions as F

    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    frame = _slow_frame(spark)
    every = [f"order-{i}" for i in range(24 * 40)]
    expected = dict(zip(every, flagwarden.assign(FLAG, every, False), strict=True))
    routed = assign_column(frame, FLAG, "k", False, record=False, kill_check_seconds=0.05)
    killer = threading.Thread(target=_kill_when_tasks_done, args=(spark, 4))
    killer.start()
    rows = routed.select(F.spark_partition_id().alias("p"), "k", "variant").collect()
    killer.join()
    by_partition: dict[int, list[Any]] = {}
    for row in rows:
        by_partition.setdefault(row["p"], []).append(row)
    before = after = 0
    for part in by_partition.values():
        keys = [r["k"] for r in part]
        values = [r["variant"] for r in part]
        if values == [expected[k] for k in keys] and any(values):
            before += 1  # routed before the kill reached it: as it was
        else:
            assert values == [False] * len(values)  # after: control for every row
            after += 1
    assert before >= 4 and after >= 1, (before, after)


def test_a_kill_can_abort_the_job(spark: Any, project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    routed = assign_column(
        _slow_frame(spark), FLAG, "k", False, record=False, on_kill="abort", kill_check_seconds=0.05
    )
    killer = threading.Thread(target=_kill_when_tasks_done, args=(spark, 2))
    killer.start()
    with pytest.raises(Exception, match="was killed while this job ran"):
        routed.collect()
    killer.join()


CONNECT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import flagwarden
from flagwarden.spark import assign_column
from pyspark.sql import SparkSession, functions as F
flagwarden.configure(sys.argv[1])
spark = SparkSession.builder.remote("local[2]").getOrCreate()
assert type(spark).__module__.startswith("pyspark.sql.connect")
frame = spark.range(0, 20000, numPartitions=2).select(
    "id", F.concat(F.lit("order-"), F.col("id").cast("string")).alias("k"))
table = assign_column(frame, "new-scoring-model", "k", False).orderBy("id").toArrow()
keys, values = table.column("k").to_pylist(), table.column("variant").to_pylist()
print(json.dumps({"same": values == flagwarden.assign("new-scoring-model", keys, False),
                  "treated": sum(values)}))
flagwarden.shutdown()
spark.stop()
"""


def test_a_spark_connect_session_routes_the_same(project: Project):
    """Spark Connect (a local server, in a process of its own: one Spark driver per JVM)."""
    config = governed_project(project, serve=True)
    flagwarden.configure(config)
    stage(25)
    flagwarden.shutdown()
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CONNECT, str(config)],
        cwd=project.root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["same"] is True and 4000 < found["treated"] < 6000
