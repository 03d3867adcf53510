"""The per-batch routing every engine uses (BatchRouter) and the workers' kill check, without
an engine: outcome codes from the bucket itself, a kill that stays for the job, back-off from
a store that does not answer, no store created on a worker."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest
from structlog.testing import capture_logs

import flagwarden
from flagwarden.governance.batches import CAPPED, MISSING, TREATED, BatchRouter
from flagwarden.governance.killcheck import FlagKilled, KillCheck, kill_check
from tests.conftest import POLICY, Project, governed_project
from tests.governance.test_assign import KEYS, stage

FLAG = POLICY["flag"]


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
