"""Storage plumbing shared by the state store, the measurements and the audit log: what a
store URL may say in a message, and creating tables on PostgreSQL safely."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, unquote_plus

__all__ = ["create_tables", "redact_text", "redact_url", "store_failure"]

_KEYS = (
    r"password|passwd|pwd|sslpassword|secret|client_secret|token|access_token|refresh_token"
    r"|id_token|auth_token|api_key|apikey|api-key|sdk_key"
)
# password=..., in a URL's query or a libpq key=value DSN (spaces around "=" and quoted values
# are libpq's; an unterminated quote runs to the end, as a truncated message may cut it).
_SECRET_PARAMS = re.compile(
    rf"(?i)(?<![\w.-])((?:{_KEYS})\s*=\s*)"
    r"('(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^&;\s'\"]*)"
)
# A URL inside a message (a driver quoting the URI back): each is redacted like a store URL.
_URL_IN_TEXT = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s\"'<>`]*")
_DSN_ESCAPE = re.compile(r"\\(.)")
_MASK = "***"


def _mask_param(match: re.Match[str]) -> str:
    # Already masked ("password=***: ..."): left alone, so redacting twice changes nothing.
    return match.group() if match.group(2).startswith(_MASK) else match.group(1) + _MASK


def _split_userinfo(rest: str) -> tuple[str, str]:
    """(userinfo, the rest) of what follows ``scheme://``.

    Drivers disagree on where a password with an unencoded ``/ ? # @`` ends (libpq: the first
    ``@`` before a ``/``; urllib: the last ``@`` before ``/?#``), so the userinfo runs to the
    last ``@`` before the query (and at least to the first ``/``): it may hide too much,
    never too little. A path-only URL (``sqlite:////a@b/db``) has no userinfo.
    """
    if rest.startswith("/"):
        return "", rest
    query = re.search(r"[?#]", rest)
    end = max(query.start() if query else len(rest), rest.find("/"))
    at = rest.rfind("@", 0, end)
    return (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)


def _secrets(url: str) -> set[str]:
    """Every credential ``url`` holds, as written and as a driver may quote it back decoded."""
    found: set[str] = set()
    if "://" in url:
        userinfo, _ = _split_userinfo(url.partition("://")[2])
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    for match in _SECRET_PARAMS.finditer(url):
        value = match.group(2)
        if value[:1] in "'\"" and value:
            value = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
            found.add(_DSN_ESCAPE.sub(r"\1", value))
        found.add(value)
    return {form for raw in found for form in (raw, unquote(raw), unquote_plus(raw)) if form}


def redact_url(url: str) -> str:
    """A store URL or libpq DSN without its credentials, for messages: the userinfo is
    dropped, every ``password=``-like parameter (query, key=value, quoted) becomes ``***``."""
    scheme, sep, rest = url.partition("://")
    text = f"{scheme}{sep}{_split_userinfo(rest)[1]}" if sep else url
    return _SECRET_PARAMS.sub(_mask_param, text)


def redact_text(text: str, *urls: str) -> str:
    """``text`` (a driver's error, a log line) with every credential of ``urls`` masked wherever
    it appears, alone or quoted, and any URL or ``password=`` inside it redacted too."""
    for secret in sorted({s for url in urls for s in _secrets(url)}, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
    return _SECRET_PARAMS.sub(_mask_param, text)


def store_failure(url: str, exc: BaseException) -> str:
    """What went wrong with a store, for a message: which store, the error's kind and first
    line, with the store's credentials masked in every form."""
    text = redact_text(str(exc).strip(), url)
    first = text.splitlines()[0] if text else ""
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"{redact_url(url)}: {detail}"


_SCHEMA_LOCK = 0x66770001


def create_tables(conn: Any, *statements: str) -> None:
    """Run CREATE ... IF NOT EXISTS statements on PostgreSQL, one process at a time.

    Concurrent ``CREATE TABLE IF NOT EXISTS`` is not race-free in PostgreSQL (two sessions
    can both decide to create, and one fails on the catalog's unique index), so the creation
    holds a transaction-scoped advisory lock.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in statements:
            conn.execute(statement)
