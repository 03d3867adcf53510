"""The OpenTelemetry SDK plumbing of :mod:`flagwarden.telemetry.otel`: the resource, the
temporality, the pull-driven metric reader and log processor that flagwarden's own threads
export, and the private providers (:class:`Pipeline`). Imported only when OpenTelemetry is
enabled (the ``[otel]`` extra)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from flagwarden.errors import ConfigError
from flagwarden.logs import get_logger

__all__ = [
    "METRIC",
    "OtelExportFailed",
    "Pipeline",
    "env_number",
    "info_severity",
    "is_proxy",
    "register_secrets",
    "signal_endpoint",
]

_log = get_logger("flagwarden.otel")
SCOPE = "flagwarden"
METRIC = "feature_flag.evaluation"


class OtelExportFailed(Exception):
    """An export to the OTLP endpoint failed, or log records were dropped (reported as the
    thread's health; evaluations never see it)."""


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        _log.warning("flagwarden.otel_setting_ignored", variable=name, value=raw, used=default)
        return default
    return value


def is_proxy(provider: Any, module: str, name: str) -> bool:
    """Whether ``provider`` is the API's placeholder (no global provider set yet); by its
    class name should a later API move the (private) class."""
    proxy = getattr(importlib.import_module(module), name, None)
    if proxy is None:
        return "Proxy" in type(provider).__name__
    return isinstance(provider, proxy)


def _resource() -> Any:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, as the SDK reads them, plus a
    ``service.instance.id`` of this process's own unless they name one."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()
    given = resource.attributes.get("service.instance.id")
    if given is None:
        resource = resource.merge(Resource({"service.instance.id": str(uuid.uuid4())}))
    elif _forked:  # the parent's id is the parent's: a writer of its own (single-writer rule)
        own = f"{given}-{uuid.uuid4().hex[:12]}"
        resource = resource.merge(Resource({"service.instance.id": own}))
    return resource


_forked = False  # set in a forked child: its exporters are a new writer


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def _temporality() -> dict[type, Any]:
    """Delta for the counter, unless OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE says
    cumulative (``delta`` and ``lowmemory`` both make a counter's temporality delta)."""
    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    preference = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "")
    preference = preference.strip().lower()
    if preference not in ("", "delta", "lowmemory", "cumulative"):
        _log.warning(
            "flagwarden.otel_setting_ignored",
            variable="OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            value=preference,
            used="delta",
        )
    cumulative = preference == "cumulative"
    return {
        Counter: AggregationTemporality.CUMULATIVE if cumulative else AggregationTemporality.DELTA
    }


def _succeeded(result: Any) -> bool:
    """An exporter's result (MetricExportResult, LogRecordExportResult or, in older SDKs,
    LogExportResult) is SUCCESS."""
    return getattr(result, "name", None) == "SUCCESS"


def _has_data(metrics_data: Any) -> bool:
    return any(
        scope.metrics
        for resource in getattr(metrics_data, "resource_metrics", ())
        for scope in resource.scope_metrics
    )


def _pull_reader(exporter: Any, temporality: dict[type, Any]) -> Any:
    """A metric reader that exports when flagwarden's thread asks (no thread of its own, so
    nothing of it survives a fork half-used) and says whether the export went through."""
    from opentelemetry.sdk.metrics.export import MetricReader

    class PullReader(MetricReader):
        def __init__(self) -> None:
            super().__init__(preferred_temporality=temporality)
            self.exporter = exporter
            self._lock = threading.Lock()
            self._ok = True

        def export(self, timeout_millis: float) -> bool:
            with self._lock:
                self._ok = True
                self.collect(timeout_millis=timeout_millis)
                return self._ok

        def _receive_metrics(
            self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
        ) -> None:
            if _has_data(metrics_data):
                result = self.exporter.export(metrics_data, timeout_millis=timeout_millis)
                self._ok = _succeeded(result)

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return self.export(timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            self.exporter.shutdown(timeout_millis=timeout_millis)

    return PullReader()


def _pull_processor(exporter: Any, batch_size: int) -> Any:
    """A log record processor that keeps what is emitted until flagwarden's thread exports
    it, in batches (no thread of its own, as :func:`_pull_reader`)."""
    from opentelemetry.sdk._logs import LogRecordProcessor

    class PullProcessor(LogRecordProcessor):
        def __init__(self) -> None:
            self.exporter = exporter
            self.records: list[Any] = []

        def on_emit(self, log_record: Any) -> None:
            self.records.append(log_record)

        emit = on_emit  # the name older SDKs call

        def export(self) -> bool:
            records, self.records = self.records, []
            ok = True
            for start in range(0, len(records), batch_size):
                ok = _succeeded(self.exporter.export(records[start : start + batch_size])) and ok
            return ok

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return self.export()

        def shutdown(self) -> None:
            self.exporter.shutdown()

    return PullProcessor()


class Pipeline:
    """This process's meter (and logger): the application's global providers, or flagwarden's
    own private ones (``reader`` and ``processor`` set: flagwarden exports them)."""

    def __init__(self, logs: bool) -> None:
        from opentelemetry import _logs, metrics

        import flagwarden

        self.reader: Any = None
        self.processor: Any = None
        self.logger: Any = None
        self.log_provider: Any = None
        resource = None
        meter_provider: Any = metrics.get_meter_provider()
        if is_proxy(meter_provider, "opentelemetry.metrics._internal", "_ProxyMeterProvider"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.sdk.metrics import MeterProvider

            resource = _resource()
            temporality = _temporality()
            self.reader = _pull_reader(
                OTLPMetricExporter(preferred_temporality=temporality), temporality
            )
            meter_provider = MeterProvider(
                metric_readers=[self.reader], resource=resource, shutdown_on_exit=False
            )
        self.meter_provider = meter_provider
        meter = meter_provider.get_meter(SCOPE, flagwarden.__version__)
        self.counter = meter.create_counter(
            METRIC,
            unit="{evaluation}",
            description="Feature flag evaluations by flag, variant, reason, provider, error "
            "type, and flagwarden source, arm and capping",
        )
        if not logs:
            return
        log_provider: Any = _logs.get_logger_provider()
        if is_proxy(log_provider, "opentelemetry._logs._internal", "ProxyLoggerProvider"):
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
            from opentelemetry.sdk._logs import LoggerProvider

            batch = int(env_number("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512))
            self.processor = _pull_processor(OTLPLogExporter(), batch)
            log_provider = LoggerProvider(
                resource=resource if resource is not None else _resource(),
                shutdown_on_exit=False,
            )
            log_provider.add_log_record_processor(self.processor)
        self.log_provider = log_provider
        self.logger = log_provider.get_logger(SCOPE, flagwarden.__version__)
        emit = getattr(type(self.logger), "emit", None)
        if emit is None or "event_name" not in inspect.signature(emit).parameters:
            raise ConfigError(
                None,
                "telemetry.otel.logs",
                "the installed OpenTelemetry SDK cannot emit events (its Logger.emit takes no "
                "event_name): pip install -U 'flagwarden[otel]'",
            )

    def shutdown(self) -> None:
        """Close what flagwarden built (the application's providers stay as they are)."""
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.meter_provider.shutdown()
        if self.processor is not None:
            with contextlib.suppress(Exception):
                self.log_provider.shutdown()


def info_severity() -> Any:
    from opentelemetry._logs import SeverityNumber

    return SeverityNumber.INFO


def signal_endpoint(signal: str) -> str:
    """Where a signal (``METRICS``, ``LOGS``; ``""``: the base) goes, as the exporter reads it,
    credentials masked: for messages."""
    from flagwarden.storage import redact_url

    env: Mapping[str, str] = os.environ
    url = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip() if signal else ""
    if not url:
        url = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
        if signal:
            url = f"{url.rstrip('/')}/v1/{signal.lower()}"
    scheme_host_path = url.split("?", 1)[0].split("#", 1)[0]  # a query may carry a key
    return str(redact_url(scheme_host_path))


def register_secrets() -> None:
    """Mask what the OTLP set-up may hold in every log line (the exporters' own warnings quote
    their URL): each header value of ``OTEL_EXPORTER_OTLP_[METRICS_|LOGS_]HEADERS`` and the
    endpoints' credentials and query values."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    from flagwarden.telemetry.stdlib_logs import register_credential, register_secret, register_url

    env: Mapping[str, str] = os.environ
    for signal in ("", "METRICS_", "LOGS_"):
        for pair in env.get(f"OTEL_EXPORTER_OTLP_{signal}HEADERS", "").split(","):
            _, _, value = pair.partition("=")
            value = unquote(value.strip()).strip('"')
            if value:
                register_credential(value)
        url = env.get(f"OTEL_EXPORTER_OTLP_{signal}ENDPOINT", "").strip()
        if url:
            register_url(url)
            for _, value in parse_qsl(urlsplit(url).query):
                register_secret(value)
