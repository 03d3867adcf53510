"""flagwarden check's policy lints: expiry, stale flags at 100%, unregistered flags."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import yaml
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from flagwarden.config import load_settings
from flagwarden.governance.lint import lint_state
from flagwarden.governance.policy import load_policies
from flagwarden.governance.project import Governance
from flagwarden.governance.state import FlagState
from tests.conftest import POLICY, Project, governed_project, run_cli


def check(project: Project, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(project.root / "flagwarden.yaml", "check", *extra)


def test_expired_flag_is_reported_and_fails_strict(project: Project):
    governed_project(project, policy={"expires": "2020-01-01"})
    result = check(project)
    assert result.returncode == 0
    assert "expired on 2020-01-01" in result.stderr
    assert check(project, "--strict").returncode == 1


def test_stale_flag_at_100_percent(project: Project):
    config = governed_project(project)
    policies = load_policies(project.root / "policies")
    old = datetime.now(UTC) - timedelta(days=45)
    states = {POLICY["flag"]: FlagState(POLICY["flag"], stage=100, stage_entered_at=old)}
    assert "at 100% for 45 days" in lint_state(policies, states)[0]
    fresh = {
        POLICY["flag"]: FlagState(POLICY["flag"], stage=100, stage_entered_at=datetime.now(UTC))
    }
    assert lint_state(policies, fresh) == []
    gov = Governance.open(load_settings(config))
    try:
        assert gov.store.compare_and_set(
            FlagState(POLICY["flag"], stage=100, stage_entered_at=old, version=1)
        )
    finally:
        gov.close()
    result = check(project, "--strict")
    assert result.returncode == 1 and "remove the flag" in result.stderr


def test_unregistered_flags_evaluated_are_listed(project: Project):
    config = governed_project(project)
    flags = yaml.safe_load((project.root / "flags.json").read_text())
    flags["flags"]["rogue-flag"] = {
        "state": "ENABLED",
        "variants": {"a": True},
        "defaultVariant": "a",
    }
    (project.root / "flags.json").write_text(yaml.safe_dump(flags))
    client = flagwarden.configure(config)
    for i in range(5):
        client.get_boolean_value("rogue-flag", False, EvaluationContext(f"u{i}"))
    flagwarden.shutdown()  # flushes the violation counts to the audit log
    result = check(project)
    assert "rogue-flag: evaluated 5 times with no policy" in result.stderr
