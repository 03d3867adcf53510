"""The status of a project's governed flags, as a typed document (``flagwarden status``).

Built from the policies, the state store, the latest guard verdicts (kept beside the state
by the watch), the audit log and the snapshot; rendered in words by the CLI or as JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from flagwarden.audit.log import AuditLog
from flagwarden.config import Settings
from flagwarden.governance.guards import GuardResult
from flagwarden.governance.measurements import MeasurementStore, open_measurement_store
from flagwarden.governance.policy import Policy
from flagwarden.governance.project import Governance
from flagwarden.governance.state import FlagState, StateStoreUnavailable
from flagwarden.storage import redact_url

__all__ = [
    "Change",
    "FlagStatus",
    "GuardStatus",
    "PrerequisiteStatus",
    "ProviderStatus",
    "StatusDocument",
    "project_status",
]


@dataclass(frozen=True)
class PrerequisiteStatus:
    flag: str
    stage: float  # the stage the dependant needs
    now: float  # the stage it is at
    killed: bool

    @property
    def short(self) -> bool:
        return self.killed or self.now < self.stage


@dataclass(frozen=True)
class GuardStatus(GuardResult):
    """A guard's latest verdict: the watch's result, when it was reached, and the stage (by
    its epoch) it judged."""

    at: str = ""
    epoch: int | None = None


@dataclass(frozen=True)
class Change:
    """The flag's latest transition, from the audit log."""

    at: str
    actor: str | None
    action: str
    reason: str | None
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class FlagStatus:
    flag: str
    owner: str
    description: str
    expires: str | None
    expired: bool
    stages: list[float]
    stage: float
    next_stage: float | None
    killed: bool
    paused: bool
    version: int
    stage_entered_at: str | None
    soak_seconds: float
    soak_remaining_seconds: int | None  # None: not soaking
    updated_at: str | None
    updated_by: str | None
    reason: str | None
    guard_names: list[str]
    requires: list[PrerequisiteStatus]
    guards: list[GuardStatus] = field(default_factory=list)
    last_change: Change | None = None
    pause: Change | None = None  # the transition that paused it, while it is paused


@dataclass(frozen=True)
class ProviderStatus:
    """What can be known about the provider without a worker: snapshot age, last outage."""

    name: str
    snapshot_written_at: str | None = None
    snapshot_age_seconds: float | None = None
    last_outage: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker process last said it sees (it reports every ~10 s)."""

    worker: str  # host-pid
    at: str | None
    generation: str
    healthy: bool  # its state store connection
    versions: dict[str, int]
    killed: list[str]
    behind: list[str]  # flags it holds at another generation or version than the store
    threads: dict[str, Any] = field(default_factory=dict)  # background thread health


@dataclass(frozen=True)
class BrokenPolicy:
    """A flag whose policy file cannot be used (or, ``missing``, that has none but a stored
    state): workers serve the caller's default for it (without a policy: while killed)."""

    flag: str
    problem: str
    killed: bool
    paused: bool
    stage: float
    version: int
    missing: bool = False


@dataclass(frozen=True)
class StatusDocument:
    provider: ProviderStatus
    state_store: str
    flags: list[FlagStatus]
    generation: str = ""  # the state store's generation: changes when it lost its data
    workers: list[WorkerStatus] = field(default_factory=list)
    broken_policies: list[BrokenPolicy] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def flag_status(
    policy: Policy,
    state: FlagState,
    states: dict[str, FlagState],
    now: datetime | None = None,
) -> FlagStatus:
    """A governed flag's policy, stage, state, soak and prerequisites."""
    now = now or datetime.now(UTC)
    soak_left = None
    following = policy.next_stage(state.stage)
    if state.stage > 0 and state.stage_entered_at is not None and following:
        left = policy.soak - (now - state.stage_entered_at)
        if left > timedelta(0):
            soak_left = math.ceil(left.total_seconds())
    requires = []
    for prerequisite in policy.requires:
        other = states.get(prerequisite.flag) or FlagState(prerequisite.flag)
        requires.append(
            PrerequisiteStatus(prerequisite.flag, prerequisite.stage, other.stage, other.killed)
        )
    return FlagStatus(
        flag=policy.flag,
        owner=policy.owner,
        description=policy.description,
        expires=policy.expires.isoformat() if policy.expires else None,
        expired=policy.is_expired(now.date()),
        stages=list(policy.stages),
        stage=state.stage,
        next_stage=following,
        killed=state.killed,
        paused=state.paused,
        version=state.version,
        stage_entered_at=_iso(state.stage_entered_at),
        soak_seconds=policy.soak.total_seconds(),
        soak_remaining_seconds=soak_left,
        updated_at=_iso(state.updated_at),
        updated_by=state.updated_by,
        reason=state.reason,
        guard_names=[guard.name for guard in policy.guards],
        requires=requires,
    )


def _guard(verdict: dict[str, Any], at: str) -> GuardStatus:
    known = GuardStatus.__dataclass_fields__
    return GuardStatus(**{k: v for k, v in verdict.items() if k in known and k != "at"}, at=at)


def _changes(audit: AuditLog, flag: str, paused: bool) -> tuple[Change | None, Change | None]:
    """The flag's latest transition and, while it is ``paused``, the pause that did it: read
    newest first by index, as far back as needed (usually one record), never the whole log."""
    last = pause = None
    for record in audit.records(flag=flag, kind="transition", newest_first=True):
        if not record.readable:
            continue
        change = Change(
            at=record.at.isoformat(),
            actor=record.actor,
            action=str(record.data.get("action")),
            reason=record.data.get("reason"),
            before=dict(record.data.get("before") or {}),
            after=dict(record.data.get("after") or {}),
        )
        last = last or change
        if change.action == "pause":
            pause = change
        if not paused or pause is not None:
            break
    return last, pause


def _epoch(state: FlagState | None) -> int:
    return state.stage_version if state is not None else 0


def _latest_verdicts(store: MeasurementStore, flag: str) -> list[GuardStatus] | None:
    latest = store.verdicts(flag)
    if latest is None:
        return None
    at = datetime.fromtimestamp(latest[0], UTC).isoformat()
    return [_guard(verdict, at) for verdict in latest[1]]


def provider_status(
    name: str, audit: AuditLog | None, snapshot: Any, now: datetime | None = None
) -> ProviderStatus:
    now = now or datetime.now(UTC)
    # Another profile's snapshot (a shared location) is not this provider's: never served.
    ours = snapshot is not None and getattr(snapshot, "profile", name) == name
    written = snapshot.written_at if ours else None
    outage = audit.records(kind="outage", newest_first=True).first() if audit is not None else None
    return ProviderStatus(
        name=name,
        snapshot_written_at=_iso(written),
        snapshot_age_seconds=round((now - written).total_seconds(), 1) if written else None,
        last_outage=dict(outage.data) if outage is not None else None,
    )


def _snapshot(settings: Settings) -> Any:
    """The last-known-good snapshot, if one is configured and readable."""
    from flagwarden.providers.snapshot import SnapshotError, open_snapshot_store

    location = settings.snapshot_location()
    if location is None:
        return None
    try:
        return open_snapshot_store(location).load()
    except SnapshotError:
        return None


def project_status(
    settings: Settings, governance: Governance, flags: list[str] | None = None
) -> StatusDocument:
    """The status of ``flags`` (default: every governed flag).

    Raises :class:`StateStoreUnavailable` or ``AuditError`` when a store cannot be read.
    """
    if governance.store is None:
        raise StateStoreUnavailable(f"{redact_url(settings.config.state)}: not available")
    wanted = sorted({*governance.policies, *governance.broken}) if flags is None else flags
    names = [flag for flag in wanted if flag in governance.policies]
    states = governance.store.load_all()
    broken = [
        BrokenPolicy(
            flag,
            str(governance.broken[flag]),
            state.killed,
            state.paused,
            state.stage,
            state.version,
        )
        for flag in wanted
        if flag in governance.broken
        for state in [states.get(flag) or FlagState(flag)]
    ]
    # Flags with a stored state but no policy (its file removed, or killed by name): asked
    # for by name, or killed (a kill reaches them).
    broken += [
        BrokenPolicy(
            flag,
            "there is no policy for it",
            state.killed,
            state.paused,
            state.stage,
            state.version,
            missing=True,
        )
        for flag, state in sorted(states.items())
        if flag not in governance.policies
        and flag not in governance.broken
        and (flag in wanted if flags is not None else state.killed)
    ]
    audit = governance.audit
    measurements = open_measurement_store(settings.config.state, settings.base_dir)
    try:
        rows = []
        for flag in names:
            status = flag_status(
                governance.policies[flag], states.get(flag) or FlagState(flag), states
            )
            # Only verdicts on the stage the flag is at now: after a rollback and a re-advance
            # the old stage's breach is history (in the report), not the current health.
            guards = [
                guard
                for guard in _latest_verdicts(measurements, flag) or []
                if guard.epoch == _epoch(states.get(flag))
            ]
            change, pause = (
                _changes(audit, flag, status.paused) if audit is not None else (None, None)
            )
            rows.append(
                replace(
                    status,
                    guards=guards,
                    last_change=change,
                    pause=pause if status.paused else None,
                )
            )
    finally:
        measurements.close()
    return StatusDocument(
        provider=provider_status(settings.provider_name, audit, _snapshot(settings)),
        state_store=redact_url(settings.config.state),
        flags=rows,
        generation=governance.store.last_generation,
        workers=_workers(governance.store.workers(), states, governance.store.last_generation),
        broken_policies=broken,
    )


def _as(kind: type, value: Any) -> Any:
    """``value`` when it is a ``kind``, else an empty one: worker reports are data, not code."""
    return value if isinstance(value, kind) else kind()


def _workers(
    reports: dict[str, dict[str, Any]], states: dict[str, FlagState], generation: str
) -> list[WorkerStatus]:
    found = []
    for worker, doc in reports.items():
        raw = doc.get("versions")
        versions = {
            str(k): v
            for k, v in (raw.items() if isinstance(raw, dict) else ())
            if isinstance(v, int)  # a report this version cannot read is shown without it
        }
        behind = sorted(
            flag
            for flag, version in versions.items()
            if doc.get("generation") != generation
            or version != (states[flag].version if flag in states else 0)
        )
        found.append(
            WorkerStatus(
                worker=worker,
                at=doc.get("at"),
                generation=str(doc.get("generation") or ""),
                healthy=bool(doc.get("healthy", True)),
                versions=versions,
                killed=[str(k) for k in _as(list, doc.get("killed"))],
                behind=behind,
                threads=_as(dict, doc.get("threads")),
            )
        )
    return found
