"""One HTTP POST of a notification, and what to make of its answer.

Standard library only (``urllib.request``). Redirects are not followed (a webhook that
answers 3xx is misconfigured, and following it would send the message, and the secret path
it came with, somewhere else). Connection errors, timeouts, 408, 429 and 5xx are worth a
retry; any other answer is final. Nothing here ever says the URL: an error is its class and
its message with the URL, its path and its query cut out.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

__all__ = ["MAX_BACKOFF", "Outcome", "make_opener", "post", "retry_delay", "scrub"]

MAX_BACKOFF = 30.0  # seconds: the longest wait between attempts, Retry-After included
_MAX_ANSWER = 1 << 16  # bytes of an answer read (and thrown away)
_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retryable: bool = False
    status: int | None = None  # the HTTP status, when there was an answer
    error: str | None = None  # what went wrong, without the URL
    retry_after: float | None = None  # seconds the server asked to wait


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx answer becomes an HTTPError: final


def make_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect())


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``, its path and its query replaced by ``…`` (at most 200 chars)."""
    parts = urlsplit(url)
    secrets = [url, parts.path + ("?" + parts.query if parts.query else ""), parts.query]
    secrets += [parts.path] if len(parts.path) > 1 else []
    for secret in sorted({s for s in secrets if s and s != "/"}, key=len, reverse=True):
        text = text.replace(secret, "…")
    return text[:200]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); None when unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_delay(backoff: float, attempts: int, retry_after: float | None) -> float:
    """The wait after ``attempts`` failed attempts: ``backoff`` doubling per attempt, with
    jitter (half of it random), at most :data:`MAX_BACKOFF`; a server's ``Retry-After`` is
    honoured up to the same cap."""
    grown = min(MAX_BACKOFF, backoff * 2 ** min(attempts - 1, 32))
    delay = grown / 2 + random.uniform(0, grown / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF))
    return delay


def _describe(exc: BaseException, url: str) -> str:
    reason = getattr(exc, "reason", None)
    said = str(reason if reason is not None else exc) or type(reason or exc).__name__
    return scrub(f"{type(exc).__name__}: {said}", url)


def post(opener: urllib.request.OpenerDirector, url: str, body: bytes, timeout: float) -> Outcome:
    """POST ``body`` (JSON) to ``url``; never raises."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "flagwarden"},
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(_MAX_ANSWER)
            return Outcome(True, status=response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        with contextlib.suppress(Exception):
            exc.close()
        retryable = status in _RETRY_STATUS or status >= 500
        said = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        return Outcome(False, retryable, status, said, retry_after)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        return Outcome(False, True, None, _describe(exc, url))  # unreachable, reset, timed out
    except Exception as exc:  # a URL urllib cannot use: trying again would not help
        return Outcome(False, False, None, _describe(exc, url))
