"""The ``flagwarden`` command line: thin, every command is a call into the library.

Exit codes: 0 ok, 1 refused or failed check (with the reason), 2 usage error, 3 ``watch``
rolled back or paused.
"""

import os
import sys
from typing import Annotated

import typer

# Each module registers its commands; import order is the order `--help` lists them in.
# Registering is cheap: a command imports what its body needs when it runs. The command modules
# do without `from __future__ import annotations` on purpose: typer reads every command's
# annotations at each start, and string annotations cost an eval each (~15 ms in all).
# isort: off
from flagwarden.cli import check, status, transitions, access, watch, audit, snapshot, console

# isort: on
from flagwarden.cli.app import app, fail

__all__ = ["app", "main"]
_COMMANDS = (check, status, transitions, access, watch, audit, snapshot, console)
DEBUG_ENV = "FLAGWARDEN_DEBUG"


def _version(value: bool) -> None:
    if value:
        from flagwarden import __version__

        print(f"flagwarden {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Vendor-neutral, policy-enforcing feature flags for data pipelines."""


def main() -> None:
    from flagwarden.logs import configure_on_first_use

    # Log lines go to stderr (stdout is for the command's output), set up at the first one:
    # a kill writes the state before it pays for importing structlog.
    configure_on_first_use()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        # A bug of ours, not the user's: say it plainly, without a traceback.
        fail(
            f"unexpected {type(exc).__name__}: {exc} "
            f"(a flagwarden bug; {DEBUG_ENV}=1 shows the traceback)"
        )
        sys.exit(1)
