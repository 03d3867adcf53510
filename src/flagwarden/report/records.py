"""What the audit records say about one flag: changes, soak, guard decisions, violations,
exposures. Pure functions from :class:`~flagwarden.audit.log.AuditRecord` to document parts.

Rules that keep the report honest (docs/report.md says them for readers):

* A guard decision is one guard's verdict in one watch tick: the tick's ``guard`` record and
  the ``transition`` it caused carry the same verdicts, shown once (keyed by tick and guard).
* Violations of a forced transition (``stage_skipped``, ``soak_cut_short``,
  ``advanced_while_paused``, ``prerequisite_short``) are counted from the transition that
  carries them (the ``violation`` records that mirror them are not counted again); the others
  from the aggregated ``violation`` records. ``capped`` (older logs) is not a violation.
* A stage's soak is compliant when it was held the required time before an advance, or was
  left downward (rolling back never waits); the stage still held is "in progress".
* Automatic means done by the watch (actor ``flagwarden-watch``); everything else is manual.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from flagwarden.audit.log import AuditRecord
from flagwarden.governance.policy import Policy
from flagwarden.governance.watch import ACTOR
from flagwarden.report.document import (
    Change,
    Exposures,
    GuardDecision,
    SoakRow,
    SoakStatus,
    StageState,
    ViolationEvent,
    ViolationNote,
)
from flagwarden.report.series import bucket_shares

__all__ = [
    "NOT_A_VIOLATION",
    "TRANSITION_KINDS",
    "WATCH_ACTOR",
    "DecisionTally",
    "ExposureTally",
    "ViolationTally",
    "changes",
    "exposures",
    "parse_time",
    "soak",
    "stage_state",
    "violation",
    "violations",
]

WATCH_ACTOR = ACTOR
TRANSITION_KINDS = frozenset(
    {"stage_skipped", "soak_cut_short", "advanced_while_paused", "prerequisite_short"}
)
NOT_A_VIOLATION = frozenset({""})
# Audit times are taken a few milliseconds after the state's own clock: a soak that the
# rollout let pass is not called short over that difference.
_SOAK_TOLERANCE = 1.0


def stage_state(summary: Mapping[str, Any] | None) -> StageState:
    summary = summary or {}
    return StageState(
        float(summary.get("stage", 0) or 0),
        bool(summary.get("killed", False)),
        bool(summary.get("paused", False)),
    )


def violation(raw: Any) -> ViolationNote:
    """``{kind, detail}``, or an older ``"kind: detail"`` / ``"kind:detail"`` string."""
    if isinstance(raw, Mapping):
        kind, detail = str(raw.get("kind", "")), str(raw.get("detail", "") or "")
    else:
        kind, _, detail = str(raw).partition(":")
    kind, _, rest = kind.partition(":")
    return ViolationNote(kind.strip(), (detail or rest).strip())


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def changes(transitions: list[AuditRecord]) -> list[Change]:
    """Each transition record as a change (violations without ``capped``)."""
    found = []
    for r in transitions:
        cause = r.data.get("cause")
        found.append(
            Change(
                at=r.at,
                actor=r.actor,
                action=str(r.data.get("action", "")),
                reason=r.data.get("reason"),
                before=stage_state(r.data.get("before")),
                after=stage_state(r.data.get("after")),
                violations=[
                    v
                    for v in map(violation, r.data.get("violations") or [])
                    if v.kind not in NOT_A_VIOLATION
                ],
                automatic=r.actor == WATCH_ACTOR,
                cause={str(k): str(v) for k, v in cause.items()}
                if isinstance(cause, Mapping)
                else None,
                tick=r.data.get("tick"),
                soak_seconds=_number(r.data.get("soak_seconds")),
                **_approval(r.data.get("approval")),
            )
        )
    return found


def _approval(approval: Any) -> dict[str, Any]:
    """Who asked for and who approved a four-eyes change (nothing when it needed none)."""
    if not isinstance(approval, Mapping):
        return {}
    approvers = approval.get("approved_by")
    return {
        "requested_by": str(approval.get("requested_by", "")) or None,
        "approved_by": [str(a) for a in approvers] if isinstance(approvers, list) else [],
        "request": str(approval.get("request", "")) or None,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def soak(
    policy: Policy,
    changes: list[Change],
    entered_before: datetime | None,
    start: StageState | None,
    until: datetime,
) -> list[SoakRow]:
    """Each stage held in the period: when entered and left, and whether the soak was kept
    (judged by the soak its policy required when it was left, as the advance recorded it)."""
    # (entered at, stage) of each stage held, and the change that left it (None: still held)
    held: list[tuple[datetime, float, Change | None]] = []
    current: tuple[datetime, float] | None = None
    if start is not None and start.stage > 0 and entered_before is not None:
        current = (entered_before, start.stage)
    for change in changes:
        if change.after.stage == change.before.stage:
            continue
        if current is not None:
            held.append((*current, change))
        current = (change.at, change.after.stage) if change.after.stage > 0 else None
    if current is not None:
        held.append((*current, None))
    rows = []
    for entered, stage, leaving in held:
        required = policy.soak.total_seconds()
        if leaving is not None and leaving.soak_seconds is not None:
            required = leaving.soak_seconds
        seconds = ((leaving.at if leaving else until) - entered).total_seconds()
        forced = leaving is not None and any(v.kind == "soak_cut_short" for v in leaving.violations)
        status: SoakStatus
        if leaving is None:
            status = "in progress"
        elif leaving.after.stage < stage:
            status = "compliant"  # rolling back never waits
        elif forced or seconds + _SOAK_TOLERANCE < required:
            status = "cut short"
        else:
            status = "compliant"
        rows.append(
            SoakRow(
                stage=stage,
                entered_at=entered,
                left_at=leaving.at if leaving else None,
                left_to=leaving.after.stage if leaving else None,
                held_seconds=round(seconds, 3),
                required_seconds=required,
                status=status,
                soak_met=seconds >= required,
                forced=forced,
            )
        )
    return rows


class DecisionTally:
    """Guard decisions, folded as their records stream past: one row per guard per watch
    tick, whichever records carry it (the records themselves are not kept)."""

    def __init__(self) -> None:
        self._found: dict[tuple[Any, ...], GuardDecision] = {}

    def add(self, r: AuditRecord) -> None:
        if r.kind not in ("guard", "transition") or not r.data.get("guards"):
            return
        tick = r.data.get("tick")
        failures = r.data.get("failures") or {}
        found = self._found
        for g in r.data["guards"]:
            name = str(g.get("guard", ""))
            key: tuple[Any, ...] = (
                (tick, name)
                if tick
                else (name, g.get("verdict"), g.get("value"), g.get("samples"), g.get("stage"))
            )
            outcome = str(r.data.get("action")) if r.kind == "transition" else "hold"
            if key in found:
                if r.kind == "transition":
                    found[key].outcome = outcome
                continue
            found[key] = GuardDecision(
                at=r.at,
                tick=tick,
                guard=name,
                stage=g.get("stage"),
                verdict=str(g.get("verdict", "")),
                value=g.get("value"),
                samples=int(g.get("samples") or 0),
                control=g.get("control"),
                limit=str(g.get("limit") or ""),
                upper=g.get("upper"),
                lower=g.get("lower"),
                detail=str(g.get("detail") or ""),
                failures=failures.get(name) if name in failures else None,
                outcome=outcome,
            )

    def result(self) -> list[GuardDecision]:
        return list(self._found.values())


class ViolationTally:
    """A flag's ``violation`` records, folded as they stream past: the counts per kind, and
    one event per kind, detail and actor spanning every window that reported it (the
    aggregator writes one record per window: a busy week is tens of thousands of them, and
    the document names each kind's detail, not each window)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._events: dict[tuple[str, str, str | None], ViolationEvent] = {}

    def add(self, r: AuditRecord) -> None:
        if r.kind != "violation":
            return
        note = violation(r.data)
        if note.kind in NOT_A_VIOLATION or note.kind in TRANSITION_KINDS:
            return  # capping is the mechanism; forced transitions are counted with changes
        n = int(r.data.get("count", 1) or 1)
        self.counts[note.kind] += n
        since = parse_time(r.data.get("since")) or r.at
        until = parse_time(r.data.get("until"))
        key = (note.kind, note.detail, r.actor)
        event = self._events.get(key)
        if event is None:
            self._events[key] = ViolationEvent(
                since, note.kind, note.detail, n, r.actor, until=until
            )
            return
        event.count += n
        event.at = min(event.at, since)
        ends = [t for t in (event.until, until, since) if t is not None]
        event.until = max(ends) if ends else None

    def events(self) -> list[ViolationEvent]:
        return list(self._events.values())


def violations(
    changes: list[Change], tally: ViolationTally
) -> tuple[dict[str, int], list[ViolationEvent]]:
    """The counts per kind and the events: each forced transition, and the aggregated
    windows (see :class:`ViolationTally`), in time order."""
    counts: Counter[str] = Counter(tally.counts)
    events: list[ViolationEvent] = []
    for change in changes:
        for v in change.violations:
            counts[v.kind] += 1
            events.append(
                ViolationEvent(
                    change.at,
                    v.kind,
                    v.detail,
                    1,
                    change.actor,
                    change.action,
                    change.reason,
                    change.before.stage,
                    change.after.stage,
                )
            )
    events += tally.events()
    events.sort(key=lambda e: e.at)
    return dict(sorted(counts.items())), events


class ExposureTally:
    """Exposure summary rows of one flag, added as they are read (never kept as rows)."""

    def __init__(self) -> None:
        self.by_arm: Counter[str] = Counter({"treatment": 0, "control": 0, "none": 0})
        self.by_source: Counter[str] = Counter()
        self.capped = 0
        self.share: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, at: datetime, row: Mapping[str, Any]) -> None:
        n = int(row.get("count", 0) or 0)
        arm = str(row.get("arm") or "none")
        self.by_arm[arm] += n
        self.by_source[str(row.get("source", "")) or "unknown"] += n
        self.capped += n if row.get("capped") else 0
        self.share[at][1] += n
        self.share[at][0] += n if arm == "treatment" else 0

    def result(self) -> Exposures:
        return Exposures(
            total=sum(self.by_arm.values()),
            by_arm=dict(self.by_arm),
            capped=self.capped,
            by_source=dict(sorted(self.by_source.items())),
            treatment_share=bucket_shares([(at, t, n) for at, (t, n) in self.share.items()]),
        )


def exposures(rows: Iterable[tuple[datetime, Mapping[str, Any]]]) -> Exposures:
    tally = ExposureTally()
    for at, row in rows:
        tally.add(at, row)
    return tally.result()
