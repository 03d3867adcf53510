"""flagwarden's Prometheus metrics, created once at import in the default registry.

Labels are bounded: flag keys, variants, reasons, sources, provider names, error types,
violation kinds and guard names. Never a targeting key. Label names follow OpenFeature's
telemetry conventions (spec Appendix D) with dots as underscores.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics_core import Metric

__all__ = [
    "BACKGROUND_HEALTHY",
    "CAPPED",
    "EVALUATIONS",
    "FALLBACK_ACTIVE",
    "FLAG_KILLED",
    "FLAG_PAUSED",
    "FLAG_STAGE",
    "FOLD_ON_COLLECT",
    "GUARD_BREACHES",
    "METRIC_VALUE",
    "NOTIFICATIONS_FAILED",
    "NOTIFICATIONS_SENT",
    "PROVIDER_STATE",
    "SNAPSHOT_LAST_WRITE",
    "VIOLATIONS",
]


class _Folds(Protocol):
    def fold(self) -> None: ...


class _FoldOnCollect:
    """Registered before the counters below, so every collection of the default registry (a
    /metrics scrape, ``get_sample_value``) first folds the evaluations the exposure recorders
    counted in memory: the endpoint is never behind the evaluations."""

    def __init__(self) -> None:
        self.recorders: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, recorder: _Folds) -> None:
        self.recorders.add(recorder)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for recorder in list(self.recorders):
            try:
                recorder.fold()
            except Exception:  # a scrape must not fail; the recorder's thread reports it
                continue
        return iter(())


FOLD_ON_COLLECT = _FoldOnCollect()
REGISTRY.register(FOLD_ON_COLLECT)

EVALUATIONS = Counter(
    "feature_flag_evaluations",
    "Flag evaluations by flag, variant, reason, provider, error type and flagwarden source",
    [
        "feature_flag_key",
        "feature_flag_result_variant",
        "feature_flag_result_reason",
        "feature_flag_provider_name",
        "error_type",
        "flagwarden_source",
    ],
)
CAPPED = Counter(
    "flagwarden_capped_evaluations",
    "Evaluations where the policy served control instead of the vendor's treatment",
    ["feature_flag_key"],
)
VIOLATIONS = Counter(
    "flagwarden_policy_violations",
    "Policy violations by flag and kind (unknown_variant, missing_unit, unregistered, forced...)",
    ["feature_flag_key", "kind"],
)
GUARD_BREACHES = Counter(
    "flagwarden_guard_breaches",
    "Guard evaluations that found a limit breached",
    ["feature_flag_key", "guard"],
)
# Under PROMETHEUS_MULTIPROC_DIR every gauge names how the processes' values combine, so a
# scrape or a push never carries one series per process id (prometheus_client's default).
FLAG_STAGE = Gauge(
    "flagwarden_flag_stage_percent",
    "Approved stage of each governed flag",
    ["feature_flag_key"],
    multiprocess_mode="mostrecent",  # the store's state, as the last process to see it wrote it
)
FLAG_KILLED = Gauge(
    "flagwarden_flag_killed",
    "1 when the flag is killed",
    ["feature_flag_key"],
    multiprocess_mode="mostrecent",
)
FLAG_PAUSED = Gauge(
    "flagwarden_flag_paused",
    "1 when the rollout is paused",
    ["feature_flag_key"],
    multiprocess_mode="mostrecent",
)
PROVIDER_STATE = Gauge(
    "flagwarden_provider_state",
    "1 for the provider chain's current OpenFeature status",
    ["feature_flag_provider_name", "state"],
    multiprocess_mode="livemax",  # 1 while any live worker is in that state
)
FALLBACK_ACTIVE = Gauge(
    "flagwarden_fallback_active",
    "1 while the vendor is out and answers come from its cache, the snapshot or defaults",
    ["feature_flag_provider_name"],
    multiprocess_mode="livemax",
)
METRIC_VALUE = Gauge(
    "flagwarden_data_quality",
    "The last value a pipeline reported with flagwarden.record_metric",
    ["feature_flag_key", "name", "variant"],
    multiprocess_mode="max",
)
BACKGROUND_HEALTHY = Gauge(
    "flagwarden_background_healthy",
    "1 while a background thread's passes succeed, 0 after one failed (until one succeeds)",
    ["thread"],
    multiprocess_mode="livemin",  # a fleet of workers is healthy only if every live one is
)
SNAPSHOT_LAST_WRITE = Gauge(
    "flagwarden_snapshot_last_write_timestamp_seconds",
    "Unix time of the last successful write of the last-known-good snapshot",
    ["feature_flag_provider_name"],
    multiprocess_mode="max",  # the newest write among the workers
)
NOTIFICATIONS_SENT = Counter(
    "flagwarden_notifications_sent",
    "Webhook notifications delivered (a 2xx answer), by target name (never its URL)",
    ["target"],
)
NOTIFICATIONS_FAILED = Counter(
    "flagwarden_notifications_failed",
    "Webhook notifications given up on (retries spent, a refusal, dropped, or still unsent "
    "at close), by target name (never its URL)",
    ["target"],
)
