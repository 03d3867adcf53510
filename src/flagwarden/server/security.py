"""Who is calling, and the rules around it: bearer tokens for the API, sessions for browsers
(an HttpOnly, SameSite=Strict cookie; every state-changing request carries the session's CSRF
token), a slow-down for clients that keep failing to authenticate, and the security headers.

Refused attempts (401, 403, 429) are audited with what was tried and from where, never with
the credential, and aggregated (:class:`RefusalLog`) so that a flood of them cannot flood the
audit log.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.identity import AccessDenied, Identity, InvalidToken, Role, TokenStore
from flagwarden.logs import get_logger
from flagwarden.server.refusals import RefusalLog

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Guard",
    "LoginThrottle",
    "RefusalLog",
    "SecurityHeaders",
    "Sessions",
    "store_unavailable",
]

_log = get_logger("flagwarden.server")

SESSION_COOKIE = "flagwarden_session"
LOGIN_COOKIE = "flagwarden_login"
CSRF_HEADER = "X-CSRF-Token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Session:
    identity: Identity
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # said on the next page


class Sessions:
    """Browser sessions in this process's memory (a restart logs everyone out).

    At most ``per_identity`` sessions per token (a new login ends that token's oldest one, so
    logging in again and again evicts nobody else's) and ``most`` in all (expired ones go
    first, then the oldest)."""

    def __init__(self, lifetime_seconds: float, most: int = 10_000, per_identity: int = 20) -> None:
        self.lifetime = lifetime_seconds
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._by_token: dict[str, OrderedDict[str, None]] = {}  # token id -> its session ids
        self._most = most
        self._per_identity = per_identity
        self._lock = threading.Lock()

    def create(self, identity: Identity) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(32), time.time() + self.lifetime)
        with self._lock:
            self._sessions[sid] = session
            mine = self._by_token.setdefault(identity.token_id, OrderedDict())
            mine[sid] = None
            while len(mine) > self._per_identity:
                self._sessions.pop(mine.popitem(last=False)[0], None)
            if len(self._sessions) > self._most:
                now = time.time()
                for old in [k for k, v in self._sessions.items() if v.expires < now]:
                    self._drop(old)
            while len(self._sessions) > self._most:
                self._drop(next(iter(self._sessions)))
        return sid, session

    def _drop(self, sid: str) -> None:
        """Forget ``sid`` (the lock held)."""
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        mine = self._by_token.get(session.identity.token_id)
        if mine is not None:
            mine.pop(sid, None)
            if not mine:
                del self._by_token[session.identity.token_id]

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                self._drop(sid)
                return None
        return session

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._drop(sid or "")

    @property
    def count(self) -> int:
        return len(self._sessions)


class LoginThrottle:
    """After ``free`` failed authentications from one client within ``window`` seconds, each
    further attempt must wait twice as long as the one before (up to ``cap``): 429 meanwhile.

    Failures age out of the window; a success does not forget them (else one good call in
    every ``free`` would let a holder of any token guess for ever)."""

    def __init__(self, free: int = 5, window: float = 600.0, cap: float = 300.0) -> None:
        self.free, self.window, self.cap = free, window, cap
        # A failure past free + 16 cannot lengthen the wait any more (2**16 s > any cap).
        self._keep = free + 16
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds ``client`` must still wait (0: may try)."""
        with self._lock:
            return max(0.0, self._blocked_until.get(client, 0.0) - time.monotonic())

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(client)
            if recent is None:
                recent = self._failures[client] = deque(maxlen=self._keep)
            while recent and now - recent[0] >= self.window:
                recent.popleft()
            recent.append(now)
            over = len(recent) - self.free
            if over > 0:
                self._blocked_until[client] = now + min(self.cap, 2.0 ** (over - 1))
            if len(self._failures) > 100_000:  # an address sweep: forget the oldest half
                for key in list(self._failures)[:50_000]:
                    self._failures.pop(key, None)
                    self._blocked_until.pop(key, None)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def route_of(request: Request) -> str:
    """The route's path template (``/api/v1/flags/{flag}``), else the request's path."""
    path = getattr(request.scope.get("route"), "path", None)
    return path if isinstance(path, str) else request.url.path


def store_unavailable(exc: Exception) -> HTTPException:
    """The answer when a store is down (the cause logged, not told: the caller may be
    anyone)."""
    _log.error("flagwarden.store_unavailable", error=str(exc))
    return HTTPException(503, "the state store cannot be reached: try again shortly")


class Guard:
    """Resolves the caller of a request and enforces role, CSRF and the throttle."""

    def __init__(
        self,
        tokens: TokenStore,
        sessions: Sessions,
        throttle: LoginThrottle,
        refused: Callable[[dict[str, Any]], None],
    ) -> None:
        self.tokens = tokens
        self.sessions = sessions
        self.throttle = throttle
        self._refused = refused  # RefusalLog.note (or Service.refused): audits a refusal

    def refuse(
        self, request: Request, status: int, why: str, identity: Identity | None = None
    ) -> HTTPException:
        """The refusal to raise, audited (aggregated: see :class:`RefusalLog`). A refusal
        without a proven identity (no, a malformed or a wrong credential; an expired login
        form) counts as a failed authentication of the client's address."""
        client = client_of(request)
        if identity is None and status in (401, 403):
            self.throttle.failed(client)
        self._refused(
            {
                "status": status,
                "method": request.method,
                "path": request.url.path,
                "route": route_of(request),
                "client": client,
                "why": why,
                "identity": identity.name if identity else None,
            }
        )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 429:
            headers = {"Retry-After": str(max(1, round(self.throttle.wait(client))))}
        return HTTPException(status, why, headers=headers)

    def check_token(self, request: Request, token: str) -> Identity:
        """The identity of ``token``. A token this process verified before is never
        throttled (no scrypt to spend on it); one that needs the slow check is refused (429)
        while the client's address must wait."""
        try:
            if not self.tokens.is_known(token) and self.throttle.wait(client_of(request)) > 0:
                raise self.refuse(request, 429, "too many failed attempts: wait and retry")
            try:
                return self.tokens.authenticate(token)
            except InvalidToken:
                raise self.refuse(request, 401, "invalid or revoked token") from None
        except StateStoreUnavailable as exc:
            raise store_unavailable(exc) from None

    def identify(self, request: Request) -> tuple[Identity, bool]:
        """The caller, and whether it came by session cookie (then CSRF applies)."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise self.refuse(request, 401, "expected Authorization: Bearer TOKEN")
            return self.check_token(request, token), False
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise self.refuse(request, 401, "log in first (a token, or the dashboard's login)")
        try:
            active = self.tokens.identity(session.identity.token_id)
        except StateStoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if active is None:  # revoked since login
            self.sessions.end(request.cookies.get(SESSION_COOKIE))
            raise self.refuse(request, 401, "the session's token was revoked")
        request.state.session = session
        return session.identity, True

    async def require(self, request: Request, role: Role, action: str) -> Identity:
        """The caller, with ``role`` or above; raises the HTTP refusal (audited) otherwise."""
        # Token checks and audit writes touch the stores: off the event loop.
        identity, by_cookie = await run_in_threadpool(self.identify, request)
        if by_cookie and request.method not in _SAFE:
            sent = request.headers.get(CSRF_HEADER)
            if sent is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                sent = str((await request.form()).get("csrf", ""))
            if not sent or not hmac.compare_digest(sent, request.state.session.csrf):
                why = "missing or wrong CSRF token"
                raise await run_in_threadpool(self.refuse, request, 403, why, identity)
        try:
            identity.require(role, action)
        except AccessDenied as exc:
            raise await run_in_threadpool(self.refuse, request, 403, str(exc), identity) from None
        return identity


class SecurityHeaders:
    """CSP without inline scripts, no framing, no sniffing, no referrer, no caching (a plain
    ASGI middleware: the event stream passes through unbuffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
