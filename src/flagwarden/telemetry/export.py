"""Getting metrics out of a process: /metrics endpoint, Pushgateway, prefork multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before Python starts, as prometheus_client requires),
the endpoint serves the sum over every worker process, for prefork servers and Celery.

The Pushgateway is not an aggregator: a push replaces what the same group (``job`` plus the
grouping labels) held. So one process pushes per run, with the totals of the whole run (with
``PROMETHEUS_MULTIPROC_DIR``: the sum over every process that wrote to the folder), to a group
that never names a host or a process: the next run of the job replaces it, and series never
pile up (:mod:`flagwarden.telemetry.telemetry` decides which process pushes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    delete_from_gateway,
    push_to_gateway,
    start_http_server,
)
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from flagwarden.logs import get_logger
from flagwarden.storage import redact_text, redact_url

__all__ = ["PUSH_TIMEOUT", "delete_pushed", "push_metrics", "serve_metrics"]

_log = get_logger("flagwarden.metrics")
_served: dict[int, object] = {}
_lock = threading.Lock()

PUSH_TIMEOUT = 5.0  # seconds for one push or delete

Handler = Callable[..., Callable[[], None]]


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class _OneValuePerSeries:
    """The multiprocess folder's metrics for a push, without the ``pid`` label.

    prometheus_client keeps a gauge of the default ``all`` mode (and ``liveall``) per process,
    as ``pid="..."`` series: pushed as they are, every run would add series named after its
    processes. Each such gauge is pushed once per series instead: the pushing process's own
    value, else the highest value among the other processes. Counters are summed over every
    process by the collector itself."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        self._collector = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Metric]:
        me = str(os.getpid())
        for metric in self._collector.collect():
            if metric.type != "gauge" or not any("pid" in s.labels for s in metric.samples):
                yield metric
                continue
            chosen: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[bool, Sample]] = {}
            for sample in metric.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "pid"}
                key = (sample.name, tuple(sorted(labels.items())))
                own = sample.labels.get("pid") == me
                best = chosen.get(key)
                if (
                    best is None
                    or (own and not best[0])
                    or (own == best[0] and sample.value > best[1].value)
                ):
                    chosen[key] = (own, sample._replace(labels=labels))
            reduced = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            reduced.samples = [sample for _, sample in chosen.values()]
            yield reduced


def _push_registry() -> CollectorRegistry:
    """What a push carries: this process's registry, or the sum over the multiprocess folder."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_OneValuePerSeries(path))
    return registry


def serve_metrics(port: int, addr: str = "0.0.0.0") -> int:
    """Serve /metrics (once per process and port); returns the port actually bound."""
    with _lock:
        if port in _served:
            return port
        try:
            server, _thread = start_http_server(port, addr=addr, registry=_registry())
        except OSError as exc:
            _log.error("flagwarden.metrics_endpoint_failed", port=port, error=str(exc))
            return 0
        bound = int(server.server_port)
        _served[port] = server
        _served[bound] = server
        return bound


def _with_scheme(gateway: str) -> str:
    """``host:9091`` as prometheus_client reads it: ``http://host:9091``."""
    return gateway if "://" in gateway else f"http://{gateway}"


def _gateway(gateway: str) -> tuple[str, Handler]:
    """The gateway URL without its credentials, and the handler that sends them (HTTP basic
    authentication, from ``http://user:password@host:9091``): never part of the request URL."""
    url = _with_scheme(gateway)
    scheme, _, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at:
        return url, default_handler
    from urllib.parse import unquote

    user, _, password = userinfo.partition(":")
    username, secret = unquote(user), unquote(password)

    def handler(
        url: str, method: str, timeout: float | None, headers: list[Any], data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, secret)

    return f"{scheme}://{host}{rest[end:]}", handler


def _failed(
    action: str, gateway: str, job: str, grouping: Mapping[str, str], exc: Exception
) -> None:
    url = _with_scheme(gateway)
    _log.error(
        "flagwarden.pushgateway_failed",
        action=action,
        gateway=redact_url(url),
        job=job,
        grouping=dict(grouping),
        error=redact_text(f"{type(exc).__name__}: {exc}", url, gateway),
    )


def push_metrics(gateway: str, job: str, grouping: Mapping[str, str] | None = None) -> bool:
    """Push the run's metrics to a Pushgateway, replacing what the group ``job`` plus
    ``grouping`` held (the Pushgateway's PUT): this process's registry, or with
    ``PROMETHEUS_MULTIPROC_DIR`` the sum over every process. Never raises: a failure is
    logged (``flagwarden.pushgateway_failed``, the URL's credentials masked) and gives False."""
    grouping = dict(grouping or {})
    try:
        url, handler = _gateway(gateway)
        push_to_gateway(
            url,
            job=job,
            registry=_push_registry(),
            grouping_key=grouping,
            timeout=PUSH_TIMEOUT,
            handler=handler,
        )
    except Exception as exc:
        _failed("push", gateway, job, grouping, exc)
        return False
    _log.info(
        "flagwarden.pushgateway_pushed",
        gateway=redact_url(_with_scheme(gateway)),
        job=job,
        grouping=grouping,
    )
    return True


def delete_pushed(gateway: str, job: str, grouping: Mapping[str, str] | None = None) -> bool:
    """Delete the group ``job`` plus ``grouping`` from a Pushgateway (every metric pushed to
    it). True when the gateway accepted the deletion (also of a group it did not hold). Never
    raises: a failure is logged as :func:`push_metrics` logs one and gives False."""
    grouping = dict(grouping or {})
    try:
        url, handler = _gateway(gateway)
        delete_from_gateway(
            url, job=job, grouping_key=grouping, timeout=PUSH_TIMEOUT, handler=handler
        )
    except Exception as exc:
        _failed("delete", gateway, job, grouping, exc)
        return False
    _log.info(
        "flagwarden.pushgateway_deleted",
        gateway=redact_url(_with_scheme(gateway)),
        job=job,
        grouping=grouping,
    )
    return True
