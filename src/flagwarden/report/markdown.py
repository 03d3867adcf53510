"""The report as Markdown (the charts are in the HTML report).

Every string that comes from the audit log, a policy or the state goes through
:func:`~flagwarden.report.text.markdown_escape`: a reason cannot forge a heading, a table row,
a link or raw HTML.
"""

from __future__ import annotations

from flagwarden.report.document import FlagReport, GuardChart, Report
from flagwarden.report.runs import RUNS_NOTE
from flagwarden.report.series import limit_words
from flagwarden.report.text import count, duration, num, plural, share, stage, when
from flagwarden.report.text import markdown_escape as e
from flagwarden.report.verdict import CAPPING, VERDICT_TITLES, split_verdict

__all__ = ["render_markdown"]


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[str]) -> list[str]:
    return [_row(*header), _row(*(["---"] * len(header))), *rows, ""]


def _now(flag: FlagReport) -> str:
    s = flag.state
    return f"{stage(s.stage)}, {'killed' if s.killed else ('paused' if s.paused else 'live')}"


_SIGNATURES = {
    "verified": "**verified** (Ed25519, every record)",
    "not checked": "present, **not checked** (no public key given)",
    "unsigned": "none (the log is not signed)",
}


def _header(r: Report) -> list[str]:
    a = r.audit
    if a.verified:
        chain = f"**verified** ({count(a.records_checked)} records, head `{a.chain_head[:16]}`)"
    elif a.pending_records and a.first_bad_record is None:
        chain = (
            f"**INCOMPLETE** ({count(a.records_checked)} records verify): {e(a.problem)}. "
            "Everything below may miss those changes."
        )
    else:
        chain = (
            f"**BROKEN at record {a.first_bad_record}**: {e(a.problem)}. Everything below "
            "rests on a log that may be incomplete or altered."
        )
    flags = (
        "every governed flag"
        if r.selected_flags is None
        else "only " + ", ".join(e(f) for f in r.selected_flags) + " (--flag)"
    )
    lines = [
        "# flagwarden compliance report",
        "",
        f"- Period: {when(r.period.since)} to {when(r.period.until)}",
        f"- Generated: {when(r.generated_at)}",
        f"- Provider: {e(r.provider or '-')}",
        f"- Flags: {flags}",
        f"- Audit chain: {chain}",
        f"- Signatures: {_SIGNATURES.get(a.signatures) or e(a.signatures)}",
        f"- Report digest: `{r.digest}` (SHA-256 of the JSON report's body)",
        "",
        "## Summary",
        "",
    ]
    if r.flags:
        lines += _table(
            [
                "flag",
                "verdict",
                "now",
                "violations",
                "guard breaches",
                "automatic rollbacks / pauses",
                "manual kills / rollbacks",
            ],
            [
                _row(
                    f"[{e(f.flag)}](#{_anchor(f.flag)})" if _anchor(f.flag) else e(f.flag),
                    f"**{VERDICT_TITLES[f.verdict.status]}**: {e(f.verdict.summary)}",
                    _now(f),
                    count(sum(f.violations.values())),
                    count(f.breaches),
                    f"{f.automatic_rollbacks} / {f.automatic_pauses}",
                    f"{f.manual_kills} / {f.manual_rollbacks}",
                )
                for f in r.flags
            ],
        )
    else:
        lines += ["No governed flags.", ""]
    if r.glossary:
        lines += ["### Violations, in words", ""]
        lines += [f"- **{e(g.kind)}**: {e(g.meaning)}" for g in r.glossary]
        lines.append("")
    lines += [e(CAPPING), ""]
    return lines


def _anchor(flag: str) -> str:
    """GitHub's heading anchor for a flag name made of letters, digits, - and _ (else none)."""
    slug = flag.lower()
    return slug if slug and all(c.isalnum() or c in "-_" for c in slug) and slug.isascii() else ""


def _guard(chart: GuardChart) -> list[str]:
    what = f"metric {e(chart.query)}" if chart.source == "metric" else f"PromQL {e(chart.query)}"
    measured = f"; {count(chart.measurements)} measurements" if chart.source == "metric" else ""
    note = f"; {e(chart.note)}" if chart.note else ""
    return [f"- **{e(chart.guard)}**: {what}; limit {e(limit_words(chart))}{measured}{note}"]


def _flag(f: FlagReport) -> list[str]:
    head, tail = split_verdict(f.verdict.text)
    policy = (
        f"stages {' → '.join(stage(s) for s in f.stages)}; soak {duration(f.soak_seconds)}; "
        f"on breach: {e(f.on_breach)}; auto-advance: {'yes' if f.auto_advance else 'no'}"
    )
    if f.requires:
        policy += "; requires " + ", ".join(f"{e(q.flag)} at {stage(q.stage)}" for q in f.requires)
    last = (
        f", last change by {e(f.state.updated_by)}: {e(f.state.reason)}"
        if f.state.updated_by
        else ""
    )
    lines = [
        f"## {e(f.flag)}",
        "",
        f"**{e(head)}**{e(tail)}",
        "",
        f"- Description: {e(f.description or '-')}",
        f"- Owner: {e(f.owner)}",
        f"- Expires: {f.expires or 'never'}" + (" (**expired**)" if f.expired else ""),
        f"- Policy: {policy}",
        f"- Now: stage {_now(f)} (version {f.state.version}{last})",
        "",
        "### Guards",
        "",
        f"{plural(f.breaches, 'guard breach')}; automatic (by the watch): "
        f"{plural(f.automatic_rollbacks, 'rollback')}, {plural(f.automatic_pauses, 'pause')}. "
        f"Manual: {plural(f.manual_kills, 'kill')}, {plural(f.manual_rollbacks, 'rollback')}. "
        "Charts of each guard's metric per arm against its limit are in the HTML report.",
        "",
    ]
    for chart in f.guard_charts:
        lines += _guard(chart)
    if f.guard_charts:
        lines.append("")
    if f.guards:
        lines += _table(
            [
                "when",
                "guard",
                "stage",
                "verdict",
                "value",
                "limit",
                "samples",
                "control",
                "outcome",
            ],
            [
                _row(
                    when(d.at),
                    e(d.guard),
                    stage(d.stage),
                    ("**breach**" if d.verdict == "breach" else e(d.verdict))
                    + (f" ({d.failures} in a row)" if d.failures else ""),
                    num(d.value),
                    e(d.limit or "-"),
                    count(d.samples),
                    num(d.control),
                    e(d.outcome + (f": {d.detail}" if d.detail else "")),
                )
                for d in f.guards
            ],
        )
    else:
        lines += ["No guard decisions were recorded in this period.", ""]
    lines += ["### Changes", ""]
    if f.changes:
        lines += _table(
            ["when", "who", "action", "stage", "why", "violations"],
            [
                _row(
                    when(c.at),
                    e(c.actor or "-")
                    + (" (automatic)" if c.automatic else "")
                    + (f", approved by {e(', '.join(c.approved_by))}" if c.approved_by else ""),
                    e(c.action),
                    f"{stage(c.before.stage)} → {stage(c.after.stage)}"
                    + (", killed" if c.after.killed else "")
                    + (", paused" if c.after.paused else ""),
                    e(c.reason or "-")
                    + (
                        f" (prerequisite {e(c.cause.get('flag'))}: {e(c.cause.get('action'))})"
                        if c.cause
                        else ""
                    ),
                    "; ".join(f"**{e(v.kind)}** {e(v.detail)}" for v in c.violations) or "none",
                )
                for c in f.changes
            ],
        )
    else:
        lines += ["No changes in this period.", ""]
    lines += ["### Soak", ""]
    if f.soak:
        lines += _table(
            ["stage", "entered", "left", "held", "required", "status"],
            [
                _row(
                    stage(s.stage),
                    when(s.entered_at),
                    f"{when(s.left_at)} (to {stage(s.left_to)})" if s.left_at else "still held",
                    duration(s.held_seconds),
                    duration(s.required_seconds),
                    _soak_status(s.status, s.forced, s.soak_met, s.left_to, s.stage),
                )
                for s in f.soak
            ],
        )
    else:
        lines += ["No stage above 0% was held in this period.", ""]
    lines += ["### Violations", ""]
    if f.violation_details:
        lines += _table(
            ["when", "kind", "count", "detail", "who", "why"],
            [
                _row(
                    when(v.at) + (f" to {when(v.until)}" if v.until else ""),
                    f"**{e(v.kind)}**",
                    count(v.count),
                    e(v.detail or "-")
                    + (
                        f" ({e(v.action)} {stage(v.from_stage)} → {stage(v.to_stage)})"
                        if v.action
                        else ""
                    ),
                    e(v.actor or "-"),
                    e(v.reason or "-"),
                )
                for v in f.violation_details
            ],
        )
    else:
        lines += ["None.", ""]
    x = f.exposures
    lines += [f"### Exposures: {count(x.total)}", ""]
    lines += _table(
        ["by", "value", "evaluations", "share"],
        [
            _row(by, e(name), count(n), share(n / x.total) if x.total else "-")
            for by, values in (("arm", x.by_arm), ("source", x.by_source))
            for name, n in sorted(values.items())
            if n or name != "none"
        ],
    )
    lines += [
        f"Capped (the stage cap served control instead of the vendor's treatment; the "
        f"mechanism, not a violation): {count(x.capped)}.",
        "",
    ]
    return lines


def _soak_status(status: str, forced: bool, met: bool, left_to: float | None, at: float) -> str:
    if status == "cut short":
        return "**cut short**" + (" (forced)" if forced else "")
    if status == "in progress":
        return "in progress (" + ("soak met" if met else "soaking") + ")"
    if left_to is not None and left_to < at:
        return "compliant (rolled back: never waits)"
    return "compliant"


def _runs(r: Report) -> list[str]:
    if not r.runs:
        return []
    lines = ["## Pipeline runs", "", e(RUNS_NOTE), ""]
    return lines + _table(
        ["run", "flag", "stage", "killed", "mode", "source", "when", "who"],
        [
            _row(
                e(x.run),
                e(x.flag),
                "no policy" if x.stage is None else stage(x.stage),
                "**killed**" if x.killed else "no",
                e(x.mode),
                e(x.source or "-"),
                when(x.at),
                e(x.actor or "-"),
            )
            for x in r.runs
        ],
    )


def render_markdown(r: Report) -> str:
    lines = _header(r)
    for f in r.flags:
        lines += _flag(f)
    lines += _runs(r)
    lines += ["## Vendor outages", ""]
    if r.outages:
        lines += _table(
            ["provider", "start", "end", "duration", "cause", "served during it", "ended by"],
            [
                _row(
                    e(o.provider or "-"),
                    when(o.started_at),
                    when(o.ended_at),
                    duration(o.duration_seconds),
                    e(o.cause or "-"),
                    ", ".join(f"{e(k)} {count(n)}" for k, n in sorted(o.served.items()))
                    or "nothing",
                    e(o.ended_by or "-"),
                )
                for o in r.outages
            ],
        )
    else:
        lines += ["None in this period.", ""]
    if r.unregistered_flags:
        lines += ["## Flags evaluated without a policy", ""]
        lines += _table(
            ["flag", "evaluations"],
            [_row(e(u.flag), count(u.evaluations)) for u in r.unregistered_flags],
        )
    lines += ["## Flags to remove", ""]
    if r.to_remove:
        lines += _table(
            ["flag", "owner", "why"],
            [_row(e(x.flag), e(x.owner), e(x.why)) for x in r.to_remove],
        )
    else:
        lines += ["None: no flag has expired or stood at 100% for 30 days.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
