"""assign() equals per-key evaluation through the client, for every key, in every shape."""

from __future__ import annotations

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from tests.conftest import POLICY, Project, governed_project
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag

FLAG = POLICY["flag"]
KEYS = [f"order-{i}" for i in range(5000)]


def per_key(client, keys, default, context=None):
    base = context or EvaluationContext()
    return [
        client.get_boolean_value(FLAG, default, base.merge(EvaluationContext(targeting_key=str(k))))
        for k in keys
    ]


def stage(value: float, *, killed: bool = False) -> None:
    rollout = flagwarden.current().rollout
    state = rollout.state(FLAG)
    after = state.changed(actor="t", reason="t", stage=value, killed=killed)
    assert rollout.store.compare_and_set(after)
    rollout.cache.put(after, rollout.cache.ticket())


@pytest.mark.parametrize(
    ("serve", "at", "killed"),
    [
        (True, 25, False),
        (True, 100, True),
        (True, 100, False),
        (False, 50, False),
        (True, 0, False),
    ],
)
def test_assign_equals_per_key(project: Project, serve, at, killed):
    client = flagwarden.configure(governed_project(project, serve=serve))
    stage(at, killed=killed)
    expected = per_key(client, KEYS, True)
    assert flagwarden.assign(FLAG, KEYS, True) == expected
    if serve and at == 25 and not killed:
        assert 0.2 < sum(expected) / len(KEYS) < 0.3


def test_assign_counts_exposures_as_per_key_evaluation_does(project: Project):
    """Same summary rows (variant, reason, source, arm, capped) whichever way a batch is served."""
    client = flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    telemetry = flagwarden.current().telemetry
    telemetry.recorder.fold()  # counts reach the summary when the recorder folds them
    telemetry.summary.flush()
    keys = [*KEYS[:1000], ""]  # an empty key is no unit: control, and a violation
    per_key(client, keys, False)
    telemetry.recorder.fold()
    by_client = telemetry.summary._counts.copy()
    telemetry.summary._counts.clear()
    flagwarden.assign(FLAG, keys, False)
    telemetry.recorder.fold()
    assert telemetry.summary._counts == by_client
    assert {key[4:] for key in by_client} == {
        ("treatment", False),
        ("control", True),  # capped
        ("control", False),  # the empty key: no unit
    }
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals == {(FLAG, "missing_unit"): 2}


def test_assign_with_a_unit_attribute(project: Project):
    client = flagwarden.configure(governed_project(project, serve=True, policy={"unit": "tenant"}))
    stage(50)
    for tenant in ("acme", "globex", "initech"):
        ctx = EvaluationContext(attributes={"tenant": tenant})
        assert flagwarden.assign(FLAG, KEYS[:500], False, context=ctx) == per_key(
            client, KEYS[:500], False, ctx
        )
    assert flagwarden.assign(FLAG, KEYS[:10], True) == [False] * 10  # no tenant: control


def test_assign_returns_the_callers_column_kind(project: Project):
    client = flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    expected = per_key(client, KEYS, False)
    series = pd.Series(KEYS, index=range(10, 10 + len(KEYS)), name="order_id")
    out = flagwarden.assign(FLAG, series, False)
    assert isinstance(out, pd.Series) and list(out.index) == list(series.index)
    assert out.tolist() == expected
    out = flagwarden.assign(FLAG, pl.Series("order_id", KEYS), False)
    assert isinstance(out, pl.Series) and out.to_list() == expected
    out = flagwarden.assign(FLAG, pa.array(KEYS), False)
    assert isinstance(out, pa.Array) and out.to_pylist() == expected
    assert flagwarden.assign(FLAG, iter(KEYS), False) == expected
    assert flagwarden.assign(FLAG, [], False) == []
    ints = list(range(300))
    assert flagwarden.assign(FLAG, ints, False) == per_key(client, ints, False)


def test_assign_asks_per_key_when_the_vendor_rule_depends_on_the_key(project: Project):
    server = LaunchDarklyServer().start()
    try:
        server.set_flag(boolean_flag(FLAG, rollout_percent=40))
        governed_project(project)
        project.profile("launchdarkly", server.profile())
        project.config("launchdarkly", fallback={"snapshot": None})
        client = flagwarden.configure(project.root / "flagwarden.yaml")
        stage(25)
        governed = flagwarden.current().governed
        assert governed.inner.depends_on_key(FLAG)
        expected = per_key(client, KEYS[:2000], False)
        assert flagwarden.assign(FLAG, KEYS[:2000], False) == expected
        # 40% from the vendor, capped at 25% by the policy: about 10% get it.
        assert 0.06 < sum(expected) / 2000 < 0.14
        server.set_flag(boolean_flag(FLAG, serve=True))  # a run-level switch, not per key
        from tests.conftest import wait_for

        wait_for(lambda: not governed.inner.depends_on_key(FLAG))
        assert flagwarden.assign(FLAG, KEYS, False) == per_key(client, KEYS, False)
    finally:
        server.stop()


def test_assign_needs_configure():
    with pytest.raises(flagwarden.FlagwardenError, match="configure"):
        flagwarden.assign(FLAG, ["a"], False)
