"""At stage 100, live, a policy changes no answer of the vendor: value, variant, reason, error.

Checked over a flag file with every kind of flagd flag (boolean, string, integer, float, object,
targeting rules, fractional, disabled, no defaultVariant), for contexts with and without the
policy's unit, against the same file evaluated with no policy at all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from tests.conftest import Project

FLAGS: dict[str, Any] = {
    "bool-flag": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    },
    "string-flag": {
        "state": "ENABLED",
        "variants": {"a": "geo-v1", "b": "geo-v2"},
        "defaultVariant": "b",
    },
    "int-flag": {
        "state": "ENABLED",
        "variants": {"small": 500, "large": 5000},
        "defaultVariant": "large",
    },
    "float-flag": {
        "state": "ENABLED",
        "variants": {"lo": 0.25, "hi": 0.75},
        "defaultVariant": "hi",
    },
    "object-flag": {
        "state": "ENABLED",
        "variants": {"v1": {"model": "v1", "k": 3}, "v2": {"model": "v2", "k": 5}},
        "defaultVariant": "v2",
    },
    "targeted-flag": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "on", "off"]},
    },
    "fractional-flag": {
        "state": "ENABLED",
        "variants": {"red": "red", "blue": "blue", "green": "green"},
        "defaultVariant": "red",
        "targeting": {"fractional": [["red", 30], ["blue", 30], ["green", 40]]},
    },
    "disabled-flag": {
        "state": "DISABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    },
    "no-default-flag": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "on", None]},
    },
}
# How each flag is asked for: type getter, the caller's default, and the policy's arms.
ASKED: dict[str, tuple[str, Any, Any, Any]] = {
    "bool-flag": ("boolean", False, False, True),
    "string-flag": ("string", "none", "geo-v1", "geo-v2"),
    "int-flag": ("integer", 1, 500, 5000),
    "float-flag": ("float", 0.0, 0.25, 0.75),
    "object-flag": ("object", {}, {"model": "v1", "k": 3}, {"model": "v2", "k": 5}),
    "targeted-flag": ("boolean", False, False, True),
    "fractional-flag": ("string", "none", "red", "green"),  # "blue" is outside the policy
    "disabled-flag": ("boolean", True, False, True),
    "no-default-flag": ("boolean", True, False, True),
}
CONTEXTS = [
    EvaluationContext(),
    *(EvaluationContext(f"order-{i}") for i in range(60)),
    *(EvaluationContext(f"order-{i}", {"tier": "gold", "tenant": "acme"}) for i in range(20)),
    EvaluationContext(attributes={"tier": "gold"}),
    EvaluationContext(attributes={"tenant": "globex"}),
]


def answers(client: Any) -> list[tuple[Any, ...]]:
    found = []
    for flag, (kind, default, _, _) in ASKED.items():
        for ctx in CONTEXTS:
            d = getattr(client, f"get_{kind}_details")(flag, default, ctx)
            found.append((flag, d.value, d.variant, str(d.reason), d.error_code))
        # A boolean flag asked for as a string: the type mismatch passes through too.
        d = client.get_string_details(flag, "x", CONTEXTS[1])
        found.append((flag, "as-string", d.value, d.variant, str(d.reason), d.error_code))
    return found


def write_project(project: Project, governed: bool, unit: str) -> None:
    (project.root / "flags.json").write_text(json.dumps({"flags": FLAGS}))
    project.profile("file", {"type": "file", "path": "../flags.json"})
    policies = project.root / "policies"
    policies.mkdir(exist_ok=True)
    for path in policies.glob("*.yaml"):
        path.unlink()
    if governed:
        for flag, (_, _, control, treatment) in ASKED.items():
            policy = {
                "flag": flag,
                "owner": "data-platform@example.com",
                "expires": "2099-01-01",
                "variants": {"control": control, "treatment": treatment},
                "unit": unit,
                "stages": [1, 50, 100],
            }
            (policies / f"{flag}.yaml").write_text(yaml.safe_dump(policy))
    project.config("file", fallback={"snapshot": None}, unregistered="allow")


@pytest.mark.parametrize("unit", ["targeting_key", "tenant"])
def test_stage_100_changes_no_answer(project: Project, unit: str):
    write_project(project, governed=False, unit=unit)
    vendor = answers(flagwarden.configure(project.root / "flagwarden.yaml"))
    flagwarden.shutdown()

    write_project(project, governed=True, unit=unit)
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    runtime = flagwarden.current()
    rollout = runtime.rollout
    for flag in ASKED:
        rollout.advance(flag, actor="t", reason="t", to=100, force=True)
    governed = answers(client)
    assert governed == vendor
    # Where the flag file changed its answer by context, so did the governed one.
    assert len({a[1] for a in governed if a[0] == "fractional-flag" and len(a) == 5}) == 3
    assert {a[1] for a in governed if a[0] == "no-default-flag" and len(a) == 5} == {True}
    # Every answer still says what the policy made of it.
    d = client.get_string_details("fractional-flag", "none", EvaluationContext("order-7"))
    arm = {"red": "control", "green": "treatment", "blue": "none"}[d.value]
    assert d.flag_metadata["flagwarden.arm"] == arm
    assert d.flag_metadata["flagwarden.stage"] == 100
    assert d.flag_metadata["flagwarden.capped"] is False


def test_below_100_the_same_flags_are_enforced(project: Project):
    """The control: the comparison above can fail, because below 100 answers do change."""
    write_project(project, governed=False, unit="targeting_key")
    vendor = answers(flagwarden.configure(project.root / "flagwarden.yaml"))
    flagwarden.shutdown()
    write_project(project, governed=True, unit="targeting_key")
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    for flag in ASKED:
        flagwarden.current().rollout.advance(flag, actor="t", reason="t", to=50, force=True)
    assert answers(client) != vendor
