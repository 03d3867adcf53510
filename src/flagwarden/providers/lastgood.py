"""The failover chain's last-known-good snapshot: written from the vendor's good answers,
loaded from its store and replayed through the vendor's offline mode when the vendor has none.

:class:`LastKnownGood` owns the store, the replay function, the debounced writer and the last
problem reported. The replay it starts is handed to the chain, which holds it and evaluates
through it directly: the evaluation hot path reads it as a plain attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from openfeature.provider import ProviderStatus

from flagwarden.events import EventSink
from flagwarden.providers.base import SourceProvider
from flagwarden.providers.snapshot import Snapshot, SnapshotError, SnapshotStore, SnapshotWriter

__all__ = ["LastKnownGood"]


class LastKnownGood:
    """The snapshot side of a :class:`~flagwarden.providers.failover.FailoverProvider`.

    ``restore`` replays a vendor's exported data through its offline mode; without a ``store``
    nothing is written or loaded, but a forked child still replays the data its parent held.
    ``serve`` receives each replay that started, for the chain to answer from.
    """

    def __init__(
        self,
        vendor: SourceProvider,
        restore: Callable[[dict[str, Any]], SourceProvider],
        store: SnapshotStore | None,
        events: EventSink,
        serve: Callable[[SourceProvider], None],
        debounce: float = 1.0,
    ) -> None:
        self.vendor = vendor  # the chain's; a forked child's is a new one
        self.events = events
        self._restore = restore
        self._store = store
        self._serve = serve
        self._debounce = debounce
        self._problem: str | None = None  # the last one reported
        self._fork_data: dict[str, Any] | None = None
        self.writer = SnapshotWriter(store, self._export, debounce) if store is not None else None
        vendor.data_changed = self.request_write

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Start the last-known-good replay: of what the vendor still holds in memory
        (:meth:`~flagwarden.providers.base.SourceProvider.last_known_replay`), else of the snapshot
        store's copy. A snapshot that cannot be read or replayed is reported (location and
        reason) and the chain goes on without it: the writer replaces it at the vendor's next
        good answer."""
        held = self.vendor.last_known_replay()
        if held is not None:
            self._problem = None
            self._serve(held)
            self.events.emit(
                "flagwarden.snapshot_loaded",
                provider=self.vendor.name,
                written_at=datetime.now(UTC).isoformat(),
                location="memory",
            )
            return
        store = self._store
        if store is None:
            return
        try:
            snapshot = store.load()
        except SnapshotError as exc:
            self._unusable(str(exc))
            return
        except Exception as exc:  # whatever a store does wrong costs the snapshot, not the chain
            self._unusable(f"{store.location}: {type(exc).__name__}: {exc}")
            return
        if snapshot is None:
            if self._first_report("missing"):
                self.events.emit(
                    "flagwarden.snapshot_missing", level="warning", location=store.location
                )
            return
        if not self._matches(snapshot):
            if not self._first_report(f"mismatch {snapshot.vendor} {snapshot.profile}"):
                return
            self.events.emit(
                "flagwarden.snapshot_mismatch",
                level="warning",
                snapshot_vendor=snapshot.vendor,
                vendor=self.vendor.kind,
                snapshot_profile=snapshot.profile,
                profile=self.vendor.name,
            )
            return
        self._replay(snapshot.data, store.location, snapshot.written_at)

    def _matches(self, snapshot: Snapshot) -> bool:
        """A snapshot of this very source: its kind and its profile (two profiles of one kind
        are two services or environments: one's answers are not the other's)."""
        return snapshot.vendor == self.vendor.kind and snapshot.profile == self.vendor.name

    def seed(self) -> None:
        """Hand the stored snapshot to a vendor that wants it as a start (an answer cache);
        a store that cannot be read is reported when the chain loads from it."""
        if self._store is None or not self.vendor.wants_seed:
            return
        try:
            snapshot = self._store.load()
        except Exception:
            return
        if snapshot is not None and self._matches(snapshot):
            try:
                self.vendor.seed(snapshot.data)
            except Exception as exc:
                self._unusable(f"{self._store.location}: cannot seed ({type(exc).__name__})")

    def _replay(self, data: dict[str, Any], location: str, written_at: datetime) -> None:
        try:
            restored = self._restore(data)
        except Exception as exc:  # a replay the vendor's offline mode refuses outright
            self._unusable(f"{location}: cannot replay ({type(exc).__name__}: {exc})")
            return
        if not restored.start():
            restored.shutdown()
            self._unusable(f"{location}: cannot replay ({restored.status_message})")
            return
        self._problem = None
        self._serve(restored)
        self.events.emit(
            "flagwarden.snapshot_loaded",
            provider=self.vendor.name,
            written_at=written_at.isoformat(),
            location=location,
        )

    def _first_report(self, problem: str) -> bool:
        """Whether ``problem`` differs from the last one reported (the start and the outage it
        opens both look for the snapshot: one report)."""
        if problem == self._problem:
            return False
        self._problem = problem
        return True

    def _unusable(self, error: str) -> None:
        if not self._first_report(error):
            return
        self.events.emit(
            "flagwarden.snapshot_unreadable",
            level="error",
            location=self._store.location if self._store is not None else "memory",
            error=error,
        )

    # -- writing -----------------------------------------------------------------------

    def _export(self) -> Snapshot | None:
        vendor = self.vendor
        if vendor.status is not ProviderStatus.READY:
            return None  # never overwrite a good snapshot with stale or missing data
        data = vendor.export_snapshot()
        if data is None:
            return None
        return Snapshot(
            vendor=vendor.kind, profile=vendor.name, written_at=datetime.now(UTC), data=data
        )

    def request_write(self) -> None:
        """A debounced write of the vendor's definitions (after READY or a change)."""
        if self.writer is not None:
            self.writer.request()

    def write_now(self) -> Snapshot | None:
        """Write the last-known-good snapshot now; None when the vendor has no fresh data."""
        return self.writer.write_now() if self.writer is not None else None

    def close(self) -> None:
        """Stop the writer; a pending write is made only while the vendor's data is fresh."""
        if self.writer is not None:
            self.writer.close(flush=self.vendor.status is ProviderStatus.READY)

    # -- fork safety -------------------------------------------------------------------

    def before_fork(self) -> None:
        """In the parent, just before a fork: keep the vendor's data for the child."""
        self._fork_data = self.vendor.export_snapshot()

    def after_fork_in_child(self, vendor: SourceProvider, *, reload: bool) -> None:
        """In a forked child, with the chain's new ``vendor``: replay the data the parent held
        at the fork or, without it, ``reload`` the snapshot if the parent served one. The
        writer is new: its thread did not survive the fork."""
        self.vendor = vendor
        vendor.data_changed = self.request_write
        data, self._fork_data = self._fork_data, None
        if data is not None:
            restored = self._restore(data)
            if restored.start():
                self._serve(restored)
        elif reload:
            self.load()
        if self.writer is not None:
            self.writer = SnapshotWriter(self.writer.store, self._export, self._debounce)
