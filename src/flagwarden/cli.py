"""The ``flagwarden`` command line: thin, every command is a call into the library.

Exit codes: 0 ok, 1 refused or failed check (with the reason), 2 usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.config import Settings, load_profile, load_settings
from flagwarden.errors import ConfigError
from flagwarden.governance.governance import Governance
from flagwarden.governance.lint import (
    describe_flag,
    guard_health,
    lint_policy,
    lint_state,
    lint_unregistered,
    provider_health,
)
from flagwarden.governance.policy import Policy, load_policies
from flagwarden.governance.rollout import TransitionRefused, resolve_actor
from flagwarden.governance.state import FlagState, StateStoreUnavailable, redact_url

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


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(1)


@app.command()
def check(
    config: ConfigOption = None,
    strict: Annotated[bool, typer.Option(help="fail on lint warnings too")] = False,
) -> None:
    """Validate config, profiles and policies; lint owners, expiry and stale flags."""
    problems: list[str] = []
    warnings: list[str] = []
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    where = settings.source or "embedded default"
    providers_dir = settings.providers_dir
    profiles = sorted(providers_dir.glob("*.y*ml")) if providers_dir.is_dir() else []
    if not providers_dir.is_dir():
        problems.append(f"{where}: providers_dir: {providers_dir} is not a directory")
    for path in profiles:
        try:
            profile = load_profile(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        out.print(f"[green]ok[/green] {path} ({profile.type})", highlight=False)
    wanted = [settings.provider_name]
    if settings.config.shadow is not None:
        wanted.append(settings.config.shadow.provider)
    for name in wanted:
        if not any(p.stem == name for p in profiles):
            problems.append(f"{where}: provider: no profile {name!r} in {providers_dir}")
    policies: dict[str, Policy] = {}
    try:
        policies = load_policies(settings.policies_dir)
    except ConfigError as exc:
        problems.append(str(exc))
    for flag, policy in sorted(policies.items()):
        out.print(f"[green]ok[/green] policy {flag} (owner {policy.owner})", highlight=False)
        warnings.extend(lint_policy(policy))
    warnings.extend(_lint_state(settings, policies))
    for problem in problems:
        err.print(f"[red]error:[/red] {problem}", highlight=False)
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if problems or (strict and warnings):
        raise typer.Exit(1)
    out.print(f"[green]ok[/green] {where}: provider {settings.provider_name!r}", highlight=False)


def _lint_state(settings: Settings, policies: dict[str, Policy]) -> list[str]:
    """Lints that need the state store and the audit log: stale and unregistered flags."""
    try:
        governance = Governance.open(settings, strict=True)
    except (StateStoreUnavailable, AuditError) as exc:
        return [f"state or audit store unavailable, stale-flag lints skipped ({exc})"]
    try:
        assert governance.store is not None
        found = lint_state(policies, governance.store.load_all())
        if governance.audit is not None:
            found.extend(lint_unregistered(governance.audit, policies))
        return found
    except (StateStoreUnavailable, AuditError) as exc:
        return [f"state or audit store unavailable, stale-flag lints skipped ({exc})"]
    finally:
        governance.close()


@app.command()
def snapshot(config: ConfigOption = None) -> None:
    """Write the vendor's last-known-good snapshot now."""
    import flagwarden

    try:
        flagwarden.configure(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    runtime = flagwarden.current()
    assert runtime is not None
    try:
        location = runtime.settings.snapshot_location()
        if runtime.provider.snapshot_writer is None:
            raise _fail(
                f"provider {runtime.profile.name!r} ({runtime.profile.type}) keeps no snapshot"
                if location
                else "fallback.snapshot is not configured"
            )
        written = runtime.provider.write_snapshot()
        if written is None:
            raise _fail(
                f"{runtime.profile.type} is not ready ({runtime.provider.vendor.status_message}); "
                "the existing snapshot was left as it is"
            )
        out.print(f"[green]ok[/green] snapshot of {written.profile} written to {location}")
    finally:
        flagwarden.shutdown()


def _open(config: Path | None) -> tuple[Settings, Governance]:
    """The settings and the governance stores, or exit 1 saying what is wrong."""
    try:
        settings = load_settings(config)
        return settings, Governance.open(settings, strict=True)
    except (ConfigError, StateStoreUnavailable, AuditError) as exc:
        raise _fail(str(exc)) from None


ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="who does this (default: $FLAGWARDEN_ACTOR, else the OS user)"),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="why: recorded in the audit log")]


def _transition(config: Path | None, action: str, flag: str, **kwargs: object) -> None:
    _, governance = _open(config)
    try:
        done = getattr(governance.rollout(), action)(flag, **kwargs)
    except TransitionRefused as exc:
        raise _fail(f"refused: {exc}") from None
    except (StateStoreUnavailable, AuditError) as exc:
        raise _fail(f"{action} of {flag} could not be stored: {exc}") from None
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


@app.command()
def status(
    flag: Annotated[str | None, typer.Argument()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOption = None,
) -> None:
    """Stage, killed/paused, soak, guard health of each governed flag; the provider's state."""
    settings, governance = _open(config)
    if flag is not None and flag not in governance.policies:
        governance.close()
        raise _fail(f"{flag!r} has no policy")
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
        raise _fail(str(exc)) from None
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


@app.command()
def watch(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit (for cron)")] = False,
    interval: Annotated[float, typer.Option(help="seconds between passes")] = 30.0,
    config: ConfigOption = None,
) -> None:
    """Evaluate guards; roll back or pause on breach, advance when healthy (auto_advance)."""
    import signal
    import threading

    from flagwarden.governance.guards import GuardEvaluator
    from flagwarden.governance.measurements import open_measurement_store
    from flagwarden.governance.watch import Watch

    settings, governance = _open(config)
    try:
        measurements = open_measurement_store(settings.config.state, settings.base_dir)
    except StateStoreUnavailable as exc:
        governance.close()
        raise _fail(str(exc)) from None
    evaluator = GuardEvaluator(measurements, settings.config.telemetry.prometheus.query_url)
    watcher = Watch(governance, evaluator)
    try:
        if once:
            for decision in watcher.tick():
                out.print(
                    f"{decision.flag}: {decision.action} {decision.detail}".rstrip(),
                    highlight=False,
                )
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        out.print(f"watching {len(governance.policies)} flags every {interval:g}s", highlight=False)
        watcher.run(interval, stop)
        out.print("stopped", highlight=False)
    finally:
        measurements.close()
        governance.close()


audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain; name the first edited, deleted or moved record."""
    try:
        settings = load_settings(config)
        log = AuditLog(settings.config.audit, settings.base_dir)
    except (ConfigError, AuditError) as exc:
        raise _fail(str(exc)) from None
    try:
        result = log.verify()
    finally:
        log.close()
    if not result.ok:
        raise _fail(f"audit chain broken at record {result.first_bad_seq}: {result.problem}")
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
    settings, governance = _open(config)
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
        raise _fail(str(exc)) from None
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
        raise _fail(f"the audit chain did not verify: {doc['audit']['problem']}")


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="folder for the demo's files")
    ] = Path("flagwarden-demo"),
) -> None:
    """Tell the story on the embedded default: sources, failover and overrides."""
    from flagwarden.demo import run_demo

    raise typer.Exit(run_demo(output, out))


def main() -> None:
    from flagwarden.telemetry.logging import configure_logging

    configure_logging()  # log lines go to stderr: stdout is for the command's output
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
