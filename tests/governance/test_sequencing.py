"""Rollout sequencing across pipeline components: ``requires`` in a policy.

A dependant advances only while each prerequisite stands at its stage; a kill or a rollback of
a prerequisite below that stage pauses the live dependants, in the same act, audited.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from flagwarden.governance.rollout import Rollout, TransitionRefused
from tests.conftest import POLICY, Project, governed_project, run_cli

SCORING = POLICY["flag"]
VALIDATION = "new-validation"


def write_policies(project: Project, state_url: str, requires: list[dict]) -> None:
    governed_project(project, state=state_url, policy={"requires": requires, "soak": "0s"})
    validation = {**POLICY, "flag": VALIDATION, "soak": "0s"}
    (project.root / "policies" / f"{VALIDATION}.yaml").write_text(yaml.safe_dump(validation))


@pytest.fixture
def governance(project: Project, state_url: str):
    write_policies(project, state_url, [{"flag": VALIDATION, "stage": 50}])
    gov = Governance.open(load_settings(project.root / "flagwarden.yaml"))
    yield gov
    gov.close()


def climb(rollout: Rollout, flag: str, to: float) -> None:
    while rollout.state(flag).stage < to:
        rollout.advance(flag, actor="t", reason="climb")


def test_advance_is_refused_until_the_prerequisite_stands(governance: Governance):
    rollout = governance.rollout()
    with pytest.raises(TransitionRefused, match=r"requires new-validation at 50% \(it is at 0%\)"):
        rollout.advance(SCORING, actor="a", reason="go")
    climb(rollout, VALIDATION, 25)
    with pytest.raises(TransitionRefused, match=r"new-validation at 50% \(it is at 25%\)"):
        rollout.advance(SCORING, actor="a", reason="go")
    climb(rollout, VALIDATION, 50)
    assert rollout.advance(SCORING, actor="a", reason="go").after.stage == 1
    rollout.kill(VALIDATION, actor="a", reason="bad rows")  # pauses new-scoring-model
    rollout.resume(SCORING, actor="a", reason="look again")
    with pytest.raises(TransitionRefused, match=r"\(it is killed\)"):
        rollout.advance(SCORING, actor="a", reason="go")
    forced = rollout.advance(SCORING, actor="a", reason="we know", force=True)
    assert [v.kind for v in forced.violations] == ["prerequisite_short"]


def test_a_kill_of_the_prerequisite_pauses_live_dependants(governance: Governance):
    rollout = governance.rollout()
    climb(rollout, VALIDATION, 50)
    climb(rollout, SCORING, 5)
    done = rollout.kill(VALIDATION, actor="erin", reason="bad rows")
    (paused,) = done.cascade
    assert paused.after.flag == SCORING and paused.after.paused
    assert paused.after.stage == 5  # paused, not rolled back
    state = rollout.state(SCORING)
    assert state.paused and state.updated_by == "erin"
    assert state.reason == f"prerequisite {VALIDATION} was killed"
    (record,) = [
        r for r in governance.audit.records(flag=SCORING) if r.data.get("action") == "pause"
    ]
    assert record.actor == "erin"
    assert record.data["cause"] == {"flag": VALIDATION, "action": "kill"}
    # A second kill changes nothing, and pauses nothing again.
    assert not rollout.kill(VALIDATION, actor="erin", reason="again").cascade


def test_a_rollback_below_the_needed_stage_pauses_dependants(governance: Governance):
    rollout = governance.rollout()
    climb(rollout, VALIDATION, 100)
    climb(rollout, SCORING, 1)
    assert not rollout.rollback(VALIDATION, actor="a", reason="partial", to=50).cascade
    assert not rollout.state(SCORING).paused  # 50% still satisfies "stage: 50"
    done = rollout.rollback(VALIDATION, actor="a", reason="more", to=25)
    assert [t.after.flag for t in done.cascade] == [SCORING]
    assert "fell to 25% (needs 50%)" in rollout.state(SCORING).reason


def test_dependants_not_yet_started_are_left_alone(governance: Governance):
    rollout = governance.rollout()
    climb(rollout, VALIDATION, 50)
    assert not rollout.kill(VALIDATION, actor="a", reason="x").cascade
    assert not rollout.state(SCORING).paused


def test_the_cli_says_what_it_paused(project: Project):
    write_policies(project, f"sqlite:///{project.root}/state.db", [{"flag": VALIDATION}])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(project.root / "flagwarden.yaml", *args, actor="ops")

    refused = cli("advance", SCORING, "--reason", "go")
    assert refused.returncode == 1
    assert "requires new-validation at 100% (it is at 0%)" in refused.stderr
    assert cli("advance", VALIDATION, "--reason", "all", "--to", "100", "--force").returncode == 0
    assert cli("advance", SCORING, "--reason", "go").returncode == 0
    killed = cli("kill", VALIDATION, "--reason", "bad rows")
    assert killed.returncode == 0
    assert (
        f"also {SCORING} paused at 1%: no advance until resumed (version 2), "
        f"because prerequisite {VALIDATION} was killed"
    ) in killed.stdout
