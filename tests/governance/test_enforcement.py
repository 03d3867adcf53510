"""The policy decides what is served: stage cap, kill, unknown variants, units, unregistered."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

import flagwarden
from flagwarden.governance.bucketing import bucket
from tests.conftest import POLICY, ROOT, Project, governed_project

FLAG = POLICY["flag"]


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """A from-scratch MurmurHash3 x86 32-bit, to check bucketing against PRODUCT.md's formula."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed
    rounded = len(data) - len(data) % 4
    for i in range(0, rounded, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = 0
    tail = data[rounded:]
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if tail:
        k ^= tail[0]
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def test_bucketing_is_the_product_formula():
    for i in range(2000):
        unit = f"order-{i}-ü"
        expected = murmur3_x86_32(f"{FLAG}:{unit}".encode()) % 100_000
        assert bucket(FLAG, unit) == expected


def configure(project: Project, **kwargs):
    config = governed_project(project, **kwargs)
    return flagwarden.configure(config)


def set_stage(stage: float, *, killed: bool = False) -> None:
    rollout = flagwarden.current().rollout
    state = rollout.state(FLAG)
    after = state.changed(actor="test", reason="test", stage=stage, killed=killed)
    assert rollout.store.compare_and_set(after)
    rollout.cache.put(after, rollout.cache.ticket())


@pytest.mark.slow
def test_stage_cap_holds_while_vendor_serves_treatment_to_everyone(project):
    client = configure(project, serve=True)
    n = 100_000
    contexts = [EvaluationContext(f"unit-{i}") for i in range(n)]
    previous: set[int] = set()
    for stage in POLICY["stages"]:
        set_stage(stage)
        admitted = set()
        for i, ctx in enumerate(contexts):
            details = client.get_boolean_details(FLAG, False, ctx)
            if details.value:
                admitted.add(i)
                # The vendor's answer is served as it came: its variant name and reason.
                assert (details.variant, details.reason) == ("served", Reason.STATIC)
                assert details.flag_metadata["flagwarden.arm"] == "treatment"
            else:
                assert details.flag_metadata["flagwarden.capped"] is True
                assert details.flag_metadata["flagwarden.arm"] == "control"
                assert (details.variant, details.reason) == ("control", Reason.SPLIT)
        p = stage / 100
        sigma = math.sqrt(n * p * (1 - p)) or 1
        assert abs(len(admitted) - n * p) < 4 * sigma, (stage, len(admitted))
        assert previous <= admitted  # monotone: in at 5% stays in at 25%
        previous = admitted
    assert details.flag_metadata["flagwarden.stage"] == 100
    # Capping is the mechanism: counted, never a violation.
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert not violations.totals


def test_each_unit_is_served_by_its_bucket_whatever_the_key(project):
    """The evaluation path's inline decision (a boolean treatment bucketed by the targeting
    key) and the plan's own (``admits``, taken for number keys) give every unit exactly the
    product formula's arm."""
    client = configure(project, serve=True)
    set_stage(25)
    plan = flagwarden.current().governed.plan(FLAG)
    assert plan is not None
    keys: list[object] = [f"unit-{i}" for i in range(3000)]
    keys += ["é" * 200, "𝄞" * 7, "a", " ", str(2**70)]
    keys += [i * 7919 for i in range(1, 500)]  # targeting keys given as numbers
    for key in keys:
        details = client.get_boolean_details(FLAG, False, EvaluationContext(key))  # type: ignore[arg-type]
        inside = bucket(FLAG, str(key)) < 25_000
        assert plan.admits(str(key)) is inside
        assert details.value is inside, key
        assert details.flag_metadata["flagwarden.capped"] is not inside
        assert details.flag_metadata["flagwarden.arm"] == ("treatment" if inside else "control")


def test_capping_is_counted_not_a_violation(project):
    from prometheus_client import REGISTRY

    def capped_total() -> float:
        value = REGISTRY.get_sample_value(
            "flagwarden_capped_evaluations_total", {"feature_flag_key": FLAG}
        )
        return value or 0.0

    client = configure(project, serve=True)
    set_stage(5)
    before = capped_total()
    answers = [
        client.get_boolean_value(FLAG, False, EvaluationContext(f"u{i}")) for i in range(400)
    ]
    capped = answers.count(False)
    assert 340 < capped < 400
    assert capped_total() - before == capped
    runtime = flagwarden.current()
    runtime.governed.violations.flush()
    runtime.telemetry.summary.flush()
    assert not runtime.governed.violations.totals
    records = runtime.governance.audit.records()
    assert not [r for r in records if r.kind == "violation"]
    (summary,) = [r for r in records if r.kind == "exposure_summary"]
    rows = {(row["arm"], row["capped"]): row["count"] for row in summary.data["rows"]}
    assert rows == {("control", True): capped, ("treatment", False): 400 - capped}


# A healthy rollout, as a pipeline process lives it: flagwarden's own logging set-up (JSON
# lines on stderr), the stages advanced one at a time after their soak (0s), 300 units asked
# at each, shutdown at the end (it flushes exposures, summary and violations). Prints what
# it was served and what its Prometheus counters say.
HEALTHY_RUN = """
import json, sys, time
from openfeature.evaluation_context import EvaluationContext
from prometheus_client import REGISTRY
import flagwarden

FLAG = "new-scoring-model"

def total(name, **labels):
    return sum(
        s.value for m in REGISTRY.collect() for s in m.samples
        if s.name == name and labels.items() <= s.labels.items()
    )

client = flagwarden.configure(sys.argv[1])
runtime = flagwarden.current()
capped = treated = 0
for stage in (1, 5, 25, 50):
    done = runtime.rollout.advance(FLAG, actor="alice", reason="guards healthy")
    assert done.changed and done.after.stage == stage and not done.violations, done
    deadline = time.monotonic() + 10
    while runtime.governed.state(FLAG).stage != stage:
        assert time.monotonic() < deadline, "the stage never reached the worker"
        time.sleep(0.01)
    for i in range(300):
        details = client.get_boolean_details(FLAG, False, EvaluationContext(f"{stage}-{i}"))
        capped += details.flag_metadata["flagwarden.capped"]
        treated += details.value
flagwarden.shutdown()
print(json.dumps({
    "capped": capped,
    "treated": treated,
    "capped_total": total("flagwarden_capped_evaluations_total", feature_flag_key=FLAG),
    "violations_total": total("flagwarden_policy_violations_total"),
}))
"""


def test_capping_is_never_a_warning_nor_a_violation_in_a_healthy_rollout(project):
    """A healthy rollout 1% -> 5% -> 25% -> 50% (each advance soaked, none forced) while the
    vendor serves the treatment to everyone: most answers are capped. On the process's JSON
    stderr, through its shutdown, no line is at WARNING or above and none speaks of capping
    or violations; the capped answers are said at INFO (their exposures and the summary).
    ``flagwarden_capped_evaluations_total`` counts every capped answer and
    ``flagwarden_policy_violations_total`` counts nothing."""
    config = governed_project(project, serve=True, policy={"soak": "0s"})
    run = subprocess.run(
        [sys.executable, "-c", HEALTHY_RUN, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    said = json.loads(run.stdout)
    capped = said["capped"]
    assert capped + said["treated"] == 1200 and 900 < capped < 1100  # ~99, 95, 75, 50 in 100
    assert said["capped_total"] == capped
    assert said["violations_total"] == 0
    lines = [json.loads(line) for line in run.stderr.splitlines()]  # every line is JSON
    loud = [e for e in lines if e["level"] not in ("debug", "info")]
    assert loud == [], loud
    assert not [e for e in lines if "violation" in e["event"] or "capp" in e["event"]]
    exposures = [e for e in lines if e["event"] == "feature_flag.evaluation"]
    said_capped = [e for e in exposures if e["feature_flag.result.reason"] == "split"]
    assert len(exposures) == 1200 and len(said_capped) == capped
    assert {(e["level"], e["flagwarden.arm"]) for e in said_capped} == {("info", "control")}
    summaries = [e for e in lines if e["event"] == "feature_flag.summary"]
    assert summaries and {e["level"] for e in summaries} == {"info"}
    rows = [row for e in summaries for row in e["rows"]]
    assert sum(row["count"] for row in rows if row["capped"]) == capped


def test_kill_serves_control_for_everyone(project):
    client = configure(project, serve=True)
    set_stage(100, killed=True)
    for i in range(200):
        details = client.get_boolean_details(FLAG, True, EvaluationContext(f"u{i}"))
        assert (details.value, details.reason, details.variant) == (
            False,
            Reason.DISABLED,
            "control",
        )
        assert details.flag_metadata["flagwarden.killed"] is True
        assert details.flag_metadata["flagwarden.source"] == "file"


@pytest.mark.parametrize("stage", [5, 100])
def test_control_answers_pass_through(project, stage):
    client = configure(project, serve=False)
    set_stage(stage)
    details = client.get_boolean_details(FLAG, True, EvaluationContext("u"))
    assert (details.value, details.variant, details.reason) == (False, "served", Reason.STATIC)
    assert details.flag_metadata["flagwarden.capped"] is False
    assert details.flag_metadata["flagwarden.arm"] == "control"


def test_unknown_variant_is_control_and_a_violation(project):
    policy = {"variants": {"control": "geo-v1", "treatment": "geo-v2"}}
    client = configure(project, serve="geo-v3", policy=policy)
    set_stage(50)
    details = client.get_string_details(FLAG, "geo-v2", EvaluationContext("u"))
    assert (details.value, details.variant, details.reason) == ("geo-v1", "control", "DEFAULT")
    assert details.flag_metadata["flagwarden.capped"] is False
    assert details.flag_metadata["flagwarden.arm"] == "control"
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals[(FLAG, "unknown_variant")] == 1
    records = flagwarden.current().governance.audit.records()
    assert any(r.kind == "violation" and r.data["kind"] == "unknown_variant" for r in records)


def test_unknown_variant_at_stage_100_passes_through_and_is_still_a_violation(project):
    policy = {"variants": {"control": "geo-v1", "treatment": "geo-v2"}}
    client = configure(project, serve="geo-v3", policy=policy)
    set_stage(100)
    details = client.get_string_details(FLAG, "geo-v2", EvaluationContext("u"))
    assert (details.value, details.variant, details.reason) == ("geo-v3", "served", "STATIC")
    assert details.flag_metadata["flagwarden.arm"] == "none"
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals[(FLAG, "unknown_variant")] == 1


@pytest.mark.parametrize("definition", ["disabled", "no default variant"])
def test_a_flag_with_nothing_to_serve_gives_the_callers_default_without_a_violation(
    project, definition
):
    """A disabled flag, or one without a default variant, answers the caller's default: that
    is not a value outside the policy."""
    policy = {"variants": {"control": "geo-v1", "treatment": "geo-v2"}}
    configure(project, serve="geo-v2", policy=policy)
    flag = {"state": "ENABLED", "variants": {"a": "geo-v1", "b": "geo-v2"}}
    if definition == "disabled":
        flag = {**flag, "state": "DISABLED", "defaultVariant": "b"}
    (project.root / "flags.json").write_text(json.dumps({"flags": {FLAG: flag}}))
    runtime = flagwarden.current()
    runtime.provider.vendor.reload_if_changed()
    for stage in (5, 100):
        set_stage(stage)
        details = runtime.client.get_string_details(FLAG, "caller-default", EvaluationContext("u"))
        assert details.value == "caller-default"
        assert details.reason in ("DISABLED", "DEFAULT")
        assert details.flag_metadata["flagwarden.arm"] == "none"
        assert "flagwarden.violation" not in details.flag_metadata
    runtime.governed.violations.flush()
    assert not runtime.governed.violations.totals


def test_missing_unit_is_a_violation_below_100_only(project):
    client = configure(project, serve=True)
    set_stage(50)
    below = client.get_boolean_details(FLAG, True, EvaluationContext())
    assert below.value is False
    # Not capping (that is the stage at work): a violation, and the answer says which.
    assert below.flag_metadata["flagwarden.capped"] is False
    assert below.flag_metadata["flagwarden.violation"] == "missing_unit"
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals == {(FLAG, "missing_unit"): 1}
    set_stage(100)
    at_100 = client.get_boolean_details(FLAG, False, EvaluationContext())
    assert (at_100.value, at_100.variant, at_100.reason) == (True, "served", "STATIC")
    violations.flush()
    assert violations.totals == {(FLAG, "missing_unit"): 1}


def test_paused_at_100_still_admits_everyone_but_enforces_the_arms(project):
    policy = {"variants": {"control": "geo-v1", "treatment": "geo-v2"}}
    client = configure(project, serve="geo-v2", policy=policy)
    rollout = flagwarden.current().rollout
    set_stage(100)
    rollout.pause(FLAG, actor="test", reason="hold at 100")
    details = client.get_string_details(FLAG, "x", EvaluationContext())
    assert (details.value, details.variant) == ("geo-v2", "served")
    assert details.flag_metadata["flagwarden.arm"] == "treatment"


def test_paused_at_100_admits_every_key_unhashed_with_boolean_arms(project):
    """Paused at 100 everyone is admitted without hashing the unit: even a targeting key
    that cannot be encoded (a lone surrogate) gets the treatment, as every other key does."""
    client = configure(project, serve=True)
    set_stage(100)
    flagwarden.current().rollout.pause(FLAG, actor="test", reason="hold at 100")
    for key in ("order-1", "user-\ud800", ""):
        details = client.get_boolean_details(FLAG, False, EvaluationContext(key))
        assert (details.value, details.error_code) == (True, None), key
        assert details.flag_metadata["flagwarden.arm"] == "treatment"


def test_unit_attribute_buckets_whole_tenants(project):
    client = configure(project, serve=True, policy={"unit": "tenant"})
    set_stage(50)
    for tenant in ("acme", "globex", "initech", "umbrella"):
        answers = {
            client.get_boolean_value(FLAG, False, EvaluationContext(f"rec-{i}", {"tenant": tenant}))
            for i in range(50)
        }
        assert answers == {bucket(FLAG, tenant) < 50_000}
    no_tenant = client.get_boolean_details(FLAG, True, EvaluationContext("rec-1"))
    assert no_tenant.value is False
    assert no_tenant.flag_metadata["flagwarden.violation"] == "missing_unit"
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals == {(FLAG, "missing_unit"): 1}


@pytest.mark.parametrize("mode", ["allow", "warn", "deny"])
def test_unregistered_flags(project, mode):
    client = configure(project, serve=True, unregistered=mode)
    free = {"state": "ENABLED", "variants": {"a": True}, "defaultVariant": "a"}
    (project.root / "flags.json").write_text(json.dumps({"flags": {"free-flag": free}}))
    flagwarden.current().provider.vendor.reload_if_changed()
    details = client.get_boolean_details("free-flag", False, EvaluationContext("u"))
    assert details.value is (mode != "deny")
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals[("free-flag", "unregistered")] == (0 if mode == "allow" else 1)


def test_flagwarden_kill_env_needs_no_store(project, monkeypatch):
    monkeypatch.setenv("FLAGWARDEN_KILL", f"other-flag, {FLAG}")
    # A state store that cannot be reached at all.
    client = configure(project, serve=True, state="redis://127.0.0.1:1/0")
    details = client.get_boolean_details(FLAG, True, EvaluationContext("u"))
    assert (details.value, details.reason) == (False, Reason.DISABLED)
    assert details.flag_metadata["flagwarden.killed"] is True


def test_store_unreachable_at_start_serves_control(project):
    client = configure(project, serve=True, state="redis://127.0.0.1:1/0")
    details = client.get_boolean_details(FLAG, True, EvaluationContext("u"))
    assert details.value is False and details.flag_metadata["flagwarden.stage"] == 0


def test_a_bad_policy_governs_its_flag_with_the_default_and_not_the_others(project):
    governed_project(project)
    bad = {**POLICY, "flag": "other", "stages": [5, 1]}
    (project.root / "policies" / "other.yaml").write_text(yaml.safe_dump(bad))
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    details = client.get_boolean_details("other", True, EvaluationContext("u"))
    assert (details.value, details.reason) == (True, "DISABLED")
    assert details.flag_metadata["flagwarden.policy_error"].startswith("other.yaml: stages:")
    governed = client.get_boolean_details(FLAG, False, EvaluationContext("u"))
    assert governed.flag_metadata["flagwarden.stage"] == 0  # still governed by its policy


def test_violations_whose_audit_append_failed_are_appended_later_and_counted_once(project):
    import sqlite3

    from prometheus_client import REGISTRY

    from flagwarden.audit.log import AuditLog

    def counted() -> float:
        labels = {"feature_flag_key": FLAG, "kind": "unknown_variant"}
        return REGISTRY.get_sample_value("flagwarden_policy_violations_total", labels) or 0.0

    policy = {"variants": {"control": "geo-v1", "treatment": "geo-v2"}}
    client = configure(project, serve="geo-v3", policy=policy)
    set_stage(50)
    before = counted()
    audit_db = project.root / ".flagwarden" / "audit.db"
    conn = sqlite3.connect(audit_db)
    conn.execute("ALTER TABLE flagwarden_audit RENAME TO away")  # the audit store breaks
    conn.commit()
    conn.close()
    client.get_string_details(FLAG, "x", EvaluationContext("u"))
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert counted() - before == 1
    conn = sqlite3.connect(audit_db)
    conn.execute("ALTER TABLE away RENAME TO flagwarden_audit")  # and comes back
    conn.commit()
    conn.close()
    violations.flush()
    violations.flush()
    assert counted() - before == 1  # counted once, whatever the retries
    log = AuditLog(f"sqlite:///{audit_db}")
    try:
        (record,) = [r for r in log.records() if r.kind == "violation"]
    finally:
        log.close()
    assert (record.data["kind"], record.data["count"]) == ("unknown_variant", 1)
