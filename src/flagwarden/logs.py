"""flagwarden's loggers: structlog's, imported on the first log call rather than at import.

structlog costs 60-120 ms to import (its ``dev`` module loads rich's tracebacks and pretty
printer whenever rich is installed). A command that changes a flag (``flagwarden kill``) writes
the state before it logs anything, so it should not pay that before the write: every module
takes its logger from here. The first call through any logger imports structlog and, when the
command line asked for it (:func:`configure_on_first_use`), configures it first; when that
configuration writes JSON, structlog is imported without rich's traceback renderer and pretty
printer, which only its console renderer uses.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

__all__ = ["LazyLogger", "configure_on_first_use", "get_logger"]

Format = Literal["auto", "json", "console"]
_pending: Format | None = None


def configure_on_first_use(fmt: Format = "auto") -> None:
    """Configure structlog (:func:`flagwarden.telemetry.logging.configure_logging`) just
    before the first log line, rather than now."""
    global _pending
    _pending = fmt


class LazyLogger:
    """A structlog logger by name, bound on the first call (``log.info(...)``...)."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, method: str) -> Any:
        logger = self._logger
        if logger is None:
            logger = self._logger = _bind(self._name)
        return getattr(logger, method)


def _bind(name: str) -> Any:
    global _pending
    if _pending is not None and "structlog" not in sys.modules and _renders_json(_pending):
        _import_structlog_without_rich()
    import structlog

    if _pending is not None:
        from flagwarden.telemetry.logging import configure_logging

        fmt, _pending = _pending, None
        configure_logging(fmt)
    return structlog.get_logger(name)


def _renders_json(fmt: Format) -> bool:
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


_RICH_EXTRAS = ("rich.traceback", "rich.pretty")


def _import_structlog_without_rich() -> None:
    """Import structlog as if rich were not installed, when the command's own configuration
    renders JSON: its ``dev`` and ``tracebacks`` modules would load rich's traceback renderer
    and pretty printer (about half of structlog's import time) for a console never used."""
    hidden = [name for name in _RICH_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # its import then fails
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


def get_logger(name: str) -> Any:
    """The logger called ``name`` (structlog's, once it is first used)."""
    return LazyLogger(name)
