"""Errors flagwarden raises at its edges (never from an evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["ConfigError", "FlagwardenError"]


class FlagwardenError(Exception):
    """Base class of flagwarden's own errors."""


class ConfigError(FlagwardenError):
    """A configuration file, profile or policy is wrong.

    The message names the file, the field and what was expected; it never contains a secret.
    When one file has several problems, the first is this error and ``problems`` lists them
    all (``flagwarden check`` prints each); the message counts the others.
    """

    def __init__(
        self,
        file: Path | str | None,
        field: str | None,
        problem: str,
        *,
        more: Sequence[ConfigError] = (),
    ) -> None:
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = problem
        self.problems: list[ConfigError] = (
            [ConfigError(file, field, problem), *more] if more else [self]
        )
        where = self.file or "<config>"
        if field:
            where = f"{where}: {field}"
        message = f"{where}: {problem}"
        if more:
            others = "; ".join(f"{e.field or '-'}: {e.problem}" for e in more)
            message += f" (and {len(more)} more: {others})"
        super().__init__(message)
