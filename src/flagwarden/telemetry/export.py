"""Getting metrics out of a process: /metrics endpoint, Pushgateway, prefork multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before Python starts, as prometheus_client requires),
the endpoint serves the sum over every worker process, for prefork servers and Celery.
"""

from __future__ import annotations

import os
import socket
import threading

from prometheus_client import REGISTRY, CollectorRegistry, push_to_gateway, start_http_server

from flagwarden.logs import get_logger
from flagwarden.storage import redact_text, redact_url

__all__ = ["push_metrics", "serve_metrics"]

_log = get_logger("flagwarden.metrics")
_served: dict[int, object] = {}
_lock = threading.Lock()


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


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


def push_metrics(gateway: str, job: str) -> bool:
    """Push this process's metrics to a Pushgateway (the end of a batch run)."""
    try:
        push_to_gateway(
            gateway,
            job=job,
            registry=_registry(),
            grouping_key={"instance": f"{socket.gethostname()}-{os.getpid()}"},
            timeout=5,
        )
        return True
    except OSError as exc:
        _log.error(
            "flagwarden.pushgateway_failed",
            gateway=redact_url(gateway),
            error=redact_text(str(exc), gateway),
        )
        return False
