"""Metric guards, failure limits, relative limits, unreachable Prometheus, auto-advance, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flagwarden
from flagwarden.config import load_settings
from flagwarden.governance.guards import GuardEvaluator
from flagwarden.governance.measurements import open_measurement_store
from flagwarden.governance.project import Governance
from flagwarden.governance.state import FlagState
from flagwarden.governance.watch import Watch
from tests.conftest import POLICY, Project, governed_project, run_cli, wait_for
from tests.servers.launchdarkly import free_port

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[2]


class Setup:
    def __init__(self, project: Project, policy: dict, query_url: str | None = None) -> None:
        self.config = governed_project(
            project,
            serve=True,
            policy=policy,
            telemetry={"prometheus": {"query_url": query_url}},
        )
        flagwarden.configure(self.config)  # record_metric writes through the runtime
        settings = load_settings(self.config)
        self.governance = Governance.open(settings)
        self.measurements = open_measurement_store(settings.config.state, settings.base_dir)
        self.watch = Watch(self.governance, GuardEvaluator(self.measurements, query_url, timeout=1))
        self.rollout = self.governance.rollout()

    def record(self, value: float, count: int, variant: str = "treatment") -> None:
        flagwarden.record_metric(FLAG, "null_rate", value, variant=variant, count=count)

    def decide(self) -> str:
        (decision,) = self.watch.tick()
        return decision.action

    def close(self) -> None:
        self.measurements.close()
        self.governance.close()


@pytest.fixture
def setup_factory(project: Project):
    made: list[Setup] = []

    def make(policy: dict, query_url: str | None = None) -> Setup:
        made.append(Setup(project, policy, query_url))
        return made[-1]

    yield make
    for s in made:
        s.close()


NULL_GUARD = {"name": "null-rate", "metric": "null_rate", "max": 0.02, "min_samples": 1000}


def test_metric_guard_holds_with_too_few_samples_then_rolls_back(setup_factory):
    s = setup_factory({"guards": [NULL_GUARD]})
    s.rollout.advance(FLAG, actor="t", reason="go", to=25, force=True)
    s.record(0.5, count=400)  # bad, but only 400 of 1000 observations
    assert s.decide() == "hold"
    assert s.rollout.state(FLAG).stage == 25
    s.record(0.5, count=700)
    assert s.decide() == "rollback"
    state = s.rollout.state(FLAG)
    assert (state.stage, state.updated_by) == (0, "flagwarden-watch")
    assert "null-rate=0.5" in state.reason


def test_failure_limit_counts_consecutive_breaches(setup_factory):
    s = setup_factory(
        {"guards": [{**NULL_GUARD, "min_samples": 1, "failure_limit": 3}], "on_breach": "pause"}
    )
    s.rollout.advance(FLAG, actor="t", reason="go")
    s.record(0.5, count=10)
    assert s.decide() == "hold"
    assert s.rollout.state(FLAG).guard_failures["null-rate"] == 1
    assert s.decide() == "hold"
    assert s.rollout.state(FLAG).guard_failures["null-rate"] == 2
    assert s.decide() == "pause"
    assert s.rollout.state(FLAG).paused and s.rollout.state(FLAG).stage == 1
    guard_records = [r for r in s.governance.audit.records(flag=FLAG) if r.kind == "guard"]
    assert len(guard_records) == 3 and guard_records[-1].data["acting"] == ["null-rate"]
    # Still breaching while paused: nothing more to do, nothing more to audit, no exit 3.
    version = s.rollout.state(FLAG).version
    (decision,) = s.watch.tick()
    assert decision.action == "hold" and "paused; still breaching" in decision.detail
    assert s.rollout.state(FLAG).version == version
    assert len([r for r in s.governance.audit.records(flag=FLAG) if r.kind == "guard"]) == 3


def test_relative_to_control(setup_factory):
    guard = {**NULL_GUARD, "min_samples": 100, "max": 0.5, "relative_to_control": True}
    s = setup_factory({"guards": [guard]})
    s.rollout.advance(FLAG, actor="t", reason="go")
    s.record(0.012, count=500)
    assert s.decide() == "hold"  # control has no data yet: inconclusive
    s.record(0.010, count=500, variant="control")
    assert s.decide() == "healthy"  # 0.012 <= 0.010 * 1.5
    s.record(0.030, count=2000)  # the treatment's mean moves to 0.0264
    assert s.decide() == "rollback"


def test_unreachable_prometheus_pauses_then_resumes(setup_factory, prometheus):
    prometheus.start([])
    closed = f"http://127.0.0.1:{free_port()}"
    guard = {"name": "up", "promql": "vector(0)", "max": 1, "window": "0s"}
    s = setup_factory({"guards": [guard]}, query_url=closed)
    s.rollout.advance(FLAG, actor="t", reason="go")
    assert s.decide() == "pause"
    state = s.rollout.state(FLAG)
    assert state.paused and state.stage == 1  # paused, not rolled back
    assert s.decide() == "hold"
    s.watch.evaluator.prometheus_url = prometheus.url  # Prometheus answers again
    assert s.decide() == "resume"
    assert not s.rollout.state(FLAG).paused
    assert s.decide() == "healthy"


def test_the_watch_does_not_resume_while_a_guard_breaches(setup_factory, prometheus):
    """Paused for an unreachable source; the source is back but another guard breaches
    (below its failure_limit): the pause holds, and says why."""
    prometheus.start([])
    closed = f"http://127.0.0.1:{free_port()}"
    guards = [
        {"name": "up", "promql": "vector(0)", "max": 1, "window": "0s"},
        {**NULL_GUARD, "min_samples": 1, "failure_limit": 3},
    ]
    s = setup_factory({"guards": guards}, query_url=closed)
    s.rollout.advance(FLAG, actor="t", reason="go")
    assert s.decide() == "pause"
    s.watch.evaluator.prometheus_url = prometheus.url
    s.record(0.5, count=10)
    (decision,) = s.watch.tick()
    assert decision.action == "hold" and "breaching" in decision.detail
    assert s.rollout.state(FLAG).paused


@pytest.mark.slow
def test_auto_advance_climbs_with_short_soaks(setup_factory):
    policy = {"guards": [{**NULL_GUARD, "min_samples": 10}], "auto_advance": True, "soak": "1s"}
    s = setup_factory(policy)
    s.rollout.advance(FLAG, actor="t", reason="start")
    s.record(0.001, count=50)
    assert s.decide() == "hold"  # soaking
    stages = [s.rollout.state(FLAG).stage]
    deadline = time.monotonic() + 15
    while stages[-1] < 25 and time.monotonic() < deadline:
        time.sleep(0.3)
        if s.decide() == "advance":
            stages.append(s.rollout.state(FLAG).stage)
            # Each stage is judged on what is measured at it: the pipeline keeps reporting.
            wait_for(lambda: flagwarden.current().governed.state(FLAG).stage == stages[-1])
            s.record(0.001, count=50)
    assert stages == [1, 5, 25]
    advances = [
        r for r in s.governance.audit.records(flag=FLAG) if r.data.get("action") == "advance"
    ]
    assert advances[-1].actor == "flagwarden-watch"
    assert advances[-1].data["guards"][0]["verdict"] == "healthy"


def test_watch_stops_cleanly_on_sigterm(project: Project):
    config = governed_project(project, policy={"guards": [NULL_GUARD]})
    proc = subprocess.Popen(
        [sys.executable, "-m", "flagwarden.cli", "watch", "--interval", "0.2", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline().startswith("watching 1 flags")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "stopped" in proc.stdout.read()


def test_record_metric_validates_variant(project: Project):
    flagwarden.configure(governed_project(project))
    with pytest.raises(ValueError, match="control"):
        flagwarden.record_metric(FLAG, "null_rate", 0.1, variant="blue")


def test_bad_promql_says_what_prometheus_said(prometheus):
    from flagwarden.governance.policy import Guard, Policy

    prometheus.start([])
    guard = Guard(name="typo", promql="sum(rate(x[5m])))", max=1)
    policy = Policy.model_validate({**POLICY, "guards": [guard.model_dump()]})
    result = GuardEvaluator(None, prometheus.url).evaluate(policy, guard, FlagState(FLAG))
    assert result.verdict == "unreachable"
    assert "HTTP 400" in result.detail and "parse error" in result.detail


def test_a_rollback_and_a_re_advance_start_a_clean_window(setup_factory):
    """Roll back on a breach, fix the cause, advance again: the next watch judges new data."""
    policy = {"guards": [NULL_GUARD], "auto_advance": True, "soak": "0s"}
    s = setup_factory(policy)
    s.rollout.advance(FLAG, actor="t", reason="go")
    s.record(0.5, count=1000)  # the bug
    assert s.decide() == "rollback"
    assert s.rollout.state(FLAG).stage == 0
    s.rollout.advance(FLAG, actor="t", reason="fixed the null bug")  # back to 1%
    wait_for(lambda: flagwarden.current().governed.state(FLAG).stage == 1)
    # The bad samples are still inside the guard's 15-minute window, but from another stage.
    assert s.decide() == "hold"  # nothing measured at this stage yet
    s.record(0.001, count=1000)
    assert s.decide() == "advance"
    assert s.rollout.state(FLAG).stage == 5


def test_samples_stamped_with_an_old_stage_are_not_judged(setup_factory):
    s = setup_factory({"guards": [NULL_GUARD]})
    s.rollout.advance(FLAG, actor="t", reason="go", to=25, force=True)
    state = s.rollout.state(FLAG)
    # A worker that has not yet seen the change reports under the stage before it.
    s.measurements.add(FLAG, "null_rate", "treatment", 0.9, 5000, stage=0, epoch=1234)
    assert s.decide() == "hold"
    s.measurements.add(
        FLAG, "null_rate", "treatment", 0.9, 5000, stage=25, epoch=state.stage_version
    )
    assert s.decide() == "rollback"


def test_stage_aware_limits_tighten_as_exposure_grows(setup_factory):
    guard = {**NULL_GUARD, "min_samples": 100, "max": {1: 0.05, 25: 0.03, 100: 0.02}}
    s = setup_factory({"guards": [guard]})
    s.rollout.advance(FLAG, actor="t", reason="go", to=5, force=True)
    s.record(0.04, count=500)
    (decision,) = s.watch.tick()
    assert decision.action == "healthy"
    assert (decision.results[0].upper, decision.results[0].stage) == (0.05, 5)  # 1%'s entry
    s.rollout.advance(FLAG, actor="t", reason="next", to=25, force=True)
    s.record(0.04, count=500)
    (decision,) = s.watch.tick()
    assert decision.action == "rollback"
    assert decision.results[0].upper == 0.03
    assert "<= 0.03" in decision.detail


def test_a_promql_guard_waits_until_its_window_is_all_at_this_stage(setup_factory, prometheus):
    prometheus.start([])
    guard = {"name": "up", "promql": "vector(5)", "max": 1, "window": "2s"}
    s = setup_factory({"guards": [guard]}, query_url=prometheus.url)
    s.rollout.advance(FLAG, actor="t", reason="go")
    (decision,) = s.watch.tick()
    assert decision.action == "hold" and "window" in decision.results[0].detail
    time.sleep(2.1)
    assert s.decide() == "rollback"


def test_per_stage_limits_must_cover_the_first_stage():
    from flagwarden.governance.policy import Policy

    with pytest.raises(ValueError, match="no limit for the first stage"):
        Policy.model_validate({**POLICY, "guards": [{**NULL_GUARD, "max": {25: 0.03}}]})
    with pytest.raises(ValueError, match=r"stages in \(0, 100\]"):
        Policy.model_validate({**POLICY, "guards": [{**NULL_GUARD, "max": {0: 0.1, 250: 0.03}}]})


def test_unstamped_measurements_count_from_the_stage_entry(project: Project, redis_url: str):
    """A measurement without a stage stamp (a worker with no policy for the flag reported it)
    counts at whatever stage, from the time the stage was entered; stamped ones only at
    theirs. Same on SQLite and Redis."""
    for url in (f"sqlite:///{project.root}/m.db", redis_url):
        store = open_measurement_store(url)
        store.add("f", "m", "treatment", 0.5, 3, at=10)
        store.add("f", "m", "treatment", 0.25, 1, at=20, stage=5, epoch=7)
        assert store.samples("f", "m", "treatment", 0, epoch=7) == [(0.5, 3), (0.25, 1)]
        assert store.samples("f", "m", "treatment", 0, epoch=8) == [(0.5, 3)]
        assert store.samples("f", "m", "treatment", 15, epoch=7) == [(0.25, 1)]
        assert [(m.stage, m.epoch) for m in store.series("f", "m", 0, 100)] == [
            (None, None),
            (5, 7),
        ]
        store.close()


def test_watch_once_exit_codes_and_json(project: Project):
    config = governed_project(project, policy={"guards": [{**NULL_GUARD, "min_samples": 10}]})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(config, *args)

    quiet = run("watch", "--once")
    assert (quiet.returncode, quiet.stdout) == (0, "new-scoring-model: skip not started\n")
    assert run("advance", FLAG, "--reason", "go").returncode == 0
    flagwarden.configure(config)
    flagwarden.record_metric(FLAG, "null_rate", 0.001, variant="treatment", count=50)
    healthy = run("watch", "--once", "--json")
    assert healthy.returncode == 0
    (decision,) = json.loads(healthy.stdout)
    assert decision["action"] == "healthy"
    assert decision["guards"][0]["verdict"] == "healthy"
    assert decision["guards"][0]["stage"] == 1
    flagwarden.record_metric(FLAG, "null_rate", 0.9, variant="treatment", count=5000)
    acted = run("watch", "--once", "--json")
    assert acted.returncode == 3
    assert json.loads(acted.stdout)[0]["action"] == "rollback"
    assert run("watch", "--once").returncode == 0  # at 0% there is nothing left to do


def test_measurements_that_cannot_count_are_ignored_not_raised(setup_factory):
    s = setup_factory({"guards": [{**NULL_GUARD, "min_samples": 100}]})
    s.rollout.advance(FLAG, actor="t", reason="go")
    s.record(0.9, count=500)  # a real breach
    for value, count in ((float("nan"), 10), (float("inf"), 10), (0.0, -1000), (0.0, 0)):
        flagwarden.record_metric(FLAG, "null_rate", value, variant="treatment", count=count)
    (decision,) = s.watch.tick()
    assert decision.action == "rollback"  # a negative count could have hidden the breach
    assert decision.results[0].samples == 500


def test_watch_once_exits_3_when_it_pauses_a_flag_on_a_breach(project: Project):
    """``on_breach: pause``: the pass that pauses exits 3 and says ``pause`` in its JSON; the
    flag stays at its stage, paused. The next pass finds it paused and still breaching: it
    holds, changes nothing, and exits 0."""
    policy = {"guards": [{**NULL_GUARD, "min_samples": 10}], "on_breach": "pause"}
    config = governed_project(project, policy=policy)
    assert run_cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    flagwarden.configure(config)
    flagwarden.record_metric(FLAG, "null_rate", 0.9, variant="treatment", count=5000)
    acted = run_cli(config, "watch", "--once", "--json")
    assert acted.returncode == 3, acted.stdout + acted.stderr
    (decision,) = json.loads(acted.stdout)
    assert decision["action"] == "pause"
    assert decision["detail"].startswith("guard breach: null-rate=0.9")
    assert [(g["guard"], g["verdict"]) for g in decision["guards"]] == [("null-rate", "breach")]
    (flag,) = json.loads(run_cli(config, "status", FLAG, "--json").stdout)["flags"]
    assert (flag["stage"], flag["paused"], flag["killed"]) == (1, True, False)  # not rolled back
    held = run_cli(config, "watch", "--once", "--json")
    assert held.returncode == 0, held.stdout + held.stderr
    (decision,) = json.loads(held.stdout)
    assert decision["action"] == "hold" and "paused; still breaching" in decision["detail"]


def test_watch_once_exits_1_when_the_state_store_cannot_be_reached(project: Project):
    """The state store (PostgreSQL, nothing listening) cannot be reached: each flag is an
    ``error`` decision, the pass exits 1, in JSON and in words, with no traceback and without
    the store's password."""
    url = f"postgresql://watcher:s3cret-pw@127.0.0.1:{free_port()}/flags"
    config = governed_project(project, policy={"guards": [NULL_GUARD]}, state=url)
    failed = run_cli(config, "watch", "--once", "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    (decision,) = json.loads(failed.stdout)
    assert (decision["flag"], decision["action"]) == (FLAG, "error")
    assert decision["detail"].startswith("StateStoreUnavailable: postgresql://")
    assert "refused" in decision["detail"]
    said = run_cli(config, "watch", "--once")
    assert said.returncode == 1
    assert said.stdout.startswith(f"{FLAG}: error StateStoreUnavailable: postgresql://")
    for result in (failed, said):
        shown = result.stdout + result.stderr
        assert "Traceback" not in shown and "a flagwarden bug" not in shown
        assert "s3cret-pw" not in shown
