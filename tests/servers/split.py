"""A local server speaking Split's SDK protocol (spec 1.3).

``GET /api/splitChanges?s=1.3&since=N&rbSince=M`` answers ``{"ff": {"d", "s", "t"}, "rbs": ...}``
until ``s == t``; ``GET /api/segmentChanges/NAME?since=N`` serves segment membership;
``GET /api/v2/auth`` says push is disabled, so a streaming SDK falls back to polling; impressions,
events and telemetry posts are accepted and counted. ``stop()`` is an outage.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.servers.http import ConnectionTracker
from tests.servers.launchdarkly import free_port


def split_definition(
    name: str,
    *,
    on_percent: int = 0,
    treatments: tuple[str, str] = ("on", "off"),
    killed: bool = False,
    default_treatment: str = "off",
    configurations: dict[str, str] | None = None,
    seed: int = 1234567,
    traffic_allocation: int = 100,
    traffic_allocation_seed: int = 7654321,
    whitelist: dict[str, list[str]] | None = None,
    in_segment: str | None = None,
) -> dict[str, Any]:
    """A split whose default rule gives ``treatments[0]`` to ``on_percent``% of keys."""

    def matcher(kind: str, **extra: Any) -> dict[str, Any]:
        base = {
            "keySelector": {"trafficType": "user", "attribute": None},
            "matcherType": kind,
            "negate": False,
            "userDefinedSegmentMatcherData": None,
            "whitelistMatcherData": None,
            "unaryNumericMatcherData": None,
            "betweenMatcherData": None,
            "booleanMatcherData": None,
            "dependencyMatcherData": None,
            "stringMatcherData": None,
        }
        base.update(extra)
        return base

    conditions: list[dict[str, Any]] = []
    for treatment, keys in (whitelist or {}).items():
        conditions.append(
            {
                "conditionType": "WHITELIST",
                "matcherGroup": {
                    "combiner": "AND",
                    "matchers": [matcher("WHITELIST", whitelistMatcherData={"whitelist": keys})],
                },
                "partitions": [{"treatment": treatment, "size": 100}],
                "label": "whitelisted",
            }
        )
    if in_segment:
        conditions.append(
            {
                "conditionType": "ROLLOUT",
                "matcherGroup": {
                    "combiner": "AND",
                    "matchers": [
                        matcher(
                            "IN_SEGMENT",
                            userDefinedSegmentMatcherData={"segmentName": in_segment},
                        )
                    ],
                },
                "partitions": [{"treatment": treatments[0], "size": 100}],
                "label": f"in segment {in_segment}",
            }
        )
    conditions.append(
        {
            "conditionType": "ROLLOUT",
            "matcherGroup": {"combiner": "AND", "matchers": [matcher("ALL_KEYS")]},
            "partitions": [
                {"treatment": treatments[0], "size": on_percent},
                {"treatment": treatments[1], "size": 100 - on_percent},
            ],
            "label": "default rule",
        }
    )
    return {
        "trafficTypeName": "user",
        "name": name,
        "trafficAllocation": traffic_allocation,
        "trafficAllocationSeed": traffic_allocation_seed,
        "seed": seed,
        "status": "ACTIVE",
        "killed": killed,
        "defaultTreatment": default_treatment,
        "changeNumber": 0,
        "algo": 2,
        "configurations": configurations or {},
        "conditions": conditions,
        "sets": [],
        "impressionsDisabled": False,
    }


class SplitServer:
    def __init__(self, splits: list[dict[str, Any]] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.change_number = int(time.time() * 1000)
        self.splits: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, tuple[set[str], int]] = {}
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._tracker = ConnectionTracker()
        self._server: ThreadingHTTPServer | None = None
        for split in splits or []:
            self.set_split(split)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def profile(self, *, start_wait: float = 5.0, streaming: bool = False) -> dict[str, Any]:
        api = f"{self.url}/api"
        return {
            "type": "split",
            "sdk_key": "split-test-secret-key-0123456789",
            "sdk_api_base_url": api,
            "events_api_base_url": api,
            "auth_api_base_url": api,
            "streaming_api_base_url": f"{self.url}/sse",
            "telemetry_api_base_url": f"{api}/v1",
            "streaming": streaming,
            "start_wait": start_wait,
            "features_refresh_rate": 1,
            "segments_refresh_rate": 1,
        }

    def set_split(self, split: dict[str, Any]) -> None:
        with self._lock:
            self.change_number += 1
            split = copy.deepcopy(split)
            split["changeNumber"] = self.change_number
            self.splits[split["name"]] = split

    def set_segment(self, name: str, keys: list[str]) -> None:
        with self._lock:
            self.change_number += 1
            self.segments[name] = (set(keys), self.change_number)

    def _split_changes(self, since: int, rb_since: int) -> dict[str, Any]:
        with self._lock:
            changed = [copy.deepcopy(s) for s in self.splits.values() if s["changeNumber"] > since]
            till = max([since, *(s["changeNumber"] for s in changed)])
        return {
            "ff": {"d": changed, "s": since, "t": till},
            "rbs": {"d": [], "s": rb_since, "t": rb_since},
        }

    def _segment_changes(self, name: str, since: int) -> dict[str, Any]:
        with self._lock:
            keys, till = self.segments.get(name, (set(), -1))
        if since >= till:
            return {"name": name, "added": [], "removed": [], "since": since, "till": since}
        return {"name": name, "added": sorted(keys), "removed": [], "since": since, "till": till}

    def start(self) -> SplitServer:
        server = self

        class Handler(self._tracker.handler_base()):  # type: ignore[misc]
            def _json(self, payload: Any, status: int = 200) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                name = url.path.rsplit("/", 1)[-1]
                with server._lock:
                    server.requests[name if "segmentChanges" not in url.path else "segment"] = (
                        server.requests.get(name, 0) + 1
                    )
                if url.path.endswith("/splitChanges"):
                    self._json(
                        server._split_changes(
                            int(query.get("since", -1)), int(query.get("rbSince", -1))
                        )
                    )
                elif "/segmentChanges/" in url.path:
                    self._json(server._segment_changes(name, int(query.get("since", -1))))
                elif url.path.endswith("/auth"):
                    self._json({"pushEnabled": False, "token": ""})
                else:
                    self._json({}, 404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """An outage: stop listening and cut the keep-alive connections already open."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._tracker.cut_all()

    def __enter__(self) -> SplitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
