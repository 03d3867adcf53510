"""No change without its record: a state change and its audit records as one act.

A change's records go into the state store's outbox in the same compare-and-set as the change
(:meth:`ChangeRecorder.store`), then to the audit log (:meth:`ChangeRecorder.write`), which
clears them. When the audit log cannot be written at the time, or the process dies in
between, they wait; :meth:`ChangeRecorder.reconcile` writes them later, exactly once (each
record carries its ref, and the audit log never appends a ref twice).

Each change's first record names the change before it (``prev_ref``, ``prev_at``), so the
records of a flag form a chain from its current state back to its first change:
:meth:`ChangeRecorder.unrecorded` walks it and names every version whose record is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.governance.state import (
    FlagState,
    OutboxEntry,
    StateStore,
    StateStoreUnavailable,
    change_ref,
)
from flagwarden.logs import get_logger

if TYPE_CHECKING:  # a worker's cache, passed in already built
    from flagwarden.governance.cache import StateCache

__all__ = ["KEPT", "ChangeRecorder", "OutcomeUnknown", "Reconciled", "Unrecorded"]

_log = get_logger("flagwarden.rollout")

KEPT = (
    "the change's records are kept in the state store and written by the next transition, "
    "watch pass or audit verify"
)


class OutcomeUnknown(StateStoreUnavailable):
    """The state store failed while taking a change, and cannot be asked whether it took it:
    look at the flag's state before trying again."""


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`ChangeRecorder.reconcile` did: records written from the outbox, and what
    kept the rest waiting (None: nothing)."""

    written: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Unrecorded:
    """A state version with no audit record, or one whose record waits in the outbox."""

    flag: str
    version: int
    pending: bool  # in the outbox: written by the next transition, watch pass or verify

    def __str__(self) -> str:
        if self.pending:
            return f"{self.flag} version {self.version}: its record waits in the outbox"
        return f"{self.flag} version {self.version}: no audit record"


def _moment(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


class ChangeRecorder:
    """Stores changes with their records and sees that the records reach the audit log."""

    def __init__(
        self,
        store: StateStore,
        audit: AuditLog | None,
        *,
        audit_problem: str | None = None,
        cache: StateCache | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        # The audit log is configured but could not be opened: records wait in the outbox.
        self.audit_problem = audit_problem
        self.cache = cache

    @property
    def keeps_records(self) -> bool:
        return self.audit is not None or self.audit_problem is not None

    def entry(
        self, before: FlagState, after: FlagState, records: list[dict[str, Any]]
    ) -> OutboxEntry:
        """The outbox entry of a change: each record's data names its own ref, and the first
        names the change before it (the chain :meth:`unrecorded` walks)."""
        assert after.ref is not None
        refs = [after.ref if i == 0 else f"{after.ref}/{i}" for i in range(len(records))]
        stamped = [
            {**record, "data": {**record["data"], "ref": ref}}
            for record, ref in zip(records, refs, strict=True)
        ]
        stamped[0]["data"]["prev_ref"] = before.ref
        stamped[0]["data"]["prev_at"] = before.updated_at.isoformat() if before.updated_at else None
        return OutboxEntry(after.ref, after.flag, datetime.now(UTC), tuple(stamped))

    def store_change(
        self, before: FlagState, after: FlagState, records: list[dict[str, Any]]
    ) -> OutboxEntry | None:
        """Compare-and-set ``after`` (over ``before``), with its records in the outbox when
        there is an audit log to write them to. The entry when stored (an empty one without
        an audit log), None when another change landed first.

        A refused or failed compare-and-set is checked against the store: a change that
        landed anyway (a retried script, a commit whose answer was lost) is stored; when the
        store cannot be asked, :class:`OutcomeUnknown`.
        """
        entry = self.entry(before, after, records)
        ticket = self.cache.ticket() if self.cache is not None else 0
        try:
            stored = self.store.compare_and_set(
                after, entry if self.keeps_records else None, previous=before
            )
        except StateStoreUnavailable as exc:
            stored = self._landed(after, exc)
        else:
            stored = stored or self._landed(after, None)
        if not stored:
            return None
        if self.cache is not None:
            self.cache.put(after, ticket)
        return entry

    def _landed(self, after: FlagState, error: StateStoreUnavailable | None) -> bool:
        try:
            current = self.store.load(after.flag)
        except StateStoreUnavailable as exc:
            raise OutcomeUnknown(
                f"{after.flag}: the state store failed while taking the change "
                f"({error or 'its answer was refused'}) and cannot be read now ({exc}): it may "
                "or may not have taken effect; look at `flagwarden status` before retrying"
            ) from None
        if current is not None and current.ref == after.ref:
            return True
        if error is not None:
            raise error
        return False

    def write(self, entry: OutboxEntry) -> int:
        """Append an entry's records to the audit log (each once, by ref) and clear it; how
        many were new (another process may have written them first)."""
        if self.audit is None:
            raise AuditError(self.audit_problem or "no audit log")
        new = 0
        for record, ref in zip(entry.records, entry.record_refs(), strict=True):
            _, appended = self.audit.append_once(
                record["kind"], record["data"], flag=entry.flag, actor=record.get("actor"), ref=ref
            )
            new += appended
        self.store.clear_outbox(entry.ref)
        return new

    def record(self, entry: OutboxEntry) -> str | None:
        """Write one change's records now; why they wait, when they must (never raises: the
        change is stored, and its records are kept)."""
        if not self.keeps_records:
            return None
        try:
            self.write(entry)
        except (AuditError, StateStoreUnavailable) as exc:
            error = f"{exc}; {KEPT}"
        except Exception as exc:  # whatever it is, the change took effect and the record waits
            error = f"{type(exc).__name__}: {exc}; {KEPT}"
        else:
            return None
        _log.error("flagwarden.transition_not_audited", flag=entry.flag, error=error)
        return error

    def reconcile(self) -> Reconciled:
        """Write every record waiting in the outbox, oldest first, and clear them. Safe to run
        anywhere, any time, concurrently (a ref already in the log is not written again);
        never raises. An entry that fails for its own reason is skipped, not in the way of
        the others; an audit log that cannot be written stops the pass."""
        if self.audit is None:
            if self.audit_problem is None:
                return Reconciled()
            return Reconciled(0, f"{self.audit_problem}; {KEPT}")
        try:
            entries = self.store.pending_outbox()
        except StateStoreUnavailable as exc:
            return Reconciled(0, f"{exc}; {KEPT}")
        written, problems = 0, []
        for entry in entries:
            try:
                written += self.write(entry)
            except (AuditError, StateStoreUnavailable) as exc:
                return Reconciled(written, f"{exc}; {KEPT}")
            except Exception as exc:
                problem = f"outbox entry {entry.ref}: {type(exc).__name__}: {exc}"
                _log.error("flagwarden.outbox_entry_failed", ref=entry.ref, error=problem)
                problems.append(problem)
        return Reconciled(written, "; ".join(problems) or None)

    def store_guard_counts(self, state: FlagState, failures: dict[str, int]) -> FlagState:
        """Keep a watch pass's consecutive-breach counts: a new version (with its record, as
        every version has), only from the state the pass judged; if anything changed meanwhile
        the counts are dropped and the next pass counts again from that state."""
        counted = replace(
            state,
            version=state.version + 1,
            guard_failures=failures,
            ref=change_ref(state.flag, state.version + 1),
        )
        record = {
            "kind": "guard_counts",
            "data": {"failures": failures, "before": state.summary(), "after": counted.summary()},
            "actor": None,
        }
        entry = self.store_change(state, counted, [record])
        if entry is None:
            return state
        self.record(entry)
        return counted

    def _archived_before(self) -> datetime | None:
        """Records older than this may have been moved to an archive file."""
        if self.audit is None:
            return None
        cut = self.audit.records(kind="archive", newest_first=True, limit=1).first()
        return _moment(cut.data.get("before")) if cut is not None else None

    def unrecorded(self) -> list[Unrecorded]:
        """Every state version without its audit record, walking each flag's chain of changes
        from its current state back (each record names the change before it) to its first
        change, a change recorded before records were chained, or the archive cut."""
        if self.audit is None:
            return []
        states = self.store.load_all()  # before the outbox: a change made meanwhile is pending
        pending = {entry.ref: entry for entry in self.store.pending_outbox()}
        archived_before = self._archived_before()
        found: list[Unrecorded] = []
        for flag, state in sorted(states.items()):
            ref, version, at = state.ref, state.version, state.updated_at
            while ref is not None and version > 0:
                entry = pending.get(ref)
                if entry is not None:
                    found.append(Unrecorded(flag, version, True))
                    data = entry.records[0]["data"]
                else:
                    record = self.audit.find(ref)
                    if record is None or record.data.get("ref") != ref:
                        if archived_before is None or at is None or at >= archived_before:
                            found.append(Unrecorded(flag, version, False))
                        break
                    data = record.data
                if "prev_ref" not in data:
                    break  # recorded before changes named the one before them
                ref, at, version = data["prev_ref"], _moment(data.get("prev_at")), version - 1
        return found
