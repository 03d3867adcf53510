"""OpenTelemetry exposures, from real processes to a local OTLP/HTTP receiver.

Every test configures flagwarden in processes of their own with the standard ``OTEL_*``
variables pointing at :class:`tests.servers.otlp.OtlpReceiver`, evaluates through the
OpenFeature client and ``flagwarden.assign``, shuts down, and reads what the receiver decoded:
``feature_flag.evaluation`` delta points whose attributes are the semantic conventions' (and
never a targeting key), values that add up across processes and forks, opt-in log records,
and a collector that is down or hangs never failing an evaluation nor holding up shutdown.

This file is also the pipeline those processes run:

python -m tests.telemetry.test_otel CONFIG MODE ARGS...
  run N M:          evaluate the governed flag for N keys (k0..k4, again and again) and the
                    flag ``missing`` twice for m0, then ``assign`` M keys; print what was
                    served as JSON, shut down, print the seconds shutdown took.
  twice N PAUSE:    evaluate N keys, sleep PAUSE seconds (an export passes), N more, shut down.
  fork N WORKERS:   evaluate N keys, fork WORKERS children that evaluate N each and shut down,
                    evaluate N more, shut down.
  app N:            with the application's own global MeterProvider (an in-memory reader) set
                    first: evaluate N keys, shut down, print what the application's reader
                    holds for feature_flag.evaluation.
  exit N:           evaluate N keys and end without shutdown().
"""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwarden.config import load_settings
from flagwarden.errors import ConfigError
from flagwarden.governance.project import Governance
from tests.conftest import POLICY, Project, governed_project, run_cli
from tests.servers.launchdarkly import free_port
from tests.servers.otlp import OtlpReceiver, Point

ROOT = Path(__file__).resolve().parents[2]
FLAG = POLICY["flag"]
METRIC = "feature_flag.evaluation"
DELTA, CUMULATIVE = 1, 2  # AggregationTemporality in OTLP
KEYS = [f"k{i}" for i in range(5)]
CONVENTION = {
    "feature_flag.key",
    "feature_flag.version",
    "feature_flag.set.id",
    "feature_flag.result.variant",
    "feature_flag.result.reason",
    "feature_flag.provider.name",
    "error.type",
    "flagwarden.source",
    "flagwarden.arm",
    "flagwarden.capped",
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def otel_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The process environment: OTEL_* only as given (none inherited from the test run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FLAGWARDEN_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PYTHONPATH=str(ROOT),
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="orders-etl",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
    )
    env.update(extra)
    return env


def pipeline(config: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.test_otel", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[list[str], str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out.splitlines(), err


def otel_project(project: Project, stage: float | None = 50, **otel: Any) -> Path:
    """The governed project, with ``telemetry.otel`` (enabled unless said) and the flag at
    ``stage`` (50: both arms served)."""
    config = governed_project(project, telemetry={"otel": {"enabled": True, **otel}})
    if stage is not None:
        gov = Governance.open(load_settings(config))
        try:
            gov.rollout().advance(FLAG, actor="test", reason="test", to=stage, force=True)
        finally:
            gov.close()
    return config


def by_attributes(points: list[Point]) -> dict[frozenset[tuple[str, Any]], float]:
    """Delta points summed per attribute set."""
    sums: Counter[frozenset[tuple[str, Any]]] = Counter()
    for point in points:
        sums[frozenset(point.attributes.items())] += point.value
    return dict(sums)


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in map(json.loads, lines) if e.get("event") == name]


# -- the counter ---------------------------------------------------------------------------


def test_counts_reach_the_collector_under_the_conventions_names(
    project: Project, receiver: OtlpReceiver
):
    config = otel_project(project)
    env = otel_env(
        receiver.url,
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=acme",
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
    )
    lines, _ = finish(pipeline(config, "run", "40", "300", env=env))
    served = json.loads(lines[0])

    points = receiver.points(METRIC)
    assert points, receiver.requests
    requests = receiver.received("/v1/metrics")
    assert all(r["encoding"] == "gzip" for r in requests)
    assert all(r["headers"].get("x-tenant") == "acme" for r in requests)
    for point in points:
        assert point.temporality == DELTA and point.monotonic and point.unit == "{evaluation}"
        assert point.scope == "flagwarden"
        assert point.resource["service.name"] == "orders-etl"
        assert point.resource["deployment.environment.name"] == "test"
        assert point.resource["service.instance.id"]
        assert set(point.attributes) <= CONVENTION, point.attributes
        # Bounded: no targeting key, nor any per-record value, as an attribute.
        for value in point.attributes.values():
            assert value not in KEYS and value != "m0" and not str(value).startswith("a")

    sums = by_attributes(points)
    governed = {
        "feature_flag.key": FLAG,
        "feature_flag.provider.name": "file",
        "flagwarden.source": "file",
    }
    treatment = frozenset(  # the vendor's answer, served as it was
        {
            **governed,
            "feature_flag.result.reason": "static",
            "feature_flag.result.variant": "served",  # the flag file's variant
            "flagwarden.arm": "treatment",
            "flagwarden.capped": False,
        }.items()
    )
    control = frozenset(  # capped by the stage: the policy's split
        {
            **governed,
            "feature_flag.result.reason": "split",
            "feature_flag.result.variant": "control",
            "flagwarden.arm": "control",
            "flagwarden.capped": True,
        }.items()
    )
    missing = frozenset(
        {
            "feature_flag.key": "missing",
            "feature_flag.result.reason": "error",
            "feature_flag.provider.name": "file",
            "error.type": "flag_not_found",
            "flagwarden.source": "default",
            "flagwarden.capped": False,
        }.items()
    )
    # The client's 40 evaluations and assign's 300 records, per variant, as they were served.
    client, assigned = Counter(served["client"]), Counter(served["assign"])
    assert client.total() == 40 and assigned.total() == 300
    assert assigned["served"] > 0 and assigned["control"] > 0  # both arms at 50%
    assert client["served"] + assigned["served"] == sums[treatment]
    assert client["control"] + assigned["control"] == sums[control]
    assert sums[missing] == 2
    assert sums == {treatment: sums[treatment], control: sums[control], missing: 2}
    assert sum(sums.values()) == 40 + 300 + 2
    # error.type only on the error's points.
    assert [p for p in points if "error.type" in p.attributes] == [
        p for p in points if p.attributes["feature_flag.key"] == "missing"
    ]


def test_the_definitions_version_and_flag_set_are_attributes(
    project: Project, receiver: OtlpReceiver
):
    """flagd's ``version`` (the flag's) and ``flagSetId`` (the file's) metadata become
    ``feature_flag.version`` and ``feature_flag.set.id``; a flag the file lacks has neither."""
    config = otel_project(project)
    flags_file = project.root / "flags.json"
    doc = json.loads(flags_file.read_text())
    doc["metadata"] = {"flagSetId": "orders"}
    doc["flags"][FLAG]["metadata"] = {"version": "7"}
    flags_file.write_text(json.dumps(doc))
    finish(pipeline(config, "run", "10", "0", env=otel_env(receiver.url)))
    points = receiver.points(METRIC)
    ours = [p for p in points if p.attributes["feature_flag.key"] == FLAG]
    assert ours and all(p.attributes["feature_flag.version"] == "7" for p in ours)
    assert all(p.attributes["feature_flag.set.id"] == "orders" for p in ours)
    others = [p for p in points if p.attributes["feature_flag.key"] != FLAG]
    assert others and not any("feature_flag.version" in p.attributes for p in others)


def test_three_processes_counting_ten_each_add_up_to_thirty(
    project: Project, receiver: OtlpReceiver
):
    config = otel_project(project)
    # Exports every 200 ms, and a pause longer than a fold and an export between the halves:
    # each process sends at least two deltas, which must not count anything twice.
    env = otel_env(receiver.url, OTEL_METRIC_EXPORT_INTERVAL="200")
    procs = [pipeline(config, "twice", "5", "1.6", env=env) for _ in range(3)]
    for proc in procs:
        finish(proc)
    points = receiver.points(METRIC)
    assert sum(p.value for p in points) == 30
    writers = {p.resource["service.instance.id"] for p in points}
    assert len(writers) == 3  # one writer per process
    for writer in writers:
        mine = [p for p in points if p.resource["service.instance.id"] == writer]
        assert sum(p.value for p in mine) == 10
        assert len({p.time for p in mine}) >= 2, mine  # an export before the shutdown's
        # Deltas: each series' windows follow one another, never overlap (no running total).
        for attributes in {frozenset(p.attributes.items()) for p in mine}:
            series = sorted(
                (p for p in mine if frozenset(p.attributes.items()) == attributes),
                key=lambda p: p.time,
            )
            for before, after in itertools.pairwise(series):
                assert after.start >= before.time, series


def test_cumulative_when_the_environment_asks(project: Project, receiver: OtlpReceiver):
    config = otel_project(project)
    env = otel_env(
        receiver.url,
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="cumulative",
    )
    finish(pipeline(config, "twice", "5", "0.7", env=env))
    points = receiver.points(METRIC)
    assert {p.temporality for p in points} == {CUMULATIVE}
    last = max(p.time for p in points)
    assert sum(p.value for p in points if p.time == last) == 10  # the running total


def test_forked_children_send_their_own_counts_once(project: Project, receiver: OtlpReceiver):
    config = otel_project(project)
    # The parent folds (every second) before it forks; nothing is exported before shutdown.
    finish(pipeline(config, "fork", "10", "2", env=otel_env(receiver.url)))
    points = receiver.points(METRIC)
    by_writer: Counter[str] = Counter()
    for point in points:
        by_writer[point.resource["service.instance.id"]] += int(point.value)
    # The parent's 10 + 10 and each child's 10: the parent's unexported counts were not sent
    # again by a child.
    assert sorted(by_writer.values()) == [10, 10, 20]
    assert sum(by_writer.values()) == 40


def test_multiprocessing_children_send_their_counts_at_their_end(
    project: Project, receiver: OtlpReceiver
):
    """multiprocessing's children (a Process, a Pool's workers) end with os._exit, never
    running atexit: their finalizer exports what they counted. 3 x 10 + 4 x 10 + 10."""
    config = otel_project(project)
    finish(pipeline(config, "mp", "10", "3", env=otel_env(receiver.url)))
    assert sum(p.value for p in receiver.points(METRIC)) == 80


def test_otlp_headers_and_endpoint_keys_never_reach_a_line(project: Project):
    """The exporter quotes its URL in its own warnings (a collector that is down), check shows
    the endpoint: header values and query keys are masked in both."""
    closed = free_port()
    config = otel_project(project)
    env = otel_env(
        f"http://127.0.0.1:{closed}",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{closed}/v1/metrics?key=Zq81kKs9",
        OTEL_EXPORTER_OTLP_HEADERS='x-honeycomb-team="Xk3h9ZpQ2vLm8R",x-sf-token=Ab3dEf9qQ',
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    _, stderr = finish(pipeline(config, "run", "5", "0", env=env))
    checked = subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    said = stderr + checked.stdout + checked.stderr
    assert "OpenTelemetry" in checked.stdout
    for secret in ("Zq81kKs9", "Xk3h9ZpQ2vLm8R", "Ab3dEf9qQ"):
        assert secret not in said, secret


def test_prefork_multiprocess_mode_counts_once(
    project: Project, receiver: OtlpReceiver, tmp_path: Path
):
    config = otel_project(project)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = otel_env(receiver.url, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    finish(pipeline(config, "run", "40", "0", env=env))
    assert sum(p.value for p in receiver.points(METRIC)) == 40 + 2


def test_end_without_shutdown_still_sends_the_last_counts(project: Project, receiver: OtlpReceiver):
    config = otel_project(project)
    finish(pipeline(config, "exit", "12", env=otel_env(receiver.url)))
    assert sum(p.value for p in receiver.points(METRIC)) == 12


def test_the_applications_meter_provider_is_used_and_left_running(
    project: Project, receiver: OtlpReceiver
):
    config = otel_project(project)
    lines, _ = finish(pipeline(config, "app", "15", env=otel_env(receiver.url)))
    report = json.loads(lines[-1])
    assert report["total"] == 15  # flushed into the application's reader by shutdown()
    assert report["still_collecting"] is True  # its provider was not shut down
    assert receiver.requests == []  # flagwarden built no exporter of its own


def test_flagwarden_otel_env_turns_it_on(project: Project, receiver: OtlpReceiver):
    config = governed_project(project)  # telemetry.otel not enabled
    finish(pipeline(config, "exit", "3", env=otel_env(receiver.url)))
    assert receiver.requests == []
    finish(pipeline(config, "exit", "3", env=otel_env(receiver.url, FLAGWARDEN_OTEL="1")))
    assert sum(p.value for p in receiver.points(METRIC)) == 3


# -- log records -----------------------------------------------------------------------------


@pytest.mark.parametrize("logs", [False, True])
def test_log_records_are_opt_in(project: Project, receiver: OtlpReceiver, logs: bool):
    config = otel_project(project, logs=logs)
    finish(pipeline(config, "run", "40", "10", env=otel_env(receiver.url)))
    assert receiver.points(METRIC)
    records = receiver.records()
    if not logs:
        assert receiver.received("/v1/logs") == [] and records == []
        return
    # One per first exposure (flag, key, variant), as the exposure lines; assign logs none.
    assert {r.event_name for r in records} == {"feature_flag.evaluation"}
    assert {r.body for r in records} == {"feature_flag.evaluation"}
    assert {r.severity for r in records} == {9}  # INFO
    assert {r.scope for r in records} == {"flagwarden"}
    assert {r.resource["service.name"] for r in records} == {"orders-etl"}
    governed = [r for r in records if r.attributes["feature_flag.key"] == FLAG]
    assert sorted(r.attributes["feature_flag.context.id"] for r in governed) == KEYS
    for record in governed:
        attributes = record.attributes
        treated = attributes["feature_flag.result.variant"] == "served"
        assert attributes["feature_flag.result.variant"] in ("control", "served")
        assert attributes["feature_flag.result.reason"] == ("static" if treated else "split")
        assert attributes["flagwarden.arm"] == ("treatment" if treated else "control")
        assert attributes["feature_flag.result.value"] is treated
        assert attributes["feature_flag.provider.name"] == "file"
        assert attributes["flagwarden.stage"] == 50
        assert "error.type" not in attributes
        assert record.time > 0
    (error,) = [r for r in records if r.attributes["feature_flag.key"] == "missing"]
    assert error.attributes["feature_flag.context.id"] == "m0"
    assert error.attributes["error.type"] == "flag_not_found"
    assert error.attributes["feature_flag.result.reason"] == "error"
    assert len(records) == len(KEYS) + 1


# -- a collector that is down or hangs --------------------------------------------------------


def test_a_collector_that_is_down_never_fails_evaluations_nor_shutdown(project: Project):
    config = otel_project(project, logs=True)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens
    env = otel_env(down, OTEL_EXPORTER_OTLP_TIMEOUT="2", OTEL_METRIC_EXPORT_INTERVAL="300")
    started = time.monotonic()
    lines, err = finish(pipeline(config, "run", "40", "50", env=env))
    served = json.loads(lines[0])
    assert sum(served["client"].values()) == 40 and sum(served["assign"].values()) == 50
    assert float(lines[-1]) < 5  # shutdown: the exporter's own 2 s, and a little
    assert time.monotonic() - started < 60
    failed = {e["thread"] for e in events(err, "flagwarden.background_failed")}
    assert {"flagwarden-otel-metrics", "flagwarden-otel-logs"} <= failed
    # The exposure lines went out as usual.
    assert len(events(err, "feature_flag.evaluation")) == len(KEYS) + 1


@pytest.mark.slow
def test_a_collector_that_never_answers_holds_shutdown_at_most_the_close_timeout(
    project: Project,
):
    from flagwarden.telemetry.otel import CLOSE_TIMEOUT

    config = otel_project(project, logs=True)
    with socket.socket() as hung:  # accepts connections (the kernel does), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        env = otel_env(endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="120")
        lines, err = finish(pipeline(config, "run", "20", "20", env=env))
    took = float(lines[-1])
    assert CLOSE_TIMEOUT - 0.5 < took < CLOSE_TIMEOUT + 3
    (timeout,) = events(err, "flagwarden.otel_flush_timeout")
    assert sorted(timeout["threads"]) == ["flagwarden-otel-logs", "flagwarden-otel-metrics"]


# -- configuration ---------------------------------------------------------------------------


def test_without_the_extra_configure_and_check_name_it(
    project: Project, monkeypatch: pytest.MonkeyPatch
):
    import flagwarden
    from flagwarden.checks import check_project

    config = otel_project(project, stage=None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)  # as if not installed
    with pytest.raises(ConfigError) as raised:
        flagwarden.configure(config)
    assert raised.value.field == "telemetry.otel.enabled"
    assert "pip install 'flagwarden[otel]'" in str(raised.value)
    assert "opentelemetry.sdk.metrics" in str(raised.value)
    errors = [f.message for f in check_project(config) if f.level == "error"]
    assert any("pip install 'flagwarden[otel]'" in e for e in errors), errors


def test_check_reports_the_otlp_endpoint(project: Project, monkeypatch: pytest.MonkeyPatch):
    config = otel_project(project, stage=None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:secret@collector:4318")
    result = run_cli(config, "check")
    text = result.stdout + result.stderr
    assert "feature_flag.evaluation" in text and "collector:4318/v1/metrics" in text, text
    assert "secret" not in text


def test_logs_need_enabled_and_the_env_switch_is_checked(
    project: Project, monkeypatch: pytest.MonkeyPatch
):
    from flagwarden.config import OtelConfig
    from flagwarden.telemetry.otel import otel_enabled

    bad = governed_project(project, telemetry={"otel": {"logs": True}})
    with pytest.raises(ConfigError, match=r"telemetry\.otel: logs: true needs enabled: true"):
        load_settings(bad)
    off, on = OtelConfig(), OtelConfig(enabled=True)
    assert (otel_enabled(off), otel_enabled(on)) == (False, True)
    for value, expected in (("1", True), ("true", True), ("0", False), ("off", False)):
        monkeypatch.setenv("FLAGWARDEN_OTEL", value)
        assert otel_enabled(off) is expected and otel_enabled(on) is expected
    monkeypatch.setenv("FLAGWARDEN_OTEL", "maybe")
    with pytest.raises(ConfigError, match="FLAGWARDEN_OTEL"):
        otel_enabled(on)


# -- the exposure lines follow the same conventions -------------------------------------------


def test_exposure_lines_lowercase_reasons_and_error_type_only_on_errors():
    from openfeature.exception import ErrorCode
    from openfeature.flag_evaluation import Reason

    from flagwarden.telemetry.writer import ExposureWriter, exposure_fields

    out = io.StringIO()
    writer = ExposureWriter(lambda: out)
    writer.write(
        FLAG, "treatment", Reason.TARGETING_MATCH, None, "file", "treatment", "file", "k1", True, 25
    )
    writer.write(
        FLAG, "", Reason.ERROR, ErrorCode.FLAG_NOT_FOUND, "default", "", "file", "k2", False, None
    )
    writer.write(FLAG, "", "ERROR", ErrorCode.GENERAL, "default", "", "file", "k3", False, None)
    writer.flush()
    ok, not_found, general = map(json.loads, out.getvalue().splitlines())
    assert ok["feature_flag.result.reason"] == "targeting_match"
    assert "error.type" not in ok
    assert not_found["feature_flag.result.reason"] == "error"
    assert not_found["error.type"] == "flag_not_found"
    assert general["error.type"] == "general"
    # The structlog path (an application's own structlog set-up) writes the same fields.
    fields = exposure_fields(FLAG, "v", Reason.STATIC, None, "file", "", "file", "k", 1, None)
    assert fields["feature_flag.result.reason"] == "static" and "error.type" not in fields


# -- the pipeline ------------------------------------------------------------------------------


def test_log_records_need_the_exposure_log(project: Project):
    config = governed_project(
        project,
        telemetry={"otel": {"enabled": True, "logs": True}, "exposure_log": {"enabled": False}},
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert "exposure_log.enabled: false" in raised.value.problem


def _evaluate(client: Any, n: int) -> Counter[str]:
    from openfeature.evaluation_context import EvaluationContext

    return Counter(
        client.get_boolean_details(FLAG, False, EvaluationContext(KEYS[i % len(KEYS)])).variant
        for i in range(n)
    )


def _values(data: Any, name: str) -> float:
    return sum(
        point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    )


def _kept_class() -> type[Any]:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class Kept(MetricExporter):
        """The application's exporter: keeps what it is given."""

        def __init__(self) -> None:
            super().__init__()
            self.exported: list[Any] = []
            self.shut = False

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
            self.exported.append(metrics_data)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
            self.shut = True

    return Kept


def _Kept() -> Any:
    return _kept_class()()


def _child(config: str, n: int) -> None:
    import flagwarden

    client = flagwarden.current().client  # type: ignore[union-attr]
    _evaluate(client, n)
    flagwarden.shutdown()


def _child_without_shutdown(config: str, n: int) -> None:
    import flagwarden

    _evaluate(flagwarden.current().client, n)  # type: ignore[union-attr]


def _pool_task(n: int) -> int:
    import flagwarden

    return sum(_evaluate(flagwarden.current().client, n).values())  # type: ignore[union-attr]


def main(argv: list[str]) -> None:
    import flagwarden

    config, mode = argv[0], argv[1]
    if mode == "app":
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        kept = _Kept()  # exported once an hour, unless someone flushes
        reader = PeriodicExportingMetricReader(kept, export_interval_millis=3_600_000)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    client = flagwarden.configure(config)
    if mode == "run":
        from openfeature.evaluation_context import EvaluationContext

        n, m = int(argv[2]), int(argv[3])
        report: dict[str, Any] = {"client": _evaluate(client, n)}
        for _ in range(2):
            client.get_boolean_value("missing", False, EvaluationContext("m0"))
        assigned = flagwarden.assign(FLAG, [f"a{i}" for i in range(m)], False) if m else []
        report["assign"] = Counter("served" if v else "control" for v in assigned)
        print(json.dumps(report), flush=True)
    elif mode == "twice":
        n, pause = int(argv[2]), float(argv[3])
        _evaluate(client, n)
        time.sleep(pause)
        _evaluate(client, n)
    elif mode == "fork":
        n, workers = int(argv[2]), int(argv[3])
        _evaluate(client, n)
        time.sleep(1.5)  # folded into the parent's counter, not yet exported
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_child, args=(config, n)) for _ in range(workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0, proc.exitcode
        _evaluate(client, n)
    elif mode == "mp":  # multiprocessing children end with os._exit: no atexit, no shutdown
        n, workers = int(argv[2]), int(argv[3])
        ctx = multiprocessing.get_context("fork")
        procs = [
            ctx.Process(target=_child_without_shutdown, args=(config, n)) for _ in range(workers)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0, proc.exitcode
        pool = ctx.Pool(2)
        assert pool.map(_pool_task, [n] * 4) == [n] * 4
        pool.close()  # the workers end normally (not terminate(): a signal)
        pool.join()
        _evaluate(client, n)
    elif mode == "exit":
        _evaluate(client, int(argv[2]))
        return  # no shutdown(): the process's end sends what is left
    elif mode == "app":
        _evaluate(client, int(argv[2]))
    started = time.monotonic()
    flagwarden.shutdown()
    took = time.monotonic() - started
    if mode == "app":
        # What shutdown()'s force-flush exported (cumulative: the one export holds the total).
        total = sum(_values(data, METRIC) for data in kept.exported)
        exports = len(kept.exported)
        metrics.get_meter_provider().get_meter("app").create_counter("app.after").add(1)
        metrics.get_meter_provider().force_flush()  # type: ignore[attr-defined]
        still = not kept.shut and len(kept.exported) == exports + 1
        still = still and _values(kept.exported[-1], "app.after") == 1
        print(json.dumps({"total": total, "still_collecting": still}), flush=True)
        return
    print(took, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
