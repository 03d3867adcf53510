"""Building the provider chain from configuration and registering it with OpenFeature."""

from __future__ import annotations

import atexit
import math
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.client import OpenFeatureClient

from flagwarden.config import FlagwardenConfig, Settings, load_settings
from flagwarden.events import EventSink
from flagwarden.governance.governed import GovernedProvider
from flagwarden.governance.guards import GuardEvaluator
from flagwarden.governance.measurements import MeasurementStore, open_measurement_store
from flagwarden.governance.project import Governance
from flagwarden.governance.rollout import Rollout
from flagwarden.governance.state import StateStore, StateStoreUnavailable
from flagwarden.governance.watch import Decision, Watch
from flagwarden.logs import get_logger
from flagwarden.profiles import Profile
from flagwarden.providers.failover import FailoverProvider
from flagwarden.providers.registry import build_vendor, replay_for
from flagwarden.providers.shadow import ShadowComparator
from flagwarden.providers.snapshot import open_snapshot_store
from flagwarden.telemetry.cardinality import flag_labels
from flagwarden.telemetry.logging import configure_logging
from flagwarden.telemetry.metrics import METRIC_VALUE
from flagwarden.telemetry.stdlib_logs import register_secrets
from flagwarden.telemetry.telemetry import Telemetry

__all__ = ["Runtime", "build_vendor", "configure", "current", "record_metric", "shutdown"]

_log = get_logger("flagwarden")

CLIENT_DOMAIN = "flagwarden"


@dataclass
class Runtime:
    """What ``configure()`` built: settings, the governed chain, events, audit and the client."""

    settings: Settings
    profile: Profile
    governed: GovernedProvider
    governance: Governance
    telemetry: Telemetry
    measurements: MeasurementStore | None
    events: EventSink
    client: OpenFeatureClient

    @property
    def provider(self) -> FailoverProvider:
        """The failover chain (vendor, snapshot, env) under the policy."""
        return self.governed.inner

    @property
    def rollout(self) -> Rollout:
        """Transitions (advance, rollback, kill...) that this process's cache sees at once."""
        return self.governance.rollout(self.governed.cache, self._store())

    def watch_once(self) -> list[Decision]:
        """One guard pass, as ``flagwarden watch --once``, seen at once by this process."""
        evaluator = GuardEvaluator(
            self.measurements, self.settings.config.telemetry.prometheus.query_url
        )
        return Watch(self.governance, evaluator, self.rollout).tick()

    def _store(self) -> StateStore:
        store = self.governed.cache.store
        if store is None:
            raise StateStoreUnavailable(f"{self.settings.config.state}: not available")
        return store


_current: Runtime | None = None
_lock = threading.RLock()
_live: weakref.WeakSet[GovernedProvider] = weakref.WeakSet()


def current() -> Runtime | None:
    """The runtime built by the last ``configure()``, if any."""
    return _current


def configure(
    config: str | Path | Mapping[str, Any] | FlagwardenConfig | None = None,
) -> OpenFeatureClient:
    """Read the config, build the provider chain, register it with OpenFeature, return a client.

    ``config`` is a path, a mapping or a model; without it ``$FLAGWARDEN_CONFIG``, then
    ``./flagwarden.yaml``, then the embedded default (the packaged flag file). Blocks at most
    the vendor's ``start_wait``; when the vendor cannot be reached the client answers from the
    last-known-good snapshot (or the defaults) while the SDK keeps retrying.

    Raises :class:`~flagwarden.errors.ConfigError` for a bad configuration; never for a vendor
    outage.
    """
    global _current, _fork_hooks_registered
    with _lock:
        if not _fork_hooks_registered:  # once per process: register_at_fork cannot be undone
            os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
            atexit.register(_flush_at_exit)
            _watch_process_ends()
            _fork_hooks_registered = True
        if _current is not None:
            shutdown()
        settings = load_settings(config)
        profile = settings.load_profile(settings.provider_name)
        # Before anything can log (an unreachable store): stderr in the configured format.
        configure_logging(settings.config.telemetry.log_format)
        register_secrets(settings, profile)  # masked in the vendors' log lines
        governance = Governance.open(settings, strict=False)
        events = EventSink()
        telemetry = Telemetry(settings.config.telemetry, profile.name, governance.audit)
        governed = governance.govern(
            _build_chain(settings, profile, events),
            events,
            on_state=telemetry.flag_states,
            exposures=telemetry.recorder,
        )
        telemetry.install(events)
        if telemetry.otel is not None:
            telemetry.otel.identify = governed.inner.flag_version
        try:
            api.set_provider_and_wait(governed)
        except Exception as exc:
            # The vendor is down: the chain already answers from the snapshot or the defaults.
            _log.warning("flagwarden.provider_degraded", error=str(exc))
        telemetry.provider_status(governed.inner.status.value)
        _live.add(governed)
        client = api.get_client(CLIENT_DOMAIN)
        _recover_outbox(settings, governance)
        _current = Runtime(
            settings,
            profile,
            governed,
            governance,
            telemetry,
            _open_measurements(settings),
            events,
            client,
        )
        return client


_recovery: threading.Thread | None = None
_RECOVERY_JOIN = 5.0  # seconds shutdown() waits for the outbox recovery


def _recover_outbox(settings: Settings, governance: Governance) -> None:
    """At start, on a thread of its own with connections of its own (an audit store that hangs
    must not hold up ``configure()``, and ``shutdown()`` closes the runtime's connections
    under it): write the audit records a change left in the state store's outbox (its process
    died, or the audit log failed, before they were written). Never raises."""
    global _recovery
    if governance.store is None or governance.audit is None:
        return
    try:
        if not governance.store.pending_outbox():
            return  # the common case: no thread at all (nothing to wait for at a fork)
    except StateStoreUnavailable:
        return  # the next start, transition or watch pass retries

    def recover() -> None:
        try:
            own = Governance.open(settings, strict=False)
        except Exception as exc:
            _log.warning("flagwarden.outbox_pending", error=f"{type(exc).__name__}: {exc}")
            return
        try:
            done = own.rollout().reconcile() if own.store is not None else None
        except Exception as exc:  # the next start retries
            _log.warning("flagwarden.outbox_pending", error=f"{type(exc).__name__}: {exc}")
            return
        finally:
            own.close()
        if done is not None and done.written:
            _log.info("flagwarden.outbox_recovered", records=done.written)
        if done is not None and done.error is not None:
            _log.warning("flagwarden.outbox_pending", error=done.error)

    _recovery = threading.Thread(target=recover, name="flagwarden-outbox-recovery", daemon=True)
    _recovery.start()


def _open_measurements(settings: Settings) -> MeasurementStore | None:
    try:
        return open_measurement_store(settings.config.state, settings.base_dir)
    except StateStoreUnavailable as exc:
        _log.error("flagwarden.measurements_unavailable", error=str(exc))
        return None


def record_metric(flag_key: str, name: str, value: float, *, variant: str, count: int = 1) -> None:
    """Report a data-quality measurement (null rate, rejected rows, drift...) for one variant.

    ``variant`` is ``"control"`` or ``"treatment"``; ``count`` says how many observations
    ``value`` summarizes (a batch's null rate over 5,000 rows: ``count=5000``), which is what
    a guard's ``min_samples`` counts. Stored beside the rollout state, so ``flagwarden watch``
    sees it from anywhere, stamped with the flag's current stage (guards judge only what was
    measured at the stage the flag is at), and exported as the ``flagwarden_data_quality``
    gauge. Never raises for a storage problem or a measurement that cannot count (a value that
    is not a finite number, as 0/0 over an empty batch gives, or a ``count`` below 1): it is
    logged and the pipeline goes on. A ``variant`` other than the two arms is a programming
    error (ValueError).
    """
    if variant not in ("control", "treatment"):
        raise ValueError(f"variant must be 'control' or 'treatment', got {variant!r}")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        _log.warning(
            "flagwarden.record_metric_ignored",
            flag=flag_key,
            metric=name,
            problem=f"the value must be a finite number, got {value!r}",
        )
        return
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        _log.warning(
            "flagwarden.record_metric_ignored",
            flag=flag_key,
            metric=name,
            problem=f"count must be a whole number of observations, at least 1, got {count!r}",
        )
        return
    runtime = _current
    # A flag without a policy is labelled as every metric labels it: bounded in number.
    registered = runtime is not None and (
        flag_key in runtime.governed.policies or flag_key in runtime.governed.broken
    )
    METRIC_VALUE.labels(flag_labels(flag_key, registered=registered), name, variant).set(value)
    if runtime is None or runtime.measurements is None:
        _log.warning(
            "flagwarden.record_metric_not_stored",
            flag=flag_key,
            metric=name,
            problem="flagwarden.configure() was not called"
            if runtime is None
            else "the state store could not be opened",
        )
        return
    stage: float | None = None
    epoch: int | None = None
    if flag_key in runtime.governed.policies:
        # Stamped with the stage this worker serves now (from memory): a guard judges only
        # what was measured at the stage the flag is at.
        state = runtime.governed.state(flag_key)
        stage, epoch = state.stage, state.stage_version or None
    try:
        runtime.measurements.add(flag_key, name, variant, value, count, stage=stage, epoch=epoch)
    except StateStoreUnavailable as exc:
        _log.error("flagwarden.record_metric_failed", flag=flag_key, metric=name, error=str(exc))


def _build_chain(settings: Settings, profile: Profile, events: EventSink) -> FailoverProvider:
    fallback = settings.config.fallback
    vendor = build_vendor(profile)
    restore = replay_for(profile)
    location = settings.snapshot_location()
    store = open_snapshot_store(location) if (location and restore is not None) else None
    shadow = None
    shadow_profile: Profile | None = None
    if settings.config.shadow is not None:
        shadow_profile = settings.load_profile(settings.config.shadow.provider)
        shadow = ShadowComparator(
            build_vendor(shadow_profile),
            settings.config.shadow.sample_rate,
            settings.config.shadow.queue_size,
        )
    return FailoverProvider(
        vendor,
        events=events,
        env_prefix=fallback.env_prefix,
        snapshot_store=store,
        restore=restore,
        snapshot_debounce=fallback.snapshot_debounce,
        vendor_key=(lambda key: settings.flag_key_for(key, profile))
        if settings.config.flag_keys
        else None,
        shadow=shadow,
        shadow_key=(lambda key: settings.flag_key_for(key, shadow_profile))
        if shadow_profile is not None and settings.config.flag_keys
        else None,
    )


def shutdown() -> None:
    """Flush what is pending (snapshot, outage windows) and close the vendor SDKs."""
    global _current
    with _lock:
        runtime, _current = _current, None
        if runtime is None:
            return
        if _recovery is not None:
            _recovery.join(_RECOVERY_JOIN)
        _live.discard(runtime.governed)
        runtime.governed.shutdown()  # synchronously, so the flush is done when we return
        runtime.telemetry.close()
        api.clear_providers()
        runtime.governance.close()
        if runtime.measurements is not None:
            runtime.measurements.close()


def _before_fork() -> None:
    if _recovery is not None:  # a fork must not copy it half-way (its locks held)
        _recovery.join(_RECOVERY_JOIN)
    for governed in list(_live):
        try:
            governed.inner.before_fork()
        except Exception:
            _log.exception("flagwarden.before_fork_failed")


def _after_fork_in_child() -> None:
    global _lock, _flushed
    _lock = threading.RLock()
    _flushed = False
    if _current is not None:
        _current.telemetry.after_fork_in_child()
    for governed in list(_live):
        try:
            governed.after_fork_in_child()
        except Exception:
            _log.exception("flagwarden.after_fork_failed")


def _flush_at_exit() -> None:
    """A process that ends without shutdown(): its waiting exposure lines and counts go out
    (once, whichever of atexit and multiprocessing's finalizers calls first)."""
    global _flushed
    runtime = _current
    if runtime is not None and not _flushed:
        _flushed = True
        runtime.telemetry.flush_at_exit()


class _ForkToken:
    """What multiprocessing's after-fork registry holds (it keeps weak references)."""


_FORK_TOKEN = _ForkToken()


def _watch_process_ends() -> None:
    """A multiprocessing (or billiard: Celery's prefork) child ends with ``os._exit``: no
    atexit, but its finalizers run. Each child registers one that flushes (registered after
    the child clears the finalizers it inherited)."""
    import sys
    from multiprocessing import util

    util.register_after_fork(
        _FORK_TOKEN, lambda _: util.Finalize(None, _flush_at_exit, exitpriority=100)
    )
    billiard = sys.modules.get("billiard.util")
    if billiard is not None:
        billiard.register_after_fork(
            _FORK_TOKEN, lambda _: billiard.Finalize(None, _flush_at_exit, exitpriority=100)
        )


_flushed = False

_fork_hooks_registered = False  # set by the first configure(), under _lock (atexit too)
