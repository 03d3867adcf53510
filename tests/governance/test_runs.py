"""Run-pinned decisions: a retried run routes every record as its first attempt did, across
processes and after an advance; a kill still wins; a pin that cannot be used never stops the
run; the audit log records each run's pin once."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from openfeature.evaluation_context import EvaluationContext
from structlog.testing import capture_logs

import flagwarden
from flagwarden.governance import runs
from tests.conftest import POLICY, Project, governed_project, key_rule_project
from tests.governance.test_assign import KEYS, stage
from tests.servers.launchdarkly import LaunchDarklyServer

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]
RUN = "orders-2026-11-26"


def pins(kind: str = f"run:{RUN}") -> dict[str, str]:
    store = flagwarden.current().governed.cache.store
    assert store is not None
    return store.documents(kind)


def test_a_retried_run_routes_every_record_as_its_first_attempt(project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    with flagwarden.run(RUN):
        first = flagwarden.assign(FLAG, KEYS, False)
        assert flagwarden.plan(FLAG, False).pinned
    stage(50)  # the rollout advances between the attempts
    with flagwarden.run(RUN):
        retried = flagwarden.assign(FLAG, KEYS, False)
        assignment = flagwarden.plan(FLAG, False)
    assert retried == first
    assert (assignment.stage, assignment.run_id, assignment.pinned) == (25, RUN, True)
    assert sum(flagwarden.assign(FLAG, KEYS, False)) > sum(first)  # outside the run: 50%
    # another run pins the stage of its own first attempt
    assert flagwarden.plan(FLAG, False, run_id="orders-2026-11-27").stage == 50
    assert [key.split("#")[0] for key in pins()] == [FLAG]


def test_a_kill_wins_over_the_pin_and_a_revive_gives_it_back(project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    first = flagwarden.plan(FLAG, False, run_id=RUN).apply(KEYS)
    rollout = flagwarden.current().rollout
    rollout.kill(FLAG, actor="t", reason="bad data")
    killed = flagwarden.plan(FLAG, False, run_id=RUN)
    assert killed.killed and not killed.pinned and killed.apply(KEYS) == [False] * len(KEYS)
    rollout.revive(FLAG, actor="t", reason="fixed")
    assert flagwarden.plan(FLAG, False, run_id=RUN).apply(KEYS) == first


PLAN_IN_ANOTHER_PROCESS = """
import json, sys
import flagwarden
flagwarden.configure(sys.argv[1])
assignment = flagwarden.plan("new-scoring-model", False, run_id=sys.argv[2])
print(json.dumps({"stage": assignment.stage, "pinned": assignment.pinned,
                  "served": assignment.apply(json.loads(sys.argv[3]))}))
flagwarden.shutdown()
"""


def test_another_process_of_the_run_gets_the_same_pin(project: Project):
    config = governed_project(project, serve=True)
    flagwarden.configure(config)
    stage(25)
    keys = KEYS[:2000]
    first = flagwarden.plan(FLAG, False, run_id=RUN).apply(keys)
    stage(50)
    done = subprocess.run(
        [sys.executable, "-c", PLAN_IN_ANOTHER_PROCESS, str(config), RUN, json.dumps(keys)],
        cwd=project.root,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert (found["stage"], found["pinned"]) == (25, True)
    assert found["served"] == first


def test_each_pin_is_audited_once(project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    for _ in range(3):
        with flagwarden.run(RUN):
            flagwarden.assign(FLAG, KEYS[:10], False)
    audit = flagwarden.current().governance.audit
    assert audit is not None
    records = list(audit.records(flag=FLAG, kind="run_pinned"))
    assert len(records) == 1
    data = records[0].data
    assert (data["run"], data["stage"], data["mode"], data["killed"]) == (RUN, 25, "bucket", False)


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ('{"format": 1, "mode": "?"}', "ValueError"),
        ("not json", "JSONDecodeError"),
        ('{"format": 99}', "ValueError"),
        ("[]", "ValueError"),
        ("1", "ValueError"),
        ("null", "ValueError"),
        ("limit", "ValueError"),  # a real pin whose limit is null
    ],
)
def test_a_damaged_pin_is_reported_and_the_run_plans_afresh(project: Project, doc, error):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    store = flagwarden.current().governed.cache.store
    assert store is not None
    key = f"{FLAG}#{runs._fingerprint(False, {}, None)}"
    if doc == "limit":
        flagwarden.plan(FLAG, False, run_id="another")
        (real,) = pins("run:another").values()
        doc = json.dumps({**json.loads(real), "limit": None})
    assert store.put_document(f"run:{RUN}", key, doc, expected=None)
    with capture_logs() as logs:
        assignment = flagwarden.plan(FLAG, False, run_id=RUN)
    assert not assignment.pinned and assignment.stage == 25
    assert assignment.apply(KEYS) == flagwarden.assign(FLAG, KEYS, False)
    (failed,) = [e for e in logs if e["event"] == "flagwarden.run_pin_failed"]
    assert failed["run"] == RUN and failed["error"].startswith(error)


def test_each_context_and_default_type_has_its_own_pin(project: Project):
    """A run's tenants keep their own decisions: the first tenant's never serves the next."""
    from openfeature.evaluation_context import EvaluationContext

    client = flagwarden.configure(governed_project(project, serve=True, policy={"unit": "tenant"}))
    stage(50)
    tenants = [f"tenant-{i}" for i in range(12)]
    with flagwarden.run(RUN):
        for tenant in tenants:
            context = EvaluationContext(attributes={"tenant": tenant})
            got = flagwarden.assign(FLAG, KEYS[:20], False, context=context)
            want = client.get_boolean_value(FLAG, False, context.merge(EvaluationContext("k")))
            assert got == [want] * 20, tenant
        assert flagwarden.plan(FLAG, "off").default == "off"  # its own pin, its own type
    assert len(pins()) == len(tenants) + 1


def test_a_pin_that_says_killed_is_replaced(project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    first = flagwarden.plan(FLAG, False, run_id=RUN)
    store = flagwarden.current().governed.cache.store
    assert store is not None
    ((key, raw),) = pins().items()
    assert store.put_document(
        f"run:{RUN}", key, json.dumps({**json.loads(raw), "killed": True}), expected=raw
    )
    runs._memo.clear()  # as a process that never read it
    again = flagwarden.plan(FLAG, False, run_id=RUN)
    assert again.pinned and not again.killed and again.apply(KEYS) == first.apply(KEYS)
    assert json.loads(pins()[key])["killed"] is False


def test_an_unreachable_store_never_stops_the_run(project: Project):
    flagwarden.configure(governed_project(project, serve=True, state="redis://127.0.0.1:1/0"))
    with capture_logs() as logs, flagwarden.run(RUN):
        assert flagwarden.assign(FLAG, KEYS[:100], True) == [False] * 100  # stage 0: control
    assert [e["run"] for e in logs if e["event"] == "flagwarden.run_pin_failed"] == [RUN]


@pytest.mark.parametrize("bad", ["", "  ", "a\nb", "x" * 201, 7])
def test_a_run_id_is_printable_text(bad):
    with pytest.raises(ValueError, match="run id"), flagwarden.run(bad):  # type: ignore[arg-type]
        pass


def test_the_run_is_the_blocks_only(project: Project):
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    with flagwarden.run(RUN):
        assert flagwarden.governance.runs.current_run() == RUN
        with flagwarden.run("inner"):
            assert flagwarden.plan(FLAG, False).run_id == "inner"
        assert flagwarden.plan(FLAG, False).run_id == RUN
    assert flagwarden.plan(FLAG, False).run_id is None


SECRET_CONTEXT = EvaluationContext("svc-account", {"tenant": "acme", "api_token": "tok-SECRET"})


def test_a_pinned_plan_carries_the_callers_context_only_when_asked_per_key(project: Project):
    """As an unpinned plan: a bucket plan carries no context (it would travel with a job's
    closure to every worker, secrets included), whether pinned now, read from this process's
    memo or from the store."""
    flagwarden.configure(governed_project(project, serve=True))
    stage(25)
    unpinned = flagwarden.plan(FLAG, False, context=SECRET_CONTEXT)
    assert (unpinned.mode, unpinned.context, unpinned.context_key) == ("bucket", {}, None)
    for attempt in ("pinned now", "from the memo", "from the store"):
        if attempt == "from the store":
            runs._memo.clear()
        pin = flagwarden.plan(FLAG, False, context=SECRET_CONTEXT, run_id=RUN)
        assert pin.pinned and pin.mode == "bucket", attempt
        assert (pin.context, pin.context_key) == ({}, None), attempt
        assert b"tok-SECRET" not in pickle.dumps(pin), attempt
        assert pin.apply(KEYS) == unpinned.apply(KEYS)


def test_a_pinned_per_key_plan_keeps_the_callers_context(
    project: Project, ld_server: LaunchDarklyServer
):
    flagwarden.configure(key_rule_project(project, ld_server))
    stage(100)
    for _ in range(2):  # pinned now, then from the memo
        pin = flagwarden.plan(FLAG, False, context=SECRET_CONTEXT, run_id=RUN)
        assert pin.pinned and pin.mode == "per_key"
        assert pin.context == SECRET_CONTEXT.attributes and pin.context_key == "svc-account"
