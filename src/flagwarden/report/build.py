"""Build the report document from the audit log, the policies, the states and the measurements.

The one place the document is assembled: :mod:`flagwarden.report.records` reads each flag's
audit records, :mod:`flagwarden.report.series` the measurements behind the guard charts, and
:mod:`flagwarden.report.verdict` judges each flag; the renderers only render the result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flagwarden.audit.log import AuditLog, AuditRecord
from flagwarden.governance.lint import STALE_AFTER
from flagwarden.governance.measurements import MeasurementStore
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState
from flagwarden.report import records as read
from flagwarden.report.document import (
    AuditStatus,
    FlagNow,
    FlagReport,
    Outage,
    Period,
    Removal,
    Report,
    Requirement,
    TimelinePoint,
    Unregistered,
    Verdict,
)
from flagwarden.report.series import guard_charts
from flagwarden.report.verdict import glossary, verdict

__all__ = ["build_report"]


def _flag(
    policy: Policy,
    state: FlagState,
    history: list[AuditRecord],
    earlier: list[AuditRecord],
    exposure_rows: list[tuple[datetime, Mapping[str, Any]]],
    period: Period,
    measurements: MeasurementStore | None,
    audit: AuditStatus,
    now: datetime,
) -> FlagReport:
    transitions = [r for r in history if r.kind == "transition"]
    changes = read.changes(transitions)
    before = [r for r in earlier if r.kind == "transition"]
    start = read.stage_state(before[-1].data.get("after")) if before else None
    entered = next(
        (c.at for c in reversed(read.changes(before)) if c.after.stage != c.before.stage), None
    )
    decisions = read.decisions(history)
    counts, events = read.violations(changes, history)
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
        exposures=read.exposures(exposure_rows),
    )
    report.verdict = verdict(report, audit)
    return report


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
) -> Report:
    """The report for ``[since, until]`` (``since`` a moment, or a duration before ``until``;
    ``until`` defaults to now), for ``flags`` (default: every governed flag)."""
    now = now or datetime.now(UTC)
    until = until or now
    period = Period(until - since if isinstance(since, timedelta) else since, until)
    checked = audit.verify()
    status = AuditStatus(
        checked.ok, checked.checked, checked.head, checked.problem, checked.first_bad_seq
    )
    records = audit.records()
    in_period = [r for r in records if period.since <= r.at <= period.until]
    selected = sorted(policies) if flags is None else sorted(set(flags) & set(policies))

    by_flag: dict[str, list[AuditRecord]] = defaultdict(list)
    earlier: dict[str, list[AuditRecord]] = defaultdict(list)
    for r in records:
        if r.flag and r.at < period.since and r.kind == "transition":
            earlier[r.flag].append(r)
    exposures: dict[str, list[tuple[datetime, Mapping[str, Any]]]] = defaultdict(list)
    outages: list[Outage] = []
    unregistered: Counter[str] = Counter()
    for r in in_period:
        if r.flag:
            by_flag[r.flag].append(r)
        if r.kind == "outage":
            d = r.data
            outages.append(
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
        elif r.kind == "violation" and r.flag and read.violation(r.data).kind == "unregistered":
            unregistered[r.flag] += int(r.data.get("count", 1) or 1)
        elif r.kind == "exposure_summary":
            at = read.parse_time(r.data.get("to")) or r.at
            for row in r.data.get("rows") or []:
                exposures[str(row.get("flag", ""))].append((at, row))

    flag_reports = []
    to_remove = []
    for flag in selected:
        policy = policies[flag]
        state = states.get(flag) or FlagState(flag)
        flag_reports.append(
            _flag(
                policy,
                state,
                by_flag.get(flag, []),
                earlier.get(flag, []),
                exposures.get(flag, []),
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
        outages=outages,
        unregistered_flags=[]
        if flags is not None
        else [Unregistered(f, n) for f, n in sorted(unregistered.items()) if f not in policies],
        to_remove=to_remove,
    )
    report.glossary = glossary(report)
    return report.seal()
