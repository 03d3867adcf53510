"""Shared parts of the command line: the Typer app, consoles, common options, failure exits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.text import Text

from flagwarden.errors import ConfigError
from flagwarden.humanize import visible
from flagwarden.storage import redact_text

if TYPE_CHECKING:
    from flagwarden.config import Settings
    from flagwarden.governance.project import Governance

# The commands import what their bodies need when they run: registering every command (at
# import) stays cheap, and `flagwarden kill` loads no more than a kill needs.

__all__ = [
    "ActorOption",
    "ConfigOption",
    "FlagArgument",
    "ReasonOption",
    "app",
    "clean",
    "err",
    "fail",
    "open_project",
    "out",
    "say",
    "warn",
]

app = typer.Typer(
    name="flagwarden",
    help="Vendor-neutral, policy-enforcing feature flags for data pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, grep) is not squeezed into 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="flagwarden.yaml to use (default: $FLAGWARDEN_CONFIG, ./flagwarden.yaml, embedded)",
    ),
]
FlagArgument = Annotated[str, typer.Argument(metavar="FLAG", help="a governed flag's key")]
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="who does this (default: $FLAGWARDEN_ACTOR, else the OS user)"),
]


def _reason(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("say why: the reason goes to the audit log")
    return value


ReasonOption = Annotated[
    str, typer.Option("--reason", help="why: recorded in the audit log", callback=_reason)
]


clean = visible  # what reaches the terminal: no raw control characters, one line


def say(message: str, *, tag: str = "ok", style: str = "green") -> None:
    """One line of output; ``message`` is printed as it is (Rich markup is not interpreted)."""
    out.print(Text.assemble((tag, style), " ", clean(message)), highlight=False)


def warn(message: str) -> None:
    """A warning on stderr, with any store URL or ``password=`` in it redacted."""
    err.print(
        Text.assemble(("warning:", "yellow"), " ", clean(redact_text(message))), highlight=False
    )


def write_pending_records(governance: Governance) -> bool:
    """Before a command reads the audit log: write the records changes left waiting in the
    state store's outbox (their audit write failed), and say what still cannot be written.
    True when something still waits."""
    backlog = governance.rollout().reconcile()
    if backlog.error is None:
        return False
    warn(f"change records still wait in the outbox: {backlog.error}")
    return True


def fail(message: str) -> typer.Exit:
    """Say what went wrong on stderr; the caller raises the returned exit (code 1).

    Failures quote drivers and stores: any URL or ``password=`` in ``message`` is redacted
    here too, the last line of defence for a call site that forgot to.
    """
    err.print(Text.assemble(("error:", "red"), " ", clean(redact_text(message))), highlight=False)
    return typer.Exit(1)


def open_project(config: Path | None) -> tuple[Settings, Governance]:
    """The settings and the governance stores, or exit 1 saying what is wrong.

    A broken policy file does not stop the command (a kill must get through): each is said,
    with its problem, on stderr.
    """
    from flagwarden.audit.log import AuditError
    from flagwarden.config import load_settings
    from flagwarden.governance.project import Governance
    from flagwarden.governance.state import StateStoreUnavailable

    try:
        settings = load_settings(config)
        governance = Governance.open(settings, strict=True)
        if governance.audit_problem is not None:
            warn(
                f"cannot open the audit store: {governance.audit_problem}; changes are kept "
                "with their records in the state store until it can be written"
            )
        for flag, problem in sorted(governance.broken.items()):
            warn(
                f"the policy of {flag} cannot be used, so workers serve the caller's default "
                f"for it: {problem} (flagwarden check lists every problem)"
            )
        return settings, governance
    except ConfigError as exc:
        raise fail(f"{exc} (flagwarden check lists every problem)") from None
    except StateStoreUnavailable as exc:
        raise fail(f"cannot open the state store: {exc}; nothing was done") from None
    except AuditError as exc:
        raise fail(f"cannot open the audit store: {exc}; nothing was done") from None
