"""Who is calling, and the rules around it: bearer tokens for the API, sessions for browsers
(an HttpOnly, SameSite=Strict cookie; every state-changing request carries the session's CSRF
token), a slow-down for clients that keep failing to authenticate, and the security headers.

Refused attempts (401, 403, 429) are audited with what was tried and from where, never with
the credential.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flagwarden.identity import AccessDenied, Identity, InvalidToken, Role, TokenStore

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Guard",
    "LoginThrottle",
    "SecurityHeaders",
    "Sessions",
]

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
    """Browser sessions in this process's memory (a restart logs everyone out)."""

    def __init__(self, lifetime_seconds: float, most: int = 10_000) -> None:
        self.lifetime = lifetime_seconds
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._most = most
        self._lock = threading.Lock()

    def create(self, identity: Identity) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(32), time.time() + self.lifetime)
        with self._lock:
            self._sessions[sid] = session
            while len(self._sessions) > self._most:
                self._sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                del self._sessions[sid]
                return None
        return session

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


class LoginThrottle:
    """After ``free`` failed authentications from one client within ``window`` seconds, each
    further attempt must wait twice as long as the one before (up to ``cap``): 429 meanwhile."""

    def __init__(self, free: int = 5, window: float = 600.0, cap: float = 300.0) -> None:
        self.free, self.window, self.cap = free, window, cap
        self._failures: dict[str, list[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds ``client`` must still wait (0: may try)."""
        with self._lock:
            return max(0.0, self._blocked_until.get(client, 0.0) - time.monotonic())

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window]
            recent.append(now)
            self._failures[client] = recent
            over = len(recent) - self.free
            if over > 0:
                self._blocked_until[client] = now + min(self.cap, 2.0 ** (over - 1))
            if len(self._failures) > 100_000:  # an address sweep: forget the oldest half
                for key in list(self._failures)[:50_000]:
                    self._failures.pop(key, None)
                    self._blocked_until.pop(key, None)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
            self._blocked_until.pop(client, None)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


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
        self._refused = refused  # Service.refused: audits a refused attempt

    def refuse(
        self, request: Request, status: int, why: str, identity: Identity | None = None
    ) -> HTTPException:
        self._refused(
            {
                "status": status,
                "method": request.method,
                "path": request.url.path,
                "client": client_of(request),
                "why": why,
                "identity": identity.name if identity else None,
            }
        )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 429:
            headers = {"Retry-After": str(max(1, round(self.throttle.wait(client_of(request)))))}
        return HTTPException(status, why, headers=headers)

    def check_token(self, request: Request, token: str) -> Identity:
        client = client_of(request)
        if self.throttle.wait(client) > 0:
            raise self.refuse(request, 429, "too many failed attempts: wait and retry")
        try:
            identity = self.tokens.authenticate(token)
        except InvalidToken:
            self.throttle.failed(client)
            raise self.refuse(request, 401, "invalid or revoked token") from None
        self.throttle.succeeded(client)
        return identity

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
        if self.tokens.identity(session.identity.token_id) is None:  # revoked since login
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
