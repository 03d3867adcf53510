"""Guard evaluation: is the treatment breaking the data?

A guard judges the stage the flag is at. A ``metric`` guard reads the values pipelines
reported with ``record_metric`` at that stage (stamped with the stage's epoch, and no older
than the guard's window or the stage itself): the mean, weighted by each report's count. A
``promql`` guard asks a Prometheus server's HTTP API, and is inconclusive until the stage has
been held for the guard's ``window`` (the query's own range would still see the previous
stage). Limits are absolute (``max``/``min``), one number or one per stage (the entry at or
below the current stage), or, with ``relative_to_control``, fractions of control's value
(``max: 0.5`` = at most 50% above control). Fewer than ``min_samples`` observations at this
stage is inconclusive; an unreachable Prometheus is ``unreachable`` (the watch loop pauses
rather than rolls back on it). An answer the guard cannot judge (not JSON, the wrong shape, a
value that is not a finite number, ``status: error``) is ``inconclusive`` for that guard, its
detail quoting the answer; evaluating a guard never raises.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Literal

from flagwarden.governance.measurements import MeasurementStore
from flagwarden.governance.policy import Guard, Policy
from flagwarden.governance.state import FlagState, StateStoreUnavailable

__all__ = ["GuardEvaluator", "GuardResult"]

Verdict = Literal["healthy", "breach", "inconclusive", "unreachable"]

QUOTE_LIMIT = 200  # characters of an answer quoted in a verdict's detail
_MAX_ANSWER = 1 << 20  # bytes read of an answer: a guard's query answers a few series


class _Unjudgeable(ValueError):
    """A Prometheus answer the guard cannot judge; the message says why."""


def _quote(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())  # one line, whatever the answer's layout
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "..."


def _sample_value(sample: Any) -> float:
    """The value of a ``[timestamp, "value"]`` pair; _Unjudgeable when it is not one."""
    if not isinstance(sample, list) or len(sample) != 2:
        raise _Unjudgeable("a sample is not a [timestamp, value] pair")
    value = sample[1]
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _Unjudgeable(f"a sample value is not a number: {value!r}")
    try:
        return float(value)
    except ValueError:
        raise _Unjudgeable(f"a sample value is not a number: {value!r}") from None


def _query_values(doc: Any) -> list[float]:
    """The values of an instant query's answer (a vector's series, or a scalar): the
    answer's shape checked at every step, _Unjudgeable for anything else."""
    if not isinstance(doc, dict):
        raise _Unjudgeable("the answer is not a JSON object")
    if doc.get("status") != "success":
        said = doc.get("error") or doc.get("status")
        raise _Unjudgeable(f"status is not success ({said!r})")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise _Unjudgeable("no data object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return [_sample_value(result)]  # exactly one [timestamp, value]
    if kind != "vector":
        raise _Unjudgeable(f"resultType {kind!r}: an instant vector or a scalar was expected")
    if not isinstance(result, list):
        raise _Unjudgeable("the vector's result is not a list of series")
    values = []
    for series in result:
        if not isinstance(series, dict) or "value" not in series:
            raise _Unjudgeable("a series has no value")
        values.append(_sample_value(series["value"]))
    return values


@dataclass(frozen=True)
class GuardResult:
    """One guard's verdict at one stage, with the numbers behind it.

    ``upper``/``lower`` are the limits that applied (the stage's entry of a per-stage limit,
    scaled by control's value for a relative guard); ``limit`` says the same in words.
    """

    guard: str
    verdict: Verdict
    value: float | None = None
    samples: int = 0
    control: float | None = None
    limit: str = ""
    detail: str = ""
    stage: float | None = None
    upper: float | None = None
    lower: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _bounds(
    guard: Guard, stage: float, baseline: float | None
) -> tuple[float | None, float | None]:
    """The (upper, lower) limits at ``stage``; relative ones scaled by control's value."""
    upper, lower = guard.limits_at(stage)
    if baseline is not None:
        upper = None if upper is None else baseline * (1 + upper)
        lower = None if lower is None else baseline * (1 + lower)
    return upper, lower


def _limit_text(upper: float | None, lower: float | None) -> str:
    return " and ".join(
        text
        for text in (
            None if upper is None else f"<= {upper:.4g}",
            None if lower is None else f">= {lower:.4g}",
        )
        if text
    )


def _inconclusive(
    guard: Guard, stage: float, value: float | None, samples: int, detail: str
) -> GuardResult:
    """Too little to judge; the limit that will apply is said when it is known already."""
    upper, lower = (None, None) if guard.relative_to_control else _bounds(guard, stage, None)
    return GuardResult(
        guard.name,
        "inconclusive",
        value,
        samples,
        limit=_limit_text(upper, lower),
        detail=detail,
        stage=stage,
        upper=upper,
        lower=lower,
    )


def _judge(
    guard: Guard, stage: float, value: float, samples: int, baseline: float | None
) -> GuardResult:
    upper, lower = _bounds(guard, stage, baseline)
    ok = (upper is None or value <= upper) and (lower is None or value >= lower)
    limit = _limit_text(upper, lower)
    return GuardResult(
        guard.name,
        "healthy" if ok else "breach",
        value,
        samples,
        baseline,
        limit,
        stage=stage,
        upper=upper,
        lower=lower,
    )


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

    def evaluate(
        self, policy: Policy, guard: Guard, state: FlagState, now: float | None = None
    ) -> GuardResult:
        """Judge ``guard`` on what was measured at ``state``'s stage, against that stage's limit.

        Never raises: what cannot be judged is inconclusive, for this guard only.
        """
        try:
            return self._evaluate(policy, guard, state, now)
        except Exception as exc:  # one guard's trouble holds its own flag, nothing else
            detail = f"the guard could not be evaluated: {type(exc).__name__}: {exc}"
            return _inconclusive(guard, state.stage, None, 0, _quote(detail))

    def _evaluate(
        self, policy: Policy, guard: Guard, state: FlagState, now: float | None
    ) -> GuardResult:
        now = time.time() if now is None else now
        if guard.metric is not None:
            return self._metric(policy, guard, state, now)
        entered = state.stage_entered_at.timestamp() if state.stage_entered_at else 0.0
        held = now - entered
        if held < guard.window.total_seconds():
            # The query's own range still reaches back into the previous stage.
            return GuardResult(
                guard.name,
                "inconclusive",
                detail=f"stage entered {held:.0f}s ago; the guard's window is "
                f"{guard.window.total_seconds():.0f}s",
                stage=state.stage,
            )
        return self._promql(guard, state.stage)

    def _mean(
        self, policy: Policy, guard: Guard, variant: str, state: FlagState, now: float
    ) -> tuple[float | None, int]:
        assert self.measurements is not None and guard.metric is not None
        since = now - guard.window.total_seconds()
        if state.stage_entered_at is not None:
            since = max(since, state.stage_entered_at.timestamp())
        epoch = state.stage_version or None
        pairs = self.measurements.samples(policy.flag, guard.metric, variant, since, epoch)
        n = sum(count for _, count in pairs)
        if n == 0:
            return None, 0
        return sum(value * count for value, count in pairs) / n, n

    def _metric(self, policy: Policy, guard: Guard, state: FlagState, now: float) -> GuardResult:
        stage = state.stage
        if self.measurements is None:
            return GuardResult(
                guard.name, "unreachable", detail="no measurement store", stage=stage
            )
        try:
            value, n = self._mean(policy, guard, "treatment", state, now)
            baseline, control_n = (
                self._mean(policy, guard, "control", state, now)
                if guard.relative_to_control
                else (None, 0)
            )
        except StateStoreUnavailable as exc:
            return GuardResult(guard.name, "unreachable", detail=str(exc), stage=stage)
        if value is None or n < guard.min_samples:
            return _inconclusive(
                guard, stage, value, n, f"{n} of {guard.min_samples} samples at this stage"
            )
        if guard.relative_to_control and (baseline is None or control_n < guard.min_samples):
            return GuardResult(
                guard.name,
                "inconclusive",
                value,
                n,
                baseline,
                detail=f"control has {control_n} of {guard.min_samples} samples at this stage",
                stage=stage,
            )
        return _judge(guard, stage, value, n, baseline if guard.relative_to_control else None)

    def _promql(self, guard: Guard, stage: float) -> GuardResult:
        if self.prometheus_url is None:
            return GuardResult(
                guard.name, "unreachable", detail="telemetry.prometheus.query_url is not set"
            )
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": guard.promql}
        )
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                raw = response.read(_MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            # Prometheus answers errors with JSON ({"errorType", "error"}): say what it said.
            try:
                said = json.load(exc).get("error", "")
            except (ValueError, OSError, AttributeError):
                said = ""
            return GuardResult(
                guard.name, "unreachable", detail=f"prometheus: HTTP {exc.code} {said}".strip()
            )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return GuardResult(
                guard.name, "unreachable", detail=f"prometheus: {type(exc).__name__}"
            )
        try:
            if len(raw) > _MAX_ANSWER:
                raise _Unjudgeable(f"the answer is larger than {_MAX_ANSWER} bytes")
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError):
                raise _Unjudgeable("the answer is not JSON") from None
            values = _query_values(doc)
        except _Unjudgeable as exc:
            return _inconclusive(
                guard,
                stage,
                None,
                0,
                f"prometheus answered what the guard cannot judge: "
                f"{exc}; the answer: {_quote(raw)}",
            )
        if any(math.isinf(v) for v in values):
            return _inconclusive(
                guard, stage, None, 0, f"the query returned an infinite value: {_quote(raw)}"
            )
        finite = [v for v in values if not math.isnan(v)]  # NaN: e.g. a rate over no samples
        if not finite:
            return _inconclusive(guard, stage, None, 0, f"query returned no data: {_quote(raw)}")
        return _judge(guard, stage, max(finite), len(finite), None)
