"""``flagwarden snapshot`` and ``flagwarden demo``."""

from pathlib import Path
from typing import Annotated

import typer

from flagwarden.cli.app import ConfigOption, app, fail, out, say
from flagwarden.errors import ConfigError
from flagwarden.storage import redact_url


@app.command()
def snapshot(config: ConfigOption = None) -> None:
    """Write the vendor's last-known-good snapshot now."""
    import flagwarden

    try:
        flagwarden.configure(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    runtime = flagwarden.current()
    assert runtime is not None
    try:
        location = runtime.settings.snapshot_location()
        if runtime.provider.snapshot_writer is None:
            raise fail(
                f"provider {runtime.profile.name!r} ({runtime.profile.type}) keeps no snapshot"
                if location
                else "fallback.snapshot is not configured"
            )
        written = runtime.provider.write_snapshot()
        if written is None:
            vendor = runtime.provider.vendor
            why = (
                "has nothing to save yet (an OpenFeature provider's answer cache fills as it "
                "answers)"
                if vendor.status.value == "READY"
                else f"is not ready ({vendor.status_message})"
            )
            raise fail(f"{runtime.profile.type} {why}; the existing snapshot was left as it is")
        say(f"snapshot of {written.profile} written to {redact_url(location or '')}")
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
