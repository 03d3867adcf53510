"""What every configuration file's validation shares: the frozen, strict model base, the bound
on durations, what counts as a secret (by field name or by look), and how pydantic's errors
become one :class:`~flagwarden.errors.ConfigError` per file naming the field, the value unless
it may be a secret, and the expectation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from flagwarden.documents import MAX_DURATION
from flagwarden.errors import ConfigError

__all__ = [
    "MAX_SECONDS",
    "SECRET_FIELDS",
    "Model",
    "describe_validation_error",
    "looks_secret",
]

# The last part of a field name whose value is never echoed back in an error message.
SECRET_FIELDS = re.compile(
    r"(^|[._])(\w*_)?(key|apikey|secret|token|password|passwd|pwd|credentials?)$",
    re.IGNORECASE,
)
# A value that looks like a credential whatever its field: a URL with a user part, a known key
# prefix, or a long token of letters and digits.
_SECRET_VALUES = re.compile(
    r"://[^/\s]*@|^(sdk|api|sk|pk|rk)[-_]|^(ghp|gho|ghs|github_pat)_|^xox[abp]-|^AKIA[0-9A-Z]"
    r"|^eyJ|^(?=[^\s/]*\d)(?=[^\s/]*[A-Za-z])[A-Za-z0-9_\-+=.]{16,}$"
)
# Every duration and interval is bounded as parse_duration bounds them (0 to 3650 days).
MAX_SECONDS = MAX_DURATION.total_seconds()


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_WEBHOOK_URL = re.compile(r"^notify(\.\d+)?(\.url)?$")  # a webhook URL is a credential


def _describe(detail: Any) -> tuple[str | None, str]:
    """(field, problem) for one pydantic error: the value unless secret, the expectation."""
    loc = [str(p) for p in detail["loc"]]
    field = ".".join(loc) or None
    kind = detail["type"]
    if kind == "missing":
        return field, "is required but missing"
    if kind == "extra_forbidden":
        return field, "is not a known field"
    msg = detail["msg"].removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    value = detail.get("input")
    secret_field = field and (SECRET_FIELDS.search(field) or _WEBHOOK_URL.match(field))
    if secret_field or looks_secret(value):
        # Neither pydantic's words nor ours may carry it: cut the quoted value off.
        if ", got " in msg:
            msg = msg.split(", got ", 1)[0] + " (the value is not shown: it may be a secret)"
        return field, msg
    if ", got " in msg or not isinstance(value, str | int | float | bool | None):
        return field, msg
    return field, f"{msg}, got {value!r}"


def looks_secret(value: Any) -> bool:
    """Whether a value looks like a credential (a URL with a password, an API key, a token)."""
    return isinstance(value, str) and bool(_SECRET_VALUES.search(value.strip()))


def describe_validation_error(error: ValidationError, file: Path | str) -> ConfigError:
    """Every problem of one file as a ConfigError (the first, with ``problems`` listing all)."""
    found: list[tuple[str | None, str]] = []
    for detail in error.errors():
        described = _describe(detail)
        if described not in found:  # a union reports one problem once per member
            found.append(described)
    errors = [ConfigError(file, field, problem) for field, problem in found]
    first = errors[0]
    return ConfigError(file, first.field, first.problem, more=errors[1:])
