"""structlog set-up: JSON lines in production, readable console output on a terminal.

Only when the application has not configured structlog itself: its choice wins. Output goes
to stderr, so a pipeline's stdout stays its own. ``FLAGWARDEN_LOG_LEVEL`` sets the level
(``warning`` silences exposure events, which are logged at info).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging"]


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto") -> bool:
    """Configure structlog unless the application already did; True if we configured it."""
    if structlog.is_configured():
        return False
    level = getattr(logging, os.environ.get("FLAGWARDEN_LOG_LEVEL", "info").upper(), logging.INFO)
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    return True
