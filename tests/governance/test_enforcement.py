"""The policy decides what is served: stage cap, kill, unknown variants, units, unregistered."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

import flagwarden
from flagwarden.governance.bucketing import bucket
from tests.conftest import POLICY, Project, governed_project

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
    rollout.cache.put(after)


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
                assert details.variant == "treatment"
            else:
                assert details.flag_metadata["flagwarden.capped"] is True
                assert details.reason == Reason.SPLIT
        p = stage / 100
        sigma = math.sqrt(n * p * (1 - p)) or 1
        assert abs(len(admitted) - n * p) < 4 * sigma, (stage, len(admitted))
        assert previous <= admitted  # monotone: in at 5% stays in at 25%
        previous = admitted
    assert details.flag_metadata["flagwarden.stage"] == 100


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


def test_control_answers_pass_through(project):
    client = configure(project, serve=False)
    set_stage(100)
    details = client.get_boolean_details(FLAG, True, EvaluationContext("u"))
    assert (details.value, details.variant) == (False, "control")
    assert details.flag_metadata["flagwarden.capped"] is False


def test_unknown_variant_is_control_and_a_violation(project):
    policy = {"variants": {"control": "geo-v1", "treatment": "geo-v2"}}
    client = configure(project, serve="geo-v3", policy=policy)
    set_stage(100)
    details = client.get_string_details(FLAG, "geo-v2", EvaluationContext("u"))
    assert (details.value, details.variant) == ("geo-v1", "control")
    assert details.flag_metadata["flagwarden.capped"] is True
    violations = flagwarden.current().governed.violations
    violations.flush()
    assert violations.totals[(FLAG, "unknown_variant")] == 1
    records = flagwarden.current().governance.audit.records()
    assert any(r.kind == "violation" and r.data["kind"] == "unknown_variant" for r in records)


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
    assert no_tenant.value is False and no_tenant.flag_metadata["flagwarden.capped"] is True


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


def test_bad_policies_are_config_errors(project):
    governed_project(project)
    bad = {**POLICY, "flag": "other", "stages": [5, 1]}
    (project.root / "policies" / "other.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(flagwarden.ConfigError, match=r"other.yaml: stages: .*strictly ascending"):
        flagwarden.configure(project.root / "flagwarden.yaml")
