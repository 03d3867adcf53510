"""Audit logs with a history: chained records written with the times they would have had."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flagwarden.audit.log import COLUMNS, GENESIS, AuditLog, AuditRecord


def seed(url: str, records: Iterable[tuple[datetime, str, str | None, dict[str, Any]]]) -> None:
    """Append ``(at, kind, flag, data)`` records to the log at ``url`` (created if needed) as
    :meth:`AuditLog.append` would have at time ``at``: same text, same hashes, one chain."""
    AuditLog(url).close()  # the schema
    conn: Any = (
        sqlite3.connect(url[len("sqlite:///") :])
        if url.startswith("sqlite")
        else __import__("psycopg").connect(url)
    )
    ph = "?" if url.startswith("sqlite") else "%s"
    try:
        row = conn.execute(
            "SELECT seq, hash FROM flagwarden_audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (row[0], row[1]) if row else (0, GENESIS)
        rows = []
        for at, kind, flag, data in records:
            seq += 1
            body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
            digest = AuditRecord.digest(seq, at.isoformat(), kind, flag, None, body, prev)
            rows.append((seq, at.isoformat(), kind, flag, None, body, prev, digest, None, None))
            prev = digest
        conn.cursor().executemany(
            f"INSERT INTO flagwarden_audit ({COLUMNS}) VALUES ({', '.join([ph] * 10)})", rows
        )
        conn.commit()
    finally:
        conn.close()
