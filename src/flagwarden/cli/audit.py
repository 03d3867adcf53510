"""``flagwarden audit ...`` and ``flagwarden report``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.cli.app import ConfigOption, app, clean, err, fail, open_project, out, say, warn
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


def _usage(message: str) -> typer.Exit:
    """A usage error (exit 2), said without interpreting Rich markup in ``message``."""
    err.print(Text.assemble(("error:", "red"), " ", clean(message)), highlight=False)
    return typer.Exit(2)


@app.command()
def report(
    since: Annotated[
        str,
        typer.Option(
            "--since",
            help="start: a duration before --until (7d, 24h) or an ISO date/datetime (UTC "
            "unless it says otherwise)",
        ),
    ] = "7d",
    until: Annotated[
        str | None,
        typer.Option("--until", help="end: an ISO date/datetime, or a duration ago (default: now)"),
    ] = None,
    flags: Annotated[
        list[str] | None,
        typer.Option(
            "--flag", help="only this flag (repeat for more; default: every governed flag)"
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file to write")] = None,
    config: ConfigOption = None,
) -> None:
    """The compliance report: verdicts, changes, soak, guards, violations, exposures, outages."""
    from flagwarden.governance.measurements import open_measurement_store
    from flagwarden.report import (
        PeriodError,
        build_report,
        render_html,
        render_markdown,
        resolve_period,
    )

    if fmt not in ("md", "html", "json"):
        raise _usage(f"--format must be md, html or json, not {fmt!r}")
    try:
        start, end = resolve_period(since, until)
    except PeriodError as exc:
        raise _usage(str(exc)) from None
    settings, governance = open_project(config)
    measurements = None
    try:
        assert governance.store is not None and governance.audit is not None
        unknown = sorted(set(flags or ()) - set(governance.policies))
        if unknown:
            known = ", ".join(sorted(governance.policies)) or "none"
            raise fail(f"no policy for {', '.join(unknown)} (governed flags: {known})")
        try:
            measurements = open_measurement_store(settings.config.state, settings.base_dir)
        except StateStoreUnavailable as exc:
            warn(f"guard charts without measurements: {exc}")
        doc = build_report(
            governance.audit,
            governance.policies,
            governance.store.load_all(),
            since=start,
            until=end,
            flags=flags or None,
            measurements=measurements,
            provider=settings.provider_name,
        )
    except (StateStoreUnavailable, AuditError) as exc:
        raise fail(str(exc)) from None
    finally:
        if measurements is not None:
            measurements.close()
        governance.close()
    text = (
        doc.dumps()
        if fmt == "json"
        else render_html(doc)
        if fmt == "html"
        else render_markdown(doc)
    )
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
        say(f"{fmt} report written to {output} (digest {doc.digest[:16]})")
    if not doc.audit.verified:
        raise fail(
            f"the audit chain did not verify (record {doc.audit.first_bad_record}: "
            f"{doc.audit.problem}); the report says where it broke"
        )
