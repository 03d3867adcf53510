"""A local server speaking OFREP v1 (the OpenFeature Remote Evaluation Protocol).

``POST /ofrep/v1/evaluate/flags/{key}`` with ``{"context": {...}}`` evaluates one flag:
200 ``{"key", "value", "reason", "variant", "metadata"}``; 400 ``{"key", "errorCode",
"errorDetails"}`` (PARSE_ERROR, INVALID_CONTEXT, GENERAL); 404 FLAG_NOT_FOUND.
``POST /ofrep/v1/evaluate/flags`` evaluates them all: 200 ``{"flags": [...], "metadata"}``
with an ``ETag``, 304 when ``If-None-Match`` matches it.

The flags are flagd flag definitions evaluated by openfeature-flagd-core (as
flagwarden's file provider does), so answers carry flagd's semantics: ``fractional``, JSON
Logic targeting, reasons STATIC / TARGETING_MATCH / DEFAULT / DISABLED. A flag that resolves to
no variant (DISABLED, or no ``defaultVariant``) is answered without a ``value`` (OFREP's code
default: the client keeps its default) and with ``"variant": null`` (the published Python
client reads ``data["variant"]`` unconditionally). An invalid definition answers that flag
with PARSE_ERROR; the other flags keep answering.

``stop()`` is an outage (it also cuts keep-alive connections); ``restart()`` brings the server
back on the same port.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError, TypeMismatchError

from tests.servers.http import ConnectionTracker
from tests.servers.launchdarkly import free_port

__all__ = ["OFREPServer", "ReceivedRequest"]

_SINGLE = "/ofrep/v1/evaluate/flags/"
_BULK = "/ofrep/v1/evaluate/flags"
# flagd-core only resolves typed; OFREP carries no type: the first resolver whose type check
# passes gives the value (bool before int: a boolean is an int in Python).
_RESOLVERS = (
    "resolve_boolean_value",
    "resolve_string_value",
    "resolve_integer_value",
    "resolve_float_value",
    "resolve_object_value",
)
_REDACTED = "<redacted>"


@dataclass
class ReceivedRequest:
    """One request as received: ``headers`` with the Authorization value redacted; ``body``
    the parsed JSON (None when absent or not JSON, ``raw`` keeps the bytes); ``status`` the
    answer's, None until answered (or never, when the server was stopped first)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    status: int | None = None


@dataclass
class _Result:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _FlagSet:
    core: FlagdCore = field(default_factory=FlagdCore)
    keys: list[str] = field(default_factory=list)  # every flag key of the document, valid or not
    invalid: dict[str, str] = field(default_factory=dict)  # key -> why flagd-core refused it
    problem: str | None = None  # the whole document is unusable: every flag is a PARSE_ERROR


def _load(doc: Any) -> _FlagSet:
    try:
        return _load_checked(doc)
    except Exception as exc:  # whatever the document holds: errors to answer, never a raise
        return _FlagSet(problem=f"flag definitions unusable: {type(exc).__name__}: {exc}")


def _load_checked(doc: Any) -> _FlagSet:
    """Each flag checked alone (flagd-core refuses a whole document for one bad flag)."""
    doc = doc if isinstance(doc, (str, bytes)) else copy.deepcopy(doc)
    loaded = _FlagSet()
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            loaded.problem = f"flag definitions are not JSON: {exc}"
            return loaded
    if not isinstance(doc, dict) or not isinstance(doc.get("flags"), dict):
        loaded.problem = "flag definitions need a 'flags' mapping (flagd format)"
        return loaded
    shared = {name: doc[name] for name in ("$evaluators", "metadata") if name in doc}
    try:
        FlagdCore().set_flags(copy.deepcopy({**shared, "flags": {}}))
    except Exception as exc:
        loaded.problem = f"flag set refused by flagd-core: {type(exc).__name__}: {exc}"
        return loaded
    valid: dict[str, Any] = {}
    for key, definition in doc["flags"].items():
        key = str(key)
        loaded.keys.append(key)
        try:
            FlagdCore().set_flags(copy.deepcopy({**shared, "flags": {key: definition}}))
        except Exception as exc:
            loaded.invalid[key] = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            valid[key] = definition
    try:
        loaded.core.set_flags(copy.deepcopy({**shared, "flags": valid}))  # it mutates its input
    except Exception as exc:
        loaded.problem = f"flag set refused by flagd-core: {type(exc).__name__}: {exc}"
    return loaded


def _failure(key: str | None, code: str, details: str) -> dict[str, Any]:
    payload: dict[str, Any] = {} if key is None else {"key": key}
    payload.update(errorCode=code, errorDetails=details)
    return payload


def _evaluate(flags: _FlagSet, key: str, context: EvaluationContext) -> _Result:
    if flags.problem is not None:
        return _Result(400, _failure(key, "PARSE_ERROR", flags.problem))
    if key in flags.invalid:
        problem = f"flag {key!r} has an invalid definition: {flags.invalid[key]}"
        return _Result(400, _failure(key, "PARSE_ERROR", problem))
    try:
        for resolver in _RESOLVERS:
            try:
                details = getattr(flags.core, resolver)(key, None, context)
            except TypeMismatchError:
                continue
            break
        else:
            return _Result(400, _failure(key, "GENERAL", f"flag {key!r}: no JSON type fits"))
    except OpenFeatureError as exc:
        code = exc.error_code.value
        message = exc.error_message or str(exc) or code
        if code == "FLAG_NOT_FOUND":
            return _Result(404, _failure(key, code, message))
        if code not in ("PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT"):
            code = "GENERAL"
        return _Result(400, _failure(key, code, message))
    except Exception as exc:  # a broken targeting rule: an error answer, never a dead server
        return _Result(400, _failure(key, "GENERAL", f"{type(exc).__name__}: {exc}"))
    payload: dict[str, Any] = {"key": key}
    if details.variant is not None:
        payload["value"] = details.value
    payload["reason"] = str(details.reason)
    payload["variant"] = details.variant
    payload["metadata"] = dict(details.flag_metadata or {})
    return _Result(200, payload)


def _context(body: Any) -> tuple[EvaluationContext | None, str | None, str | None]:
    """(context, errorCode, errorDetails) from a request body."""
    if body is None:
        return EvaluationContext(), None, None
    if not isinstance(body, dict):
        return None, "PARSE_ERROR", "the request body must be a JSON object"
    raw = body.get("context", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, "INVALID_CONTEXT", "context must be a JSON object"
    attributes = dict(raw)
    targeting_key = attributes.pop("targetingKey", None)
    if targeting_key is not None and not isinstance(targeting_key, str):
        return None, "INVALID_CONTEXT", "targetingKey must be a string"
    return EvaluationContext(targeting_key, attributes), None, None


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class OFREPServer:
    """A threading OFREP server on 127.0.0.1 (a free port, kept across ``restart()``).

    ``set_flags(doc)`` replaces the flagd definitions; ``require_token(token)`` demands
    ``Authorization: Bearer <token>`` (401 otherwise; None lifts it); ``fail_with(status,
    retry_after=None)`` makes every request answer ``status`` until ``clear_failure()``;
    ``delay(seconds)`` holds every request that long before answering (0 lifts it; ``stop()``
    cuts held requests without an answer). ``requests`` lists what was received.
    """

    def __init__(self, flags: Any = None, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._flags = _load(flags if flags is not None else {"flags": {}})
        self._token: str | None = None
        self._failure: tuple[int, str | None] | None = None
        self._delay = 0.0
        self._requests: list[ReceivedRequest] = []
        self._tracker = ConnectionTracker()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        """The base URL (what OFREPProvider takes: it appends ``/ofrep/v1/...``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- configuration ---------------------------------------------------------------------

    def set_flags(self, doc: Any) -> None:
        """Replace the flag definitions: a flagd document (``{"flags": {key: {"state",
        "variants", "defaultVariant", "targeting", "metadata"}}, "$evaluators", "metadata"}``)
        as a mapping or JSON text. Never raises: what flagd-core refuses answers PARSE_ERROR
        (one flag, or every flag when the document itself is unusable)."""
        loaded = _load(doc)
        with self._lock:
            self._flags = loaded

    @property
    def invalid_flags(self) -> dict[str, str]:
        """Flags whose definition flagd-core refused: key -> why."""
        with self._lock:
            return dict(self._flags.invalid)

    def require_token(self, token: str | None) -> None:
        with self._lock:
            self._token = token

    def fail_with(self, status: int, retry_after: int | str | None = None) -> None:
        """Answer every request with ``status`` (400-599), with a ``Retry-After`` header
        (seconds or an HTTP date) when given."""
        if not 400 <= status <= 599:
            raise ValueError(f"fail_with takes an error status (400-599), got {status}")
        with self._lock:
            self._failure = (status, None if retry_after is None else str(retry_after))

    def clear_failure(self) -> None:
        with self._lock:
            self._failure = None

    def delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = max(0.0, float(seconds))

    @property
    def requests(self) -> list[ReceivedRequest]:
        """What was received, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests = []

    # -- protocol --------------------------------------------------------------------------

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Result:
        """What a request gets (after any delay): failure, then auth, then the protocol."""
        with self._lock:
            failure, token, flags = self._failure, self._token, self._flags
        route = urlsplit(path).path
        key = unquote(route[len(_SINGLE) :]) if route.startswith(_SINGLE) else None
        if failure is not None:
            status, retry_after = failure
            details = f"injected failure: HTTP {status}"
            extra = {} if retry_after is None else {"Retry-After": retry_after}
            if status == 400:
                return _Result(status, _failure(key, "GENERAL", details), extra)
            if status == 404:
                return _Result(status, _failure(key, "FLAG_NOT_FOUND", details), extra)
            return _Result(status, {"errorDetails": details}, extra)
        if token is not None:
            given = {k.lower(): v for k, v in headers.items()}.get("authorization")
            if given != f"Bearer {token}":
                return _Result(401, {"errorDetails": "missing or wrong bearer token"})
        if route not in (_BULK, _BULK + "/") and key is None:
            return _Result(404, {"errorDetails": f"no OFREP endpoint at {route}"})
        if method != "POST":
            return _Result(405, {"errorDetails": f"{method} is not allowed: POST"})
        if not key and route.startswith(_SINGLE):
            return _Result(404, _failure("", "FLAG_NOT_FOUND", "an empty flag key"))
        parsed: Any = None
        if body.strip():
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError) as exc:
                return _Result(400, _failure(key, "PARSE_ERROR", f"body is not JSON: {exc}"))
        context, code, problem = _context(parsed)
        if context is None:
            return _Result(400, _failure(key, code or "GENERAL", problem or ""))
        if key is not None:
            return _evaluate(flags, key, context)
        if flags.problem is not None:
            return _Result(400, _failure(None, "PARSE_ERROR", flags.problem))
        results = [_evaluate(flags, k, context).payload for k in flags.keys]
        return _Result(
            200, {"flags": results, "metadata": dict(flags.core.get_flag_set_metadata())}
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OFREPServer:
        if self._server is not None:
            return self
        server = self
        stopping = self._stopping = threading.Event()

        class Handler(self._tracker.handler_base()):  # type: ignore[misc]
            # Headers and body leave in two writes: without TCP_NODELAY, Nagle's algorithm
            # holds the body for the client's delayed ACK (~40 ms a request).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

            def _handle(self, method: str) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = 0
                body = self.rfile.read(length) if length > 0 else b""
                headers = {
                    k: (_REDACTED if k.lower() == "authorization" else v)
                    for k, v in self.headers.items()
                }
                try:
                    parsed = json.loads(body) if body.strip() else None
                except (ValueError, RecursionError):
                    parsed = None
                received = ReceivedRequest(method, self.path, headers, parsed, body)
                with server._lock:
                    server._requests.append(received)
                    delay = server._delay
                if delay and stopping.wait(delay):
                    self.close_connection = True  # stopped while held: no answer at all
                    return
                try:
                    result = server._answer(method, self.path, dict(self.headers.items()), body)
                except Exception as exc:  # a bug here answers 500, the server lives on
                    result = _Result(500, {"errorDetails": f"{type(exc).__name__}: {exc}"})
                extra = dict(result.headers)
                payload = json.dumps(result.payload, sort_keys=True).encode()
                if result.status == 200 and "flags" in result.payload:
                    extra["ETag"] = _etag(payload)
                    if _etag_matches(self.headers.get("If-None-Match"), extra["ETag"]):
                        result, payload = _Result(304, {}), b""
                with server._lock:
                    received.status = result.status
                try:
                    self.send_response(result.status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    if result.status != 304:
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ofrep-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> OFREPServer:
        """An outage: stop listening, cut open connections, drop held requests."""
        if self._server is None:
            return self
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._tracker.cut_all()
        self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        return self

    def restart(self) -> OFREPServer:
        """Stop (when running) and start again on the same port."""
        return self.stop().start()

    def __enter__(self) -> OFREPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
