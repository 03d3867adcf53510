"""Policy files: validation with file and field, durations, one policy per flag."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import yaml

from flagwarden.errors import ConfigError
from flagwarden.governance.policy import load_policies, parse_duration
from tests.conftest import POLICY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("45s", timedelta(seconds=45)),
        ("500ms", timedelta(milliseconds=500)),
        (90, timedelta(seconds=90)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


BAD = [
    ("stages descending", {"stages": [5, 1]}, "stages", "strictly ascending"),
    ("stage over 100", {"stages": [50, 150]}, "stages", "(0, 100]"),
    ("stage zero", {"stages": [0, 50]}, "stages", "(0, 100]"),
    ("no owner", {"owner": " "}, "owner", "owner is required"),
    ("bad soak", {"soak": "soon"}, "soak", "duration"),
    ("bad expiry", {"expires": "someday"}, "expires", "date"),
    (
        "same variants",
        {"variants": {"control": True, "treatment": True}},
        "variants",
        "must differ",
    ),
    (
        "mixed variant types",
        {"variants": {"control": False, "treatment": "on"}},
        "variants",
        "same type",
    ),
    ("guard without source", {"guards": [{"name": "g", "max": 1}]}, "guards.0", "exactly one of"),
    (
        "guard without limit",
        {"guards": [{"name": "g", "metric": "null_rate"}]},
        "guards.0",
        "'max' or a 'min'",
    ),
    ("unknown field", {"stagez": [1]}, "stagez", "not a known field"),
    ("bad on_breach", {"on_breach": "panic"}, "on_breach", "rollback"),
]


@pytest.mark.parametrize(("case", "change", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_names_file_and_field(tmp_path, case, change, field, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**POLICY, **change}))
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert message in str(info.value)


def test_one_policy_per_flag(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(POLICY))
    with pytest.raises(ConfigError, match=r"already has a policy in .*a\.yaml"):
        load_policies(tmp_path)


def test_good_policy(tmp_path):
    (tmp_path / "p.yaml").write_text(
        yaml.safe_dump(
            {
                **POLICY,
                "guards": [
                    {"name": "nulls", "metric": "null_rate", "max": 0.02, "min_samples": 1000}
                ],
            }
        )
    )
    policy = load_policies(tmp_path)[POLICY["flag"]]
    assert policy.soak == timedelta(minutes=30)
    assert (
        policy.next_stage(0) == 1 and policy.next_stage(5) == 25 and policy.next_stage(100) is None
    )
    assert policy.previous_stage(25) == 5 and policy.previous_stage(1) == 0
    assert not policy.is_expired(date(2026, 1, 1))
    assert policy.guards[0].min_samples == 1000
    assert load_policies(tmp_path / "missing") == {}
