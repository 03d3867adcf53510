"""Outages, snapshots and overrides, with the real SDKs against local servers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus

import flagwarden
from flagwarden.events import Event
from tests.conftest import Project, wait_for
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

FLAG = "new-scoring-model"
KEYS = [f"order-{i}" for i in range(2000)]


class Vendor:
    """One vendor's local server plus how to give it a 30% rollout of FLAG."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.server: Any = LaunchDarklyServer() if kind == "launchdarkly" else SplitServer()
        if kind == "launchdarkly":
            self.server.set_flag(boolean_flag(FLAG, rollout_percent=30))
        else:
            self.server.set_split(split_definition(FLAG, on_percent=30))

    def profile(self, **overrides: Any) -> dict[str, Any]:
        return {**self.server.profile(), **overrides}


@pytest.fixture(params=["launchdarkly", "split"])
def vendor(request: pytest.FixtureRequest):
    v = Vendor(request.param)
    v.server.start()
    yield v
    v.server.stop()


def collect_events() -> tuple[list[Event], Any]:
    events: list[Event] = []
    runtime = flagwarden.current()
    assert runtime is not None
    runtime.events.subscribe(events.append)
    return events, runtime


def decisions(client: Any) -> tuple[list[bool], set[str]]:
    values, sources = [], set()
    for key in KEYS:
        details = client.get_boolean_details(FLAG, False, EvaluationContext(key))
        values.append(details.value)
        sources.add(details.flag_metadata["flagwarden.source"])
    return values, sources


@pytest.mark.slow
def test_warm_outage_keeps_answers_and_records_the_window(project: Project, vendor: Vendor):
    project.profile(vendor.kind, vendor.profile())
    project.config(vendor.kind)
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    events, runtime = collect_events()
    before, _ = decisions(client)

    failures: list[str] = []
    changed: list[str] = []
    stop = threading.Event()

    def pipeline() -> None:
        i = 0
        while not stop.is_set():
            key = KEYS[i % len(KEYS)]
            details = client.get_boolean_details(FLAG, False, EvaluationContext(key))
            if details.error_code is not None:
                failures.append(str(details.error_code))
            if details.value != before[i % len(KEYS)]:
                changed.append(key)
            i += 1

    worker = threading.Thread(target=pipeline)
    worker.start()
    try:
        time.sleep(0.2)
        vendor.server.stop()
        wait_for(lambda: runtime.provider.outage is not None, timeout=10)
        assert runtime.provider.status is ProviderStatus.STALE
        time.sleep(0.5)
        vendor.server.start()
        # The window is closed, then announced (the event, then the audit record).
        wait_for(lambda: any(e.name == "flagwarden.outage" for e in events), timeout=15)
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join()

    assert failures == []
    assert changed == []
    window = runtime.provider.outages[0]
    assert window.started_at < window.ended_at
    assert window.served.get("vendor", 0) > 0
    assert runtime.provider.status is ProviderStatus.READY
    ended = [e for e in events if e.name == "flagwarden.outage"]
    assert len(ended) == 1
    assert ended[0].fields["started_at"] and ended[0].fields["ended_at"]
    assert ended[0].fields["served"]["vendor"] > 0
    # The window is in the audit log too, for the compliance report.
    audited = [r for r in runtime.governance.audit.records() if r.kind == "outage"]
    assert len(audited) == 1
    assert audited[0].data["started_at"] == ended[0].fields["started_at"]
    assert audited[0].data["served"] == ended[0].fields["served"]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "redis"])
def test_cold_start_during_outage_serves_the_snapshot(project: Project, vendor: Vendor, store: str):
    key = f"flagwarden:test:{uuid.uuid4().hex}"
    snapshot = (
        "file:.flagwarden/snapshot.json"
        if store == "file"
        else f"redis://127.0.0.1:6379/0?key={key}"
    )
    project.profile(vendor.kind, vendor.profile(start_wait=0.5))
    project.config(vendor.kind, fallback={"snapshot": snapshot, "snapshot_debounce": 0.05})
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    runtime = flagwarden.current()
    wait_for(lambda: runtime.provider.snapshot_writer.writes >= 1)
    before, sources = decisions(client)
    assert sources == {"vendor"}
    assert 450 < sum(before) < 750
    flagwarden.shutdown()

    vendor.server.stop()
    started = time.perf_counter()
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    first_answer = client.get_boolean_details(FLAG, False, EvaluationContext(KEYS[0]))
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5 + 2.0
    assert first_answer.flag_metadata["flagwarden.source"] == "snapshot"
    during, sources = decisions(client)
    assert sources == {"snapshot"}
    assert during == before
    runtime = flagwarden.current()
    assert runtime.provider.outage is not None
    assert runtime.provider.status is ProviderStatus.ERROR

    # The SDK kept retrying: when the vendor is back, answers come from it again.
    vendor.server.start()
    wait_for(lambda: runtime.provider.status is ProviderStatus.READY, timeout=20)
    after, sources = decisions(client)
    assert sources == {"vendor"}
    assert after == before
    window = runtime.provider.outages[0]
    assert window.served["snapshot"] >= len(KEYS)
    if store == "redis":
        assert redis.Redis().exists(key)
        redis.Redis().delete(key)
    else:
        assert project.snapshot_file.exists()


def test_no_snapshot_and_no_vendor_gives_defaults_never_errors(project: Project):
    dead = LaunchDarklyServer()  # nothing listens on its port
    project.profile("launchdarkly", dead.profile(start_wait=0.2))
    project.config("launchdarkly")
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    details = client.get_boolean_details(FLAG, True, EvaluationContext("k"))
    assert details.value is True
    assert details.error_code == "PROVIDER_NOT_READY"
    assert details.flag_metadata["flagwarden.source"] == "default"
    assert client.get_string_value("other", "fallback", EvaluationContext("k")) == "fallback"


def test_env_override_beats_vendor_and_outage(project: Project, vendor: Vendor, monkeypatch):
    project.profile(vendor.kind, vendor.profile())
    project.config(vendor.kind)
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    monkeypatch.setenv("FLAGWARDEN_FLAG_NEW_SCORING_MODEL", "off")
    values, sources = decisions(client)
    assert (set(values), sources) == ({False}, {"env"})
    monkeypatch.setenv("FLAGWARDEN_FLAG_NEW_SCORING_MODEL", "YES")
    vendor.server.stop()
    values, sources = decisions(client)
    assert (set(values), sources) == ({True}, {"env"})
    # A malformed override is ignored (and logged once), not served.
    monkeypatch.setenv("FLAGWARDEN_FLAG_NEW_SCORING_MODEL", "perhaps")
    details = client.get_boolean_details(FLAG, False, EvaluationContext(KEYS[0]))
    assert details.flag_metadata["flagwarden.source"] == "vendor"


def test_snapshot_is_native_vendor_format(project: Project, vendor: Vendor):
    import json

    project.profile(vendor.kind, vendor.profile())
    project.config(vendor.kind)
    flagwarden.configure(project.root / "flagwarden.yaml")
    runtime = flagwarden.current()
    wait_for(lambda: runtime.provider.snapshot_writer.writes >= 1)
    doc = json.loads(project.snapshot_file.read_text())
    assert (doc["vendor"], doc["profile"]) == (vendor.kind, vendor.kind)
    if vendor.kind == "launchdarkly":
        assert doc["data"]["flags"][FLAG]["fallthrough"]["rollout"]
    else:
        ff = doc["data"]["splits"]["ff"]
        assert [s["name"] for s in ff["d"]] == [FLAG] and ff["t"] > 0
        assert doc["data"]["splits"]["rbs"] == {"d": [], "s": -1, "t": -1}


def test_snapshot_follows_configuration_changes(project: Project, ld_server: LaunchDarklyServer):
    ld_server.set_flag(boolean_flag(FLAG, rollout_percent=30))
    project.profile("launchdarkly", ld_server.profile())
    project.config("launchdarkly")
    flagwarden.configure(project.root / "flagwarden.yaml")
    runtime = flagwarden.current()
    wait_for(lambda: runtime.provider.snapshot_writer.writes >= 1)

    def weight() -> int:
        doc = json.loads(project.snapshot_file.read_text())
        return doc["data"]["flags"][FLAG]["fallthrough"]["rollout"]["variations"][0]["weight"]

    assert weight() == 30_000
    ld_server.set_flag(boolean_flag(FLAG, rollout_percent=60))
    wait_for(lambda: weight() == 60_000)


def test_snapshot_command(project: Project, ld_server: LaunchDarklyServer):
    ld_server.set_flag(boolean_flag(FLAG, rollout_percent=30))
    project.profile("launchdarkly", ld_server.profile(start_wait=0.3))
    project.config(
        "launchdarkly",
        fallback={"snapshot": "file:.flagwarden/snapshot.json", "snapshot_debounce": 60},
    )
    command = [sys.executable, "-m", "flagwarden.cli", "snapshot", "-c", "flagwarden.yaml"]
    result = subprocess.run(command, cwd=project.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    written = project.snapshot_file.read_bytes()
    assert json.loads(written)["data"]["flags"][FLAG]

    ld_server.stop()
    result = subprocess.run(command, cwd=project.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not ready" in result.stderr and "left as it is" in result.stderr
    assert "sdk-test-secret" not in result.stderr + result.stdout
    assert project.snapshot_file.read_bytes() == written


def test_client_status_follows_the_vendor(project: Project, ld_server: LaunchDarklyServer):
    ld_server.set_flag(boolean_flag(FLAG, serve=True))
    project.profile("launchdarkly", ld_server.profile())
    project.config("launchdarkly")
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    assert client.get_provider_status() is ProviderStatus.READY
    ld_server.stop()
    wait_for(lambda: client.get_provider_status() is ProviderStatus.STALE)
    assert client.get_boolean_value(FLAG, False, EvaluationContext("k")) is True
    ld_server.start()
    wait_for(lambda: client.get_provider_status() is ProviderStatus.READY, timeout=15)


def test_aggregate_status_worst_wins():
    from flagwarden.providers import aggregate_status

    S = ProviderStatus
    assert aggregate_status([S.READY, S.STALE]) is S.STALE
    assert aggregate_status([S.STALE, S.ERROR, S.READY]) is S.ERROR
    assert aggregate_status([S.ERROR, S.NOT_READY]) is S.NOT_READY
    assert aggregate_status([S.FATAL, S.NOT_READY]) is S.FATAL
    assert aggregate_status([]) is S.READY


def test_the_answering_definitions_version(project: Project, vendor: Vendor):
    """The version of the flag's definition (for OpenTelemetry's feature_flag.version):
    LaunchDarkly's flag version, Split's change number; none for a flag the vendor lacks."""
    project.profile(vendor.kind, vendor.profile())
    flagwarden.configure(project.config(vendor.kind))
    runtime = flagwarden.current()
    assert runtime is not None
    version, set_id = runtime.provider.flag_version(FLAG)
    assert version is not None and int(version) > 0 and set_id is None
    assert runtime.provider.flag_version("no-such-flag") == (None, None)
