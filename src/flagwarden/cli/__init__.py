"""The ``flagwarden`` command line: thin, every command is a call into the library.

Exit codes: 0 ok, 1 refused or failed check (with the reason), 2 usage error.
"""

from __future__ import annotations

import sys

# Each module registers its commands; import order is the order `--help` lists them in.
# isort: off
from flagwarden.cli import check, status, transitions, watch, audit, snapshot

# isort: on
from flagwarden.cli.app import app

__all__ = ["app", "main"]
_COMMANDS = (check, status, transitions, watch, audit, snapshot)


def main() -> None:
    from flagwarden.telemetry.logging import configure_logging

    configure_logging()  # log lines go to stderr: stdout is for the command's output
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
