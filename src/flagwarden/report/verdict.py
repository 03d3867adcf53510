"""Each flag's compliance verdict in one paragraph, and the glossary of violation kinds.

* ``followed``: no violation of any kind in the period and no stage left upward before its
  soak; the paragraph says what happened (advances, rollbacks and why, kills, pauses).
* ``not followed``: it lists each kind of violation with its count and, for forced
  transitions, who did it, when and why.
* ``unverified``: the audit chain did not verify, so the history the verdict would rest on
  may be incomplete or altered; what was found is still listed.
"""

from __future__ import annotations

from collections import Counter

from flagwarden.report.document import (
    AuditStatus,
    Change,
    FlagReport,
    GlossaryEntry,
    Report,
    Verdict,
    ViolationEvent,
)
from flagwarden.report.text import count, duration, plural, quote, stage, when

__all__ = ["CAPPING", "GLOSSARY", "VERDICT_TITLES", "glossary", "split_verdict", "verdict"]

GLOSSARY = {
    "stage_skipped": "an advance went past the next approved stage (advance --to)",
    "soak_cut_short": "an advance left a stage before its soak time had passed (--force)",
    "advanced_while_paused": "an advance was forced while the rollout was paused",
    "prerequisite_short": "an advance was forced while a flag it requires did not stand at "
    "the required stage",
    "unknown_variant": "the vendor answered with a value that is neither the policy's control "
    "nor its treatment (control was served below 100%; at 100% the answer passed through)",
    "missing_unit": "an evaluation below 100% carried no unit to bucket by (no targeting key "
    "or unit attribute); control was served",
    "unregistered": "a flag with no policy was evaluated",
}
CAPPING = (
    "Capped evaluations are the stage cap at work (the vendor answered treatment, the unit's "
    "bucket lies outside the stage, control was served): the policy's mechanism, not a "
    "violation."
)
VERDICT_TITLES = {
    "followed": "Followed its policy",
    "not followed": "Did not follow its policy",
    "unverified": "Cannot be confirmed",
}
_NOUNS = {
    "stage_skipped": ("stage skipped", "stages skipped"),
    "soak_cut_short": ("soak cut short", "soaks cut short"),
    "advanced_while_paused": ("advance while paused", "advances while paused"),
    "prerequisite_short": ("advance without its prerequisites", "advances without prerequisites"),
    "unknown_variant": (
        "evaluation with an unknown variant",
        "evaluations with an unknown variant",
    ),
    "missing_unit": ("evaluation without a unit", "evaluations without a unit"),
    "unregistered": ("unregistered evaluation", "unregistered evaluations"),
}
_MOST_DETAILS = 3
_MOST_STEPS = 8


def _noun(kind: str, n: int) -> str:
    one, many = _NOUNS.get(kind, (kind, kind))
    return f"{count(n)} {one if n == 1 else many}"


def _detail(event: ViolationEvent, stages: list[float]) -> str:
    by = f"by {event.actor or 'unknown'}, {quote(event.reason, 60)}"
    moment = when(event.at)
    if event.kind == "stage_skipped" and event.from_stage is not None:
        skipped = [s for s in stages if (event.from_stage or 0) < s < (event.to_stage or 0)]
        over = f", skipping {', '.join(stage(s) for s in skipped)}" if skipped else ""
        return f"{stage(event.from_stage)} → {stage(event.to_stage)}{over}, {by}, {moment}"
    if event.kind == "soak_cut_short" and event.from_stage is not None:
        return f"left {stage(event.from_stage)} after {event.detail}, {by}, {moment}"
    if event.action is not None:
        return f"{event.detail}, {by}, {moment}" if event.detail else f"{by}, {moment}"
    return event.detail


def _problems(flag: FlagReport) -> list[tuple[str, str]]:
    """``(short, with details)`` per kind of problem, in the order of ``_NOUNS``."""
    problems = []
    order = list(_NOUNS)
    kinds = sorted(flag.violations, key=lambda k: (order.index(k) if k in order else 99, k))
    for kind in kinds:
        n = flag.violations[kind]
        details = [
            d
            for d in (_detail(e, flag.stages) for e in flag.violation_details if e.kind == kind)
            if d
        ]
        shown = "; ".join(details[:_MOST_DETAILS])
        if len(details) > _MOST_DETAILS:
            shown += f"; and {len(details) - _MOST_DETAILS} more"
        noun = _noun(kind, n)
        problems.append((noun, f"{noun} ({shown})" if shown else noun))
    silent = [r for r in flag.soak if r.status == "cut short" and not r.forced]
    if silent:
        where = ", ".join(
            f"{stage(r.stage)} after {duration(r.held_seconds)}" for r in silent[:_MOST_DETAILS]
        )
        short = f"{plural(len(silent), 'stage')} left before the soak, no violation recorded"
        problems.append((short, f"{short} ({where})"))
    return problems


def _guards_breached(flag: FlagReport, change: Change) -> list[str]:
    names = [d.guard for d in flag.guards if d.tick == change.tick and d.verdict == "breach"]
    return list(dict.fromkeys(names))


def _step(flag: FlagReport, change: Change) -> str:
    """One change as a clause (advances are chained by the caller)."""
    who = f"by {change.actor or 'unknown'} ({quote(change.reason, 60)})"
    at = stage(change.before.stage)
    if change.cause:
        return f"paused because its prerequisite {change.cause.get('flag')} was " + (
            "killed" if change.cause.get("action") == "kill" else "rolled back"
        )
    if change.action in ("rollback", "pause") and change.automatic:
        breached = _guards_breached(flag, change)
        verb = (
            "rolled back automatically" if change.action == "rollback" else "paused automatically"
        )
        target = f" to {stage(change.after.stage)}" if change.action == "rollback" else ""
        if breached:
            names = " and ".join(breached)
            return f"{verb}{target} on the {names} breach at {at}"
        return f"{verb}{target} at {at} ({quote(change.reason, 60)})"
    if change.action == "rollback":
        return f"rolled back {at} → {stage(change.after.stage)} {who}"
    if change.action == "kill":
        return f"killed at {at} {who}"
    if change.action in ("revive", "pause", "resume"):
        verb = {"revive": "revived", "pause": "paused", "resume": "resumed"}[change.action]
        if change.automatic:
            return f"{verb} automatically ({quote(change.reason, 60)})"
        return f"{verb} {who}"
    return f"{change.action} {who}"


def _story(flag: FlagReport) -> str:
    if not flag.changes:
        held = flag.state_at_since
        if held is None:
            return "no changes in this period"
        how = ", killed" if held.killed else (", paused" if held.paused else "")
        return f"no changes in this period (it stood at {stage(held.stage)}{how})"
    if len(flag.changes) > _MOST_STEPS * 2:
        actions = Counter(c.action for c in flag.changes)
        listed = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
        return f"{count(len(flag.changes))} changes ({listed}); see the changes below"
    kept = all(r.status != "cut short" for r in flag.soak)
    upward = (
        any(c.action == "advance" and c.before.stage > 0 for c in flag.changes)
        and flag.soak_seconds > 0
    )
    clauses: list[str] = []
    chain: list[float] = []

    def close() -> None:
        if chain:
            path = " → ".join(stage(s) for s in chain)
            soaked = " after each soak" if kept and upward and len(chain) > 1 else ""
            clauses.append(f"advanced {path}{soaked}" if len(chain) > 1 else f"advanced to {path}")
            chain.clear()

    for change in flag.changes:
        if change.action == "advance" and not change.violations:
            if not chain and change.before.stage > 0:
                chain.append(change.before.stage)
            chain.append(change.after.stage)
            continue
        close()
        if change.action == "advance":
            clauses.append(
                f"advanced {stage(change.before.stage)} → {stage(change.after.stage)} "
                f"by {change.actor or 'unknown'} ({quote(change.reason, 60)}), against the policy"
            )
        else:
            clauses.append(_step(flag, change))
    close()
    if len(clauses) > _MOST_STEPS:
        clauses = [
            *clauses[: _MOST_STEPS - 1],
            f"and {len(clauses) - _MOST_STEPS + 1} more changes",
        ]
    live = next((r for r in flag.soak if r.status == "in progress" and not r.soak_met), None)
    if live is not None and not (flag.timeline and flag.timeline[-1].killed):
        clauses.append(
            f"still soaking at {stage(live.stage)} ({duration(live.held_seconds)} of "
            f"{duration(live.required_seconds)})"
        )
    return ", ".join(clauses)


def verdict(flag: FlagReport, audit: AuditStatus) -> Verdict:
    found = _problems(flag)
    problems = [long for _, long in found]
    summary = ", ".join(short for short, _ in found) or "no violations"
    story = _story(flag)
    if not audit.verified:
        anyway = f" Found anyway: {'; '.join(problems)}." if problems else ""
        return Verdict(
            "unverified",
            f"Cannot be confirmed: the audit chain is broken at record {audit.first_bad_record} "
            f"({audit.problem}), so this history may be incomplete or altered.{anyway} "
            f"As recorded: {story}.",
            summary,
            problems,
        )
    if problems:
        return Verdict(
            "not followed",
            f"Did not follow its policy: {'; '.join(problems)}. What happened: {story}.",
            summary,
            problems,
        )
    return Verdict("followed", f"Followed its policy: {story}; no violations.", summary, [])


def glossary(report: Report) -> list[GlossaryEntry]:
    """One line per violation kind that appears in the report."""
    kinds = {kind for flag in report.flags for kind in flag.violations}
    if report.unregistered_flags:
        kinds.add("unregistered")
    return [
        GlossaryEntry(kind, GLOSSARY.get(kind, "a violation recorded by the policy enforcement"))
        for kind in sorted(kinds)
    ]


def split_verdict(text: str) -> tuple[str, str]:
    """``("Followed its policy:", " advanced ...")``: renderers set the head in bold."""
    head, sep, tail = text.partition(":")
    return (head + sep, tail) if sep else ("", text)
