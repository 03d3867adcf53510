"""``flagwarden status``: stage, state, soak, guard health and the provider's state."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from flagwarden.audit.log import AuditError
from flagwarden.cli.app import ConfigOption, app, fail, open_project, out
from flagwarden.config import Settings
from flagwarden.governance.lint import describe_flag, guard_health, provider_health
from flagwarden.governance.state import FlagState, StateStoreUnavailable, redact_url


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
        raise fail(f"{flag!r} has no policy")
    flags = sorted(governance.policies) if flag is None else [flag]
    try:
        assert governance.store is not None
        states = governance.store.load_all()
        rows = [describe_flag(governance.policies[f], states.get(f) or FlagState(f)) for f in flags]
        if governance.audit is not None:
            for row in rows:
                row["guards"] = guard_health(governance.audit, row["flag"])
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
    age = provider["snapshot_age_seconds"]
    outage = provider["last_outage"]
    out.print(
        f"provider {settings.provider_name!r}: snapshot "
        + (f"{age:g} s old" if age is not None else "none")
        + (
            f"; last outage {outage['started_at']} to {outage['ended_at']} ({outage['cause']})"
            if outage
            else "; no outage recorded"
        ),
        highlight=False,
    )
    table = Table()
    for column in (
        "flag",
        "stage",
        "state",
        "soak left",
        "guards",
        "owner",
        "expires",
        "last change",
    ):
        table.add_column(column)
    for row in rows:
        state = "killed" if row["killed"] else ("paused" if row["paused"] else "live")
        guards = ", ".join(
            f"{g['guard']}: {g['verdict']}"
            + (f" ({g['value']:g})" if g.get("value") is not None else "")
            for g in row.get("guards", [])
        )
        table.add_row(
            row["flag"],
            f"{row['stage']:g}%",
            state,
            row["soak_remaining"] or "-",
            guards or "-",
            row["owner"],
            str(row["expires"] or "-"),
            f"{row['updated_by'] or '-'}: {row['reason'] or ''}",
        )
    out.print(table)


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
