"""Background work never dies silently; bad flag files and snapshots cost nothing but
themselves; unregistered flag keys cannot grow metrics or memory without bound."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus
from prometheus_client import REGISTRY

import flagwarden
from flagwarden import background, events
from flagwarden.background import (
    health_snapshot,
    report_failure,
    report_ok,
    run_supervised,
)
from flagwarden.errors import ConfigError
from flagwarden.periodic import PeriodicCounter
from flagwarden.providers import file as file_module
from flagwarden.providers import snapshot as snapshot_module
from flagwarden.providers.file import read_flag_file
from flagwarden.providers.snapshot import open_snapshot_store
from tests.conftest import ROOT, Project, wait_for
from tests.servers.launchdarkly import free_port


class LogRecorder:
    """Stands in for a module's structlog logger: (level, event, fields) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):  # warning, error, info, exception...
        return lambda event, **fields: self.calls.append((level, event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.calls if name == event]


def recorder(monkeypatch: pytest.MonkeyPatch, module: Any) -> LogRecorder:
    logs = LogRecorder()
    monkeypatch.setattr(module, "_log", logs)
    return logs


def gauge(thread: str) -> float | None:
    return REGISTRY.get_sample_value("flagwarden_background_healthy", {"thread": thread})


# -- the supervisor ------------------------------------------------------------------------


def test_a_supervised_thread_reports_backs_off_and_recovers(monkeypatch: pytest.MonkeyPatch):
    logs = recorder(monkeypatch, background)
    name = "test-supervised"
    calls: list[float] = []
    stop = threading.Event()

    def step() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 4:
            raise OSError("disk on fire" if len(calls) != 3 else "another problem")

    thread = run_supervised(name, step, 0.01, stop, max_backoff=0.2)
    wait_for(lambda: len(calls) >= 3)
    health = health_snapshot()[name]
    assert not health.healthy and health.failures >= 2 and isinstance(health.since, datetime)
    assert gauge(name) == 0
    wait_for(lambda: health_snapshot()[name].healthy, timeout=5)
    assert thread.is_alive() and gauge(name) == 1
    # Once per distinct error, however often it happens; the recovery once.
    failed = [f["error"] for f in logs.named("flagwarden.background_failed")]
    assert failed == ["OSError: disk on fire", "OSError: another problem"]
    assert len(logs.named("flagwarden.background_recovered")) == 1
    gaps = [b - a for a, b in itertools.pairwise(calls[:5])]
    assert gaps[-1] > gaps[0] * 1.5  # the waits grow while it keeps failing
    stop.set()
    thread.join(2)
    assert not thread.is_alive()


def test_report_ok_and_failure_by_hand():
    report_failure("test-by-hand", "store unreachable")
    first = health_snapshot()["test-by-hand"]
    report_failure("test-by-hand", RuntimeError("still"))
    second = health_snapshot()["test-by-hand"]
    assert (second.failures, second.last_error) == (2, "RuntimeError: still")
    assert second.since == first.since  # since it became unhealthy, not since the last failure
    report_ok("test-by-hand")
    assert health_snapshot()["test-by-hand"].healthy and gauge("test-by-hand") == 1


def test_health_is_reset_in_a_forked_child():
    report_failure("test-fork", "parent trouble")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are not here, nor their health
        os.write(write, json.dumps(sorted(health_snapshot())).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert json.loads(os.read(read, 65536)) == []
    os.close(read)


# -- periodic flushes ----------------------------------------------------------------------


class FlakyCounter(PeriodicCounter[str]):
    """A counter whose writes fail twice (a closed stderr, say), then work."""

    def __init__(self) -> None:
        super().__init__(0.02, "test-flaky-flush")
        self.attempts = 0
        self.written: Counter[str] = Counter()

    def _write(self, counts: Counter[str], since: datetime, until: datetime) -> None:
        self.attempts += 1
        if self.attempts <= 2:
            raise ValueError("I/O operation on closed file")
        self.written.update(counts)


def test_a_periodic_flush_that_fails_keeps_its_counts_and_its_thread():
    counter = FlakyCounter()
    counter.add("a", 3)
    counter.start()
    wait_for(lambda: counter.attempts >= 1)
    counter.add("a", 2)
    wait_for(lambda: counter.written["a"] == 5, timeout=5)
    assert counter._thread is not None and counter._thread.is_alive()
    health = health_snapshot()["test-flaky-flush"]
    assert health.healthy and health.last_error == "ValueError: I/O operation on closed file"
    counter.add("b")
    counter.close()
    assert counter.written == Counter({"a": 5, "b": 1})


# -- the flag file -------------------------------------------------------------------------

FLAGS = {
    "flags": {
        "gate": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
    }
}


def deep_json(levels: int) -> str:
    flag = '{"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "targeting": '
    rule = '{"if": [' * levels + "true" + ', "on"]}' * levels
    return '{"flags": {"gate": ' + flag + rule + "}}}"


# 30 alias levels of 9: about 10**28 nodes for anything that walks the document.
ALIAS_BOMB = "x0: &x0 [a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"x{n + 1}: &x{n + 1} [{', '.join([f'*x{n}'] * 9)}]\n" for n in range(30)
)
BOMBED_FLAGS = (
    "flags:\n  gate: {state: ENABLED, variants: {'on': true}, defaultVariant: 'on'}\n" + ALIAS_BOMB
)

BAD_FLAG_FILES = {
    "latin-1": (".json", json.dumps(FLAGS).encode().replace(b'"off"', b'"\xf6ff"'), "utf-8"),
    # Deep enough for copying and evaluating to recurse past the limit, not the parser.
    "deep-json": (".json", deep_json(300).encode(), "nested deeper than 100 levels"),
    "deeper-than-the-parser": (".json", deep_json(5000).encode(), "nested deeper than 100"),
    "deep-yaml": (
        ".yaml",
        (
            "flags:\n  gate:\n    state: ENABLED\n    variants: {'on': true}\n"
            "    defaultVariant: 'on'\n    targeting: " + "[" * 400 + "1" + "]" * 400 + "\n"
        ).encode(),
        "nested more than 100 levels deep",
    ),
    "alias-bomb": (".yaml", BOMBED_FLAGS.encode(), "YAML aliases (*name) are not allowed"),
}


def test_an_alias_bomb_in_a_flag_file_is_refused_at_once(tmp_path: Path):
    bombed = tmp_path / "flags.yaml"
    bombed.write_text(BOMBED_FLAGS)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"YAML aliases \(\*name\) are not allowed"):
        read_flag_file(bombed)
    assert time.monotonic() - started < 1
    # `check` (in a process of its own: before, it never finished) names the file.
    (tmp_path / "providers").mkdir()
    (tmp_path / "providers" / "file.yaml").write_text("type: file\npath: ../flags.yaml\n")
    (tmp_path / "flagwarden.yaml").write_text("provider: file\nfallback: {snapshot: null}\n")
    done = subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", "check", "-c", str(tmp_path / "flagwarden.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    said = f"{bombed}: malformed flag file: refused at line 4, column 10: YAML aliases"
    assert said in done.stderr + done.stdout


@pytest.mark.parametrize("case", sorted(BAD_FLAG_FILES))
def test_a_bad_flag_file_goes_stale_keeps_serving_and_recovers(
    project: Project, monkeypatch: pytest.MonkeyPatch, case: str
):
    suffix, content, reason = BAD_FLAG_FILES[case]
    logs = recorder(monkeypatch, file_module)
    flag_file = project.root / f"flags{suffix}"
    flag_file.write_text(json.dumps(FLAGS))  # JSON is YAML too
    project.profile("file", {"type": "file", "path": f"../flags{suffix}", "poll_interval": 0.05})
    project.config("file", fallback={"snapshot": None})
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    chain = flagwarden.current().provider
    vendor = chain.vendor
    assert client.get_boolean_value("gate", False, EvaluationContext("k")) is True

    flag_file.write_bytes(content)
    # The provider turns STALE, then tells the chain, which opens the outage window.
    wait_for(lambda: vendor.status is ProviderStatus.STALE and chain.outage, timeout=20)
    (unusable,) = logs.named("flagwarden.flag_file_unusable")
    assert unusable["path"] == str(flag_file) and reason in unusable["error"]
    assert str(flag_file) in unusable["error"]
    assert chain.outage is not None and chain.status is ProviderStatus.STALE
    details = client.get_boolean_details("gate", False, EvaluationContext("k"))
    assert (details.value, details.flag_metadata["flagwarden.source"]) == (True, "file")
    assert vendor._watcher is not None and vendor._watcher.is_alive()

    fixed = json.loads(json.dumps(FLAGS))
    fixed["flags"]["gate"]["defaultVariant"] = "off"
    flag_file.write_text(json.dumps(fixed))
    wait_for(lambda: vendor.status is ProviderStatus.READY, timeout=20)
    assert chain.outage is None and len(chain.outages) == 1
    assert client.get_boolean_value("gate", True, EvaluationContext("k")) is False
    assert health_snapshot()[vendor.watcher_name].healthy


# -- snapshots -----------------------------------------------------------------------------

BAD_SNAPSHOTS = {
    "deep": (
        b'{"format": 1, "vendor": "file", "profile": "file", "written_at": '
        b'"2026-01-01T00:00:00+00:00", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "nested deeper than",
    ),
    "deep-within-the-parser": (
        b'{"format": 1, "vendor": "file", "profile": "file", "written_at": '
        b'"2026-01-01T00:00:00+00:00", "data": {"flags": {}, "x": '
        + b"[" * 600
        + b"]" * 600
        + b"}}",
        "nested deeper than",
    ),
    "latin-1": (
        b'{"format": 1, "vendor": "file", "profile": "caf\xe9", "written_at": '
        b'"2026-01-01T00:00:00+00:00", "data": {"flags": {}}}',
        "not UTF-8",
    ),
}


@pytest.mark.parametrize("store", ["file", "redis"])
@pytest.mark.parametrize("case", sorted(BAD_SNAPSHOTS))
def test_a_bad_snapshot_is_reported_the_chain_starts_and_the_snapshot_is_replaced(
    project: Project, monkeypatch: pytest.MonkeyPatch, store: str, case: str
):
    content, reason = BAD_SNAPSHOTS[case]
    logs = recorder(monkeypatch, events)
    if store == "file":
        location = "file:.flagwarden/snapshot.json"
        project.snapshot_file.parent.mkdir(parents=True)
        project.snapshot_file.write_bytes(content)
        where = str(project.snapshot_file)
    else:
        key = f"fwtest:snapshot:{os.getpid()}:{case}"
        location = f"redis://127.0.0.1:6379/0?key={key}"
        redis.Redis().set(key, content)
        where = "redis://127.0.0.1:6379/0"
    flag_file = project.root / "flags.json"  # the flag source is gone at start
    project.profile("file", {"type": "file", "path": "../flags.json", "poll_interval": 0.05})
    project.config("file", fallback={"snapshot": location, "snapshot_debounce": 0.05})
    monkeypatch.setenv("FLAGWARDEN_FLAG_FORCED", "true")
    try:
        client = flagwarden.configure(project.root / "flagwarden.yaml")
        chain = flagwarden.current().provider
        (unreadable,) = logs.named("flagwarden.snapshot_unreadable")
        assert where in unreadable["error"] and reason in unreadable["error"], unreadable
        assert where in unreadable["location"]
        assert chain.status is ProviderStatus.ERROR  # started: serving defaults, not stuck
        d = client.get_boolean_details("gate", False, EvaluationContext("k"))
        assert (d.value, d.flag_metadata["flagwarden.source"]) == (False, "default")
        d = client.get_boolean_details("forced", False, EvaluationContext("k"))
        assert (d.value, d.flag_metadata["flagwarden.source"]) == (True, "env")

        flag_file.write_text(json.dumps(FLAGS))  # the vendor answers again
        wait_for(lambda: chain.status is ProviderStatus.READY, timeout=10)
        assert client.get_boolean_value("gate", False, EvaluationContext("k")) is True
        snapshots = open_snapshot_store(
            location.replace("file:", f"file:{project.root}/") if store == "file" else location
        )
        fresh = wait_for(lambda: _loadable(snapshots), timeout=10)
        assert fresh.data == {"flags": FLAGS["flags"]}
    finally:
        if store == "redis":
            redis.Redis().delete(key)


def _loadable(store: Any) -> Any:
    try:
        return store.load()
    except Exception:
        return None


def test_a_failed_snapshot_write_is_retried_until_it_succeeds(
    project: Project, monkeypatch: pytest.MonkeyPatch
):
    logs = recorder(monkeypatch, snapshot_module)
    blocker = project.root / ".flagwarden" / "sub"  # a file where the snapshot's folder goes
    blocker.parent.mkdir()
    blocker.write_text("not a folder")
    (project.root / "flags.json").write_text(json.dumps(FLAGS))
    project.profile("file", {"type": "file", "path": "../flags.json", "poll_interval": 0.05})
    project.config(
        "file", fallback={"snapshot": "file:.flagwarden/sub/snapshot.json", "snapshot_debounce": 0}
    )
    flagwarden.configure(project.root / "flagwarden.yaml")
    writer = flagwarden.current().provider.snapshot_writer
    wait_for(lambda: logs.named("flagwarden.snapshot_write_failed"))
    assert writer.writes == 0 and not health_snapshot()["flagwarden-snapshot"].healthy
    blocker.unlink()  # the disk is writable again: the owed write goes out without a change
    wait_for(lambda: writer.writes >= 1, timeout=10)
    assert (blocker / "snapshot.json").exists()
    assert health_snapshot()["flagwarden-snapshot"].healthy


# -- bounded cardinality -------------------------------------------------------------------

CARDINALITY_SCRIPT = """
import json, sys, urllib.request
import flagwarden
from openfeature.evaluation_context import EvaluationContext
client = flagwarden.configure(sys.argv[1])
for i in range(5000):
    client.get_boolean_value(f"adhoc-{i}", False, EvaluationContext(f"k{i % 7}"))
for i in range(30):
    client.get_boolean_value("new-scoring-model", False, EvaluationContext(f"unit-{i}"))
for i in range(200):
    flagwarden.record_metric(f"adhoc-{i}", "null_rate", 0.1, variant="treatment")
flagwarden.record_metric("new-scoring-model", "null_rate", 0.01, variant="treatment")
runtime = flagwarden.current()
# A scrape folds the counts taken in memory into the metrics (and the summary) first.
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/metrics").read().decode()
sizes = {
    "children": runtime.telemetry.recorder.series,
    "summary": len(runtime.telemetry.summary._counts),
}
print(json.dumps({"sizes": sizes, "metrics": text}))
flagwarden.shutdown()
"""


def test_unregistered_flags_beyond_the_limit_share_one_label(project: Project):
    from tests.conftest import governed_project

    port = free_port()
    config = governed_project(
        project,
        unregistered="allow",
        telemetry={
            "prometheus": {"port": port, "addr": "127.0.0.1"},
            "max_unregistered_flags": 50,
            "exposure_log": {"summary_interval": "1h"},
        },
    )
    result = subprocess.run(
        [sys.executable, "-c", CARDINALITY_SCRIPT, str(config), str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLAGWARDEN_LOG_LEVEL": "warning"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    counts: Counter[str] = Counter()
    for line in out["metrics"].splitlines():
        if line.startswith("feature_flag_evaluations_total{"):
            labels, value = line.rsplit(" ", 1)
            flag = labels.split('feature_flag_key="', 1)[1].split('"', 1)[0]
            counts[flag] += int(float(value))
    unregistered = {f for f in counts if f != "new-scoring-model"}
    assert len(unregistered) <= 51 and "__unregistered__" in unregistered
    assert sum(counts[f] for f in unregistered) == 5000  # the counts add up
    assert counts["__unregistered__"] == 4950
    assert counts["new-scoring-model"] == 30  # a governed flag keeps its own label
    assert out["sizes"]["children"] <= 52 and out["sizes"]["summary"] <= 60
    # record_metric's gauge is bounded the same way.
    quality = {
        line.split('feature_flag_key="', 1)[1].split('"', 1)[0]
        for line in out["metrics"].splitlines()
        if line.startswith("flagwarden_data_quality{")
    }
    assert "new-scoring-model" in quality and "__unregistered__" in quality
    assert len(quality) <= 52

    from flagwarden.audit.log import AuditLog

    log = AuditLog(f"sqlite:///{project.root}/.flagwarden/audit.db")
    rows = [row for r in log.records() if r.kind == "exposure_summary" for row in r.data["rows"]]
    log.close()
    summed: Counter[str] = Counter()
    for row in rows:
        summed[row["flag"]] += row["count"]
    assert len(set(summed) - {"new-scoring-model"}) <= 51
    assert sum(n for f, n in summed.items() if f != "new-scoring-model") == 5000


def test_max_unregistered_flags_is_validated(project: Project):
    from flagwarden.config import load_settings
    from flagwarden.errors import ConfigError

    project.profile("file", {"type": "file", "path": "../flags.json"})
    config = project.config("file", telemetry={"max_unregistered_flags": -1})
    with pytest.raises(ConfigError, match="max_unregistered_flags"):
        load_settings(config)


# -- the state store's change watchers -----------------------------------------------------


def test_a_state_watcher_whose_callback_fails_keeps_watching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from flagwarden.governance import sql_store
    from flagwarden.governance.state import FlagState, open_state_store

    logs = recorder(monkeypatch, sql_store)
    url = f"sqlite:///{tmp_path}/state.db"
    watched, writer = open_state_store(url), open_state_store(url)
    calls: list[str | None] = []

    def callback(flag: str | None) -> None:
        calls.append(flag)
        if len(calls) == 1:
            raise RuntimeError("a bug in the callback")

    try:
        watched.watch(callback)
        time.sleep(0.3)  # the first poll only takes the fingerprint
        assert writer.compare_and_set(FlagState("f").changed(actor="t", reason="a", stage=1))
        wait_for(lambda: len(calls) == 1)
        (failed,) = logs.named("flagwarden.state_watch_failed")
        assert "RuntimeError: a bug in the callback" in failed["error"]
        state = writer.load("f")
        assert state is not None
        assert writer.compare_and_set(state.changed(actor="t", reason="b", killed=True))
        wait_for(lambda: len(calls) == 2)  # the poll went on
    finally:
        watched.close()
        writer.close()
