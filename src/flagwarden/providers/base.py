"""What every provider in flagwarden's chain has in common.

A :class:`SourceProvider` is an ordinary OpenFeature provider that also tracks its own status,
says whether it can answer from memory (``has_data``), and, for vendors, can export its flag
definitions in the vendor's native format for a last-known-good snapshot.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata, ProviderStatus

__all__ = ["KeyMap", "SourceProvider", "error_details", "too_deep", "type_matches"]

_EVENT_FOR_STATUS = {
    ProviderStatus.READY: ProviderEvent.PROVIDER_READY,
    ProviderStatus.STALE: ProviderEvent.PROVIDER_STALE,
    ProviderStatus.ERROR: ProviderEvent.PROVIDER_ERROR,
    ProviderStatus.FATAL: ProviderEvent.PROVIDER_ERROR,
}


def error_details(
    default_value: Any, code: ErrorCode, message: str, metadata: Mapping[str, Any] | None = None
) -> FlagResolutionDetails[Any]:
    """The caller's default, with the error that made it necessary."""
    return FlagResolutionDetails(
        value=default_value,
        reason=Reason.ERROR,
        error_code=code,
        error_message=message,
        flag_metadata=dict(metadata or {}),
    )


def type_matches(flag_type: FlagType, value: Any) -> bool:
    """Whether ``value`` is a valid answer for a flag of ``flag_type`` (bool is not an int here)."""
    if flag_type is FlagType.BOOLEAN:
        return isinstance(value, bool)
    if flag_type is FlagType.STRING:
        return isinstance(value, str)
    if flag_type is FlagType.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if flag_type is FlagType.FLOAT:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, Mapping | list)


def too_deep(document: Any, limit: int) -> str | None:
    """Where (a dotted path, its first levels) ``document`` nests lists and mappings deeper than
    ``limit`` levels, or None. Iterative: it never recurses, however deep the document."""
    pending: list[tuple[Any, int, tuple[str, ...]]] = [(document, 1, ())]
    while pending:
        node, depth, path = pending.pop()
        if not isinstance(node, Mapping | list):
            continue
        if depth > limit:
            shown = ".".join(path[:6])
            return f"{shown}... (level {depth})" if len(path) > 6 else f"{shown} (level {depth})"
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        pending.extend((item, depth + 1, (*path, str(key))) for key, item in items)
    return None


class KeyMap:
    """Flag key -> the key a provider spells it with, memoized for the first ``limit`` keys
    (unregistered flag keys are unbounded: memory must not grow with them)."""

    def __init__(self, translate: Callable[[str], str] | None, limit: int = 4096) -> None:
        self._translate = translate
        self.identity = translate is None  # every key as it is: the caller may skip the call
        self._cache: dict[str, str] = {}
        self._limit = limit

    def __call__(self, flag_key: str) -> str:
        if self._translate is None:
            return flag_key
        found = self._cache.get(flag_key)
        if found is None:
            found = self._translate(flag_key)
            if len(self._cache) < self._limit:
                self._cache[flag_key] = found
        return found


class SourceProvider(AbstractProvider):
    """Base of flagwarden's providers: one ``resolve`` instead of five, plus status tracking."""

    #: The ``flagwarden.source`` this provider's answers carry when it is the primary.
    source: ClassVar[str] = "vendor"
    #: Set by the failover chain: called when what :meth:`export_snapshot` gives changed
    #: without a provider event saying so (an answer cache that grew).
    data_changed: Callable[[], None] | None = None

    def __init__(self, name: str, kind: str) -> None:
        super().__init__()
        self.name = name
        self.kind = kind
        self._status = ProviderStatus.NOT_READY
        self._status_message: str | None = None
        self._status_lock = threading.Lock()

    # -- status -------------------------------------------------------------------------

    @property
    def status(self) -> ProviderStatus:
        return self._status

    @property
    def status_message(self) -> str | None:
        return self._status_message

    @property
    def has_data(self) -> bool:
        """True when the provider holds flag definitions it can evaluate from memory."""
        return self._status in (ProviderStatus.READY, ProviderStatus.STALE)

    def _set_status(self, status: ProviderStatus, message: str | None = None) -> None:
        with self._status_lock:
            if status == self._status:
                self._status_message = message  # the same state for a new reason: say the new one
                return
            self._status = status
            self._status_message = message
        event = _EVENT_FOR_STATUS.get(status)
        if event is not None:
            code = ErrorCode.PROVIDER_FATAL if status is ProviderStatus.FATAL else None
            if status in (ProviderStatus.ERROR, ProviderStatus.FATAL):
                code = code or ErrorCode.GENERAL
            self.emit(event, ProviderEventDetails(message=message, error_code=code))

    def _configuration_changed(self, flags: list[str] | None = None) -> None:
        self.emit(
            ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ProviderEventDetails(flags_changed=flags)
        )

    def start(self, evaluation_context: EvaluationContext | None = None) -> bool:
        """Initialize without raising; True when ready. Vendors wait at most ``start_wait``."""
        try:
            self.initialize(evaluation_context or EvaluationContext())
        except Exception as exc:
            self._set_status(ProviderStatus.ERROR, str(exc))
        return self._status is ProviderStatus.READY

    def export_snapshot(self) -> dict[str, Any] | None:
        """The vendor's native flag definitions, or None when this provider has nothing to save."""
        return None

    #: Whether the snapshot store's copy should be handed to :meth:`seed` before the start:
    #: a provider that keeps what it answered (an answer cache) would otherwise write a
    #: snapshot of this run's answers alone over everything stored before.
    wants_seed: ClassVar[bool] = False

    def seed(self, data: dict[str, Any]) -> None:
        """Take the stored snapshot's data as a start (see :attr:`wants_seed`)."""

    def flag_version(self, flag_key: str) -> tuple[str | None, str | None]:
        """The flag definition's version and flag set id where the source has them
        (OpenTelemetry's ``feature_flag.version`` and ``feature_flag.set.id``); read when
        counts are folded (once a second), never on the evaluation path."""
        return None, None

    def last_known_replay(self) -> SourceProvider | None:
        """A started replay of what this provider holds in memory, to answer from while it is
        out (fresher than the snapshot store's copy); None: replay the store's."""
        return None

    def depends_on_key(self, flag_key: str) -> bool:
        """Whether this flag's answer may differ between targeting keys (conservatively True).

        ``assign`` asks the vendor once per batch only when this is False.
        """
        return True

    def recreate(self) -> SourceProvider:
        """A fresh, uninitialized provider of the same configuration (used after fork)."""
        return self

    # -- evaluation ---------------------------------------------------------------------

    @abstractmethod
    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        """Evaluate one flag. Must not raise for a flag problem: return an error result."""

    def get_metadata(self) -> Metadata:
        return Metadata(name=f"flagwarden:{self.kind}:{self.name}")

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self.resolve(FlagType.BOOLEAN, flag_key, default_value, evaluation_context)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self.resolve(FlagType.STRING, flag_key, default_value, evaluation_context)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self.resolve(FlagType.INTEGER, flag_key, default_value, evaluation_context)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self.resolve(FlagType.FLOAT, flag_key, default_value, evaluation_context)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self.resolve(FlagType.OBJECT, flag_key, default_value, evaluation_context)
