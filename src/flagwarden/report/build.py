"""Build the report document from the audit log, the policies, the states and the measurements.

The one place the document is assembled: :mod:`flagwarden.report.records` reads each flag's
audit records, :mod:`flagwarden.report.series` the measurements behind the guard charts, and
:mod:`flagwarden.report.verdict` judges each flag; the renderers only render the result.

The audit log is read in bounded memory: the period's records are streamed once and folded
(exposure summaries into tallies, guard records into one decision per guard and tick,
violation windows into one event per kind and detail, outages and pipeline runs into rows);
only each covered flag's transitions are kept as records, because the document lists them.
What came before the period is read backwards per flag, by index, only as far as the last
stage change.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from flagwarden.audit.log import AuditLog, AuditRecord, Verification
from flagwarden.audit.signing import PublicKey
from flagwarden.governance.lint import STALE_AFTER
from flagwarden.governance.measurements import MeasurementStore
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState
from flagwarden.report import records as read
from flagwarden.report.document import (
    AuditStatus,
    Exposures,
    FlagNow,
    FlagReport,
    Outage,
    Period,
    Removal,
    Report,
    Requirement,
    StageState,
    TimelinePoint,
    UnreadableRecord,
    Unregistered,
    Verdict,
)
from flagwarden.report.runs import RUN_PINNED, PipelineRun, pipeline_run
from flagwarden.report.series import guard_charts
from flagwarden.report.verdict import glossary, verdict

__all__ = ["build_report"]


# The kinds of a flag's own records that its section lists (the rest is folded or global).
_HISTORY_KINDS = ("transition", "guard", "violation")
_GLOBAL_KINDS = ("outage", "exposure_summary")
_FLAG_KINDS = (*_HISTORY_KINDS, RUN_PINNED)  # read per flag with --flag
_MOST_NAMED = 10  # unreadable records named in the audit problem


def _flag(
    policy: Policy,
    state: FlagState,
    transitions: list[AuditRecord],
    decided: read.DecisionTally,
    violated: read.ViolationTally,
    before: tuple[StageState | None, datetime | None],
    exposures: Exposures,
    period: Period,
    measurements: MeasurementStore | None,
    audit: AuditStatus,
    now: datetime,
) -> FlagReport:
    changes = read.changes(transitions)
    start, entered = before
    decisions = decided.result()
    counts, events = read.violations(changes, violated)
    timeline = [
        TimelinePoint(c.at, c.action, c.after.stage, c.after.killed, c.after.paused, c.actor)
        for c in changes
    ]
    soak = read.soak(policy, changes, entered, start, period.until)
    automatic = Counter(c.action for c in changes if c.automatic)
    manual = Counter(c.action for c in changes if not c.automatic)
    expired = policy.is_expired(now.date())
    report = FlagReport(
        flag=policy.flag,
        owner=policy.owner,
        description=policy.description,
        expires=policy.expires,
        expired=expired,
        stages=list(policy.stages),
        soak_seconds=policy.soak.total_seconds(),
        on_breach=policy.on_breach,
        auto_advance=policy.auto_advance,
        requires=[Requirement(r.flag, r.stage) for r in policy.requires],
        verdict=Verdict("followed", "", "", []),  # judged below, on the finished section
        state=FlagNow(
            state.stage,
            state.killed,
            state.paused,
            state.version,
            state.stage_entered_at,
            state.updated_by,
            state.reason,
        ),
        state_at_since=start,
        timeline=timeline,
        changes=changes,
        soak=soak,
        guards=decisions,
        guard_charts=guard_charts(policy, start, timeline, decisions, measurements, period),
        breaches=sum(1 for d in decisions if d.verdict == "breach"),
        rollbacks=automatic["rollback"] + manual["rollback"],
        kills=automatic["kill"] + manual["kill"],
        automatic_rollbacks=automatic["rollback"],
        automatic_pauses=automatic["pause"],
        manual_rollbacks=manual["rollback"],
        manual_kills=manual["kill"],
        violations=counts,
        violation_details=events,
        exposures=exposures,
    )
    report.verdict = verdict(report, audit)
    return report


class _Reading:
    """The period's records, folded as they stream past."""

    def __init__(self, selected: Sequence[str], *, every_flag: bool) -> None:
        self.selected = frozenset(selected)
        self.every_flag = every_flag  # no --flag: unregistered flags and their runs too
        self.transitions: dict[str, list[AuditRecord]] = defaultdict(list)
        self.decisions: dict[str, read.DecisionTally] = {f: read.DecisionTally() for f in selected}
        self.violations: dict[str, read.ViolationTally] = {
            f: read.ViolationTally() for f in selected
        }
        self.exposures: dict[str, read.ExposureTally] = {f: read.ExposureTally() for f in selected}
        self.outages: list[Outage] = []
        self.runs: dict[int, PipelineRun] = {}  # by seq
        self.unregistered: Counter[str] = Counter()
        self.unreadable: dict[int, UnreadableRecord] = {}

    def readable(self, r: AuditRecord) -> bool:
        if not r.readable:
            problem = getattr(r.data, "problem", "unreadable")
            self.unreadable[r.seq] = UnreadableRecord(r.seq, r.kind, r.flag, problem)
        return r.readable

    def add_run(self, r: AuditRecord) -> None:
        """A ``run_pinned`` record of a covered flag; one whose data is malformed is left out
        and named, like a record whose data is not JSON."""
        if r.kind != RUN_PINNED or not (self.every_flag or r.flag in self.selected):
            return
        if not self.readable(r):
            return
        try:
            self.runs[r.seq] = pipeline_run(r)
        except ValueError as exc:
            problem = f"its {RUN_PINNED} data is malformed: {exc}"
            self.unreadable[r.seq] = UnreadableRecord(r.seq, r.kind, r.flag, problem)

    def add_history(self, r: AuditRecord) -> None:
        if r.flag not in self.selected or r.kind not in _HISTORY_KINDS or not self.readable(r):
            return
        assert r.flag is not None
        if r.kind == "violation":
            self.violations[r.flag].add(r)
            return
        if r.kind == "transition":
            self.transitions[r.flag].append(r)
        self.decisions[r.flag].add(r)  # guard records, and transitions that carry guards

    def add_global(self, r: AuditRecord) -> None:
        if r.kind not in (*_GLOBAL_KINDS, "violation") or not self.readable(r):
            return
        d = r.data
        if r.kind == "outage":
            self.outages.append(
                Outage(
                    d.get("provider"),
                    d.get("vendor"),
                    d.get("cause"),
                    read.parse_time(d.get("started_at")),
                    read.parse_time(d.get("ended_at")),
                    d.get("duration_seconds"),
                    {str(k): int(v) for k, v in (d.get("served") or {}).items()},
                    d.get("ended_by"),
                )
            )
        elif r.kind == "violation":
            if self.every_flag and r.flag and read.violation(d).kind == "unregistered":
                self.unregistered[r.flag] += int(d.get("count", 1) or 1)
        else:  # exposure_summary
            at = read.parse_time(d.get("to")) or r.at
            for row in d.get("rows") or []:
                tally = self.exposures.get(str(row.get("flag", "")))
                if tally is not None:
                    tally.add(at, row)


def _before(
    audit: AuditLog, flag: str, since: datetime, reading: _Reading
) -> tuple[StageState | None, datetime | None]:
    """The flag's stage state when the period starts (its last transition before it) and when
    it entered that stage (the last transition that changed the stage): read newest first."""
    start: StageState | None = None
    for r in audit.records(until=since, flag=flag, kind="transition", newest_first=True):
        if r.at >= since or not reading.readable(r):
            continue
        (change,) = read.changes([r])
        if start is None:
            start = change.after
        if change.after.stage != change.before.stage:
            return start, change.at
    return start, None


def _audit_status(
    checked: Verification, unreadable: Mapping[int, UnreadableRecord], pending: int = 0
) -> AuditStatus:
    """The chain's verification, and the records the report could not read: a record whose
    data is not JSON (or not of its kind's shape) was not written by flagwarden, so the log
    does not verify either."""
    named = [unreadable[seq] for seq in sorted(unreadable)]
    status = AuditStatus(
        checked.ok,
        checked.checked,
        checked.head,
        checked.problem,
        checked.first_bad_seq,
        unreadable_records=named,
        signed=checked.signed > 0,
        signatures=checked.signatures,
    )
    if named:
        shown = ", ".join(f"record {u.seq} ({u.problem})" for u in named[:_MOST_NAMED])
        more = f" and {len(named) - _MOST_NAMED} more" if len(named) > _MOST_NAMED else ""
        words = f"unreadable, left out of this report: {shown}{more}"
        status.problem = f"{checked.problem}; {words}" if checked.problem else words
        if status.verified:
            status.verified = False
            status.first_bad_record = named[0].seq
    if pending:
        # Changes that took effect but whose records still wait in the state store's outbox:
        # the log is not the whole story, so it is not called verified.
        words = (
            f"{pending} change record(s) still wait in the state store's outbox, not in this "
            "log yet (the next transition, watch pass or `audit verify` writes them)"
        )
        status.problem = f"{status.problem}; {words}" if status.problem else words
        status.verified = False
        status.pending_records = pending
    return status


def build_report(
    audit: AuditLog,
    policies: Mapping[str, Policy],
    states: Mapping[str, FlagState],
    *,
    since: datetime | timedelta = timedelta(days=7),
    until: datetime | None = None,
    flags: Sequence[str] | None = None,
    measurements: MeasurementStore | None = None,
    provider: str = "",
    now: datetime | None = None,
    public_key: PublicKey | None = None,
    verify: bool = True,
    pending: int = 0,
) -> Report:
    """The report for ``[since, until]`` (``since`` a moment, or a duration before ``until``;
    ``until`` defaults to now), for ``flags`` (default: every governed flag). With
    ``public_key`` the log's signatures are checked too. ``verify`` False skips walking the
    whole chain (the dashboard's charts, redrawn on every change): the report then says the
    chain was not checked. ``pending``: records still waiting in the state store's outbox
    (the audit section says so, and the log is not called verified)."""
    now = now or datetime.now(UTC)
    until = until or now
    period = Period(until - since if isinstance(since, timedelta) else since, until)
    checked = (
        audit.verify(public_key)
        if verify
        else Verification(ok=False, checked=0, problem="not checked (verify=False)")
    )
    selected = sorted(policies) if flags is None else sorted(set(flags) & set(policies))
    reading = _Reading(selected, every_flag=flags is None)
    if flags is None:
        for r in audit.records(period.since, until=period.until):
            reading.add_history(r)
            reading.add_global(r)
            reading.add_run(r)
    else:
        for flag in selected:
            for r in audit.records(period.since, flag, until=period.until, kind=_FLAG_KINDS):
                reading.add_history(r)
                reading.add_run(r)
        for r in audit.records(period.since, until=period.until, kind=_GLOBAL_KINDS):
            reading.add_global(r)
    before = {flag: _before(audit, flag, period.since, reading) for flag in selected}
    status = _audit_status(checked, reading.unreadable, pending)

    flag_reports = []
    to_remove = []
    for flag in selected:
        policy = policies[flag]
        state = states.get(flag) or FlagState(flag)
        flag_reports.append(
            _flag(
                policy,
                state,
                reading.transitions.pop(flag, []),  # released once its section is built
                reading.decisions.pop(flag),
                reading.violations.pop(flag),
                before[flag],
                reading.exposures[flag].result(),
                period,
                measurements,
                status,
                now,
            )
        )
        stale = (
            state.stage >= 100
            and state.stage_entered_at is not None
            and now - state.stage_entered_at > STALE_AFTER
        )
        if policy.is_expired(now.date()) or stale:
            why = (
                f"expired on {policy.expires}"
                if policy.is_expired(now.date())
                else f"at 100% since {state.stage_entered_at:%Y-%m-%d} (30+ days)"
            )
            to_remove.append(Removal(flag, policy.owner, why))
    report = Report(
        generated_at=now,
        period=period,
        selected_flags=None if flags is None else selected,
        provider=provider,
        audit=status,
        glossary=[],
        flags=flag_reports,
        runs=[reading.runs[seq] for seq in sorted(reading.runs)],
        outages=reading.outages,
        unregistered_flags=[]
        if flags is not None
        else [
            Unregistered(f, n) for f, n in sorted(reading.unregistered.items()) if f not in policies
        ],
        to_remove=to_remove,
    )
    report.glossary = glossary(report)
    return report.seal()
