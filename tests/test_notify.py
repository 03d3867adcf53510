"""Webhook notifications (``notify:``) against a real local HTTP receiver: payloads, filtering,
one message per act, retries, a receiver that is down or hangs, secrets, watch breaches,
outage windows, the queue's bound, forks, configuration and ``check``."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import flagwarden
from flagwarden.config import NotifyTarget, load_settings
from flagwarden.errors import ConfigError
from flagwarden.governance.guards import GuardEvaluator
from flagwarden.governance.measurements import open_measurement_store
from flagwarden.governance.project import Governance
from flagwarden.governance.watch import Watch
from flagwarden.notify import CLOSE_TIMEOUT, Notifier
from flagwarden.notify import notifier as notifier_module
from flagwarden.notify.messages import slack_text
from tests.conftest import POLICY, Project, governed_project, run_cli, wait_for
from tests.servers.launchdarkly import free_port
from tests.servers.webhook import Receiver

FLAG = POLICY["flag"]
SECRET_PATH = "/services/T0SECRET/B0SECRET/xoxSecretWebhookToken123"
SECRET_QUERY = "token=QuerySecret987"


def sample(name: str, target: str) -> float:
    value = REGISTRY.get_sample_value(f"flagwarden_notifications_{name}_total", {"target": target})
    return value or 0.0


class LogRecorder:
    """Stands in for the notifier's structlog logger (as tests/providers/test_file.py does)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.calls.append((level, event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.calls if name == event]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(notifier_module, "_log", recorder)
    return recorder


def unique(prefix: str) -> str:
    """A target name of its own per test: the counters are process-wide."""
    return f"{prefix}-{os.urandom(4).hex()}"


# -- through the command line ----------------------------------------------------------


def test_cli_kill_sends_one_json_and_one_slack_message(project: Project, receiver: Receiver):
    slack = f"{receiver.url}{SECRET_PATH}?{SECRET_QUERY}"
    config = governed_project(
        project,
        notify=[
            # Both `transition` and `kill` match a kill: still one message.
            {"url": slack, "format": "slack", "events": ["transition", "kill", "rollback"]},
            {"url": f"{receiver.url}/hook", "name": "ops"},  # every event
            {"url": f"{receiver.url}/outages", "events": ["outage_start", "outage_end"]},
        ],
    )
    advanced = run_cli(config, "advance", FLAG, "--reason", "start", actor="alice")
    assert advanced.returncode == 0, advanced.stderr
    reason = "nulls <!channel> & <https://evil.example|click here>\nsecond line"
    killed = run_cli(config, "kill", FLAG, "--reason", reason, actor="bob")
    assert killed.returncode == 0, killed.stderr

    ops = receiver.delivered("/hook")
    assert [m["event"] for m in ops] == ["transition", "kill"]
    advance, kill = ops
    assert (advance["action"], advance["before"]["stage"], advance["after"]["stage"]) == (
        "advance",
        0,
        1,
    )
    assert advance["actor"] == "alice" and advance["summary"] == (
        f"{FLAG} advanced from 0% to 1% by alice: start"
    )
    assert kill["flag"] == FLAG and kill["action"] == "kill"
    assert kill["actor"] == "bob" and kill["reason"] == reason
    assert kill["after"] == {"stage": 1, "killed": True, "paused": False, "version": 2}
    assert kill["version"] == 2 and kill["ref"].startswith(f"{FLAG}:2:")
    at = datetime.fromisoformat(kill["at"])
    assert at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60
    assert set(kill) >= {"event", "flag", "summary", "at", "actor", "reason"}

    slack_posts = [p for p in receiver.posts if p["path"].startswith("/services/")]
    assert [p["json"] for p in slack_posts] == [
        {"text": f"flagwarden transition: {FLAG} advanced from 0% to 1% by alice: start"},
        {
            "text": f"flagwarden kill: {FLAG} killed (control for everyone) by bob: nulls "
            "&lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt; second line"
        },
    ]
    assert slack_posts[0]["content_type"].startswith("application/json")
    assert receiver.delivered("/outages") == []  # not its events

    # A retried kill changes nothing: nothing is said.
    again = run_cli(config, "kill", FLAG, "--reason", "again", actor="bob")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    time.sleep(0.2)
    assert len(receiver.delivered("/hook")) == 2
    for result in (advanced, killed, again):
        for secret in (SECRET_PATH, "T0SECRET", "xoxSecretWebhookToken123", SECRET_QUERY):
            assert secret not in result.stdout + result.stderr


def test_cli_kill_returns_soon_when_the_webhook_hangs(project: Project, receiver: Receiver):
    """The webhook accepts the connection and never answers: the kill is stored, the command
    exits 0 within the close timeout (plus the interpreter's start), and says what failed."""
    receiver.hang.set()
    config = governed_project(
        project, notify=[{"url": f"{receiver.url}{SECRET_PATH}", "name": "pager", "timeout": 60}]
    )
    started = time.monotonic()
    result = run_cli(config, "kill", FLAG, "--reason", "null spike", actor="bob")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "killed" in result.stdout
    # Without the close timeout it would wait out the target's 60 s timeout (and retries);
    # the margin is the interpreter's start on a busy machine.
    assert CLOSE_TIMEOUT <= took < CLOSE_TIMEOUT + 15, took
    failed = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if "flagwarden.notification_failed" in line
    ]
    assert len(failed) == 1
    assert failed[0]["target"] == "pager" and failed[0]["notify_event"] == "kill"
    assert "outcome unknown" in failed[0]["error"]
    assert SECRET_PATH not in result.stdout + result.stderr and "T0SECRET" not in result.stderr
    (row,) = json.loads(run_cli(config, "status", "--json").stdout)["flags"]
    assert row["killed"] is True  # the kill was stored before the notifier gave up


def test_cli_kill_with_the_webhook_down_exits_0_quickly(project: Project):
    port = free_port()  # nothing listens there
    target = {"url": f"http://127.0.0.1:{port}{SECRET_PATH}", "retries": 20, "backoff": 5}
    config = governed_project(project, notify=[target])  # minutes of retries, if not closed
    started = time.monotonic()
    result = run_cli(config, "kill", FLAG, "--reason", "null spike", actor="bob")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < CLOSE_TIMEOUT + 15  # retries stop at the close
    failed = [line for line in result.stderr.splitlines() if "notification_failed" in line]
    assert len(failed) == 1 and '"target": "notify.0"' in failed[0]
    assert "refused" in failed[0].lower()
    assert SECRET_PATH not in result.stderr and str(port) + SECRET_PATH not in result.stderr


# -- in process: filtering, cascades, retries, failures ------------------------------------


def open_governance(config: Path) -> Governance:
    return Governance.open(load_settings(config))


def test_event_filtering_and_cascade_pauses(project: Project, receiver: Receiver):
    validation = "new-validation"
    config = governed_project(
        project,
        policy={"requires": [{"flag": validation, "stage": 1}], "soak": "0s"},
        notify=[
            {"url": f"{receiver.url}/rollbacks", "events": ["rollback"]},
            {"url": f"{receiver.url}/transitions", "events": ["transition"]},
            {"url": f"{receiver.url}/kills", "events": ["kill", "breach"]},
        ],
    )
    (project.root / "policies" / f"{validation}.yaml").write_text(
        yaml.safe_dump({**POLICY, "flag": validation, "soak": "0s"})
    )
    governance = open_governance(config)
    try:
        rollout = governance.rollout()
        rollout.advance(validation, actor="a", reason="first")
        rollout.advance(FLAG, actor="a", reason="then")
        rollout.advance(FLAG, actor="a", reason="more")
        rollout.pause(FLAG, actor="a", reason="look")
        rollout.resume(FLAG, actor="a", reason="ok")
        rollout.rollback(FLAG, actor="b", reason="back")
        rollout.kill(validation, actor="c", reason="broken")  # pauses FLAG too
        assert not rollout.kill(validation, actor="c", reason="again").changed
    finally:
        governance.close()
    transitions = receiver.delivered("/transitions")
    assert [(m["flag"], m["action"]) for m in transitions] == [
        (validation, "advance"),
        (FLAG, "advance"),
        (FLAG, "advance"),
        (FLAG, "pause"),
        (FLAG, "resume"),
        (FLAG, "rollback"),
        (validation, "kill"),
        (FLAG, "pause"),
    ]
    assert [m["event"] for m in transitions[-3:]] == ["rollback", "kill", "transition"]
    cascade = transitions[-1]
    assert cascade["cause"] == {"flag": validation, "action": "kill"}
    assert cascade["actor"] == "c" and "prerequisite new-validation was killed" in cascade["reason"]
    assert [(m["flag"], m["event"]) for m in receiver.delivered("/rollbacks")] == [
        (FLAG, "rollback")
    ]
    assert [(m["flag"], m["event"]) for m in receiver.delivered("/kills")] == [(validation, "kill")]


def test_retries_after_5xx_deliver_once_and_count_as_sent(receiver: Receiver, logs: LogRecorder):
    name = unique("retry")
    receiver.answer(500, 503)
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/hook", name=name, backoff=0.05)])
    sent, failed = sample("sent", name), sample("failed", name)
    notifier.publish("kill", flag=FLAG, summary="killed", actor="a", reason="r")
    wait_for(lambda: receiver.delivered())
    notifier.close()
    assert [p["status"] for p in receiver.posts] == [500, 503, 200]
    assert len({json.dumps(p["json"]) for p in receiver.posts}) == 1  # the same message
    assert receiver.delivered()[0]["summary"] == "killed"
    assert (sample("sent", name) - sent, sample("failed", name) - failed) == (1, 0)
    assert logs.named("flagwarden.notification_sent") == [
        {"target": name, "notify_event": "kill", "attempts": 3}
    ]
    assert logs.named("flagwarden.notification_failed") == []


def test_retry_after_is_honoured_and_4xx_is_final(receiver: Receiver, logs: LogRecorder):
    name = unique("limits")
    receiver.answer(429, **{"Retry-After": "1"})
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/a", name=name, backoff=0.01)])
    notifier.publish("transition", flag=FLAG, summary="advanced")
    wait_for(lambda: receiver.delivered())
    first, second = receiver.posts
    assert second["at"] - first["at"] >= 0.95  # not the 10 ms backoff: the server's second
    receiver.answer(404)
    failed = sample("failed", name)
    notifier.publish("transition", flag=FLAG, summary="again")
    notifier.close()
    assert [p["status"] for p in receiver.posts] == [429, 200, 404]  # 404 is not retried
    assert sample("failed", name) - failed == 1
    (failure,) = logs.named("flagwarden.notification_failed")
    assert failure["status"] == 404 and failure["attempts"] == 1 and failure["target"] == name


def test_a_receiver_that_is_down_counts_a_failure_and_never_shows_the_url(logs: LogRecorder):
    name = unique("down")
    url = f"http://127.0.0.1:{free_port()}{SECRET_PATH}?{SECRET_QUERY}"
    notifier = Notifier([NotifyTarget(url=url, name=name, retries=2, backoff=0.02)])
    failed = sample("failed", name)
    started = time.monotonic()
    notifier.publish("kill", flag=FLAG, summary="killed")
    assert time.monotonic() - started < 0.1  # never blocks
    wait_for(lambda: sample("failed", name) - failed == 1)
    notifier.close()
    assert sample("sent", name) == 0
    (failure,) = logs.named("flagwarden.notification_failed")
    assert failure["target"] == name and failure["attempts"] == 3 and failure["status"] is None
    assert "URLError" in failure["error"] and "refused" in failure["error"].lower()
    said = repr(logs.calls) + repr(notifier.targets) + str(notifier.labels)
    for secret in (SECRET_PATH, "T0SECRET", SECRET_QUERY, url):
        assert secret not in said


def test_a_full_queue_drops_and_counts_and_publish_never_blocks(
    receiver: Receiver, logs: LogRecorder
):
    receiver.hang.set()
    name = unique("full")
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/x", name=name)], queue_size=3)
    failed = sample("failed", name)
    started = time.monotonic()
    for i in range(50):
        notifier.publish("transition", flag=FLAG, summary=f"change {i}")
    assert time.monotonic() - started < 0.5
    assert notifier.dropped >= 46  # three wait, at most one is being sent
    # Said once per spell of a full queue: two when the thread took one in between.
    assert len(logs.named("flagwarden.notification_dropped")) in (1, 2)
    notifier.close(timeout=0.3)
    assert sample("failed", name) - failed == 50  # none could be delivered: all are counted
    assert sample("sent", name) == 0
    notifier.publish("kill", flag=FLAG, summary="after close")  # dropped, never raises
    assert sample("failed", name) - failed == 51


def test_publish_never_raises(receiver: Receiver, logs: LogRecorder):
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/x")])
    notifier.publish("no_such_event", flag=FLAG, summary="x")
    notifier.publish("kill", flag=FLAG, summary="odd fields", value=float("nan"), when=object())
    wait_for(lambda: receiver.delivered())
    notifier.close()
    assert receiver.delivered()[0]["value"] == "nan"
    assert len(logs.named("flagwarden.notification_failed")) == 1


def test_slack_text_is_one_escaped_line():
    text = slack_text("kill", "a <@U123> & <!here|here>\r\n\u2028b\x1b[31m")
    assert text == "flagwarden kill: a &lt;@U123&gt; &amp; &lt;!here|here&gt; b [31m"
    assert len(slack_text("kill", "x" * 10_000)) <= 3000


def test_a_forked_child_starts_its_own_thread_and_does_not_resend(receiver: Receiver):
    name = unique("fork")
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/f", name=name, backoff=1.0)])
    notifier.publish("transition", flag=FLAG, summary="from the parent")
    wait_for(lambda: receiver.delivered())
    receiver.answer(500)  # the parent's next message waits for its retry while the child forks
    notifier.publish("transition", flag=FLAG, summary="parent, retried")
    wait_for(lambda: len(receiver.posts) == 2)
    sent = sample("sent", name)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread and queue stay with the parent
        code = 1
        try:
            notifier.publish("transition", flag=FLAG, summary="from the child")
            notifier.close(timeout=5)
            code = 0 if sample("sent", name) == sent + 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for(lambda: len(receiver.delivered()) == 3)
    notifier.close()
    summaries = [m["summary"] for m in receiver.delivered()]
    assert sorted(summaries) == ["from the child", "from the parent", "parent, retried"]
    assert len(receiver.posts) == 4  # the child never sent the parent's retry


# -- the watch and outage windows --------------------------------------------------------


def test_a_watch_breach_sends_breach_with_the_verdicts(project: Project, receiver: Receiver):
    guard = {"name": "null-rate", "metric": "null_rate", "max": 0.02, "min_samples": 100}
    config = governed_project(
        project,
        policy={"guards": [guard], "on_breach": "rollback"},
        notify=[{"url": f"{receiver.url}/pager", "events": ["breach", "rollback"]}],
    )
    flagwarden.configure(config)  # record_metric writes through the runtime
    settings = load_settings(config)
    governance = Governance.open(settings)
    measurements = open_measurement_store(settings.config.state, settings.base_dir)
    try:
        rollout = governance.rollout()
        rollout.advance(FLAG, actor="t", reason="go", to=25, force=True)
        flagwarden.record_metric(FLAG, "null_rate", 0.4, variant="treatment", count=500)
        (decision,) = Watch(governance, GuardEvaluator(measurements, None)).tick()
        assert decision.action == "rollback"
    finally:
        measurements.close()
        governance.close()
    rollback, breach = receiver.delivered("/pager")
    assert (rollback["event"], rollback["actor"], rollback["after"]["stage"]) == (
        "rollback",
        "flagwarden-watch",
        0,
    )
    assert breach["event"] == "breach" and breach["flag"] == FLAG
    assert breach["action"] == "rollback" and breach["actor"] == "flagwarden-watch"
    (verdict,) = breach["guards"]
    assert (verdict["guard"], verdict["verdict"], verdict["value"]) == ("null-rate", "breach", 0.4)
    assert breach["summary"].startswith(f"{FLAG}: guard breach: null-rate=0.4")
    assert breach["summary"].endswith("rolled back to 0% (control for everyone)")
    assert breach["detail"] == breach["reason"] == rollback["reason"]
    assert rollback["tick"]  # the same watch pass, for a receiver that joins them


def test_outage_windows_start_and_end(project: Project, receiver: Receiver):
    config = governed_project(
        project,
        notify=[
            {"url": f"{receiver.url}/outages", "events": ["outage_start", "outage_end"]},
            {"url": f"{receiver.url}/slack", "format": "slack", "events": ["outage_end"]},
        ],
    )
    client = flagwarden.configure(config)
    flag_file = project.root / "flags.json"
    saved = flag_file.read_text()
    flag_file.unlink()
    wait_for(lambda: receiver.delivered("/outages"))
    client.get_boolean_value(FLAG, False)  # answered from the vendor's memory meanwhile
    flag_file.write_text(saved)
    wait_for(lambda: len(receiver.delivered("/outages")) == 2)
    start, end = receiver.delivered("/outages")
    assert (start["event"], start["flag"], start["provider"]) == ("outage_start", None, "file")
    assert "No such file" in start["cause"] and start["fallback"] == "vendor_cache"
    assert start["summary"].startswith("file is out (")
    assert end["event"] == "outage_end" and end["ended_by"] == "vendor_ready"
    assert end["started_at"] and end["ended_at"] and end["duration_seconds"] >= 0
    assert end["served"].get("file", 0) >= 1
    assert end["summary"].startswith("file answers again after ")
    wait_for(lambda: receiver.delivered("/slack"))
    (slack,) = receiver.delivered("/slack")
    assert slack["text"].startswith("flagwarden outage_end: file answers again")
    flagwarden.shutdown()
    assert len(receiver.delivered("/outages")) == 2  # nothing open to close at shutdown


# -- configuration and check -------------------------------------------------------------


def test_target_defaults_and_every_event_name():
    target = NotifyTarget(url="https://hooks.example.com/x")
    assert (target.format, target.events, target.timeout, target.retries) == (
        "json",
        None,
        5.0,
        5,
    )
    events = [
        "transition",
        "kill",
        "rollback",
        "breach",
        "approval_requested",
        "approval_decided",
        "outage_start",
        "outage_end",
    ]
    assert NotifyTarget(url="http://ops/hook", events=events).events == events
    assert target.shown_url == "https://hooks.example.com/…"
    assert "hooks.example.com/x" not in repr(target)


@pytest.mark.parametrize(
    ("entry", "field", "problem"),
    [
        ({"url": f"ftp://hooks.slack.com{SECRET_PATH}"}, "notify.0.url", "http:// or https://"),
        ({"url": f"https://user:pw@hooks.slack.com{SECRET_PATH}"}, "notify.0.url", "user:pass"),
        ({"url": f"https://{SECRET_PATH}"}, "notify.0.url", "host name"),
        ({"url": f"https://hooks.slack.com{SECRET_PATH} x"}, "notify.0.url", "spaces"),
        ({"url": f"https://hooks.slack.com:99999{SECRET_PATH}"}, "notify.0.url", "valid URL"),
        (f"https://hooks.slack.com{SECRET_PATH}", "notify.0", "dictionary"),
        ({"url": "https://h/x", "events": ["kil"]}, "notify.0.events.0", "'kill'"),
        ({"url": "https://h/x", "events": []}, "notify.0.events", "at least one event"),
        ({"url": "https://h/x", "format": "teams"}, "notify.0.format", "'slack'"),
        ({"url": "https://h/x", "timeout": 0}, "notify.0.timeout", "greater than 0"),
        ({"url": "https://h/x", "ulr": SECRET_PATH}, "notify.0.ulr", "not a known field"),
    ],
)
def test_bad_targets_are_config_errors_without_the_url(entry, field, problem):
    with pytest.raises(ConfigError) as info:
        load_settings({"provider": "file", "notify": [entry]})
    assert info.value.field == field
    assert problem in str(info.value)
    for secret in (SECRET_PATH, "T0SECRET", "xoxSecretWebhookToken123"):
        assert secret not in str(info.value)


def test_target_names_are_unique():
    targets = [{"url": "https://a/x", "name": "ops"}, {"url": "https://b/y", "name": "ops"}]
    with pytest.raises(ConfigError, match="a different name for each target: ops"):
        load_settings({"provider": "file", "notify": targets})


def test_check_validates_targets_and_never_contacts_them(project: Project, receiver: Receiver):
    config = governed_project(
        project,
        notify=[
            {"url": f"{receiver.url}{SECRET_PATH}", "format": "slack", "events": ["kill"]},
            {"url": "http://ops.internal/hook", "name": "ops"},
        ],
    )
    result = run_cli(config, "check", "--connect")
    assert f"notify notify.0: slack to {receiver.url}/… (kill; not contacted)" in result.stdout
    assert "notify ops: json to http://ops.internal/… (every event; not contacted)" in (
        result.stdout
    )
    assert "notify.1.url: plain http to ops.internal" in result.stderr
    assert "notify.0.url" not in result.stderr  # loopback: no warning
    assert receiver.posts == []
    assert SECRET_PATH not in result.stdout + result.stderr

    (project.root / "flagwarden.yaml").write_text(
        yaml.safe_dump(
            {"provider": "file", "notify": [{"url": f"gopher://hooks.slack.com{SECRET_PATH}"}]}
        )
    )
    bad = run_cli(project.root / "flagwarden.yaml", "check")
    assert bad.returncode == 1 and "notify.0.url" in bad.stderr
    assert SECRET_PATH not in bad.stdout + bad.stderr and "T0SECRET" not in bad.stderr


def test_no_targets_no_notifier(project: Project):
    governance = open_governance(governed_project(project))
    try:
        assert governance.notifier is None and governance.rollout().notifier is None
    finally:
        governance.close()


def test_the_thread_starts_at_the_first_message(receiver: Receiver):
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/x")])
    assert notifier._thread is None  # a status or report command never starts one
    notifier.close()
    notifier = Notifier([NotifyTarget(url=f"{receiver.url}/x")])
    notifier.publish("kill", flag=FLAG, summary="x")
    assert notifier._thread is not None and notifier._thread.name == "flagwarden-notify"
    notifier.close()
    assert receiver.delivered()
    notifier._thread.join(timeout=3)
    assert not notifier._thread.is_alive()
