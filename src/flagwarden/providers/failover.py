"""The failover chain: environment override > vendor > last-known-good snapshot > default.

Every answer carries ``flagwarden.source`` in its flag metadata and no evaluation ever raises.
The chain's status is aggregated "worst wins" over its active members, as OpenFeature's
multi-provider specification describes, except that a member still not ready after its
``start_wait`` counts as ERROR: OpenFeature refuses to evaluate a NOT_READY provider, and the
snapshot and the defaults are there precisely to keep answering.

Each outage (from the vendor losing its connection, or never getting one, until it is READY
again) is tracked as an :class:`~flagwarden.events.OutageWindow` with the evaluations that
were answered from the vendor's cache, the snapshot, the environment and the defaults, and
emitted through the event sink when it ends. The snapshot's loading, replay and writing are
:class:`~flagwarden.providers.lastgood.LastKnownGood`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType
from openfeature.provider import FeatureProvider, Metadata, ProviderStatus

from flagwarden.background import report_failure, report_ok
from flagwarden.events import EventSink, OutageWindow
from flagwarden.logs import get_logger
from flagwarden.providers.base import KeyMap, SourceProvider, error_details
from flagwarden.providers.env import EnvProvider
from flagwarden.providers.lastgood import LastKnownGood
from flagwarden.providers.shadow import ShadowComparator
from flagwarden.providers.snapshot import Snapshot, SnapshotStore, SnapshotWriter

__all__ = ["FailoverProvider", "aggregate_status"]

_log = get_logger("flagwarden.failover")
# A stale vendor's errors that mean "cannot answer now" (its service is out), not an answer
# about the flag (FLAG_NOT_FOUND, TYPE_MISMATCH): those the last-known-good answers instead.
_CANNOT_ANSWER_NOW = frozenset({ErrorCode.GENERAL, ErrorCode.PROVIDER_NOT_READY})

SOURCE = "flagwarden.source"
REFORK_THREAD = "flagwarden-refork"
_SEVERITY = {
    ProviderStatus.READY: 0,
    ProviderStatus.STALE: 1,
    ProviderStatus.ERROR: 2,
    ProviderStatus.NOT_READY: 3,
    ProviderStatus.FATAL: 4,
}
_EVENTS = {
    ProviderStatus.READY: ProviderEvent.PROVIDER_READY,
    ProviderStatus.STALE: ProviderEvent.PROVIDER_STALE,
    ProviderStatus.ERROR: ProviderEvent.PROVIDER_ERROR,
    ProviderStatus.FATAL: ProviderEvent.PROVIDER_ERROR,
}


def aggregate_status(statuses: list[ProviderStatus]) -> ProviderStatus:
    """The most severe status: FATAL > NOT_READY > ERROR > STALE > READY."""
    return max(statuses, key=_SEVERITY.__getitem__, default=ProviderStatus.READY)


class FailoverProvider(SourceProvider):
    """One OpenFeature provider in front of the vendor, its snapshot and the environment."""

    def __init__(
        self,
        vendor: SourceProvider,
        *,
        events: EventSink,
        env_prefix: str | None = "FLAGWARDEN_FLAG_",
        snapshot_store: SnapshotStore | None = None,
        restore: Callable[[dict[str, Any]], SourceProvider] | None = None,
        snapshot_debounce: float = 1.0,
        vendor_key: Callable[[str], str] | None = None,
        shadow: ShadowComparator | None = None,
        shadow_key: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(name=vendor.name, kind="failover")
        self.events = events
        self._vendor = vendor
        self._env = EnvProvider(env_prefix) if env_prefix else None
        # The snapshot's replay answering now, set by ``_lastgood``: answer() reads it on
        # every evaluation, as a plain attribute.
        self._snapshot: SourceProvider | None = None
        self._lastgood: LastKnownGood | None = None  # no offline replay, no snapshot
        if restore is not None:
            self._lastgood = LastKnownGood(
                vendor, restore, snapshot_store, events, self._serve_snapshot, snapshot_debounce
            )
        self._vendor_key = KeyMap(vendor_key)
        self._shadow = shadow
        self._shadow_key = KeyMap(shadow_key)
        self._outage: OutageWindow | None = None
        self._outages: list[OutageWindow] = []
        self._lock = threading.Lock()
        self._initialized = False
        self._closed = False
        self._metadata: Metadata | None = None

    # -- introspection -----------------------------------------------------------------

    @property
    def vendor(self) -> SourceProvider:
        return self._vendor

    @property
    def outage(self) -> OutageWindow | None:
        """The open outage window, if the vendor is out now."""
        return self._outage

    @property
    def outages(self) -> list[OutageWindow]:
        """Closed outage windows, oldest first."""
        return list(self._outages)

    @property
    def snapshot_writer(self) -> SnapshotWriter | None:
        return self._lastgood.writer if self._lastgood is not None else None

    def get_metadata(self) -> Metadata:
        # OpenFeature asks on every evaluation; the vendor's kind and name never change.
        metadata = self._metadata
        if metadata is None:
            name = f"flagwarden:{self._vendor.kind}:{self._vendor.name}"
            metadata = self._metadata = Metadata(name=name)
        return metadata

    # -- lifecycle ---------------------------------------------------------------------

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._vendor.attach(self._on_vendor_event)
        if self._env is not None:
            self._env.initialize(evaluation_context)
        if self._lastgood is not None:
            self._lastgood.seed()
        self._vendor.start(evaluation_context)
        if not self._vendor.has_data:
            self._load_snapshot()
        self._initialized = True
        if self._vendor.status is ProviderStatus.READY:
            self._request_snapshot()
        else:
            self._open_outage(self._vendor.status_message or "vendor not ready")
        if self._shadow is not None:
            self._shadow.start()
        status = self._aggregate()
        self._status = status
        if status is not ProviderStatus.READY:
            raise ProviderNotReadyError(
                f"{self._vendor.kind} not ready: {self._vendor.status_message}; "
                f"serving from {'the snapshot' if self._snapshot else 'defaults'}"
            )

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._shadow is not None:
            self._shadow.close()
        if self._lastgood is not None:
            self._lastgood.close()
        self._vendor.shutdown()
        if self._snapshot is not None:
            self._snapshot.shutdown()
        with self._lock:
            if self._outage is not None:
                self._outage.ended_at = datetime.now(UTC)
                self._emit_outage(self._outage, ended_by="shutdown")
                self._outage = None

    # -- snapshots ---------------------------------------------------------------------

    def _load_snapshot(self) -> None:
        # What the vendor holds in memory is replayed afresh at each outage; a stored
        # snapshot is loaded once.
        if self._lastgood is not None and (self._snapshot is None or self._vendor.wants_seed):
            self._lastgood.load()

    def _serve_snapshot(self, replay: SourceProvider) -> None:
        previous, self._snapshot = self._snapshot, replay
        if previous is not None and previous is not replay:
            previous.shutdown()

    def _request_snapshot(self) -> None:
        if self._lastgood is not None:
            self._lastgood.request_write()

    def write_snapshot(self) -> Snapshot | None:
        """Write the last-known-good snapshot now; None when the vendor has no fresh data."""
        return self._lastgood.write_now() if self._lastgood is not None else None

    # -- vendor events -----------------------------------------------------------------

    def _on_vendor_event(
        self, provider: FeatureProvider, event: ProviderEvent, details: ProviderEventDetails
    ) -> None:
        if provider is not self._vendor or not self._initialized:
            return
        if event is ProviderEvent.PROVIDER_CONFIGURATION_CHANGED:
            self._request_snapshot()
            self.emit(event, details)
            return
        # Status first, then the outage window: whoever sees the window sees the status too.
        self._publish_status()
        if event is ProviderEvent.PROVIDER_READY:
            self._close_outage()
            self._request_snapshot()
        else:
            self._open_outage(details.message or event.value)

    def _aggregate(self) -> ProviderStatus:
        statuses = [self._vendor.status]
        if self._snapshot is not None and not self._vendor.has_data:
            statuses.append(self._snapshot.status)
        status = aggregate_status(statuses)
        return ProviderStatus.ERROR if status is ProviderStatus.NOT_READY else status

    def _publish_status(self) -> None:
        status = self._aggregate()
        with self._status_lock:
            if status is self._status:
                return
            self._status = status
        self.events.emit(
            "flagwarden.provider_status",
            level="info" if status is ProviderStatus.READY else "warning",
            provider=self._vendor.name,
            status=status.value,
            message=self._vendor.status_message,
        )
        details = ProviderEventDetails(message=self._vendor.status_message)
        if status in (ProviderStatus.ERROR, ProviderStatus.FATAL):
            details.error_code = (
                ErrorCode.PROVIDER_FATAL if status is ProviderStatus.FATAL else ErrorCode.GENERAL
            )
        self.emit(_EVENTS[status], details)

    def _open_outage(self, cause: str) -> None:
        with self._lock:
            if self._outage is not None or self._closed:
                return
            self._outage = OutageWindow(
                provider=self._vendor.name, cause=cause, started_at=datetime.now(UTC)
            )
        if not self._vendor.has_data:
            self._load_snapshot()
        self.events.emit(
            "flagwarden.outage_started",
            level="warning",
            provider=self._vendor.name,
            vendor=self._vendor.kind,
            cause=cause,
            fallback="vendor_cache"
            if self._vendor.has_data
            else ("snapshot" if self._snapshot is not None else "default"),
        )

    def _close_outage(self) -> None:
        with self._lock:
            window, self._outage = self._outage, None
            if window is None:
                return
            window.ended_at = datetime.now(UTC)
            self._outages.append(window)
        self._emit_outage(window, ended_by="vendor_ready")

    def _emit_outage(self, window: OutageWindow, *, ended_by: str) -> None:
        self.events.emit(
            "flagwarden.outage",
            level="warning",
            vendor=self._vendor.kind,
            ended_by=ended_by,
            **window.as_fields(),
        )

    # -- evaluation --------------------------------------------------------------------

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        details, source = self.answer(flag_type, flag_key, default_value, evaluation_context)
        details.flag_metadata = {**details.flag_metadata, SOURCE: source}
        return details

    def answer(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> tuple[FlagResolutionDetails[Any], str]:
        """The chain's answer and its ``flagwarden.source``, the metadata left as the source
        gave it (the governing provider builds the answer's metadata once, with its own keys).
        The details object is fresh per call: the caller may update it. Never raises.

        One function on purpose: it runs on every evaluation, and each call costs ~0.1 µs.
        """
        try:
            details = None
            env = self._env
            if env is not None:
                read = env.readers.get(flag_key)  # one call instead of lookup's two
                raw = read() if read is not None else env.lookup(flag_key)
                if raw is not None:
                    details = env.override(flag_type, flag_key, raw)
            if details is not None:
                source = "env"
            elif (vendor := self._vendor).has_data:
                key = flag_key if self._vendor_key.identity else self._vendor_key(flag_key)
                details = vendor.resolve(flag_type, key, default_value, evaluation_context)
                source = vendor.source
                if details.error_code is not None and (
                    not vendor.has_data
                    or (
                        vendor.status is ProviderStatus.STALE
                        and details.error_code in _CANNOT_ANSWER_NOW
                    )
                ):
                    # The vendor went out on this very call, or says it is stale and cannot
                    # answer (flagd's resolver, until its grace period ends): the last-known-
                    # good answers it.
                    replay = self._snapshot or vendor.last_known_replay()
                    if replay is not None:
                        details = replay.resolve(flag_type, key, default_value, evaluation_context)
                        source = "snapshot"
                if self._shadow is not None and source != "snapshot" and details.error_code is None:
                    self._shadow.offer(
                        flag_type,
                        flag_key,
                        self._shadow_key(flag_key),
                        default_value,
                        evaluation_context,
                        details.value,
                    )
            elif self._snapshot is not None:
                details = self._snapshot.resolve(
                    flag_type, self._vendor_key(flag_key), default_value, evaluation_context
                )
                source = "snapshot"
            elif (replay := vendor.last_known_replay()) is not None:
                # The vendor just went out and the chain has not loaded its replay yet.
                details = replay.resolve(
                    flag_type, self._vendor_key(flag_key), default_value, evaluation_context
                )
                source = "snapshot"
            else:
                details = error_details(
                    default_value,
                    ErrorCode.PROVIDER_NOT_READY,
                    f"{vendor.kind} has no data and there is no snapshot",
                )
                source = "default"
            if details.error_code is not None:
                source = "default"
        except Exception as exc:  # the chain never raises into a pipeline
            _log.exception("flagwarden.evaluation_failed", flag=flag_key)
            details = error_details(
                default_value, ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}"
            )
            source = "default"
        if self._outage is not None:
            self.count_served(source, 1)
        return details, source

    def count_served(self, source: str, n: int) -> None:
        """Count ``n`` answers in the open outage window (``answer``'s, and ``assign``'s batch)."""
        outage = self._outage
        if outage is not None and n > 0:
            outage.served[source] = outage.served.get(source, 0) + n

    def uncount_served(self, source: str) -> None:
        """Take back one answer :meth:`answer` counted: a plan's probe, not an answer served."""
        outage = self._outage
        if outage is not None and outage.served.get(source, 0) > 0:
            outage.served[source] -= 1

    def flag_version(self, flag_key: str) -> tuple[str | None, str | None]:
        """The version and flag set id of the definition answering now (see
        :meth:`SourceProvider.flag_version`); never raises."""
        try:
            key = self._vendor_key(flag_key)
            if self._vendor.has_data:
                return self._vendor.flag_version(key)
            if self._snapshot is not None:
                return self._snapshot.flag_version(key)
        except Exception:  # a vendor's store in an odd state costs the attribute only
            pass
        return None, None

    def depends_on_key(self, flag_key: str) -> bool:
        """Whether the source answering now can tell targeting keys apart for this flag."""
        if self._env is not None and self._env.lookup(flag_key) is not None:
            return False
        if self._vendor.has_data:
            return self._vendor.depends_on_key(self._vendor_key(flag_key))
        if self._snapshot is not None:
            return self._snapshot.depends_on_key(self._vendor_key(flag_key))
        return False

    # -- fork safety -------------------------------------------------------------------

    def before_fork(self) -> None:
        """In the parent, just before a fork: keep the vendor's data for the child."""
        if self._lastgood is not None:
            self._lastgood.before_fork()

    def after_fork_in_child(self) -> None:
        """In a forked child: the vendor SDK's threads did not survive, so build a new client.

        Until it is ready, the child answers from the data the parent held at the fork.
        Locks are replaced: one held by a parent thread at fork time would never be released.
        """
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self.events.after_fork_in_child()
        vendor = self._vendor.recreate()
        self._vendor = vendor
        vendor.attach(self._on_vendor_event)
        had_snapshot, self._snapshot = self._snapshot is not None, None
        if self._lastgood is not None:
            self._lastgood.after_fork_in_child(vendor, reload=had_snapshot)
        if self._shadow is not None:
            self._shadow = self._shadow.recreate()
            self._shadow.start()
        if self._lastgood is None:
            vendor.start()  # file and env sources (no offline replay) start in milliseconds
        else:
            threading.Thread(
                target=self._restart_vendor, args=(vendor,), name=REFORK_THREAD, daemon=True
            ).start()

    @staticmethod
    def _restart_vendor(vendor: SourceProvider) -> None:
        """A forked child's vendor start, off the fork's path; its failure is reported."""
        try:
            vendor.start()  # start() turns the vendor's own errors into its ERROR status
        except Exception as exc:
            report_failure(REFORK_THREAD, exc)
        else:
            report_ok(REFORK_THREAD)
