"""A local server speaking LaunchDarkly's server-side SDK protocols.

Streaming: ``GET /all`` as server-sent events (``put`` of the whole data set, then ``patch`` per
change), chunked, as the SDK requires. Polling: ``GET /sdk/latest-all``. Events: ``POST /bulk``
and ``/diagnostic`` are accepted and counted. ``stop()`` kills the server mid-stream, as an
outage would; ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from tests.servers.http import ConnectionTracker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boolean_flag(
    key: str,
    *,
    on: bool = True,
    rollout_percent: float | None = None,
    serve: bool | None = None,
    targets: dict[bool, list[str]] | None = None,
    rules: list[dict[str, Any]] | None = None,
    salt: str | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """A boolean flag (variation 0 = false, 1 = true) with a percentage or fixed fallthrough."""
    if rollout_percent is not None:
        weight = round(rollout_percent * 1000)
        fallthrough: dict[str, Any] = {
            "rollout": {
                "variations": [
                    {"variation": 1, "weight": weight},
                    {"variation": 0, "weight": 100_000 - weight},
                ]
            }
        }
    else:
        fallthrough = {"variation": 1 if serve else 0}
    return {
        "key": key,
        "version": version,
        "on": on,
        "variations": [False, True],
        "offVariation": 0,
        "fallthrough": fallthrough,
        "targets": [
            {"variation": 1 if value else 0, "values": keys}
            for value, keys in (targets or {}).items()
        ],
        "contextTargets": [],
        "rules": rules or [],
        "prerequisites": [],
        "salt": salt if salt is not None else f"{key}-salt",
        "trackEvents": False,
        "trackEventsFallthrough": False,
        "deleted": False,
        "clientSide": False,
    }


def value_flag(key: str, variations: list[Any], serve: int, *, version: int = 1) -> dict[str, Any]:
    flag = boolean_flag(key, version=version)
    flag["variations"] = variations
    flag["fallthrough"] = {"variation": serve}
    return flag


class LaunchDarklyServer:
    def __init__(self, flags: dict[str, dict[str, Any]] | None = None, port: int | None = None):
        self.flags: dict[str, dict[str, Any]] = dict(flags or {})
        self.segments: dict[str, dict[str, Any]] = {}
        self.port = port or free_port()
        self.events_received = 0
        self.stream_connections = 0
        self._lock = threading.Lock()
        self._streams: list[Any] = []
        self._tracker = ConnectionTracker()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def profile(self, *, stream: bool = True, start_wait: float = 5.0) -> dict[str, Any]:
        return {
            "type": "launchdarkly",
            "sdk_key": "sdk-test-secret-key-0123456789",
            "base_uri": self.url,
            "stream_uri": self.url,
            "events_uri": self.url,
            "stream": stream,
            "start_wait": start_wait,
            "send_events": True,
            "initial_reconnect_delay": 0.1,
        }

    def data(self) -> dict[str, Any]:
        with self._lock:
            return {"flags": copy.deepcopy(self.flags), "segments": copy.deepcopy(self.segments)}

    def set_flag(self, flag: dict[str, Any]) -> None:
        """Add or replace a flag (its version is bumped) and push it to open streams."""
        with self._lock:
            old = self.flags.get(flag["key"])
            flag = dict(flag)
            flag["version"] = max(flag.get("version", 1), (old or {}).get("version", 0) + 1)
            self.flags[flag["key"]] = flag
            streams = list(self._streams)
        payload = json.dumps({"path": f"/flags/{flag['key']}", "data": flag})
        for handler in streams:
            handler.send_event("patch", payload)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> LaunchDarklyServer:
        server = self

        class Handler(self._tracker.handler_base()):  # type: ignore[misc]
            def send_event(self, event: str, data: str) -> None:
                chunk = f"event: {event}\ndata: {data}\n\n".encode()
                try:
                    with self._write_lock:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                except OSError:
                    pass

            def do_GET(self) -> None:
                if self.path.startswith("/all"):
                    self._stream()
                elif self.path.startswith("/sdk/latest-all"):
                    body = json.dumps(server.data()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with server._lock:
                    server.events_received += 1
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _stream(self) -> None:
                self._write_lock = threading.Lock()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                with server._lock:
                    server._streams.append(self)
                    server.stream_connections += 1
                self.send_event("put", json.dumps({"path": "/", "data": server.data()}))
                try:
                    # Hold the connection until the client leaves or the server is stopped.
                    while self.rfile.read(1):
                        pass
                except OSError:
                    pass
                finally:
                    with server._lock:
                        if self in server._streams:
                            server._streams.remove(self)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill the server: stop listening and cut every open stream."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            self._streams = []
        self._tracker.cut_all()  # the streams, and any keep-alive polling connection
        self._server = None

    def __enter__(self) -> LaunchDarklyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
