"""What is counted and logged per exposure (the recorder does it: see
:mod:`flagwarden.telemetry.recorder`), and the optional hook for other providers' clients.

* Prometheus: ``feature_flag_evaluations_total`` per flag, variant, reason, provider, error
  type and flagwarden source.
* Logs: a ``feature_flag.evaluation`` event under OpenFeature's attribute names, once per
  flag, targeting key and variant within ``dedup_window`` (as LaunchDarkly's index events and
  Split's optimized impressions do), remembered in a table of fixed size
  (:mod:`flagwarden.telemetry.dedup`): memory does not grow with the number of keys.
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

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
from openfeature.hook import Hook, HookContext, HookHints

from flagwarden.logs import get_logger
from flagwarden.periodic import PeriodicCounter
from flagwarden.telemetry.cardinality import FlagLabels, flag_labels

if TYPE_CHECKING:
    from flagwarden.telemetry.recorder import ExposureRecorder

__all__ = ["OWN_PROVIDER", "ExposureHook", "ExposureSummary"]

_log = get_logger("flagwarden.exposure")
# The metadata name of flagwarden's providers (``flagwarden:<kind>:<profile>``).
OWN_PROVIDER = "flagwarden:"


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
    """Opt-in (``telemetry.hook: true``): counts and logs evaluations made through clients of
    *other* OpenFeature providers in this process, as flagwarden's own provider counts its
    answers. Answers of flagwarden's provider are counted there and skipped here. Never raises.
    """

    def __init__(self, recorder: ExposureRecorder, labels: FlagLabels = flag_labels) -> None:
        self.recorder = recorder
        self.labels = labels

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

    def _observe(self, hook_context: HookContext, details: FlagEvaluationDetails[Any]) -> None:
        metadata = hook_context.provider_metadata
        provider = metadata.name if metadata is not None else ""
        if provider.startswith(OWN_PROVIDER):
            return  # counted by the governing provider itself
        flag = details.flag_key
        self.recorder.record(
            flag,
            details.variant or "",
            details.reason,
            details.error_code,
            "",
            "",
            False,
            hook_context.evaluation_context.targeting_key or "",
            details.value,
            None,
            label=self.labels(flag, registered=False),
            provider=provider,
        )
