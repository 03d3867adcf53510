"""The per-batch routing every engine uses (BatchRouter) and the workers' kill check, without
an engine: outcome codes from the bucket itself, a kill that stays for the job, back-off from
a store that does not answer, no store created on a worker; a worker configured once however
many threads ask, per-key object flags, one value type per job, pandas keys read as assign
reads them, arguments checked before anything is planned or pinned."""

from __future__ import annotations

import decimal
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from structlog.testing import capture_logs

import flagwarden
from flagwarden.errors import FlagwardenError
from flagwarden.governance.assignment import AssignmentError
from flagwarden.governance.batches import (
    CAPPED,
    CONSTANT,
    KILLED,
    MISSING,
    TREATED,
    BatchRouter,
    prepare,
)
from flagwarden.governance.killcheck import FlagKilled, KillCheck, kill_check
from tests.conftest import POLICY, Project, governed_project
from tests.governance.test_assign import KEYS, stage
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag

FLAG = POLICY["flag"]


def per_key_project(
    project: Project, ld_server: LaunchDarklyServer, variations: list[Any] | None = None
) -> Path:
    """A project whose vendor (LaunchDarkly) rolls the flag out to 40% of the keys itself: the
    plan is per key. ``variations``: the flag's two values (False, True unless given), the
    policy's control and treatment."""
    flag = boolean_flag(FLAG, rollout_percent=40)
    policy = dict(POLICY)
    if variations is not None:
        flag["variations"] = variations
        policy["variants"] = {"control": variations[0], "treatment": variations[1]}
    ld_server.set_flag(flag)
    project.profile("launchdarkly", ld_server.profile())
    (project.root / "policies").mkdir(exist_ok=True)
    (project.root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(policy))
    return project.config("launchdarkly", fallback={"snapshot": None})


def test_outcome_codes_come_from_the_bucket_even_for_mixed_numbers(project: Project):
    """control 1, treatment 1.5: a batch served only control is int64, and 1.5 cast to it is 1;
    the codes must still say capped, and empty keys in a string_view column are missing."""
    policy = {"variants": {"control": 1, "treatment": 1.5}}
    config = governed_project(project, serve=1.5, policy=policy)
    flagwarden.configure(config)
    stage(25)
    assignment = flagwarden.plan(FLAG, 0.0)
    router = BatchRouter(assignment, str(config))
    keys = [*KEYS[:3000], "", None]
    values, codes = router.route(pa.array(keys))
    served = flagwarden.assign(FLAG, keys, 0.0)
    assert values.to_pylist() == served
    expected = [
        MISSING if not k else TREATED if v == 1.5 else CAPPED
        for k, v in zip(keys, served, strict=True)
    ]
    assert codes.to_pylist() == expected
    capped_only = [k for k, v in zip(keys, served, strict=True) if k and v == 1][:50]
    _, codes = router.route(pa.array(capped_only))
    assert set(codes.to_pylist()) == {CAPPED}
    if hasattr(pa, "string_view"):
        _, codes = router.route(pa.array(["", *KEYS[:20]], pa.string_view()))
        assert codes.to_pylist()[0] == MISSING


def test_a_kill_stays_for_the_job_and_abort_spares_a_flag_killed_before(project: Project):
    config = governed_project(project, serve=True)
    flagwarden.configure(config)
    stage(25)
    router = BatchRouter(flagwarden.plan(FLAG, False), str(config), kill_check_seconds=0.0)
    rollout = flagwarden.current().rollout
    rollout.kill(FLAG, actor="t", reason="t")
    values, _ = router.route(pa.array(KEYS[:100]))
    assert values.to_pylist() == [False] * 100
    rollout.revive(FLAG, actor="t", reason="t")
    values, _ = router.route(pa.array(KEYS[:100]))
    assert values.to_pylist() == [False] * 100  # control from that batch on, for this job
    fresh = BatchRouter(flagwarden.plan(FLAG, False), str(config), kill_check_seconds=0.0)
    assert fresh.route(pa.array(KEYS[:100]))[0].to_pylist() == flagwarden.assign(
        FLAG, KEYS[:100], False
    )  # a new job after the revive routes again
    rollout.kill(FLAG, actor="t", reason="t")
    already = BatchRouter(flagwarden.plan(FLAG, False), str(config), "abort", 0.0)
    assert already.route(pa.array(KEYS[:10]))[0].to_pylist() == [False] * 10  # no abort
    rollout.revive(FLAG, actor="t", reason="t")
    aborting = BatchRouter(flagwarden.plan(FLAG, False), str(config), "abort", 0.0)
    rollout.kill(FLAG, actor="t", reason="t")
    with pytest.raises(FlagKilled, match="killed while this job ran"):
        aborting.route(pa.array(KEYS[:10]))


def test_a_store_that_does_not_answer_is_read_with_back_off(project: Project):
    config = governed_project(project, state="redis://127.0.0.1:1/0")
    check = KillCheck(config, FLAG, interval=0.01)
    with capture_logs() as logs:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert check.killed() is False
    # 1 s at 0.01 s would be ~100 reads; backing off doubles the wait after each failure
    assert 3 <= check._failures <= 8, check._failures
    assert len([e for e in logs if e["event"] == "flagwarden.kill_check_failed"]) == 1


def test_no_sqlite_store_is_created_on_a_worker(project: Project, tmp_path: Path):
    config = governed_project(project, state=f"sqlite:///{tmp_path}/elsewhere/state.db")
    check = kill_check(config, FLAG, 0.0, job="no-store")
    with capture_logs() as logs:
        assert check.killed() is False
    assert not (tmp_path / "elsewhere").exists()
    (failed,) = [e for e in logs if e["event"] == "flagwarden.kill_check_failed"]
    assert "not on this worker" in failed["error"]


def test_a_worker_is_configured_once_however_many_threads_ask(
    project: Project, ld_server: LaunchDarklyServer, monkeypatch: pytest.MonkeyPatch
):
    """Four threads of one worker process route per-key batches at once, with no runtime yet:
    one configure(), and every thread's answers are assign's (a configure() per thread shut
    down the runtime another thread was asking: its keys got the default)."""
    flagwarden.configure(per_key_project(project, ld_server))
    stage(100)
    keys = KEYS[:1500]
    want = flagwarden.assign(FLAG, keys, False)
    _, router = prepare("test", FLAG, False, None, None, "control", 0.5)
    assert router.assignment.mode == "per_key"
    flagwarden.shutdown()  # a worker process: no runtime until its first per-key batch
    real, calls = flagwarden.configure, []

    def slow_configure(*args: Any) -> Any:
        calls.append(args)
        time.sleep(0.3)  # every thread has looked for a runtime before the first one exists
        return real(*args)

    monkeypatch.setattr(flagwarden, "configure", slow_configure)
    start = threading.Barrier(4)
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = router.route(pa.array(keys))[0].to_pylist()
        except Exception as exc:  # reported by the assertion below
            results[i] = repr(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(result == want for result in results.values()), {
        i: r if isinstance(r, str) else sum(a != b for a, b in zip(r, want, strict=True))
        for i, r in results.items()
    }


def test_a_runtime_the_routers_did_not_create_is_never_replaced(
    project: Project, ld_server: LaunchDarklyServer, tmp_path: Path
):
    """A per-key batch of another config in a process whose own code configured flagwarden is
    refused (replacing the runtime would pull it from under its users); one the routers
    configured themselves is replaced once idle (a reused worker running another job)."""
    first = per_key_project(Project(tmp_path / "a"), ld_server)
    flagwarden.configure(first)
    stage(100)
    _, router = prepare("test", FLAG, False, None, None, "control", 0.5)
    flagwarden.shutdown()
    own = governed_project(Project(tmp_path / "own"), serve=True)
    flagwarden.configure(own)  # the process's own code
    runtime = flagwarden.current()
    with pytest.raises(AssignmentError, match="never replaces a runtime it did not create"):
        router.route(pa.array(KEYS[:10]))
    assert flagwarden.current() is runtime
    flagwarden.shutdown()
    router.route(pa.array(KEYS[:10]))  # configured by the router: from the first file
    assert str(flagwarden.current().settings.source) == str(first)
    second = per_key_project(Project(tmp_path / "b"), ld_server)
    flagwarden.shutdown()
    flagwarden.configure(second)
    _, other = prepare("test", FLAG, False, None, None, "control", 0.5)
    want = flagwarden.assign(FLAG, KEYS[:200], False)
    flagwarden.shutdown()
    router.route(pa.array(KEYS[:10]))  # the routers' own runtime again (first)
    assert other.route(pa.array(KEYS[:200]))[0].to_pylist() == want  # idle: replaced
    assert str(flagwarden.current().settings.source) == str(second)


def test_per_key_object_flags_are_asked_with_the_planned_default(
    project: Project, ld_server: LaunchDarklyServer
):
    """A dict flag the vendor decides per key: each key asked with the dict default (not its
    JSON text, which asks for a string: a type mismatch, the default for every key), the
    answers JSON text in the column, for Arrow and pandas batches."""
    flagwarden.configure(per_key_project(project, ld_server, [{"m": 1}, {"m": 2}]))
    stage(100)
    keys = KEYS[:400]
    want = flagwarden.assign(FLAG, keys, {"m": 0})
    assert {json.dumps(v) for v in want} == {'{"m": 1}', '{"m": 2}'}
    _, router = prepare("test", FLAG, {"m": 0}, None, None, "control", 0.5)
    assert router.assignment.mode == "per_key" and router.assignment.default == '{"m": 0}'
    values, codes = router.route(pa.array(keys))
    assert values.type == pa.string()
    assert [json.loads(v) for v in values.to_pylist()] == want
    assert set(codes.to_pylist()) == {CONSTANT}
    column, _ = router.route(pd.Series(keys, index=range(5, 405)))
    assert [json.loads(v) for v in column] == want and list(column.index) == list(range(5, 405))


def test_every_batch_of_a_job_has_one_value_type(project: Project, tmp_path: Path):
    """control 1, treatment 1.5: a batch served only control is double like the others (not
    int64: blocks of two types cannot be written as one table); an empty batch and a killed
    one are typed too; for a pandas batch the dtype is float64."""
    policy = {"variants": {"control": 1, "treatment": 1.5}}
    flagwarden.configure(governed_project(project, serve=1.5, policy=policy))
    stage(25)
    served = flagwarden.assign(FLAG, KEYS[:400], 0.0)
    capped = [k for k, v in zip(KEYS[:400], served, strict=True) if v == 1][:50]
    treated = [k for k, v in zip(KEYS[:400], served, strict=True) if v == 1.5][:50]
    _, router = prepare("test", FLAG, 0.0, None, None, "control", 0.0)
    for keys in (capped, treated, KEYS[:50], []):
        values, _ = router.route(pa.array(keys, pa.string()))
        assert values.type == pa.float64(), (len(keys), values.type)
    for keys in (capped, treated, KEYS[:50], []):
        column, _ = router.route(pd.Series(keys, dtype=object))
        assert column.dtype == np.float64, (len(keys), column.dtype)
    assert router.route(pa.array(capped))[0].to_pylist() == [1.0] * 50
    flagwarden.current().rollout.kill(FLAG, actor="t", reason="t")
    values, codes = router.route(pa.array(treated))
    assert (values.type, set(codes.to_pylist())) == (pa.float64(), {KILLED})
    flagwarden.configure(governed_project(Project(tmp_path / "bool"), serve=True))
    stage(25)
    _, flags = prepare("test", FLAG, True, None, None, "control", 0.5)
    assert flags.route(pa.array([], pa.string()))[0].type == pa.bool_()  # not null


def test_pandas_keys_are_read_as_assign_reads_them(project: Project):
    """A pandas column (Dask's partitions) goes through assign's own reading of it: decimals
    keep their text, timedeltas their pandas text, a mixed object column routes; the outcome
    codes count the missing keys as assign does."""
    flagwarden.configure(governed_project(project, serve=True))
    stage(50)
    _, router = prepare("test", FLAG, False, None, None, "control", 0.5)
    columns = {
        "decimal": pd.Series([decimal.Decimal("1.1"), decimal.Decimal("1.10")] * 20),
        "timedelta": pd.Series(pd.to_timedelta(range(100), unit="s")),
        "mixed": pd.Series([1, "a", 2, "b", "", None, float("nan")] * 20, dtype=object),
        "text": pd.Series([*KEYS[:300], "", None], dtype="str"),
        "category": pd.Series([*KEYS[:300], "", None], dtype="category"),
    }
    for name, keys in columns.items():
        values, codes = router.route(keys)
        want = flagwarden.assign(FLAG, keys, False)
        assert values.tolist() == want.tolist(), name
        assert values.index.equals(keys.index), name
        _, treated, missing = flagwarden.plan(FLAG, False).route(keys)
        counts = np.bincount(codes.to_numpy(), minlength=5)
        assert (counts[TREATED], counts[MISSING]) == (treated, missing), name


@pytest.mark.parametrize(
    ("argument", "bad", "error", "match"),
    [
        ("kill_check_seconds", "1", TypeError, "kill_check_seconds must be a number"),
        ("kill_check_seconds", None, TypeError, "kill_check_seconds must be a number"),
        ("kill_check_seconds", True, TypeError, "kill_check_seconds must be a number"),
        ("kill_check_seconds", math.nan, ValueError, "kill_check_seconds must be a finite"),
        ("kill_check_seconds", -1.0, ValueError, "kill_check_seconds must be a finite"),
        ("on_kill", "stop", ValueError, "on_kill must be 'control' or 'abort', not 'stop'"),
        ("default", None, TypeError, "unsupported default None"),
        ("flag_key", 7, TypeError, "flag_key must be a str, not 7"),
        ("context", {"tenant": "acme"}, TypeError, "context must be an EvaluationContext"),
        ("out", "", TypeError, "out must be a non-empty column name"),
        ("arm", "variant", ValueError, "arm and out name the same column"),
        ("record", "yes", TypeError, "record must be True or False, not 'yes'"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_planned_or_pinned(
    project: Project, argument: str, bad: Any, error: type[Exception], match: str
):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    arguments: dict[str, Any] = {
        "flag_key": FLAG,
        "default": False,
        "context": None,
        "run_id": "run-1",
        "on_kill": "control",
        "kill_check_seconds": 0.5,
    }
    options: dict[str, Any] = {"out": "variant", "arm": None, "record": True}
    (arguments if argument in arguments else options)[argument] = bad
    with pytest.raises(error, match=match):
        prepare("test", **arguments, **options)
    store = flagwarden.current().governed.cache.store
    assert store is not None and store.documents("run:run-1") == {}  # nothing pinned
    audit = flagwarden.current().governance.audit
    assert audit is not None and list(audit.records(flag=FLAG, kind="run_pinned")) == []


def test_a_config_without_a_file_is_refused_for_what_it_is(project: Project):
    """configure() from a mapping: the error says a file is needed, not that it was the
    embedded default."""
    config = yaml.safe_load(governed_project(project, serve=True).read_text())
    config["providers_dir"] = str(project.root / "providers")
    config["policies_dir"] = str(project.root / "policies")
    flagwarden.configure(config)
    with pytest.raises(FlagwardenError, match="a config file the workers can read") as refused:
        prepare("test", FLAG, False, None, None, "control", 0.5)
    assert "mapping" in str(refused.value)
    assert "not the embedded default" not in str(refused.value)
