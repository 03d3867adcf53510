"""``flagwarden check``: validate config, profiles and policies; lint expiry and stale flags."""

from __future__ import annotations

from typing import Annotated

import typer

from flagwarden.audit.log import AuditError
from flagwarden.cli.app import ConfigOption, app, err, fail, out
from flagwarden.config import Settings, load_profile, load_settings
from flagwarden.errors import ConfigError
from flagwarden.governance.lint import lint_policy, lint_state, lint_unregistered
from flagwarden.governance.policy import Policy, load_policies
from flagwarden.governance.project import Governance
from flagwarden.governance.state import StateStoreUnavailable


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
        raise fail(str(exc)) from None
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
