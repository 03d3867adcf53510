"""The compliance report, rendered from the audit log (JSON, Markdown, self-contained HTML).

For each governed flag: owner, description, expiry; current state; the stage timeline; who
changed what, when and why (before/after); soak compliance per stage; guard measurements,
breaches, rollbacks and kills; policy violations; exposures per variant and per source; and,
for the whole period, vendor outage windows and flags to remove. The report says whether the
audit chain verified and carries its own digest (SHA-256 of its JSON body).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flagwarden.audit.log import AuditLog, AuditRecord
from flagwarden.governance.lint import STALE_AFTER
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState

__all__ = ["build_report", "render_html", "render_markdown", "report_digest"]


def report_digest(report: Mapping[str, Any]) -> str:
    body = {k: v for k, v in report.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _soak(policy: Policy, transitions: list[AuditRecord], now: datetime) -> list[dict[str, Any]]:
    """Each stage the flag held: when it entered and left, and whether it soaked long enough."""
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(transitions):
        stage = record.data["after"]["stage"]
        if stage <= 0 or record.data["after"]["stage"] == record.data["before"]["stage"]:
            continue
        left_at = next(
            (
                r.at
                for r in transitions[i + 1 :]
                if r.data["after"]["stage"] != r.data["before"]["stage"]
            ),
            None,
        )
        held = ((left_at or now) - record.at).total_seconds()
        leaving = next(
            (
                r
                for r in transitions[i + 1 :]
                if r.data["after"]["stage"] != r.data["before"]["stage"]
            ),
            None,
        )
        forced = bool(
            leaving is not None
            and any(
                str(v.get("kind") if isinstance(v, dict) else v).startswith("soak_cut_short")
                for v in leaving.data.get("violations", [])
            )
        )
        advanced = leaving is not None and leaving.data["after"]["stage"] > stage
        rows.append(
            {
                "stage": stage,
                "entered_at": record.at.isoformat(),
                "left_at": left_at.isoformat() if left_at else None,
                "held_seconds": round(held, 3),
                "required_seconds": policy.soak.total_seconds(),
                "compliant": (not advanced) or held >= policy.soak.total_seconds() or False,
                "forced": forced,
            }
        )
    return rows


def _share_points(share: Mapping[str, list[int]], most: int = 500) -> list[dict[str, Any]]:
    """Treatment share per summary period; by hour when there would be more than ``most``."""
    points = sorted(share.items())
    if len(points) > most:
        hourly: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for at, (t, n) in points:
            hourly[at[:13] + ":00"][0] += t
            hourly[at[:13] + ":00"][1] += n
        points = sorted(hourly.items())
    return [
        {"at": at, "share": round(t / n, 4) if n else 0.0, "evaluations": n}
        for at, (t, n) in points
    ]


def build_report(
    audit: AuditLog,
    policies: Mapping[str, Policy],
    states: Mapping[str, FlagState],
    *,
    since: timedelta = timedelta(days=7),
    provider: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    start = now - since
    verification = audit.verify()
    records = audit.records(since=start)
    by_flag: dict[str, list[AuditRecord]] = defaultdict(list)
    outages: list[dict[str, Any]] = []
    unregistered: Counter[str] = Counter()
    exposure_rows: list[tuple[str, dict[str, Any]]] = []
    for record in records:
        if record.flag:
            by_flag[record.flag].append(record)
        if record.kind == "outage":
            outages.append(dict(record.data))
        elif (
            record.kind == "violation" and record.data.get("kind") == "unregistered" and record.flag
        ):
            unregistered[record.flag] += int(record.data.get("count", 1))
        elif record.kind == "exposure_summary":
            for row in record.data.get("rows", []):
                exposure_rows.append((record.data.get("to", record.at.isoformat()), row))

    flags = []
    to_remove = []
    for flag, policy in sorted(policies.items()):
        state = states.get(flag) or FlagState(flag)
        history = by_flag.get(flag, [])
        transitions = [r for r in history if r.kind == "transition"]
        violations: Counter[str] = Counter()
        for r in history:
            if r.kind == "violation":
                violations[str(r.data.get("kind", "")).split(":")[0]] += int(r.data.get("count", 1))
        # Guard measurements: breaches (kind "guard") and the checks behind watch decisions.
        guards = [
            {"at": r.at.isoformat(), **g}
            for r in history
            if r.kind == "guard" or (r.kind == "transition" and "guards" in r.data)
            for g in r.data.get("guards", [])
        ]
        breaches = sum(
            1
            for r in history
            if r.kind == "guard"
            for g in r.data.get("guards", [])
            if g.get("verdict") == "breach"
        )
        by_variant: Counter[str] = Counter()
        by_source: Counter[str] = Counter()
        share: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for at, row in exposure_rows:
            if row["flag"] != flag:
                continue
            arm = row.get("arm", row["variant"])
            by_variant[arm] += row["count"]
            by_source[row["source"]] += row["count"]
            bucket = at  # one point per summary period; coarsened below for long reports
            share[bucket][1] += row["count"]
            if arm == "treatment":
                share[bucket][0] += row["count"]
        stale = bool(
            state.stage >= 100
            and state.stage_entered_at is not None
            and now - state.stage_entered_at > STALE_AFTER
        )
        expired = policy.is_expired(now.date())
        if stale or expired:
            to_remove.append(
                {
                    "flag": flag,
                    "owner": policy.owner,
                    "why": "expired" if expired else "at 100% for 30+ days",
                }
            )
        flags.append(
            {
                "flag": flag,
                "owner": policy.owner,
                "description": policy.description,
                "expires": policy.expires.isoformat() if policy.expires else None,
                "expired": expired,
                "stages": policy.stages,
                "state": {
                    "stage": state.stage,
                    "killed": state.killed,
                    "paused": state.paused,
                    "version": state.version,
                    "updated_by": state.updated_by,
                    "reason": state.reason,
                },
                "timeline": [
                    {
                        "at": r.at.isoformat(),
                        "action": r.data["action"],
                        "stage": r.data["after"]["stage"],
                        "killed": r.data["after"]["killed"],
                        "paused": r.data["after"]["paused"],
                    }
                    for r in transitions
                ],
                "changes": [
                    {
                        "at": r.at.isoformat(),
                        "actor": r.actor,
                        "action": r.data["action"],
                        "reason": r.data.get("reason"),
                        "before": r.data["before"],
                        "after": r.data["after"],
                        "violations": [
                            f"{v['kind']}: {v['detail']}" if isinstance(v, dict) else str(v)
                            for v in r.data.get("violations", [])
                        ],
                    }
                    for r in transitions
                ],
                "soak": _soak(policy, transitions, now),
                "guards": guards,
                "breaches": breaches,
                "rollbacks": sum(1 for r in transitions if r.data["action"] == "rollback"),
                "kills": sum(1 for r in transitions if r.data["action"] == "kill"),
                "violations": dict(sorted(violations.items())),
                "exposures": {
                    "total": sum(by_variant.values()),
                    "by_variant": dict(sorted(by_variant.items())),
                    "by_source": dict(sorted(by_source.items())),
                    "treatment_share": _share_points(share),
                },
            }
        )
    report: dict[str, Any] = {
        "generated_at": now.isoformat(),
        "period": {"since": start.isoformat(), "until": now.isoformat()},
        "provider": provider,
        "audit": {
            "verified": verification.ok,
            "records_checked": verification.checked,
            "chain_head": verification.head,
            "problem": verification.problem,
            "first_bad_record": verification.first_bad_seq,
        },
        "flags": flags,
        "outages": outages,
        "unregistered_flags": [
            {"flag": f, "evaluations": n} for f, n in sorted(unregistered.items())
        ],
        "to_remove": to_remove,
    }
    report["digest"] = report_digest(report)
    return report


# -- Markdown --------------------------------------------------------------------------


def render_markdown(report: Mapping[str, Any]) -> str:
    a = report["audit"]
    lines = [
        "# flagwarden compliance report",
        "",
        f"Period: {report['period']['since']} to {report['period']['until']}  ",
        f"Provider: `{report['provider']}`  ",
        "Audit chain: "
        + (
            f"**verified** ({a['records_checked']} records, head `{a['chain_head'][:16]}`)"
            if a["verified"]
            else f"**BROKEN** at record {a['first_bad_record']}: {a['problem']}"
        )
        + "  ",
        f"Report digest: `{report['digest']}`",
        "",
    ]
    for f in report["flags"]:
        s = f["state"]
        state = "killed" if s["killed"] else ("paused" if s["paused"] else "live")
        lines += [
            f"## {f['flag']}",
            "",
            f"{f['description']}  ",
            f"Owner: {f['owner']}; expires: {f['expires'] or 'never'}"
            + (" (**expired**)" if f["expired"] else ""),
            f"Now: stage {s['stage']:g}%, {state} (version {s['version']}, last by {s['updated_by']}: {s['reason']})",
            "",
            "### Changes",
            "",
            "| when | who | what | why | stage | violations |",
            "|---|---|---|---|---|---|",
        ]
        for c in f["changes"]:
            lines.append(
                f"| {c['at']} | {c['actor']} | {c['action']} | {c['reason']} | "
                f"{c['before']['stage']:g}% -> {c['after']['stage']:g}% | {', '.join(c['violations'])} |"
            )
        lines += [
            "",
            "### Soak compliance",
            "",
            "| stage | held (s) | required (s) | compliant | forced |",
            "|---|---|---|---|---|",
        ]
        for row in f["soak"]:
            lines.append(
                f"| {row['stage']:g}% | {row['held_seconds']:g} | {row['required_seconds']:g} | "
                f"{'yes' if row['compliant'] else 'NO'} | {'yes' if row['forced'] else ''} |"
            )
        lines += [
            "",
            f"### Guards: {f['breaches']} breaches, {f['rollbacks']} rollbacks, {f['kills']} kills",
            "",
        ]
        for g in f["guards"][-20:]:
            lines.append(
                f"- {g['at']} {g['guard']}: {g['verdict']} (value {g.get('value')}, limit {g.get('limit')})"
            )
        lines += ["", "### Policy violations", ""]
        lines += [f"- {kind}: {n}" for kind, n in f["violations"].items()] or ["- none"]
        e = f["exposures"]
        lines += [
            "",
            f"### Exposures: {e['total']}",
            "",
            "By variant: "
            + (", ".join(f"{k} {v}" for k, v in e["by_variant"].items()) or "none")
            + "  ",
            "By source: " + (", ".join(f"{k} {v}" for k, v in e["by_source"].items()) or "none"),
            "",
        ]
    lines += ["## Vendor outages", ""]
    for o in report["outages"]:
        lines.append(
            f"- {o.get('provider')}: {o.get('started_at')} to {o.get('ended_at')} "
            f"({o.get('duration_seconds')} s), cause: {o.get('cause')}; served: {o.get('served')}"
        )
    if not report["outages"]:
        lines.append("- none")
    lines += ["", "## Flags to remove", ""]
    lines += [f"- {r['flag']} ({r['owner']}): {r['why']}" for r in report["to_remove"]] or [
        "- none"
    ]
    if report["unregistered_flags"]:
        lines += ["", "## Flags evaluated without a policy", ""]
        lines += [
            f"- {u['flag']}: {u['evaluations']} evaluations" for u in report["unregistered_flags"]
        ]
    return "\n".join(lines) + "\n"


# -- HTML with inline SVG ----------------------------------------------------------------


def _times(points: list[str]) -> list[float]:
    return [datetime.fromisoformat(p).timestamp() for p in points]


def _svg_steps(timeline: list[dict[str, Any]], until: str, title: str) -> str:
    """The stage over time as a step chart (killed periods drawn at 0 in red)."""
    width, height, pad = 640, 180, 36
    if not timeline:
        return f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="40"><text x="8" y="24">no changes in this period</text></svg>'
    times = _times([t["at"] for t in timeline] + [until])
    t0, t1 = times[0], max(times[-1], times[0] + 1)

    def x(t: float) -> float:
        return pad + (t - t0) / (t1 - t0) * (width - 2 * pad)

    def y(stage: float) -> float:
        return height - pad - stage / 100 * (height - 2 * pad)

    path, previous = [], None
    for point, t in zip(timeline, times, strict=False):
        stage = 0 if point["killed"] else point["stage"]
        if previous is not None:
            path.append(f"L{x(t):.1f},{y(previous):.1f}")
        path.append(f"{'M' if previous is None else 'L'}{x(t):.1f},{y(stage):.1f}")
        previous = stage
    path.append(f"L{x(times[-1]):.1f},{y(previous or 0):.1f}")
    grid = "".join(
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(s):.1f}" y2="{y(s):.1f}" class="grid"/>'
        f'<text x="4" y="{y(s) + 4:.1f}" class="axis">{s}%</text>'
        for s in (0, 25, 50, 100)
    )
    labels = (
        f'<text x="{pad}" y="{height - 8}" class="axis">{html.escape(timeline[0]["at"][:19])}</text>'
        f'<text x="{width - pad}" y="{height - 8}" class="axis" text-anchor="end">'
        f"{html.escape(until[:19])}</text>"
    )
    return (
        f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{html.escape(title)}</title>{grid}{labels}'
        f'<path d="{" ".join(path)}" class="stage"/></svg>'
    )


def _svg_share(points: list[dict[str, Any]], title: str) -> str:
    width, height, pad = 640, 180, 36
    if not points:
        return f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="40"><text x="8" y="24">no exposure summaries in this period</text></svg>'
    n = len(points)

    def x(i: int) -> float:
        return pad + (i / max(n - 1, 1)) * (width - 2 * pad)

    def y(share: float) -> float:
        return height - pad - share * (height - 2 * pad)

    line = " ".join(
        f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(p['share']):.1f}" for i, p in enumerate(points)
    )
    dots = "".join(
        f'<circle cx="{x(i):.1f}" cy="{y(p["share"]):.1f}" r="2.5" class="dot"/>'
        for i, p in enumerate(points)
    )
    grid = "".join(
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(s):.1f}" y2="{y(s):.1f}" class="grid"/>'
        f'<text x="4" y="{y(s) + 4:.1f}" class="axis">{int(s * 100)}%</text>'
        for s in (0, 0.25, 0.5, 1.0)
    )
    labels = (
        f'<text x="{pad}" y="{height - 8}" class="axis">{html.escape(points[0]["at"][:19])}</text>'
        f'<text x="{width - pad}" y="{height - 8}" class="axis" text-anchor="end">'
        f"{html.escape(points[-1]['at'][:19])}</text>"
    )
    return (
        f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{html.escape(title)}</title>{grid}{labels}'
        f'<path d="{line}" class="share"/>{dots}</svg>'
    )


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#1b1f24}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.ok{color:#116329;font-weight:600}.bad{color:#b42318;font-weight:700}
.chart{background:#fafbfc;border:1px solid #e5e7eb;margin:.4em 0}
.grid{stroke:#e5e7eb}.axis{font-size:10px;fill:#6b7280}
.stage{fill:none;stroke:#2563eb;stroke-width:2}.share{fill:none;stroke:#d97706;stroke-width:2}.dot{fill:#d97706}
code{background:#f3f4f6;padding:0 3px}
"""


def render_html(report: Mapping[str, Any]) -> str:
    e = html.escape
    a = report["audit"]
    chain = (
        f'<span class="ok">verified</span> ({a["records_checked"]} records, head <code>{e(a["chain_head"][:16])}</code>)'
        if a["verified"]
        else f'<span class="bad">BROKEN at record {a["first_bad_record"]}: {e(str(a["problem"]))}</span>'
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>flagwarden compliance report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>flagwarden compliance report</h1>",
        f"<p>Period {e(report['period']['since'])} to {e(report['period']['until'])}; "
        f"provider <code>{e(report['provider'])}</code><br>Audit chain: {chain}<br>"
        f"Report digest: <code id=digest>{e(report['digest'])}</code></p>",
    ]
    until = report["period"]["until"]
    for f in report["flags"]:
        s = f["state"]
        state = "killed" if s["killed"] else ("paused" if s["paused"] else "live")
        parts.append(f'<section class=flag id="flag-{e(f["flag"])}"><h2>{e(f["flag"])}</h2>')
        parts.append(
            f"<p>{e(f['description'])}<br>Owner {e(f['owner'])}; expires {e(str(f['expires']))}"
            + (' <span class="bad">expired</span>' if f["expired"] else "")
            + f"<br>Now: stage <b>{s['stage']:g}%</b>, {state} (version {s['version']})</p>"
        )
        parts.append(
            "<h3>Stage timeline</h3>"
            + _svg_steps(f["timeline"], until, f"stage timeline of {f['flag']}")
        )
        parts.append(
            "<h3>Treatment share of exposures</h3>"
            + _svg_share(f["exposures"]["treatment_share"], f"treatment share of {f['flag']}")
        )
        rows = "".join(
            f"<tr><td>{e(c['at'])}</td><td>{e(str(c['actor']))}</td><td>{e(c['action'])}</td>"
            f"<td>{e(str(c['reason']))}</td><td>{c['before']['stage']:g}% &rarr; {c['after']['stage']:g}%</td>"
            f"<td>{e(', '.join(c['violations']))}</td></tr>"
            for c in f["changes"]
        )
        parts.append(
            "<h3>Changes</h3><table><tr><th>when</th><th>who</th><th>what</th><th>why</th>"
            f"<th>stage</th><th>violations</th></tr>{rows}</table>"
        )
        soak = "".join(
            f"<tr><td>{r['stage']:g}%</td><td>{r['held_seconds']:g}</td><td>{r['required_seconds']:g}</td>"
            f"<td>{'yes' if r['compliant'] else '<span class=bad>no</span>'}</td><td>{'forced' if r['forced'] else ''}</td></tr>"
            for r in f["soak"]
        )
        parts.append(
            "<h3>Soak compliance</h3><table><tr><th>stage</th><th>held (s)</th><th>required (s)</th>"
            f"<th>compliant</th><th></th></tr>{soak}</table>"
        )
        guards = "".join(
            f"<tr><td>{e(g['at'])}</td><td>{e(g['guard'])}</td><td>{e(g['verdict'])}</td>"
            f"<td>{e(str(g.get('value')))}</td><td>{e(str(g.get('limit')))}</td></tr>"
            for g in f["guards"][-20:]
        )
        parts.append(
            f"<h3>Guards: {f['breaches']} breaches, {f['rollbacks']} rollbacks, {f['kills']} kills</h3>"
            f"<table><tr><th>when</th><th>guard</th><th>verdict</th><th>value</th><th>limit</th></tr>{guards}</table>"
        )
        violations = (
            "".join(f"<li>{e(k)}: {v}</li>" for k, v in f["violations"].items()) or "<li>none</li>"
        )
        ex = f["exposures"]
        parts.append(
            f"<h3>Policy violations</h3><ul>{violations}</ul><h3>Exposures: {ex['total']}</h3><p>By variant: "
            + e(", ".join(f"{k} {v}" for k, v in ex["by_variant"].items()) or "none")
            + "<br>By source: "
            + e(", ".join(f"{k} {v}" for k, v in ex["by_source"].items()) or "none")
            + "</p></section>"
        )
    outages = "".join(
        f"<tr><td>{e(str(o.get('provider')))}</td><td>{e(str(o.get('started_at')))}</td><td>{e(str(o.get('ended_at')))}</td>"
        f"<td>{e(str(o.get('duration_seconds')))}</td><td>{e(str(o.get('cause')))}</td><td>{e(json.dumps(o.get('served')))}</td></tr>"
        for o in report["outages"]
    )
    parts.append(
        "<h2>Vendor outages</h2><table><tr><th>provider</th><th>start</th><th>end</th><th>seconds</th>"
        f"<th>cause</th><th>served</th></tr>{outages}</table>"
    )
    remove = "".join(
        f"<li>{e(r['flag'])} ({e(r['owner'])}): {e(r['why'])}</li>" for r in report["to_remove"]
    )
    parts.append(f"<h2>Flags to remove</h2><ul>{remove or '<li>none</li>'}</ul></body></html>")
    return "".join(parts)
