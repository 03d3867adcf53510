"""Guard evaluation: is the treatment breaking the data?

A ``metric`` guard reads the values pipelines reported with ``record_metric`` over the
guard's window (the mean, weighted by each report's count); a ``promql`` guard asks a
Prometheus server's HTTP API. Limits are absolute (``max``/``min``) or, with
``relative_to_control``, fractions of control's value (``max: 0.5`` = at most 50% above
control). Fewer than ``min_samples`` observations is inconclusive; an unreachable
Prometheus is ``unreachable`` (the watch loop pauses rather than rolls back on it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Literal

from flagwarden.governance.measurements import MeasurementStore
from flagwarden.governance.policy import Guard, Policy
from flagwarden.governance.state import StateStoreUnavailable

__all__ = ["GuardEvaluator", "GuardResult"]

Verdict = Literal["healthy", "breach", "inconclusive", "unreachable"]


@dataclass(frozen=True)
class GuardResult:
    guard: str
    verdict: Verdict
    value: float | None = None
    samples: int = 0
    control: float | None = None
    limit: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _limits(guard: Guard, value: float, baseline: float | None) -> tuple[bool, str]:
    """(within limits, the limit as text)."""
    scale = (lambda x: baseline * (1 + x)) if baseline is not None else (lambda x: x)
    texts, ok = [], True
    if guard.max is not None:
        bound = scale(guard.max)
        ok = ok and value <= bound
        texts.append(f"<= {bound:g}")
    if guard.min is not None:
        bound = scale(guard.min)
        ok = ok and value >= bound
        texts.append(f">= {bound:g}")
    return ok, " and ".join(texts)


class GuardEvaluator:
    def __init__(
        self,
        measurements: MeasurementStore | None,
        prometheus_url: str | None,
        timeout: float = 3.0,
    ) -> None:
        self.measurements = measurements
        self.prometheus_url = prometheus_url.rstrip("/") if prometheus_url else None
        self.timeout = timeout

    def evaluate(self, policy: Policy, guard: Guard, now: float | None = None) -> GuardResult:
        now = time.time() if now is None else now
        if guard.metric is not None:
            return self._metric(policy, guard, now)
        return self._promql(guard)

    def _mean(
        self, policy: Policy, guard: Guard, variant: str, now: float
    ) -> tuple[float | None, int]:
        assert self.measurements is not None and guard.metric is not None
        since = now - guard.window.total_seconds()
        pairs = self.measurements.samples(policy.flag, guard.metric, variant, since)
        n = sum(count for _, count in pairs)
        if n == 0:
            return None, 0
        return sum(value * count for value, count in pairs) / n, n

    def _metric(self, policy: Policy, guard: Guard, now: float) -> GuardResult:
        if self.measurements is None:
            return GuardResult(guard.name, "unreachable", detail="no measurement store")
        try:
            value, n = self._mean(policy, guard, "treatment", now)
            baseline, control_n = (
                self._mean(policy, guard, "control", now)
                if guard.relative_to_control
                else (None, 0)
            )
        except StateStoreUnavailable as exc:
            return GuardResult(guard.name, "unreachable", detail=str(exc))
        if value is None or n < guard.min_samples:
            return GuardResult(
                guard.name, "inconclusive", value, n, detail=f"{n} of {guard.min_samples} samples"
            )
        if guard.relative_to_control and (baseline is None or control_n < guard.min_samples):
            return GuardResult(
                guard.name,
                "inconclusive",
                value,
                n,
                baseline,
                detail=f"control has {control_n} of {guard.min_samples} samples",
            )
        ok, limit = _limits(guard, value, baseline if guard.relative_to_control else None)
        return GuardResult(guard.name, "healthy" if ok else "breach", value, n, baseline, limit)

    def _promql(self, guard: Guard) -> GuardResult:
        if self.prometheus_url is None:
            return GuardResult(
                guard.name, "unreachable", detail="telemetry.prometheus.query_url is not set"
            )
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": guard.promql}
        )
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                doc = json.load(response)
        except urllib.error.HTTPError as exc:
            # Prometheus answers errors with JSON ({"errorType", "error"}): say what it said.
            try:
                said = json.load(exc).get("error", "")
            except (ValueError, OSError):
                said = ""
            return GuardResult(
                guard.name, "unreachable", detail=f"prometheus: HTTP {exc.code} {said}".strip()
            )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return GuardResult(
                guard.name, "unreachable", detail=f"prometheus: {type(exc).__name__}"
            )
        if doc.get("status") != "success":
            return GuardResult(guard.name, "unreachable", detail=f"prometheus: {doc.get('error')}")
        data = doc.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar" and result:
            values = [float(result[1])]
        else:
            values = [float(item["value"][1]) for item in result or []]
        values = [v for v in values if v == v]  # drop NaN (e.g. a rate over no samples)
        if not values:
            return GuardResult(guard.name, "inconclusive", detail="query returned no data")
        value = max(values)
        ok, limit = _limits(guard, value, None)
        return GuardResult(
            guard.name, "healthy" if ok else "breach", value, len(values), limit=limit
        )
