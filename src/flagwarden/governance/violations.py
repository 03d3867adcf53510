"""Policy violations counted in memory and written in aggregate: logged, counted in Prometheus
and appended to the audit log every ``flush_interval`` seconds, never once per evaluation."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.logs import get_logger
from flagwarden.periodic import PeriodicCounter
from flagwarden.telemetry.metrics import VIOLATIONS

__all__ = ["ViolationLog"]

_log = get_logger("flagwarden.governance")


class ViolationLog(PeriodicCounter[tuple[str, str]]):
    """Counts policy violations per flag and kind; every ``flush_interval`` seconds logs them,
    counts them in Prometheus and appends them, in aggregate, to the audit log. An append that
    fails is kept (merged per flag and kind, so memory stays bounded) and tried again at the
    next flush; it is never counted twice."""

    def __init__(self, audit: AuditLog | None, flush_interval: float = 10.0) -> None:
        super().__init__(flush_interval, "flagwarden-violations")
        self.audit = audit
        self.totals: Counter[tuple[str, str]] = Counter()
        # (flag, kind) -> [count, since, until] not yet in the audit log
        self._unaudited: dict[tuple[str, str], list[Any]] = {}

    def count(self, flag: str, kind: str, n: int = 1) -> None:
        self.add((flag, kind), n)

    def flush(self) -> None:
        super().flush()
        if self._unaudited:
            self._append_unaudited()

    def _write(self, counts: Counter[tuple[str, str]], since: datetime, until: datetime) -> None:
        _log.warning(
            "flagwarden.policy_violations",
            since=since.isoformat(),
            until=until.isoformat(),
            counts=[{"flag": f, "kind": k, "count": n} for (f, k), n in sorted(counts.items())],
        )
        self.totals.update(counts)
        for (flag, kind), n in counts.items():
            VIOLATIONS.labels(flag, kind).inc(n)
        if self.audit is None:
            return
        for key, n in counts.items():
            pending = self._unaudited.get(key)
            if pending is None:
                self._unaudited[key] = [n, since, until]
            else:
                pending[0] += n
                pending[2] = until

    def _append_unaudited(self) -> None:
        assert self.audit is not None
        for (flag, kind), (n, since, until) in sorted(self._unaudited.items()):
            window = {"since": since.isoformat(), "until": until.isoformat()}
            try:
                self.audit.append("violation", {"kind": kind, "count": n, **window}, flag=flag)
            except AuditError as exc:
                _log.error("flagwarden.violation_flush_failed", error=str(exc))
                return  # the rest waits for the next flush, with this one
            del self._unaudited[(flag, kind)]
