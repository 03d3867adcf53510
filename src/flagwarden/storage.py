"""Storage plumbing shared by the state store, the measurements and the audit log: what a
store URL may say in a message, and creating tables on PostgreSQL safely."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

__all__ = ["create_tables", "redact_url", "store_failure"]

# password=..., in a URL's query or a key=value DSN (libpq and redis accept both).
_SECRET_PARAMS = re.compile(
    r"(?i)((?:^|[?&;\s])(?:password|passwd|pwd|sslpassword|secret|token|api_key)=)[^&;\s]*"
)


def redact_url(url: str) -> str:
    """A store URL (or DSN) without its credentials, for messages."""
    scheme, sep, rest = url.partition("://")
    text = f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url
    return _SECRET_PARAMS.sub(r"\1***", text)


def store_failure(url: str, exc: BaseException) -> str:
    """What went wrong with a store, for a message: which store, the error's kind and first
    line, with anything that looks like a credential masked."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    password = urlsplit(url).password if "://" in url else None
    if password:
        first = first.replace(password, "***")
    first = _SECRET_PARAMS.sub(r"\1***", first)
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
