"""LaunchDarkly, through ``launchdarkly-openfeature-server``.

The published provider builds the SDK's client, converts contexts and reports status, so we
wrap it. Its answers leave LaunchDarkly's FALLTHROUGH / RULE_MATCH / PREREQUISITE_FAILED reasons
raw, so each evaluation calls the client as the provider does (the provider's own context
conversion, ``variation_detail``, the same type check and cast) and converts the result once,
with OpenFeature reasons (SPLIT when the rule that matched is a percentage rollout): converting
it the provider's way and then fixing it cost about 2 µs more per evaluation. The conversion
keeps the provider's error codes, variant and metadata keys (tested against it).

We give the SDK our own in-memory feature store, which lets us export its
flags and segments for a last-known-good snapshot and notice every configuration change; the
snapshot is replayed through the SDK's own file data source, so a cold start during an outage
evaluates percentages and targeting exactly as LaunchDarkly would.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

from ld_openfeature import LaunchDarklyProvider
from ld_openfeature.impl.context_converter import EvaluationContextConverter
from ldclient import LDClient
from ldclient.config import Config
from ldclient.feature_store import InMemoryFeatureStore
from ldclient.integrations import Files
from ldclient.interfaces import DataSourceState, DataSourceStatus
from ldclient.versioned_data_kind import FEATURES, SEGMENTS
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, Reason
from openfeature.provider import ProviderStatus

from flagwarden.profiles import LaunchDarklyProfile
from flagwarden.providers.base import SourceProvider, error_details
from flagwarden.providers.snapshot import write_private_json

__all__ = ["LaunchDarklyVendor"]

# LaunchDarkly's error kinds as the published provider maps them (GENERAL otherwise).
_ERROR_CODES = {
    "CLIENT_NOT_READY": ErrorCode.PROVIDER_NOT_READY,
    "FLAG_NOT_FOUND": ErrorCode.FLAG_NOT_FOUND,
    "MALFORMED_FLAG": ErrorCode.PARSE_ERROR,
    "USER_NOT_SPECIFIED": ErrorCode.TARGETING_KEY_MISSING,
    "WRONG_TYPE": ErrorCode.TYPE_MISMATCH,
}
# Reason kinds the provider maps itself; FALLTHROUGH, RULE_MATCH, PREREQUISITE_FAILED are ours.
_REASONS = {"OFF": Reason.DISABLED, "TARGET_MATCH": Reason.TARGETING_MATCH, "ERROR": Reason.ERROR}
_OURS = frozenset({"FALLTHROUGH", "RULE_MATCH", "PREREQUISITE_FAILED"})


def _as_dict(item: Any) -> dict[str, Any]:
    return item.to_json_dict() if hasattr(item, "to_json_dict") else dict(item)


class _FlagShape(NamedTuple):
    fallthrough_rollout: bool
    rule_rollouts: frozenset[int]
    key_dependent: bool


def _flag_shape(flag: Mapping[str, Any]) -> _FlagShape:
    """Which parts of a flag are rollouts, and whether context keys can tell answers apart."""
    fallthrough = flag.get("fallthrough") or {}
    rules = flag.get("rules") or []
    fallthrough_rollout = bool(fallthrough.get("rollout"))
    rule_rollouts = frozenset(i for i, rule in enumerate(rules) if rule.get("rollout"))
    keyed_clause = any(
        clause.get("attribute") == "key" or clause.get("op") == "segmentMatch"
        for rule in rules
        for clause in rule.get("clauses") or []
    )
    key_dependent = flag.get("on", True) and (
        fallthrough_rollout
        or bool(rule_rollouts)
        or keyed_clause
        or bool(flag.get("targets"))
        or bool(flag.get("contextTargets"))
        or bool(flag.get("prerequisites"))
    )
    return _FlagShape(fallthrough_rollout, rule_rollouts, bool(key_dependent))


class _ObservedStore(InMemoryFeatureStore):
    """The SDK's in-memory store, telling us when its data changes."""

    def __init__(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._on_change = on_change
        # The base class answers `initialized` under its read-write lock (1.7 µs a call);
        # this plain flag is read on every evaluation.
        self.has_data = False

    def init(self, all_data: Any) -> None:
        super().init(all_data)
        self.has_data = True
        flags = {k: _as_dict(v) for k, v in (all_data.get(FEATURES) or {}).items()}
        self._on_change(flags)

    def upsert(self, kind: Any, item: Any) -> None:
        super().upsert(kind, item)
        if kind == FEATURES:
            flag = _as_dict(item)
            self._on_change({flag["key"]: flag})


class LaunchDarklyVendor(SourceProvider):
    """A LaunchDarkly connection as a flagwarden source (live, or replaying a snapshot)."""

    source: ClassVar[str] = "vendor"

    def __init__(self, profile: LaunchDarklyProfile, *, snapshot: Mapping[str, Any] | None = None):
        super().__init__(name=profile.name, kind="launchdarkly")
        self.profile = profile
        self._snapshot = snapshot
        self._provider: LaunchDarklyProvider | None = None
        self._client: LDClient | None = None  # the provider's, once it is built
        self._to_ld_context = EvaluationContextConverter().to_ld_context
        self._shapes: dict[str, _FlagShape] = {}
        self._store = _ObservedStore(self._store_changed)
        self._initialized = False
        self._lock = threading.Lock()
        self._snapshot_file: str | None = None

    # -- construction ------------------------------------------------------------------

    def _config(self) -> Config:
        p = self.profile
        if self._snapshot is not None:
            self._snapshot_file = write_private_json(dict(self._snapshot), "flagwarden-ld-")
            return Config(
                "flagwarden-snapshot",
                update_processor_class=Files.new_data_source(paths=[self._snapshot_file]),
                send_events=False,
                diagnostic_opt_out=True,
                feature_store=self._store,
            )
        kwargs: dict[str, Any] = {}
        for field in ("base_uri", "stream_uri", "events_uri"):
            value = getattr(p, field)
            if value:
                kwargs[field] = value.rstrip("/")
        return Config(
            p.sdk_key.get_secret_value(),
            stream=p.stream,
            send_events=p.send_events,
            initial_reconnect_delay=p.initial_reconnect_delay,
            feature_store=self._store,
            **kwargs,
        )

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        with self._lock:
            if self._provider is not None:
                return
            start_wait = 5.0 if self._snapshot is not None else self.profile.start_wait
            # The wrapper builds its LDClient and blocks up to start_wait for the first data.
            provider = LaunchDarklyProvider(self._config(), start_wait=start_wait)
            self._client, self._provider = provider.client, provider
            status_provider = provider.client.data_source_status_provider
            status_provider.add_listener(self._on_status)
        if self._provider.client.is_initialized():
            self._set_status(ProviderStatus.READY)
        else:
            status = status_provider.status
            self._set_status(
                ProviderStatus.ERROR, self._describe(status, "no data within start_wait")
            )

    @property
    def has_data(self) -> bool:
        # The store fills while the wrapper's constructor still blocks: until that returns,
        # there is no client to answer with, and the chain must go on serving its snapshot.
        return self._client is not None and self._store.has_data

    def _on_status(self, status: DataSourceStatus) -> None:
        state = status.state
        if state == DataSourceState.VALID:
            self._set_status(ProviderStatus.READY)
        elif state == DataSourceState.INTERRUPTED:
            if self._store.has_data:
                self._set_status(ProviderStatus.STALE, self._describe(status, "stream interrupted"))
            else:
                self._set_status(ProviderStatus.ERROR, self._describe(status, "not connected"))
        elif state == DataSourceState.OFF:
            self._set_status(ProviderStatus.ERROR, self._describe(status, "data source off"))

    @staticmethod
    def _describe(status: DataSourceStatus, fallback: str) -> str:
        error = status.error
        if error is None:
            return f"launchdarkly: {fallback}"
        detail = error.message or (f"HTTP {error.status_code}" if error.status_code else fallback)
        return f"launchdarkly: {error.kind}: {detail}"

    def _store_changed(self, flags: dict[str, Any]) -> None:
        for key, flag in flags.items():
            self._shapes[key] = _flag_shape(flag)
        if self._initialized:
            self._configuration_changed(sorted(flags))
        self._initialized = True

    def shutdown(self) -> None:
        with self._lock:
            provider, self._provider, self._client = self._provider, None, None
        if provider is not None:
            provider.client.data_source_status_provider.remove_listener(self._on_status)
            provider.client.close()
        if self._snapshot_file:
            with contextlib.suppress(OSError):
                os.unlink(self._snapshot_file)

    def depends_on_key(self, flag_key: str) -> bool:
        shape = self._shapes.get(flag_key)
        return shape.key_dependent if shape is not None else False

    def recreate(self) -> LaunchDarklyVendor:
        return LaunchDarklyVendor(self.profile, snapshot=self._snapshot)

    def flag_version(self, flag_key: str) -> tuple[str | None, str | None]:
        """The flag's version in LaunchDarkly (it grows with every change to the flag)."""
        if not self._store.has_data:
            return None, None
        flag = self._store.get(FEATURES, flag_key, lambda x: x)
        version = _as_dict(flag).get("version") if flag is not None else None
        return (None if version is None else str(version)), None

    def export_snapshot(self) -> dict[str, Any] | None:
        if not self._store.has_data:
            return None
        return {
            "flags": {k: _as_dict(v) for k, v in self._store.all(FEATURES, lambda x: x).items()},
            "segments": {k: _as_dict(v) for k, v in self._store.all(SEGMENTS, lambda x: x).items()},
        }

    # -- evaluation --------------------------------------------------------------------

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        client = self._client
        if client is None:
            return error_details(default_value, ErrorCode.PROVIDER_NOT_READY, "not initialized")
        if evaluation_context is None:
            return FlagResolutionDetails(
                value=default_value, reason=Reason.ERROR, error_code=ErrorCode.TARGETING_KEY_MISSING
            )
        result = client.variation_detail(
            flag_key, self._to_ld_context(evaluation_context), default_value
        )
        value = _cast(flag_type, result.value)
        if value is None:
            return FlagResolutionDetails(
                value=default_value, reason=Reason.ERROR, error_code=ErrorCode.TYPE_MISMATCH
            )
        index = result.variation_index
        reason = result.reason
        metadata: dict[str, Any] = {} if index is None else {"variationIndex": index}
        if reason.get("inExperiment") is True:
            metadata["inExperiment"] = True
        rule_index = reason.get("ruleIndex")
        if isinstance(rule_index, int):
            metadata["ruleIndex"] = rule_index
        for key in ("ruleId", "prerequisiteKey", "bigSegmentsStatus"):
            text = reason.get(key)
            if isinstance(text, str):
                metadata[key] = text
        kind = reason.get("kind")
        error_code = None
        if kind in _OURS:
            of_reason: str = self._reason(flag_key, kind, rule_index)
            metadata["launchdarkly.reason"] = kind
        elif kind.__class__ is str:
            of_reason = _REASONS.get(kind, kind)
            if kind == "ERROR":
                error_code = _ERROR_CODES.get(str(reason.get("errorKind")), ErrorCode.GENERAL)
        else:
            of_reason = ""
        return FlagResolutionDetails(
            value=value,
            error_code=error_code,
            reason=of_reason,
            variant=None if index is None else str(index),
            flag_metadata=metadata,
        )

    def _reason(self, flag_key: str, raw: str, rule_index: Any) -> str:
        if raw == "PREREQUISITE_FAILED":
            # A failed prerequisite serves the flag's off variation: for this context it is off.
            return Reason.DISABLED
        shape = self._shapes.get(flag_key)
        fallthrough_rollout, rule_rollouts = (shape[0], shape[1]) if shape else (False, frozenset())
        if raw == "FALLTHROUGH":
            return Reason.SPLIT if fallthrough_rollout else Reason.DEFAULT
        return Reason.SPLIT if rule_index in rule_rollouts else Reason.TARGETING_MATCH


def _cast(flag_type: FlagType, value: Any) -> Any:
    """The published provider's type check and cast: the value, or None for the wrong type."""
    if flag_type is FlagType.BOOLEAN:
        return value if isinstance(value, bool) else None
    if flag_type is FlagType.STRING:
        return value if isinstance(value, str) else None
    if isinstance(value, bool):
        return None
    if flag_type is FlagType.INTEGER:
        return int(value) if isinstance(value, int | float) else None  # decimals truncated
    if flag_type is FlagType.FLOAT:
        return float(value) if isinstance(value, int | float) else None
    return value if isinstance(value, dict | list) else None
