"""plan() decides once, Assignment.apply() routes anywhere: the same answers as assign() and
as evaluating each key through the client, from a pickle, in a process that never configured
flagwarden; record_exposures() counts what was applied elsewhere as assign() counts it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from flagwarden.governance.assignment import FORMAT, AssignmentError
from tests.conftest import POLICY, Project, counted, governed_project, key_rule_project
from tests.governance.test_assign import KEYS, per_key, stage
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("serve", "at", "killed", "paused", "mode"),
    [
        (True, 25, False, False, "bucket"),
        (True, 25, True, False, "constant"),
        (True, 100, False, False, "constant"),
        (True, 100, False, True, "constant"),
        (False, 50, False, False, "constant"),
        (True, 0, False, False, "bucket"),
    ],
)
def test_plan_applies_as_assign_and_per_key_evaluation(
    project: Project, serve, at, killed, paused, mode
):
    client = flagwarden.configure(governed_project(project, serve=serve))
    stage(at, killed=killed)
    if paused:
        flagwarden.current().rollout.pause(FLAG, actor="t", reason="hold")
    assignment = flagwarden.plan(FLAG, True)
    assert assignment.mode == mode
    keys = [*KEYS, "", None]
    expected = per_key(client, [k if k is not None else "" for k in keys], True)
    assert assignment.apply(keys) == expected == flagwarden.assign(FLAG, keys, True)
    column = pd.Series(keys, dtype=object)
    assert assignment.apply(column).tolist() == expected
    assert assignment.apply(pa.array(keys)).to_pylist() == expected
    assert (assignment.killed, assignment.stage) == (killed, at)


def test_a_unit_attribute_is_decided_for_the_whole_batch(project: Project):
    client = flagwarden.configure(governed_project(project, serve=True, policy={"unit": "tenant"}))
    stage(50)
    for tenant in ("acme", "globex", "initech", "umbrella", None):
        context = EvaluationContext(attributes={"tenant": tenant} if tenant else {})
        assignment = flagwarden.plan(FLAG, False, context=context)
        assert assignment.mode == "constant"
        assert assignment.apply(KEYS[:300]) == per_key(client, KEYS[:300], False, context)


APPLY_ELSEWHERE = """
import json, pickle, sys
assignment = pickle.loads(open(sys.argv[1], "rb").read())
keys = json.loads(open(sys.argv[2]).read())
served, treated, missing = assignment.route(keys)
avoided = {"ldclient", "splitio", "openfeature", "redis", "psycopg", "sqlite3", "prometheus_client"}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in avoided)
import flagwarden.runtime
print(json.dumps({"served": served, "treated": treated, "missing": missing, "heavy": heavy,
                  "configured": flagwarden.runtime.current() is not None}))
"""


def test_a_pickled_assignment_applies_in_a_process_that_never_configured(
    project: Project, tmp_path: Path
):
    """No configure(), no vendor SDK, no store, no OpenFeature: bucketing alone."""
    client = flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    assignment = flagwarden.plan(FLAG, False)
    keys = [*KEYS, "", "é😀"]
    (tmp_path / "a.pickle").write_bytes(pickle.dumps(assignment))
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            APPLY_ELSEWHERE,
            str(tmp_path / "a.pickle"),
            str(tmp_path / "keys.json"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["served"] == per_key(client, keys, False)
    assert found["heavy"] == [] and found["configured"] is False
    assert found["missing"] == 1 and found["treated"] == sum(found["served"])


def test_an_assignment_of_another_format_is_refused():
    from flagwarden.governance.assignment import Assignment

    made = Assignment(
        flag=FLAG,
        default=False,
        mode="constant",
        source="vendor",
        error=None,
        stage=25.0,
        killed=False,
        state_version=3,
        value=False,
    )
    assert pickle.loads(pickle.dumps(made)) == made
    future = pickle.dumps(made).replace(pickle.dumps(FORMAT)[2:-1], pickle.dumps(FORMAT + 1)[2:-1])
    with pytest.raises(AssignmentError, match=f"format {FORMAT + 1}"):
        pickle.loads(future)


def test_per_key_when_the_vendor_rule_depends_on_the_key(project: Project, tmp_path: Path):
    server = LaunchDarklyServer().start()
    try:
        server.set_flag(boolean_flag(FLAG, rollout_percent=40))
        project.profile("launchdarkly", server.profile())
        (project.root / "policies").mkdir(exist_ok=True)
        import yaml

        (project.root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(POLICY))
        client = flagwarden.configure(project.config("launchdarkly", fallback={"snapshot": None}))
        stage(100)
        assignment = flagwarden.plan(FLAG, False)
        assert assignment.mode == "per_key" and "depends on the record key" in assignment.why
        assert assignment.apply(KEYS[:500]) == per_key(client, KEYS[:500], False)
        # a missing key is evaluated with the context's own key, as assign always did
        context = EvaluationContext("order-7")
        keyed = flagwarden.plan(FLAG, False, context=context)
        served = client.get_boolean_value(FLAG, False, context)
        assert keyed.apply(["", None, "order-7"]) == [served] * 3
        assert flagwarden.assign(FLAG, ["", None], False, context=context) == [served] * 2
        assert assignment.exposures(500) == []  # counted by the client, key by key
        flagwarden.shutdown()
        with pytest.raises(AssignmentError, match=r"needs flagwarden\.configure"):
            pickle.loads(pickle.dumps(assignment)).apply(KEYS[:5])
    finally:
        server.stop()


def test_record_exposures_counts_as_assign_does(project: Project):
    """A batch applied elsewhere and recorded once counts the same summary rows and violations
    as assign() over the same keys."""
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    keys = [*KEYS[:2000], "", None]

    by_assign = counted(lambda: flagwarden.assign(FLAG, keys, False))
    assignment = flagwarden.plan(FLAG, False)

    def elsewhere() -> None:
        # two batches, as two workers would route them; their counts summed on the driver
        _, t1, m1 = assignment.route(keys[:1000])
        _, t2, m2 = assignment.route(keys[1000:])
        flagwarden.record_exposures(assignment, len(keys), treated=t1 + t2, missing=m1 + m2)

    assert counted(elsewhere) == by_assign
    assert by_assign[1] == {(FLAG, "missing_unit"): 2}
    with pytest.raises(ValueError, match="out of range"):
        assignment.exposures(10, treated=8, missing=3)


def test_record_exposures_of_a_per_key_plan_counts_only_its_killed_rows(
    project: Project, ld_server: LaunchDarklyServer, monkeypatch: pytest.MonkeyPatch
):
    """A per-key job killed midway: the workers' clients answered (and counted) the rows before
    the kill; the driver's record stands for the killed rows alone, counted in the outage window
    and the summary under the source the chain answers from (not all the rows, under "")."""
    flagwarden.configure(key_rule_project(project, ld_server))
    stage(100)
    assignment = flagwarden.plan(FLAG, False)
    assert assignment.mode == "per_key" and assignment.source == ""
    failover = flagwarden.current().governed.inner
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(failover, "count_served", lambda source, n: served.append((source, n)))
    summary, _ = counted(lambda: flagwarden.record_exposures(assignment, 100, killed=30))
    assert served == [("vendor", 30)]
    assert sum(summary.values()) == 30
    assert all("" not in key and "vendor" in key for key in summary), summary
