"""What both local vendor servers need from http.server: an outage that cuts every connection.

``ThreadingHTTPServer.shutdown()`` stops accepting, but HTTP/1.1 keep-alive connections
already open go on being served by their handler threads, so an SDK could keep fetching
through an "outage". A real outage cuts them too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any


class ConnectionTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: set[Any] = set()

    def handler_base(self) -> type[BaseHTTPRequestHandler]:
        tracker = self

        class TrackedHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with tracker._lock:
                    tracker._connections.add(self.connection)

            def finish(self) -> None:
                with tracker._lock:
                    tracker._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return TrackedHandler

    def cut_all(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
