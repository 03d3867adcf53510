"""``flagwarden status``: stage, state, soak, guard health and the provider's state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from flagwarden.audit.log import AuditError
from flagwarden.cli.app import ConfigOption, app, clean, fail, open_project, out
from flagwarden.config import Settings
from flagwarden.governance.lint import describe_flag, guard_health, last_change, provider_health
from flagwarden.governance.state import FlagState, StateStoreUnavailable, redact_url
from flagwarden.humanize import duration, number, percent, when

_DID = {
    "advance": "advanced",
    "rollback": "rolled back",
    "kill": "killed",
    "revive": "revived",
    "pause": "paused",
    "resume": "resumed",
}


@app.command()
def status(
    flag: Annotated[str | None, typer.Argument()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOption = None,
) -> None:
    """Stage, killed/paused, soak, guard health of each governed flag; the provider's state."""
    settings, governance = open_project(config)
    if flag is not None and flag not in governance.policies:
        governance.close()
        known = ", ".join(sorted(governance.policies)) or "none"
        raise fail(f"{flag!r} has no policy (governed flags: {known})")
    flags = sorted(governance.policies) if flag is None else [flag]
    try:
        assert governance.store is not None
        states = governance.store.load_all()
        rows = [
            describe_flag(governance.policies[f], states.get(f) or FlagState(f), states=states)
            for f in flags
        ]
        verdicts = _latest_verdicts(settings, flags)
        for row in rows:
            if row["flag"] in verdicts:
                row["guards"] = verdicts[row["flag"]]
            elif governance.audit is not None:
                row["guards"] = guard_health(governance.audit, row["flag"])
            if governance.audit is not None:
                row["last_change"] = last_change(governance.audit, row["flag"])
        provider = {
            "name": settings.provider_name,
            **provider_health(governance.audit, _snapshot(settings)),
        }
    except (StateStoreUnavailable, AuditError) as exc:
        raise fail(str(exc)) from None
    finally:
        governance.close()
    doc = {"provider": provider, "state_store": redact_url(settings.config.state), "flags": rows}
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    _line(_provider_line(provider))
    if not rows:
        _line("no governed flags (policies go in " + str(settings.policies_dir) + ")")
    for row in rows:
        _line("")
        _flag(row)


def _line(text: str, style: str = "") -> None:
    out.print(Text(clean(text), style=style), highlight=False)


def _provider_line(provider: dict[str, Any]) -> str:
    age = provider["snapshot_age_seconds"]
    snapshot = f"snapshot {duration(age)} old" if age is not None else "no snapshot"
    outage = provider["last_outage"]
    if not outage:
        return f"provider {provider['name']}: {snapshot}; no vendor outage recorded"
    span = (
        f"for {duration(outage['duration_seconds'])}"
        if outage.get("duration_seconds") is not None
        else "still open"
    )
    return (
        f"provider {provider['name']}: {snapshot}; last outage {when(outage['started_at'])}, "
        f"{span} ({outage.get('cause')})"
    )


def _flag(row: dict[str, Any]) -> None:
    stages = row["stages"]
    at = row["stage"]
    position = f"stage {stages.index(at) + 1} of {len(stages)}" if at in stages else "not started"
    state = "KILLED: everyone gets control" if row["killed"] else "paused" if row["paused"] else ""
    head = f"{row['flag']}  {percent(at)} ({position})" + (f", {state}" if state else "")
    _line(head, "bold red" if row["killed"] else "bold")
    if row["description"]:
        _line(f"  {row['description']}")
    expiry = f"expires {row['expires']}" if row["expires"] else "no expiry date"
    _line(f"  owner {row['owner']}, {expiry}" + (" (EXPIRED)" if row["expired"] else ""))
    if row["killed"]:
        _line("  revive it to serve the stage again")
    elif row["paused"]:
        _line(f"  no advance until resumed ({row['reason']})")
    elif row["next_stage"] is None:
        _line("  at its last stage")
    elif row["soak_remaining_seconds"]:
        _line(
            f"  soaking: {duration(row['soak_remaining_seconds'])} left before "
            f"{percent(row['next_stage'])} may follow"
        )
    else:
        _line(f"  next stage: {percent(row['next_stage'])}")
    for need in row["requires"]:
        standing = "killed" if need["killed"] else f"at {percent(need['now'])}"
        ok = not need["killed"] and need["now"] >= need["stage"]
        _line(
            f"  requires {need['flag']} at {percent(need['stage'])}: it is {standing}"
            + ("" if ok else " (short)")
        )
    seen = {guard["guard"]: guard for guard in row.get("guards", [])}
    for name in row["guard_names"]:
        guard = seen.get(name)
        if guard is None:
            _line(f"  guard {name}: not evaluated yet")
            continue
        value = "" if guard.get("value") is None else f" {number(guard['value'])}"
        limit = f" ({guard['limit']})" if guard.get("limit") else ""
        _line(f"  guard {name}: {guard['verdict']}{value}{limit}, {when(guard['at'])}")
    change = row.get("last_change")
    if change:
        before, after = change.get("before") or {}, change.get("after") or {}
        moved = (
            f" {percent(before['stage'])} -> {percent(after['stage'])}"
            if change["action"] in ("advance", "rollback") and before and after
            else ""
        )
        _line(
            f"  last change: {_DID.get(change['action'], change['action'])}{moved} "
            f"by {change['actor']} at {when(change['at'])}: {change['reason']}"
        )
    else:
        _line("  no change recorded yet")


def _latest_verdicts(settings: Settings, flags: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each flag's guard verdicts from the latest watch pass (kept beside the state)."""
    from flagwarden.governance.measurements import open_measurement_store

    store = open_measurement_store(settings.config.state, settings.base_dir)
    try:
        found = {}
        for flag in flags:
            latest = store.verdicts(flag)
            if latest is not None:
                at = datetime.fromtimestamp(latest[0], UTC).isoformat()
                found[flag] = [{"at": at, **verdict} for verdict in latest[1]]
        return found
    finally:
        store.close()


def _snapshot(settings: Settings) -> object | None:
    """The last-known-good snapshot, if one is configured and readable."""
    from flagwarden.providers.snapshot import SnapshotError, open_snapshot_store

    location = settings.snapshot_location()
    if location is None:
        return None
    try:
        return open_snapshot_store(location).load()
    except SnapshotError:
        return None
