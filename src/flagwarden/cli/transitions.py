"""The transitions: advance, rollback, kill, revive, pause, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flagwarden.audit.log import AuditError
from flagwarden.cli.app import (
    ActorOption,
    ConfigOption,
    ReasonOption,
    app,
    err,
    fail,
    open_project,
    out,
)
from flagwarden.governance.rollout import TransitionRefused, resolve_actor
from flagwarden.governance.state import StateStoreUnavailable


def _transition(config: Path | None, action: str, flag: str, **kwargs: object) -> None:
    _, governance = open_project(config)
    try:
        done = getattr(governance.rollout(), action)(flag, **kwargs)
    except TransitionRefused as exc:
        raise fail(f"refused: {exc}") from None
    except (StateStoreUnavailable, AuditError) as exc:
        raise fail(f"{action} of {flag} could not be stored: {exc}") from None
    finally:
        governance.close()
    b, a = done.before, done.after
    out.print(
        f"[green]ok[/green] {action} {flag}: stage {b.stage:g}% -> {a.stage:g}%, "
        f"killed {b.killed} -> {a.killed}, paused {b.paused} -> {a.paused} (version {a.version})",
        highlight=False,
    )
    for violation in done.violations:
        err.print(f"[yellow]recorded as a policy violation:[/yellow] {violation}", highlight=False)


@app.command()
def advance(
    flag: str,
    reason: ReasonOption,
    to: Annotated[float | None, typer.Option("--to", help="skip to this approved stage")] = None,
    force: Annotated[bool, typer.Option("--force", help="break a rule (soak, pause)")] = False,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Move FLAG to its next stage (after the soak time); --to and --force are violations."""
    _transition(
        config, "advance", flag, actor=resolve_actor(actor), reason=reason, to=to, force=force
    )


@app.command()
def rollback(
    flag: str,
    reason: ReasonOption,
    to: Annotated[
        float | None, typer.Option("--to", help="roll back to this stage (0 = control)")
    ] = None,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Move FLAG back to its previous stage (or --to)."""
    _transition(config, "rollback", flag, actor=resolve_actor(actor), reason=reason, to=to)


@app.command()
def kill(
    flag: str, reason: ReasonOption, actor: ActorOption = None, config: ConfigOption = None
) -> None:
    """Everyone gets control, now, in every worker."""
    _transition(config, "kill", flag, actor=resolve_actor(actor), reason=reason)


@app.command()
def revive(
    flag: str, reason: ReasonOption, actor: ActorOption = None, config: ConfigOption = None
) -> None:
    """Undo a kill: the stage applies again."""
    _transition(config, "revive", flag, actor=resolve_actor(actor), reason=reason)


@app.command()
def pause(
    flag: str,
    reason: Annotated[str, typer.Option("--reason")] = "paused by hand",
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Freeze FLAG's stage: no advance (manual or automatic) until resumed."""
    _transition(config, "pause", flag, actor=resolve_actor(actor), reason=reason)


@app.command()
def resume(
    flag: str,
    reason: Annotated[str, typer.Option("--reason")] = "resumed by hand",
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Unfreeze a paused FLAG."""
    _transition(config, "resume", flag, actor=resolve_actor(actor), reason=reason)
