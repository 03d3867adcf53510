"""Exposures counted and logged inside the governing provider: no global hook, lines in
structlog's own JSON, written in batches, counts that add up across threads and forks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from prometheus_client import REGISTRY

import flagwarden
from flagwarden.telemetry.exposure import ExposureHook
from flagwarden.telemetry.writer import ExposureWriter, exposure_fields
from tests.conftest import POLICY, Project, governed_project

ROOT = Path(__file__).resolve().parents[2]
FLAG = POLICY["flag"]


def evaluations(flag: str, provider: str = "file") -> float:
    total = 0.0
    for metric in REGISTRY.collect():  # a collection folds the recorders' counts first
        if metric.name != "feature_flag_evaluations":
            continue
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels["feature_flag_key"] == flag
                and labels["feature_flag_provider_name"] == provider
            ):
                total += sample.value
    return total


def structlog_line(fields: dict[str, Any], timestamp: str) -> str:
    """The line structlog's JSON configuration (flagwarden's own) writes for the event."""
    event = {**fields, "event": "feature_flag.evaluation"}
    event = structlog.processors.add_log_level(None, "info", event)
    event["timestamp"] = timestamp
    return str(structlog.processors.JSONRenderer()(None, "info", event))


@pytest.mark.parametrize(
    ("value", "stage", "error", "key"),
    [
        (True, 25, None, "order-1"),
        (False, 0.0, None, 'quote " backslash \\ newline \n tab \t'),
        (3, 100, None, "ünïcödé ✓ 𝄞"),
        (2.5, 12.5, None, ""),
        ("blue", 50, ErrorCode.TYPE_MISMATCH, "k"),
        ({"nested": [1]}, 5, ErrorCode.GENERAL, "k\x00\x1f"),
        (None, None, None, "k"),
    ],
)
def test_lines_are_structlogs_json_byte_for_byte_but_the_timestamp(value, stage, error, key):
    out = io.StringIO()
    writer = ExposureWriter(lambda: out)
    args = (FLAG, "treatment", Reason.SPLIT, error, "vendor", "treatment", "file")
    writer.write(*args, key, value, stage)
    writer.write(*args, key, value, stage)  # the second from the template
    assert out.getvalue() == ""  # buffered until a flush
    writer.flush()
    lines = out.getvalue().splitlines(keepends=True)
    assert len(lines) == 2 and writer.written == 2
    for line in lines:
        timestamp = json.loads(line)["timestamp"]
        assert timestamp.endswith("Z") and len(timestamp) == len("2026-11-27T07:50:41.115778Z")
        expected = structlog_line(exposure_fields(*args, key, value, stage), timestamp)
        assert line == expected + "\n"


def test_true_and_one_do_not_share_a_template():
    out = io.StringIO()
    writer = ExposureWriter(lambda: out)
    for value in (True, 1, 1.0):
        writer.write(FLAG, "v", "STATIC", None, "file", "", "file", "k", value, None)
    writer.flush()
    values = [json.loads(line)["feature_flag.result.value"] for line in out.getvalue().splitlines()]
    assert [type(v) for v in values] == [bool, int, float]


def test_the_buffer_is_written_at_its_size_bound():
    out = io.StringIO()
    writer = ExposureWriter(lambda: out, buffer_lines=10)
    for i in range(9):
        writer.write(FLAG, "v", "STATIC", None, "file", "", "file", f"k{i}", True, None)
    assert out.getvalue() == "" and writer.pending == 9
    writer.write(FLAG, "v", "STATIC", None, "file", "", "file", "k9", True, None)
    assert len(out.getvalue().splitlines()) == 10 and writer.pending == 0


class _Yielding(io.StringIO):
    """A stream whose every write lets other threads run (as a pipe that blocks would)."""

    def write(self, text: str) -> int:
        time.sleep(0)
        return super().write(text)


def test_exposure_batches_never_land_inside_a_structlog_line():
    """structlog's PrintLogger (an application's choice) writes a message and its newline as
    two writes, under its lock for the stream: the writer's batches take the same lock, so
    every line stays whole."""
    out = _Yielding()
    writer = ExposureWriter(lambda: out, buffer_lines=3)
    logger = structlog.PrintLogger(out)
    done = threading.Event()

    def log() -> None:
        for i in range(2000):
            logger.msg(json.dumps({"event": "vendor line", "i": i}))
        done.set()

    thread = threading.Thread(target=log)
    thread.start()
    i = 0
    while not done.is_set():
        writer.write(FLAG, "v", "STATIC", None, "file", "", "file", f"k{i}", True, None)
        i += 1
    thread.join()
    writer.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2000 + i
    for line in lines:
        json.loads(line)


def test_configure_installs_no_global_hook(project: Project):
    client = flagwarden.configure(governed_project(project, serve=True))
    assert not any(isinstance(hook, ExposureHook) for hook in api.get_hooks())
    before = evaluations(FLAG)
    for i in range(50):
        client.get_boolean_value(FLAG, False, EvaluationContext(f"u{i}"))
    assert evaluations(FLAG) - before == 50  # counted by the provider itself


def test_other_providers_are_counted_only_with_the_opt_in_hook(project: Project):
    other = InMemoryProvider({"legacy": InMemoryFlag("on", {"on": True, "off": False})})
    for opt_in in (False, True):
        config = governed_project(project, serve=True, telemetry={"hook": opt_in})
        client = flagwarden.configure(config)
        api.set_provider_and_wait(other, domain="legacy")
        legacy = api.get_client("legacy")
        provider_name = other.get_metadata().name
        before_other, before_own = evaluations("legacy", provider_name), evaluations(FLAG)
        for i in range(20):
            assert legacy.get_boolean_value("legacy", False, EvaluationContext(f"u{i}"))
            client.get_boolean_value(FLAG, False, EvaluationContext(f"u{i}"))
        assert evaluations("legacy", provider_name) - before_other == (20 if opt_in else 0)
        assert evaluations(FLAG) - before_own == 20  # never twice through the hook
        flagwarden.shutdown()
        assert not any(isinstance(hook, ExposureHook) for hook in api.get_hooks())


def test_counts_from_many_threads_add_up(project: Project):
    client = flagwarden.configure(governed_project(project, serve=True))
    recorder = flagwarden.current().telemetry.recorder
    before = evaluations(FLAG)
    stop = threading.Event()

    def fold_meanwhile() -> None:  # far more often than the telemetry thread's once a second
        while not stop.wait(0.001):
            recorder.fold()

    def work(n: int) -> None:
        for i in range(2000):
            client.get_boolean_value(FLAG, False, EvaluationContext(f"t{n}-{i % 50}"))

    folder = threading.Thread(target=fold_meanwhile)
    folder.start()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    folder.join()
    assert evaluations(FLAG) - before == 8 * 2000
    recorder.fold()
    assert len(recorder._threads) <= 2  # finished threads are forgotten once folded


def run(
    script: str, env: dict[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


def exposure_keys(stderr: str) -> list[str]:
    return [
        json.loads(line)["feature_flag.context.id"]
        for line in stderr.splitlines()
        if '"event": "feature_flag.evaluation"' in line
    ]


def test_lines_wait_for_the_timer_and_shutdown_writes_the_rest(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import sys, time, flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "writer = flagwarden.current().telemetry.recorder.writer\n"
        "for i in range(5):\n"
        f"    c.get_boolean_value({FLAG!r}, True, E(f'a{{i}}'))\n"
        "assert writer.pending == 5, writer.pending\n"
        "deadline = time.time() + 10\n"
        "while writer.pending and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "assert writer.written == 5, writer.written  # the telemetry thread's timer\n"
        "for i in range(3):\n"
        f"    c.get_boolean_value({FLAG!r}, True, E(f'b{{i}}'))\n"
        "flagwarden.shutdown()\n"
        "assert writer.pending == 0 and writer.written == 8\n"
    )
    result = run(script)
    assert sorted(exposure_keys(result.stderr)) == [*(f"a{i}" for i in range(5)), "b0", "b1", "b2"]


def test_a_forked_child_never_writes_its_parents_lines(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import os, flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "for i in range(20):\n"
        f"    c.get_boolean_value({FLAG!r}, True, E(f'parent-{{i}}'))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    for i in range(10):\n"
        f"        c.get_boolean_value({FLAG!r}, True, E(f'child-{{i}}'))\n"
        "    flagwarden.shutdown()\n"
        "    os._exit(0)\n"
        "assert os.waitpid(pid, 0)[1] == 0\n"
        "flagwarden.shutdown()\n"
    )
    keys = exposure_keys(run(script).stderr)
    assert sorted(keys) == sorted(
        [*(f"parent-{i}" for i in range(20)), *(f"child-{i}" for i in range(10))]
    )


def test_an_applications_structlog_configuration_gets_each_event(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import structlog, flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        "seen = []\n"
        "def keep(logger, name, event):\n"
        "    seen.append(event)\n"
        "    raise structlog.DropEvent\n"
        "structlog.configure(processors=[keep])\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "assert flagwarden.current().telemetry.recorder.writer is None\n"
        "for i in range(3):\n"
        f"    c.get_boolean_value({FLAG!r}, True, E(f'k{{i}}'))\n"
        "exposures = [e for e in seen if e['event'] == 'feature_flag.evaluation']\n"
        "assert [e['feature_flag.context.id'] for e in exposures] == ['k0', 'k1', 'k2'], seen\n"
        "flagwarden.shutdown()\n"
    )
    run(script)


def test_log_level_warning_silences_exposure_lines(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "for i in range(3):\n"
        f"    c.get_boolean_value({FLAG!r}, True, E(f'k{{i}}'))\n"
        "flagwarden.shutdown()\n"
    )
    assert exposure_keys(run(script, {"FLAGWARDEN_LOG_LEVEL": "warning"}).stderr) == []
    assert len(exposure_keys(run(script).stderr)) == 3


def test_odd_targeting_keys_never_change_the_answer(project: Project, monkeypatch):
    """A key a log line cannot hold (a lone surrogate) or a number: the policy still decides."""
    monkeypatch.setenv("FLAGWARDEN_KILL", FLAG)
    client = flagwarden.configure(governed_project(project, serve=True))
    for key in ("\udcff-from-bad-bytes", 42, 7.5):
        details = client.get_boolean_details(FLAG, True, EvaluationContext(key))  # type: ignore[arg-type]
        assert (details.value, details.reason, details.error_code) == (False, "DISABLED", None)
    flagwarden.shutdown()
    monkeypatch.delenv("FLAGWARDEN_KILL")
    client = flagwarden.configure(governed_project(project, serve=True))  # stage 0: control
    details = client.get_boolean_details(FLAG, True, EvaluationContext(42))  # type: ignore[arg-type]
    assert (details.value, details.reason, details.error_code) == (False, "SPLIT", None)


def test_a_broken_stderr_never_changes_an_answer(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import os, sys, flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 2)  # stderr: a pipe nobody reads\n"
        f"served = [c.get_boolean_value({FLAG!r}, True, E(f'u{{i}}')) for i in range(2000)]\n"
        "print(served.count(True), flush=True)\n"
        "flagwarden.shutdown()\n"
    )
    result = run(script, check=False)
    # Stage 0: control for all, lines or no lines (the exit status is the broken stderr's).
    assert result.stdout.split() == ["0"], (result.stdout, result.stderr[-2000:])


def test_lines_of_pool_workers_and_of_a_script_without_shutdown_are_written(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import multiprocessing, flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "def work(i):\n"
        f"    return flagwarden.current().client.get_boolean_value({FLAG!r}, True, E(f'w{{i}}'))\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    assert pool.map(work, range(40)) == [False] * 40\n"
        "for i in range(5):\n"
        f"    c.get_boolean_value({FLAG!r}, True, E(f'main-{{i}}'))\n"
        "# no shutdown(): the process's exit writes what is waiting\n"
    )
    keys = exposure_keys(run(script).stderr)
    assert sorted(keys) == sorted([*(f"w{i}" for i in range(40)), *(f"main-{i}" for i in range(5))])


def test_structlog_configured_after_configure_gets_the_events(project: Project):
    config = governed_project(project, serve=True)
    script = (
        "import structlog, flagwarden\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        f"c.get_boolean_value({FLAG!r}, True, E('before'))\n"
        "seen = []\n"
        "def keep(logger, name, event):\n"
        "    seen.append(event)\n"
        "    raise structlog.DropEvent\n"
        "structlog.configure(processors=[keep])\n"
        f"c.get_boolean_value({FLAG!r}, True, E('after'))\n"
        "flagwarden.shutdown()\n"
        "exposures = [e for e in seen if e['event'] == 'feature_flag.evaluation']\n"
        "print(sorted(e['feature_flag.context.id'] for e in exposures))\n"
    )
    result = run(script)
    assert result.stdout.strip() == "['after', 'before']"  # the waiting line went through it too
    assert exposure_keys(result.stderr) == []


MANY_WRITERS = """
import multiprocessing, sys
import flagwarden
from openfeature.evaluation_context import EvaluationContext as E
client = flagwarden.configure(sys.argv[1])
flagwarden.current().telemetry.recorder.writer._limit = 512  # batches of ~200 KB

def work(n):
    import flagwarden
    for i in range(3000):
        flagwarden.current().client.get_boolean_value("new-scoring-model", True, E(f"w{n}-{i}"))
    flagwarden.shutdown()

procs = [multiprocessing.get_context("fork").Process(target=work, args=(n,)) for n in range(3)]
for p in procs:
    p.start()
for i in range(3000):
    client.get_boolean_value("new-scoring-model", True, E(f"main-{i}"))
for p in procs:
    p.join()
flagwarden.shutdown()
"""


@pytest.mark.slow
def test_processes_sharing_stderr_never_split_each_others_lines(project: Project):
    """Four processes writing exposure batches to one pipe: each write is whole lines of at
    most PIPE_BUF bytes, which a pipe never interleaves (a 200 KB write it may split)."""
    config = governed_project(project, serve=True)
    done = subprocess.run(
        [sys.executable, "-c", MANY_WRITERS, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    keys = [json.loads(line).get("feature_flag.context.id") for line in done.stderr.splitlines()]
    assert len([k for k in keys if k]) == 12_000


def test_structlogs_capture_logs_after_configure_gets_the_events(project: Project):
    """structlog.testing.capture_logs edits the configured processor list in place (the same
    list object): exposure lines must go through it too, not straight to the stream."""
    config = governed_project(project, serve=True)
    script = (
        "import flagwarden\n"
        "from structlog.testing import capture_logs\n"
        "from openfeature.evaluation_context import EvaluationContext as E\n"
        f"c = flagwarden.configure({str(config)!r})\n"
        "with capture_logs() as logs:\n"
        f"    c.get_boolean_value({FLAG!r}, True, E('captured'))\n"
        "    flagwarden.current().telemetry.recorder.flush()\n"
        "flagwarden.shutdown()\n"
        "exposures = [e for e in logs if e['event'] == 'feature_flag.evaluation']\n"
        "print(sorted(e['feature_flag.context.id'] for e in exposures))\n"
    )
    result = run(script)
    assert result.stdout.strip() == "['captured']", result.stderr
    assert exposure_keys(result.stderr) == []
