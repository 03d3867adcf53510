"""A local OTLP/HTTP receiver: what an OpenTelemetry collector's ``otlphttp`` receiver accepts.

``POST /v1/metrics`` and ``POST /v1/logs`` with protobuf bodies (``Content-Encoding: gzip``
or none), decoded with opentelemetry-proto's request messages and kept for the assertions,
with each request's headers; answered 200 with the (empty) protobuf response. Anything else
is refused (404 for another path, 415 for a body that is not protobuf, 400 when it does not
decode). ``stop()`` closes the port and every open connection, as a collector going down.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.servers.http import ConnectionTracker
from tests.servers.launchdarkly import free_port

_SIGNALS: dict[str, tuple[type[Any], bytes]] = {
    "/v1/metrics": (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse().SerializeToString(),
    ),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse().SerializeToString()),
}


def value_of(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as Python (scalars, lists, dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_of(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


@dataclass(frozen=True)
class Point:
    """One number data point of a Sum, with what identifies its stream."""

    metric: str
    unit: str
    monotonic: bool
    temporality: int  # AggregationTemporality: 1 delta, 2 cumulative
    attributes: dict[str, Any]
    value: float
    start: int
    time: int
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class Record:
    """One log record, with its resource and scope."""

    event_name: str
    body: Any
    severity: int
    time: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


class OtlpReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []  # path, headers, encoding, message
        self._lock = threading.Lock()
        self._tracker = ConnectionTracker()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(self._tracker.handler_base()):  # type: ignore[misc]
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                signal = _SIGNALS.get(self.path)
                if signal is None:
                    return self._answer(404, b"")
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._answer(415, b"")
                encoding = self.headers.get("Content-Encoding", "")
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding:
                        return self._answer(415, b"")
                    message = signal[0]()
                    message.ParseFromString(body)
                except Exception:
                    return self._answer(400, b"")
                with receiver._lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "encoding": encoding,
                            "message": message,
                        }
                    )
                return self._answer(200, signal[1])

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._tracker.cut_all()
            self._server.server_close()
            self._server = None

    def received(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path]

    def points(self, metric: str) -> list[Point]:
        """Every Sum data point of ``metric`` received so far."""
        found = []
        for request in self.received("/v1/metrics"):
            for rm in request["message"].resource_metrics:
                resource = attributes_of(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != metric or m.WhichOneof("data") != "sum":
                            continue
                        for p in m.sum.data_points:
                            kind = p.WhichOneof("value")
                            found.append(
                                Point(
                                    m.name,
                                    m.unit,
                                    m.sum.is_monotonic,
                                    m.sum.aggregation_temporality,
                                    attributes_of(p.attributes),
                                    float(getattr(p, kind)) if kind else 0.0,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    resource,
                                    sm.scope.name,
                                )
                            )
        return found

    def records(self) -> list[Record]:
        """Every log record received so far."""
        found = []
        for request in self.received("/v1/logs"):
            for rl in request["message"].resource_logs:
                resource = attributes_of(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        found.append(
                            Record(
                                r.event_name,
                                value_of(r.body),
                                r.severity_number,
                                r.time_unix_nano,
                                attributes_of(r.attributes),
                                resource,
                                sl.scope.name,
                            )
                        )
        return found
