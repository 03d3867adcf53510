"""Flags from environment variables.

Our own, because ``openfeature-provider-env-var`` parses ``"false"`` as True. Key
``new-scoring-model`` reads ``{prefix}NEW_SCORING_MODEL``; booleans accept
true/false/1/0/yes/no/on/off in any case.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any, ClassVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, Reason
from openfeature.provider import ProviderStatus

from flagwarden.logs import get_logger
from flagwarden.providers.base import SourceProvider, error_details

__all__ = ["EnvProvider", "env_var_name", "parse_env_value"]

_log = get_logger("flagwarden.failover")  # an override is the failover chain's

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


# os.environ.get re-encodes the key on every call (about 0.7 µs); reading the mapping behind
# os.environ with a pre-encoded key sees the same values (os.environ writes go through it)
# at a twentieth of the cost. Fall back to the public API where that mapping is absent.
_ENVIRON_DATA: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)


def _getenv_fn(name: str) -> Callable[[], str | None]:
    if _ENVIRON_DATA is None:
        return lambda: os.environ.get(name)
    data = _ENVIRON_DATA
    encoded: Any = os.environ.encodekey(name)  # bytes on POSIX
    decode: Callable[[bytes], str] = os.environ.decodevalue  # type: ignore[assignment]

    def getenv() -> str | None:
        raw = data.get(encoded)
        return None if raw is None else decode(raw)

    return getenv


def env_var_name(prefix: str, flag_key: str) -> str:
    return prefix + _NOT_ALNUM.sub("_", flag_key).upper()


class EnvValueError(ValueError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_env_value(flag_type: FlagType, raw: str) -> Any:
    """Parse an environment value as ``flag_type``; raises EnvValueError with the error code."""
    text = raw.strip()
    if flag_type is FlagType.STRING:
        return raw
    if flag_type is FlagType.BOOLEAN:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise EnvValueError(
            ErrorCode.TYPE_MISMATCH, "expected a boolean (true/false/1/0/yes/no/on/off)"
        )
    if flag_type is FlagType.INTEGER:
        try:
            return int(text)
        except ValueError:
            raise EnvValueError(ErrorCode.TYPE_MISMATCH, "expected an integer") from None
    if flag_type is FlagType.FLOAT:
        try:
            return float(text)
        except ValueError:
            raise EnvValueError(ErrorCode.TYPE_MISMATCH, "expected a number") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EnvValueError(ErrorCode.PARSE_ERROR, f"invalid JSON ({exc.msg})") from None
    if not isinstance(value, dict | list):
        raise EnvValueError(ErrorCode.TYPE_MISMATCH, "expected a JSON object or array")
    return value


class EnvProvider(SourceProvider):
    """Reads ``os.environ`` at evaluation time (a dict lookup, no I/O)."""

    source: ClassVar[str] = "env"

    def __init__(self, prefix: str = "FLAGWARDEN_FLAG_", name: str = "env") -> None:
        super().__init__(name=name, kind="env")
        self.prefix = prefix
        self._names: dict[str, str] = {}
        # Flag key -> a function reading its variable (the failover chain calls it directly).
        self.readers: dict[str, Callable[[], str | None]] = {}
        self._bad_warned: set[str] = set()  # flags whose bad value was warned about

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._set_status(ProviderStatus.READY)

    def variable_for(self, flag_key: str) -> str:
        name = self._names.get(flag_key)
        if name is None:
            name = self._names[flag_key] = env_var_name(self.prefix, flag_key)
        return name

    def override(
        self, flag_type: FlagType, flag_key: str, raw: str
    ) -> FlagResolutionDetails[Any] | None:
        """The answer of the value ``raw`` set for ``flag_key`` (the failover chain's override),
        or None when it is not a valid value of the flag's type (warned about once a flag)."""
        try:
            value = parse_env_value(flag_type, raw)
        except EnvValueError as exc:
            if flag_key not in self._bad_warned:
                self._bad_warned.add(flag_key)
                _log.warning(
                    "flagwarden.env_override_ignored",
                    flag=flag_key,
                    variable=self.variable_for(flag_key),
                    problem=str(exc),
                )
            return None
        variant = str(value).lower() if isinstance(value, bool) else None
        return FlagResolutionDetails(value=value, reason=Reason.STATIC, variant=variant)

    def lookup(self, flag_key: str) -> str | None:
        """The raw value for ``flag_key``, or None when the variable is unset."""
        reader = self.readers.get(flag_key)
        if reader is None:
            reader = self.readers[flag_key] = _getenv_fn(self.variable_for(flag_key))
        return reader()

    def depends_on_key(self, flag_key: str) -> bool:
        return False

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        raw = self.lookup(flag_key)
        variable = self.variable_for(flag_key)
        if raw is None:
            return error_details(default_value, ErrorCode.FLAG_NOT_FOUND, f"{variable} is not set")
        try:
            value = parse_env_value(flag_type, raw)
        except EnvValueError as exc:
            return error_details(default_value, exc.code, f"{variable}: {exc}")
        variant = str(value).lower() if isinstance(value, bool) else None
        return FlagResolutionDetails(value=value, reason=Reason.STATIC, variant=variant)
