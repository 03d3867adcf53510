"""``flagwarden audit ...`` and ``flagwarden report``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.cli.app import ConfigOption, app, err, fail, open_project, out
from flagwarden.config import load_settings
from flagwarden.errors import ConfigError
from flagwarden.governance.state import StateStoreUnavailable

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain; name the first edited, deleted or moved record."""
    try:
        settings = load_settings(config)
        log = AuditLog(settings.config.audit, settings.base_dir)
    except (ConfigError, AuditError) as exc:
        raise fail(str(exc)) from None
    try:
        result = log.verify()
    finally:
        log.close()
    if not result.ok:
        raise fail(f"audit chain broken at record {result.first_bad_seq}: {result.problem}")
    out.print(
        f"[green]ok[/green] {result.checked} records, chain head {result.head[:16]}",
        highlight=False,
    )


@app.command()
def report(
    since: Annotated[str, typer.Option("--since", help="period to cover, e.g. 7d, 24h")] = "7d",
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file to write")] = None,
    config: ConfigOption = None,
) -> None:
    """The compliance report from the audit log: changes, soak, guards, exposures, outages."""
    from flagwarden.audit.report import build_report, render_html, render_markdown
    from flagwarden.governance.policy import parse_duration

    if fmt not in ("md", "html", "json"):
        err.print(f"[red]error:[/red] --format must be md, html or json, not {fmt!r}")
        raise typer.Exit(2)
    try:
        period = parse_duration(since)
    except ValueError as exc:
        err.print(f"[red]error:[/red] --since: {exc}")
        raise typer.Exit(2) from None
    settings, governance = open_project(config)
    try:
        assert governance.store is not None and governance.audit is not None
        doc = build_report(
            governance.audit,
            governance.policies,
            governance.store.load_all(),
            since=period,
            provider=settings.provider_name,
        )
    except (StateStoreUnavailable, AuditError) as exc:
        raise fail(str(exc)) from None
    finally:
        governance.close()
    text = (
        json.dumps(doc, indent=2, default=str)
        if fmt == "json"
        else render_html(doc)
        if fmt == "html"
        else render_markdown(doc)
    )
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        out.print(
            f"[green]ok[/green] {fmt} report written to {output} (digest {doc['digest'][:16]})"
        )
    if not doc["audit"]["verified"]:
        raise fail(f"the audit chain did not verify: {doc['audit']['problem']}")
