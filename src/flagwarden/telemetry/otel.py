"""Exposures as OpenTelemetry metrics and log records over OTLP/HTTP (the ``[otel]`` extra).

``telemetry.otel.enabled: true`` (or ``FLAGWARDEN_OTEL=1``) counts every answer in a
``feature_flag.evaluation`` counter under the attribute names of OpenTelemetry's semantic
conventions for feature flags: ``feature_flag.key``, ``feature_flag.result.variant``,
``feature_flag.result.reason`` (lowercase: ``static``, ``targeting_match``, ``split``,
``default``, ``error``...), ``feature_flag.provider.name`` and, on an error only,
``error.type`` (the lowercase error code: ``flag_not_found``, ``general``...), plus
flagwarden's ``flagwarden.source``, ``flagwarden.arm`` and ``flagwarden.capped``. Never a
targeting key nor any other per-record value: the attributes are as bounded as the Prometheus
labels. ``telemetry.otel.logs: true`` also sends each first exposure (what an exposure line
says, deduplicated the same way) as a ``feature_flag.evaluation`` log record (an event: its
event name and body), with ``feature_flag.context.id``.

The counter is fed by the exposure recorder's fold (every second, before a /metrics scrape,
and at shutdown), as Prometheus is: an evaluation still costs one dict increment. A first
exposure adds one tuple to a queue that the ``flagwarden-otel-logs`` thread turns into log
records.

Set-up is OpenTelemetry's own: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``/``..._LOGS_ENDPOINT``), ``OTEL_EXPORTER_OTLP_HEADERS``,
``..._TIMEOUT``, ``..._COMPRESSION``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_METRIC_EXPORT_INTERVAL`` and ``OTEL_BLRP_*`` are read as the SDK reads them.

* A ``MeterProvider`` (``LoggerProvider``) the application set as OpenTelemetry's global before
  ``configure()`` is used as it is: its readers, exporters, temporality and fork handling are
  the application's, and shutdown force-flushes it but never shuts it down.
* Otherwise flagwarden builds its own, private ones (never made the global): OTLP over
  HTTP/protobuf, exported by flagwarden's own background threads (``flagwarden-otel-metrics``
  every ``OTEL_METRIC_EXPORT_INTERVAL``, 60 s by default; ``flagwarden-otel-logs`` every
  ``OTEL_BLRP_SCHEDULE_DELAY``, 1 s), whose failures are reported like any background thread's.
  The counter has delta temporality unless
  ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative``: a batch job's processes
  (forked workers, parallel tasks, one run after another) each send what they counted since
  their last export, so the backend adds them up; cumulative totals from short-lived
  processes would each start again at zero. Each process is its own writer: a
  ``service.instance.id`` of its own (a random UUID) unless ``OTEL_RESOURCE_ATTRIBUTES``
  names one.
* A forked child builds its own providers and exporters: the parent's connections, threads and
  not-yet-exported counts stay the parent's (exported by the parent, never twice).
* ``flagwarden.shutdown()`` folds the last counts and exports them, and the waiting log
  records, waiting at most :data:`CLOSE_TIMEOUT` seconds (a collector that is down costs at
  most that; ``OTEL_EXPORTER_OTLP_TIMEOUT`` bounds each attempt). So does the end of a process
  that never called it.

Nothing here imports OpenTelemetry until it is enabled: without the extra, ``enabled: true``
is a :class:`~flagwarden.errors.ConfigError` naming it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flagwarden.background import report_failure, report_ok, run_supervised
from flagwarden.errors import ConfigError
from flagwarden.logs import get_logger
from flagwarden.telemetry.otel_sdk import (
    METRIC,
    OtelExportFailed,
    Pipeline,
    env_number,
    info_severity,
    register_secrets,
    signal_endpoint,
)
from flagwarden.telemetry.writer import error_type, reason_value

if TYPE_CHECKING:
    from flagwarden.config import OtelConfig

__all__ = [
    "CLOSE_TIMEOUT",
    "ENV",
    "EVENT",
    "LOGS_THREAD",
    "METRIC",
    "METRICS_THREAD",
    "OtelExportFailed",
    "OtelExposures",
    "log_attributes",
    "metric_attributes",
    "missing_extra",
    "otel_enabled",
    "signal_endpoint",
]

_log = get_logger("flagwarden.otel")

EVENT = "feature_flag.evaluation"
SCOPE = "flagwarden"
METRICS_THREAD = "flagwarden-otel-metrics"
LOGS_THREAD = "flagwarden-otel-logs"
ENV = "FLAGWARDEN_OTEL"
CLOSE_TIMEOUT = 10.0  # seconds shutdown waits for the last exports, at most
FORKED_EXPORT_INTERVAL = 5.0  # seconds between a forked child's exports, at most
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
# What the [otel] extra installs (the SDK and the OTLP/HTTP exporter).
_REQUIRED = (
    "opentelemetry.sdk.metrics",
    "opentelemetry.sdk._logs",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
)
_SCALARS = (bool, int, float, str)
_MAX_ATTRIBUTE_SETS = 10_000  # attribute dicts kept for reuse (a flag's versions keep coming)

# One first exposure waiting for the logs thread: flag, variant, reason, error, source, arm,
# provider, targeting key, value, stage, time (ns).
Event = tuple[str, str, Any, Any, str, str, str, str, Any, Any, int]


def otel_enabled(config: OtelConfig) -> bool:
    """``telemetry.otel.enabled``, unless ``FLAGWARDEN_OTEL`` says otherwise (1 or 0)."""
    raw = os.environ.get(ENV)
    if raw is None:
        return config.enabled
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(None, ENV, f"expected 1 or 0 (true or false), got {raw!r}")


def missing_extra() -> ConfigError | None:
    """The error that says to install ``[otel]`` when a module of it cannot be imported."""
    for name in _REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return ConfigError(
                None,
                "telemetry.otel.enabled",
                "needs the OpenTelemetry SDK and its OTLP/HTTP exporter: "
                f"pip install 'flagwarden[otel]' (missing {exc.name or name})",
            )
    return None


def metric_attributes(key: tuple[Any, ...]) -> dict[str, str | bool]:
    """A recorder key's data point attributes (empty values left out)."""
    flag, variant, reason, error, source, arm, capped, provider = key
    attributes: dict[str, str | bool] = {"feature_flag.key": flag}
    if variant:
        attributes["feature_flag.result.variant"] = variant
    if reason:
        attributes["feature_flag.result.reason"] = reason_value(reason)
    if provider:
        attributes["feature_flag.provider.name"] = provider
    if error is not None:
        attributes["error.type"] = error_type(error)
    if source:
        attributes["flagwarden.source"] = source
    if arm:
        attributes["flagwarden.arm"] = arm
    attributes["flagwarden.capped"] = bool(capped)
    return attributes


def log_attributes(event: Event) -> dict[str, Any]:
    """A first exposure's log record attributes: the exposure line's fields (empty values and
    values that are not scalars left out)."""
    flag, variant, reason, error, source, arm, provider, key, value, stage, _ = event
    attributes: dict[str, Any] = {"feature_flag.key": flag}
    if variant:
        attributes["feature_flag.result.variant"] = variant
    if reason:
        attributes["feature_flag.result.reason"] = reason_value(reason)
    if isinstance(value, _SCALARS):
        attributes["feature_flag.result.value"] = value
    if provider:
        attributes["feature_flag.provider.name"] = provider
    if key:
        attributes["feature_flag.context.id"] = key
    if error is not None:
        attributes["error.type"] = error_type(error)
    if source:
        attributes["flagwarden.source"] = source
    if isinstance(stage, int | float) and not isinstance(stage, bool):
        attributes["flagwarden.stage"] = stage
    if arm:
        attributes["flagwarden.arm"] = arm
    return attributes


def identity_attributes(identity: tuple[str | None, str | None]) -> dict[str, str]:
    """``feature_flag.version`` and ``feature_flag.set.id``, where the source has them."""
    version, set_id = identity
    found = {}
    if version:
        found["feature_flag.version"] = version
    if set_id:
        found["feature_flag.set.id"] = set_id
    return found


class OtelExposures:
    """The recorder's OpenTelemetry side: :meth:`add` from the fold, ``events`` filled on the
    evaluation path (first exposures, when ``logs``), the export threads, fork and close."""

    def __init__(self, config: OtelConfig) -> None:
        problem = missing_extra()
        if problem is not None:
            raise problem
        register_secrets()  # before the exporters can log their URL
        self.logs = config.logs
        # First exposures waiting for the logs thread; beyond the bound they are dropped (and
        # counted in ``dropped``) rather than held: OTEL_BLRP_MAX_QUEUE_SIZE, 2048 by default.
        self.events: deque[Event] = deque()
        self.limit = int(env_number("OTEL_BLRP_MAX_QUEUE_SIZE", 2048))
        self.dropped = 0
        self._attributes: dict[tuple[Any, ...], dict[str, str | bool]] = {}
        #: The version and flag set id of a flag's definition (the chain's ``flag_version``),
        #: read at each fold (once a second): ``feature_flag.version`` and ``feature_flag.set.id``.
        self.identify: Callable[[str], tuple[str | None, str | None]] | None = None
        self._failures = 0  # add() calls that raised
        self._last_failure = ""
        self._reported_failures = 0  # what the metrics thread reported so far
        self._reported_dropped = 0  # what the logs thread reported so far
        self._logs_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False
        self._metric_interval = env_number("OTEL_METRIC_EXPORT_INTERVAL", 60_000) / 1000
        self._metric_timeout = env_number("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)
        self._log_interval = env_number("OTEL_BLRP_SCHEDULE_DELAY", 1000) / 1000
        self.pipeline = Pipeline(self.logs)

    @property
    def own_metrics(self) -> bool:
        """Whether flagwarden built (and exports) the meter provider."""
        return self.pipeline.reader is not None

    # -- from the recorder ------------------------------------------------------------------

    def _identity(self, flag: str) -> tuple[str | None, str | None]:
        identify = self.identify
        if identify is None:
            return None, None
        try:
            return identify(flag)
        except Exception:  # a source that cannot say costs the attributes only
            return None, None

    def add(self, key: tuple[Any, ...], n: int) -> None:
        """Count ``n`` answers of one recorder key (the fold's deltas). Never raises."""
        try:
            identity = self._identity(key[0])
            attributes = self._attributes.get((key, identity))
            if attributes is None:
                attributes = metric_attributes(key)
                attributes.update(identity_attributes(identity))
                if len(self._attributes) < _MAX_ATTRIBUTE_SETS:
                    self._attributes[(key, identity)] = attributes
            self.pipeline.counter.add(n, attributes)
        except Exception as exc:
            self._failures += 1
            self._last_failure = f"{type(exc).__name__}: {exc}"[:300]

    # -- the threads -------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        if self.own_metrics:
            self._threads.append(
                run_supervised(
                    METRICS_THREAD, self.export_metrics, self._metric_interval, self._stop
                )
            )
        if self.logs:
            self._threads.append(
                run_supervised(LOGS_THREAD, self.export_logs, self._log_interval, self._stop)
            )

    def export_metrics(self) -> None:
        """Export what the counter holds (flagwarden's own reader); raise when the export or
        counting failed since the last pass (for the thread's health)."""
        reader = self.pipeline.reader
        ok = reader is None or reader.export(self._metric_timeout)
        failures = self._failures
        new, self._reported_failures = failures - self._reported_failures, failures
        if not ok or new:
            raise OtelExportFailed(
                ("" if ok else f"metrics export to {signal_endpoint('METRICS')} failed")
                + ("; " if new and not ok else "")
                + (f"{new} counts not recorded (last: {self._last_failure})" if new else "")
            )

    def export_logs(self) -> None:
        """Turn the waiting first exposures into log records and export them (flagwarden's
        own processor); raise when records were dropped or the export failed."""
        with self._logs_lock:
            pipeline = self.pipeline
            logger, events = pipeline.logger, self.events
            if logger is None:
                return
            now, severity = time.time_ns(), info_severity()
            try:
                while True:
                    event = events.popleft()
                    logger.emit(
                        timestamp=event[-1],
                        observed_timestamp=now,
                        severity_number=severity,
                        severity_text="INFO",
                        body=EVENT,
                        attributes={
                            **log_attributes(event),
                            **identity_attributes(self._identity(event[0])),
                        },
                        event_name=EVENT,
                    )
            except IndexError:
                pass
            ok = pipeline.processor is None or pipeline.processor.export()
        total = self.dropped
        dropped, self._reported_dropped = total - self._reported_dropped, total
        if not ok or dropped:
            raise OtelExportFailed(
                ("" if ok else f"log records export to {signal_endpoint('LOGS')} failed")
                + ("; " if dropped and not ok else "")
                + (
                    f"{dropped} exposure log records dropped: more than {self.limit} waiting "
                    "(OTEL_BLRP_MAX_QUEUE_SIZE)"
                    if dropped
                    else ""
                )
            )

    # -- fork and close ----------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """The parent's waiting records, connections and unexported counts stay the parent's:
        a child builds its own providers (when flagwarden built the parent's) and threads."""
        self.events.clear()
        self.dropped = self._reported_dropped = 0
        self._reported_failures = self._failures
        self._logs_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        # A worker can be ended by a signal (a pool's terminate()): export often enough that
        # little is lost; its normal end flushes the rest (runtime's finalizer).
        self._metric_interval = min(self._metric_interval, FORKED_EXPORT_INTERVAL)
        if self.own_metrics or self.pipeline.processor is not None:
            try:
                self.pipeline = Pipeline(self.logs)
            except Exception as exc:  # counting goes on into the parent's copy, unexported
                report_failure(METRICS_THREAD, exc)
        if self._started and not self._closed:
            self.start()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the threads; export the last counts and log records (the recorder folded just
        before), waiting at most ``timeout`` seconds; close what flagwarden built. Never
        raises: a failed export is reported as its thread's failure."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        deadline = time.monotonic() + timeout
        steps: list[tuple[str, Callable[[], None]]] = [(METRICS_THREAD, self._flush_metrics)]
        if self.logs:
            steps.append((LOGS_THREAD, self._flush_logs))
        running = []
        for name, step in steps:
            thread = threading.Thread(target=_reported(name, step), name=name, daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutdown (atexit on 3.12.0-3.12.1): no threads
                if time.monotonic() < deadline:  # inline, one at a time, while time is left
                    _reported(name, step)()
                continue
            running.append(thread)
        for thread in running:
            thread.join(max(deadline - time.monotonic(), 0.0))
        late = [thread.name for thread in running if thread.is_alive()]
        if late:
            with contextlib.suppress(Exception):
                _log.error(
                    "flagwarden.otel_flush_timeout",
                    threads=late,
                    timeout=timeout,
                    endpoint=signal_endpoint(""),
                )
        self.pipeline.shutdown()  # ends retries still waiting (an export in flight ends alone)

    def _flush_metrics(self) -> None:
        if self.own_metrics:
            self.export_metrics()
            return
        flush = getattr(self.pipeline.meter_provider, "force_flush", None)
        if flush is not None:
            flush(timeout_millis=CLOSE_TIMEOUT * 1000)

    def _flush_logs(self) -> None:
        self.export_logs()
        if self.pipeline.processor is None:
            flush = getattr(self.pipeline.log_provider, "force_flush", None)
            if flush is not None:
                flush(timeout_millis=CLOSE_TIMEOUT * 1000)


def _reported(name: str, step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            step()
        except Exception as exc:
            with contextlib.suppress(Exception):
                report_failure(name, exc)
        else:
            with contextlib.suppress(Exception):
                report_ok(name)

    return run
