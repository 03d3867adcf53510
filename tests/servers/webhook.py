"""A local webhook receiver (what ``notify:`` targets post to in the tests)."""

from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from tests.servers.http import ConnectionTracker
from tests.servers.launchdarkly import free_port


class Receiver:
    """A local webhook: records every POST; answers each with the next scripted status
    (then 200). ``hang`` makes it accept and never answer."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.posts: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.hang = threading.Event()
        self._lock = threading.Lock()
        self._tracker = ConnectionTracker()
        receiver = self

        class Handler(self._tracker.handler_base()):  # type: ignore[misc]
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang.is_set():
                    time.sleep(30)
                    return
                with receiver._lock:
                    status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                    receiver.posts.append(
                        {
                            "path": self.path,
                            "status": status,
                            "at": time.monotonic(),
                            "content_type": self.headers.get("Content-Type"),
                            "json": json.loads(body),
                        }
                    )
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, *statuses: int, **headers: str) -> None:
        with self._lock:
            self.script.extend((status, headers) for status in statuses)

    def delivered(self, path: str | None = None) -> list[dict[str, Any]]:
        """JSON bodies answered 2xx (at ``path``)."""
        with self._lock:
            return [
                p["json"]
                for p in self.posts
                if 200 <= p["status"] < 300 and (path is None or p["path"] == path)
            ]

    def stop(self) -> None:
        self._server.shutdown()
        self._tracker.cut_all()
        self._server.server_close()
