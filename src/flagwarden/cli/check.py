"""``flagwarden check``: every problem in every file at once; ``--connect`` reaches the services."""

from typing import Annotated

import typer

from flagwarden.cli.app import ConfigOption, app, err, fail, say, warn


@app.command()
def check(
    config: ConfigOption = None,
    connect: Annotated[
        bool,
        typer.Option(
            "--connect", help="also reach the state and audit stores, Prometheus and the vendor"
        ),
    ] = False,
    strict: Annotated[bool, typer.Option(help="fail on warnings too")] = False,
) -> None:
    """Validate config, profiles, flag files and policies; lint owners, expiry, stale flags."""
    from flagwarden.checks import check_project

    findings = check_project(config, connect=connect)
    for finding in findings:
        if finding.level == "ok":
            say(finding.message)
    for finding in findings:
        if finding.level == "warning":
            warn(finding.message)
    errors = [f for f in findings if f.level == "error"]
    for finding in errors:
        fail(finding.message)
    warnings = sum(1 for f in findings if f.level == "warning")
    if errors or (strict and warnings):
        err.print(
            f"{len(errors)} error{'s' * (len(errors) != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)}",
            highlight=False,
        )
        raise typer.Exit(1)
