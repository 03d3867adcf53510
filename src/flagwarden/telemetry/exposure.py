"""The exposure hook: one OpenFeature hook that counts and logs every evaluation, cheaply.

* Prometheus: ``feature_flag_evaluations_total`` per flag, variant, reason, provider, error
  type and flagwarden source (children cached: one dict lookup and one increment a call).
* structlog: a ``feature_flag.evaluation`` event under OpenFeature's attribute names, once per
  flag, targeting key and variant within ``dedup_window`` (as LaunchDarkly's index events and
  Split's optimized impressions do), remembered in a fixed table of slots: memory does not
  grow with the number of keys. A slot collision can only log an exposure again early, never
  hide a new one.
* Capping: ``flagwarden_capped_evaluations_total`` per flag counts the answers where the
  stage served control instead of the vendor's treatment (the mechanism, not a violation).
* Summaries: counts per flag, variant, reason, source, policy arm and capped, logged as
  ``feature_flag.summary`` and appended to the audit log (for the compliance report) every
  ``summary_interval``.
* Bounded: a flag without a policy is counted (metrics, children, summaries) under the label
  :class:`~flagwarden.telemetry.cardinality.FlagLabels` gives it, ``__unregistered__`` past
  ``telemetry.max_unregistered_flags`` distinct ones; the exposure event keeps the real key.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import mmh3
import structlog
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
from openfeature.hook import Hook, HookContext, HookHints

from flagwarden.periodic import PeriodicCounter
from flagwarden.telemetry.cardinality import FlagLabels, flag_labels
from flagwarden.telemetry.metrics import CAPPED, EVALUATIONS

__all__ = ["ExposureDeduper", "ExposureHook", "ExposureSummary"]

_log = structlog.get_logger("flagwarden.exposure")
CAPPED_KEY = "flagwarden.capped"
_hash64 = mmh3.hash64  # bound once (note: this build ignores a positional `signed`)
_monotonic = time.monotonic


class ExposureDeduper:
    """Has (flag, key, variant) been logged within the window? In a fixed-size table."""

    def __init__(self, window_seconds: float, slots: int = 1 << 20) -> None:
        self.window = int(window_seconds)
        self.slots = slots
        self._fingerprints = array("I", bytes(4 * slots))
        self._stamps = array("I", bytes(4 * slots))
        self._epoch = time.monotonic() - 1  # stamps are seconds since this, never 0

    @property
    def memory_bytes(self) -> int:
        return self._fingerprints.itemsize * self.slots + self._stamps.itemsize * self.slots

    def first_in_window(self, flag: str, key: str, variant: str) -> bool:
        h1, h2 = _hash64(f"{flag}\x00{key}\x00{variant}".encode(), signed=False)
        slot = h1 % self.slots
        fingerprint = (h2 & 0xFFFFFFFF) or 1
        now = int(_monotonic() - self._epoch)
        fingerprints = self._fingerprints
        if fingerprints[slot] == fingerprint and now - self._stamps[slot] < self.window:
            return False
        fingerprints[slot] = fingerprint
        self._stamps[slot] = now
        return True


SummaryKey = tuple[str, str, str, str, str, bool]  # flag, variant, reason, source, arm, capped


class ExposureSummary(PeriodicCounter[SummaryKey]):
    """Counts per (flag, variant, reason, source, arm, capped), flushed to the log and the audit
    periodically. ``arm`` is the policy arm (control, treatment, none; empty for a flag without
    a policy)."""

    def __init__(
        self,
        interval: float,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(interval, "flagwarden-summary")
        self._sink = sink

    def _write(self, counts: Counter[SummaryKey], since: datetime, until: datetime) -> None:
        rows = [
            {
                "flag": flag,
                "variant": variant,
                "reason": reason,
                "source": source,
                "arm": arm or None,  # null: a flag without a policy (as in exposure events)
                "capped": capped,
                "count": n,
            }
            for (flag, variant, reason, source, arm, capped), n in sorted(counts.items())
        ]
        summary = {"from": since.isoformat(), "to": until.isoformat(), "rows": rows}
        _log.info("feature_flag.summary", **summary)
        if self._sink is not None:
            try:
                self._sink(summary)
            except Exception as exc:  # bookkeeping never breaks a pipeline
                _log.error("flagwarden.summary_sink_failed", error=str(exc))


class ExposureHook(Hook):
    """Counts every evaluation in Prometheus and logs first exposures; never raises."""

    def __init__(
        self,
        provider_name: str,
        deduper: ExposureDeduper | None,
        summary: ExposureSummary | None,
        labels: FlagLabels = flag_labels,
    ) -> None:
        self.provider_name = provider_name
        self.deduper = deduper
        self.summary = summary
        self.labels = labels
        self._children: dict[tuple[str, str, str, str, str], Any] = {}
        self._capped: dict[str, Any] = {}

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        try:
            self._observe(hook_context, details)
        except Exception as exc:  # telemetry must never change an evaluation's outcome
            _log.error("flagwarden.exposure_hook_failed", error=str(exc))

    def record_batch(
        self,
        flag: str,
        variant: str,
        reason: str,
        error: str,
        source: str,
        n: int,
        *,
        arm: str = "",
        capped: bool = False,
    ) -> None:
        """Count ``n`` exposures at once: ``assign``'s batches, and each evaluation (no log
        line here: ``_observe`` writes the deduplicated exposure events). ``arm`` is empty
        for a flag without a policy, whose label is bounded."""
        if n <= 0:
            return
        flag = self.labels(flag, registered=bool(arm))
        key = (flag, variant, reason, error, source)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = EVALUATIONS.labels(
                flag, variant, reason, self.provider_name, error, source
            )
        child.inc(n)
        if capped:
            counter = self._capped.get(flag)
            if counter is None:
                counter = self._capped[flag] = CAPPED.labels(flag)
            counter.inc(n)
        summary = self.summary
        if summary is not None:
            summary.add((flag, variant, reason, source, arm, capped), n)

    def _observe(self, hook_context: HookContext, details: FlagEvaluationDetails[Any]) -> None:
        flag = details.flag_key
        variant = details.variant or ""
        reason = str(details.reason or "")
        error = details.error_code.value if details.error_code else ""
        metadata = details.flag_metadata
        source = str(metadata.get("flagwarden.source", ""))
        arm = str(metadata.get("flagwarden.arm", ""))
        self.record_batch(
            flag,
            variant,
            reason,
            error,
            source,
            1,
            arm=arm,
            capped=metadata.get(CAPPED_KEY) is True,
        )
        deduper = self.deduper
        if deduper is None:
            return
        targeting_key = hook_context.evaluation_context.targeting_key or ""
        if deduper.first_in_window(flag, targeting_key, variant):
            value = details.value
            _log.info(
                "feature_flag.evaluation",
                **{
                    "feature_flag.key": flag,
                    "feature_flag.result.variant": variant,
                    "feature_flag.result.reason": reason,
                    "feature_flag.result.value": value
                    if isinstance(value, bool | int | float | str)
                    else None,
                    "feature_flag.provider.name": self.provider_name,
                    "feature_flag.context.id": targeting_key,
                    "error.type": error or None,
                    "flagwarden.source": source,
                    "flagwarden.stage": metadata.get("flagwarden.stage"),
                    "flagwarden.arm": arm or None,
                },
            )
