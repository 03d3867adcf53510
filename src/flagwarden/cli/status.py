"""``flagwarden status``: stage, state, soak, guard health and the provider's state, in words."""

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from flagwarden.cli.app import (
    ConfigOption,
    app,
    clean,
    fail,
    open_project,
    out,
    write_pending_records,
)
from flagwarden.humanize import duration, number, percent, when

if TYPE_CHECKING:
    from flagwarden.governance.status import FlagStatus, ProviderStatus, StatusDocument

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
    flag: Annotated[
        str | None, typer.Argument(metavar="[FLAG]", help="one flag (default: every one)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOption = None,
) -> None:
    """Stage, killed/paused, soak, guard health of each governed flag; the provider's state."""
    from flagwarden.audit.log import AuditError
    from flagwarden.governance.state import StateStoreUnavailable
    from flagwarden.governance.status import project_status

    settings, governance = open_project(config)
    try:
        if (
            flag is not None
            and flag not in governance.policies
            and flag not in governance.broken
            and (governance.store is None or governance.store.load(flag) is None)
        ):
            known = ", ".join(sorted(governance.policies)) or "none"
            raise fail(f"{flag!r} has no policy and no state (governed flags: {known})")
        if governance.store is not None:
            write_pending_records(governance)  # the last change shown is then the real one
        doc = project_status(settings, governance, None if flag is None else [flag])
    except (StateStoreUnavailable, AuditError) as exc:
        raise fail(str(exc)) from None
    finally:
        governance.close()
    if as_json:
        print(json.dumps(doc.as_dict(), indent=2, default=str))
        return
    _line(_provider_line(doc.provider))
    _line(_store_line(doc))
    for worker in doc.workers:
        if worker.behind:
            _line(
                f"worker {worker.worker} sees another state of {', '.join(worker.behind)} "
                f"(it last reported {when(worker.at)}; generation {worker.generation or '-'})",
                "yellow",
            )
        for name, thread in sorted(worker.threads.items()):
            if not thread.get("healthy", True):
                _line(
                    f"worker {worker.worker}: background thread {name} is failing "
                    f"({thread.get('failures')} times: {thread.get('last_error')})",
                    "yellow",
                )
    if not doc.flags and not doc.broken_policies:
        _line(f"no governed flags (policies go in {settings.policies_dir})")
    for row in doc.flags:
        _line("")
        _flag(row)
    for broken in doc.broken_policies:
        _line("")
        state = "killed" if broken.killed else f"stage {percent(broken.stage)}"
        if broken.missing:
            serve = (
                "the caller's default"
                if broken.killed
                else "what `unregistered:` says for a flag without a policy"
            )
            _line(
                f"{broken.flag}: {broken.problem}; workers serve {serve} for it "
                f"({state}{', paused' if broken.paused else ''}, version {broken.version})",
                "red" if broken.killed else "yellow",
            )
            continue
        _line(
            f"{broken.flag}: its policy cannot be used ({broken.problem}); workers serve the "
            f"caller's default for it ({state}{', paused' if broken.paused else ''}, "
            f"version {broken.version})",
            "red",
        )


def _store_line(doc: "StatusDocument") -> str:
    workers = len(doc.workers)
    behind = sum(1 for w in doc.workers if w.behind)
    heard = f"{workers} worker{'s' * (workers != 1)} heard from in the last minute" + (
        f", {behind} not up to date" if behind else ", all up to date" if workers else ""
    )
    return f"state store {doc.state_store}: generation {doc.generation or '-'}; {heard}"


def _line(text: str, style: str = "") -> None:
    out.print(Text(clean(text), style=style), highlight=False)


def _provider_line(provider: "ProviderStatus") -> str:
    age = provider.snapshot_age_seconds
    snapshot = f"snapshot {duration(age)} old" if age is not None else "no snapshot"
    outage = provider.last_outage
    if not outage:
        return f"provider {provider.name}: {snapshot}; no vendor outage recorded"
    span = (
        f"for {duration(outage['duration_seconds'])}"
        if outage.get("duration_seconds") is not None
        else "still open"
    )
    return (
        f"provider {provider.name}: {snapshot}; last outage {when(outage['started_at'])}, "
        f"{span} ({outage.get('cause')})"
    )


def _flag(row: "FlagStatus") -> None:
    at = row.stage
    position = (
        f"stage {row.stages.index(at) + 1} of {len(row.stages)}"
        if at in row.stages
        else "not started"
        if row.version == 0
        else "control for everyone"
    )
    state = "KILLED: everyone gets control" if row.killed else "paused" if row.paused else ""
    head = f"{row.flag}  {percent(at)} ({position})" + (f", {state}" if state else "")
    _line(head, "bold red" if row.killed else "bold")
    if row.description:
        _line(f"  {row.description}")
    expiry = f"expires {row.expires}" if row.expires else "no expiry date"
    _line(f"  owner {row.owner}, {expiry}" + (" (EXPIRED)" if row.expired else ""))
    if row.killed:
        _line("  revive it to serve the stage again")
    elif row.paused:
        why = f" (paused by {row.pause.actor}: {row.pause.reason})" if row.pause else ""
        _line(f"  no advance until resumed{why}")
    elif row.next_stage is None:
        _line("  at its last stage")
    elif row.soak_remaining_seconds:
        _line(
            f"  soaking: {duration(row.soak_remaining_seconds)} left before "
            f"{percent(row.next_stage)} may follow"
        )
    else:
        _line(f"  next stage: {percent(row.next_stage)}")
    for need in row.requires:
        standing = "killed" if need.killed else f"at {percent(need.now)}"
        _line(
            f"  requires {need.flag} at {percent(need.stage)}: it is {standing}"
            + (" (short)" if need.short else "")
        )
    seen = {guard.guard: guard for guard in row.guards}
    for name in row.guard_names:
        guard = seen.get(name)
        if guard is None:
            _line(f"  guard {name}: not evaluated at this stage yet")
            continue
        value = "" if guard.value is None else f" {number(guard.value)}"
        limit = f" ({guard.limit})" if guard.limit else ""
        _line(f"  guard {name}: {guard.verdict}{value}{limit}, {when(guard.at)}")
    change = row.last_change
    if change is None:
        _line("  no change recorded yet")
        return
    moved = (
        f" {percent(change.before['stage'])} -> {percent(change.after['stage'])}"
        if change.action in ("advance", "rollback") and change.before and change.after
        else ""
    )
    _line(
        f"  last change: {_DID.get(change.action, change.action)}{moved} "
        f"by {change.actor} at {when(change.at)}: {change.reason}"
    )
