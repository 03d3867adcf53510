"""Errors flagwarden raises at its edges (never from an evaluation)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "FlagwardenError"]


class FlagwardenError(Exception):
    """Base class of flagwarden's own errors."""


class ConfigError(FlagwardenError):
    """A configuration file, profile or policy is wrong.

    The message names the file, the field and what was expected; it never contains a secret.
    """

    def __init__(self, file: Path | str | None, field: str | None, problem: str) -> None:
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = problem
        where = self.file or "<config>"
        if field:
            where = f"{where}: {field}"
        super().__init__(f"{where}: {problem}")
