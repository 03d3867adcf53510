"""The transitions: advance, rollback, kill, revive, pause, resume.

Every one needs ``--reason``. A transition that finds the flag already so (a retried kill)
exits 0 and says that nothing changed; a refusal exits 1 with the reason, and nothing
changed. A change that took effect exits 0, also when its audit record could not be written
yet (it waits in the state store's outbox, said as a warning) or a flag that requires this
one could not be paused with it (said as an error).
"""

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flagwarden.cli.app import (
    ActorOption,
    ConfigOption,
    FlagArgument,
    ReasonOption,
    app,
    fail,
    open_project,
    say,
    warn,
)

if TYPE_CHECKING:
    from flagwarden.governance.rollout import Transition

__all__ = ["describe"]


def describe(done: "Transition") -> str:
    """What a transition did, as a sentence."""
    b, a, flag = done.before, done.after, done.before.flag
    if not done.changed:
        return f"{done.note}; nothing changed"
    said = {
        "advance": f"{flag} advanced from {b.stage:g}% to {a.stage:g}%",
        "rollback": f"{flag} rolled back from {b.stage:g}% to {a.stage:g}%"
        + (": control for everyone" if a.stage == 0 else ""),
        "kill": f"{flag} killed: everyone gets control (stage {a.stage:g}% returns on revive)",
        "revive": f"{flag} revived: back to stage {a.stage:g}%"
        + (" (still paused)" if a.paused else ""),
        "pause": f"{flag} paused at {a.stage:g}%: no advance until resumed",
        "resume": f"{flag} resumed at {a.stage:g}%" + (" (still killed)" if a.killed else ""),
    }[done.action]
    return f"{said} (version {a.version})"


def _transition(
    config: Path | None, action: str, flag: str, actor: str | None, **kwargs: object
) -> None:
    from flagwarden.audit.log import AuditError
    from flagwarden.cli.access import acting_as, describe_request
    from flagwarden.governance.actions import perform
    from flagwarden.governance.approvals import Requested
    from flagwarden.governance.changes import OutcomeUnknown
    from flagwarden.governance.rollout import TransitionRefused
    from flagwarden.governance.state import StateStoreUnavailable
    from flagwarden.identity import Role

    _, governance = open_project(config)
    try:
        name, proven = acting_as(governance, actor, Role.OPERATOR, action)
        rollout = governance.rollout()
        result = perform(
            rollout,
            action,
            flag,
            actor=name,
            authenticated=proven,
            **kwargs,  # type: ignore[arg-type]
        )
        # Then whatever earlier changes left waiting in the outbox (after this one: a backlog
        # never delays a kill).
        backlog = rollout.reconcile()
    except TransitionRefused as exc:
        raise fail(f"refused: {exc}") from None
    except OutcomeUnknown as exc:
        raise fail(str(exc)) from None
    except (StateStoreUnavailable, AuditError) as exc:
        raise fail(f"{action} of {flag} could not be stored, nothing changed: {exc}") from None
    finally:
        governance.close()
    if isinstance(result, Requested):
        say(
            f"{describe_request(result.request)}; an approver runs: flagwarden approvals "
            f"approve {result.request.id}",
            tag="pending",
            style="yellow",
        )
        return
    done: Transition = result
    if backlog.error is not None and not done.audit_error:
        warn(f"earlier records still wait in the outbox: {backlog.error}")
    say(describe(done))
    if flag not in governance.policies and flag not in governance.broken and done.changed:
        warn(
            f"{flag} has no policy here: while it is killed, workers serve the caller's default "
            "for it; otherwise they serve it as any flag without a policy (`unregistered:`)"
        )
    for paused in done.cascade:
        say(f"{describe(paused)}, because {paused.after.reason}", tag="also")
    for violation in done.violations:
        warn(f"recorded as a policy violation: {violation}")
    # The change took effect, so the exit code is 0 (a retry would change nothing); what did
    # not follow it is said on stderr: a record not written yet waits in the state store's
    # outbox (not lost), a dependant that could not be paused is an error to act on.
    for paused in done.cascade:
        if paused.audit_error:
            warn(
                f"{paused.after.flag} was paused; its audit record is pending: {paused.audit_error}"
            )
    if done.audit_error:
        warn(f"the change took effect; its audit record is pending: {done.audit_error}")
    for failure in done.cascade_failures:
        fail(f"a flag that requires {flag} could not be paused: {failure}")


@app.command()
def advance(
    flag: FlagArgument,
    reason: ReasonOption,
    to: Annotated[float | None, typer.Option("--to", help="skip to this approved stage")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="break a rule (soak, pause, prerequisites)")
    ] = False,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Move FLAG to its next stage (after the soak time); --to and --force are violations."""
    _transition(config, "advance", flag, actor, reason=reason, to=to, force=force)


@app.command()
def rollback(
    flag: FlagArgument,
    reason: ReasonOption,
    to: Annotated[
        float | None, typer.Option("--to", help="roll back to this stage (0 = control)")
    ] = None,
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Move FLAG back to its previous stage (or --to); pauses flags that require it higher."""
    _transition(config, "rollback", flag, actor, reason=reason, to=to)


def _switch(action: str, summary: str) -> Callable[..., None]:
    def command(
        flag: FlagArgument,
        reason: ReasonOption,
        actor: ActorOption = None,
        config: ConfigOption = None,
    ) -> None:
        _transition(config, action, flag, actor, reason=reason)

    command.__doc__ = summary
    return command


for _action, _summary in (
    ("kill", "Everyone gets control, now, in every worker (flags requiring FLAG are paused)."),
    ("revive", "Undo a kill: the stage applies again."),
    ("pause", "Freeze FLAG's stage: no advance (manual or automatic) until resumed."),
    ("resume", "Unfreeze a paused FLAG."),
):
    app.command(_action)(_switch(_action, _summary))
