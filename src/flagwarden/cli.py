"""The ``flagwarden`` command line: thin, every command is a call into the library.

Exit codes: 0 ok, 1 refused or failed check (with the reason), 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flagwarden.config import load_profile, load_settings
from flagwarden.errors import ConfigError

app = typer.Typer(
    name="flagwarden",
    help="Vendor-neutral, policy-enforcing feature flags for data pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
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
def check(config: ConfigOption = None) -> None:
    """Validate the configuration and every provider profile."""
    problems: list[str] = []
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    where = settings.source or "embedded default"
    providers_dir = settings.providers_dir
    profiles = sorted(providers_dir.glob("*.y*ml")) if providers_dir.is_dir() else []
    if not providers_dir.is_dir():
        problems.append(f"{where}: providers_dir: {providers_dir} is not a directory")
    names = set()
    for path in profiles:
        try:
            profile = load_profile(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        names.add(profile.name)
        out.print(f"[green]ok[/green] {path} ({profile.type})", highlight=False)
    wanted = [settings.provider_name]
    if settings.config.shadow is not None:
        wanted.append(settings.config.shadow.provider)
    for name in wanted:
        if name not in names and not any(p.stem == name for p in profiles):
            problems.append(f"{where}: provider: no profile {name!r} in {providers_dir}")
    if problems:
        for problem in problems:
            err.print(f"[red]error:[/red] {problem}", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]ok[/green] {where}: provider {settings.provider_name!r}", highlight=False)


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
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
