"""Split (Harness FME), our own thin provider on ``splitio_client``.

Not ``split-openfeature-provider``: it parses the treatment name as JSON for objects, blocks
100 ms per call while not ready, maps every success to TARGETING_MATCH and cannot shut down.
Here: booleans from on/off/true/false, numbers from the treatment name, objects from the
treatment's configuration JSON, Split's labels to OpenFeature reasons, an immediate
PROVIDER_NOT_READY while the SDK has no data, and ``shutdown()`` destroys the factory.

Split's Python SDK reports neither readiness changes nor connection loss, so we watch its
feature-flag fetches to know when the service is unreachable and when it is back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, Reason
from openfeature.provider import ProviderStatus
from splitio import get_factory
from splitio.client.factory import TimeoutException

from flagwarden.logs import get_logger
from flagwarden.profiles import SplitProfile
from flagwarden.providers.base import SourceProvider, error_details

__all__ = ["SplitVendor", "parse_treatment"]

_log = get_logger("flagwarden.split")

_TRUE = frozenset({"on", "true"})
_FALSE = frozenset({"off", "false"})

# Split impression labels -> OpenFeature reasons; any other label is a targeting rule's.
_LABEL_REASONS = {
    "killed": Reason.DISABLED,
    "default rule": Reason.DEFAULT,
    "not in split": Reason.DEFAULT,
    "default treatment": Reason.DEFAULT,
    "whitelisted": Reason.TARGETING_MATCH,
}


class TreatmentError(ValueError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_treatment(flag_type: FlagType, treatment: str, config: str | None) -> Any:
    """The value a treatment stands for, as ``flag_type``; raises TreatmentError."""
    if flag_type is FlagType.STRING:
        return treatment
    if flag_type is FlagType.BOOLEAN:
        lowered = treatment.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise TreatmentError(
            ErrorCode.TYPE_MISMATCH, f"treatment {treatment!r} is not on/off/true/false"
        )
    if flag_type is FlagType.INTEGER:
        try:
            return int(treatment)
        except ValueError:
            raise TreatmentError(
                ErrorCode.TYPE_MISMATCH, f"treatment {treatment!r} is not an integer"
            ) from None
    if flag_type is FlagType.FLOAT:
        try:
            return float(treatment)
        except ValueError:
            raise TreatmentError(
                ErrorCode.TYPE_MISMATCH, f"treatment {treatment!r} is not a number"
            ) from None
    if config is None:
        raise TreatmentError(
            ErrorCode.TYPE_MISMATCH, f"treatment {treatment!r} has no configuration object"
        )
    try:
        value = json.loads(config)
    except json.JSONDecodeError as exc:
        raise TreatmentError(
            ErrorCode.PARSE_ERROR, f"treatment {treatment!r} configuration: {exc.msg}"
        ) from None
    if not isinstance(value, dict | list):
        raise TreatmentError(
            ErrorCode.TYPE_MISMATCH, f"treatment {treatment!r} configuration is not an object"
        )
    return value


def _split_attributes(context: EvaluationContext) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in context.attributes.items():
        if isinstance(value, datetime):
            attributes[key] = int(value.timestamp())
        elif isinstance(value, bool | int | float | str | list | set):
            attributes[key] = value
    return attributes


def split_depends_on_key(split: Mapping[str, Any]) -> bool:
    """Whether a split's treatment can differ between keys (percentages, key lists, segments)."""
    if split.get("killed"):
        return False
    if (split.get("trafficAllocation") or 100) < 100:
        return True
    for condition in split.get("conditions") or []:
        if sum(1 for p in condition.get("partitions") or [] if p.get("size")) > 1:
            return True
        for matcher in (condition.get("matcherGroup") or {}).get("matchers") or []:
            selector = matcher.get("keySelector") or {}
            if matcher.get("matcherType") != "ALL_KEYS" and selector.get("attribute") is None:
                return True
    return False


class _LabelListener:
    """Split's impression listener, called synchronously: hands each call's label back."""

    def __init__(self) -> None:
        self.local = threading.local()

    def log_impression(self, data: Mapping[str, Any]) -> None:
        self.local.label = data["impression"].label


class SplitVendor(SourceProvider):
    """A Split connection as a flagwarden source (live, or replaying a snapshot locally)."""

    source: ClassVar[str] = "vendor"

    def __init__(self, profile: SplitProfile, *, snapshot: Mapping[str, Any] | None = None):
        super().__init__(name=profile.name, kind="split")
        self.profile = profile
        self._snapshot = snapshot
        self._factory: Any = None
        self._client: Any = None
        self._labels = _LabelListener()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._snapshot_dir: str | None = None
        self._fetch_ok = True

    # -- construction ------------------------------------------------------------------

    def _build_factory(self) -> Any:
        p = self.profile
        if self._snapshot is not None:
            self._snapshot_dir = tempfile.mkdtemp(prefix="flagwarden-split-")
            split_file = os.path.join(self._snapshot_dir, "splits.json")
            with open(split_file, "w") as fh:
                json.dump(self._snapshot["splits"], fh)
            for name, segment in (self._snapshot.get("segments") or {}).items():
                with open(os.path.join(self._snapshot_dir, f"{name}.json"), "w") as fh:
                    json.dump(segment, fh)
            factory = get_factory(
                "localhost",
                config={"splitFile": split_file, "segmentDirectory": self._snapshot_dir},
            )
            # Localhost mode takes no listener from its config; give its recorder ours.
            from splitio.client.listener import ImpressionListenerWrapper

            factory._recorder._listener = ImpressionListenerWrapper(self._labels, None)
            return factory
        urls = {
            field: getattr(p, field)
            for field in (
                "sdk_api_base_url",
                "events_api_base_url",
                "auth_api_base_url",
                "streaming_api_base_url",
                "telemetry_api_base_url",
            )
            if getattr(p, field)
        }
        config = {
            "streamingEnabled": p.streaming,
            "featuresRefreshRate": p.features_refresh_rate,
            "segmentsRefreshRate": p.segments_refresh_rate,
            "impressionsMode": p.impressions_mode,
            "impressionListener": self._labels,
        }
        # get_factory mutates its config: hand it a fresh dict every time.
        return get_factory(p.sdk_key.get_secret_value(), config=dict(config), **urls)

    def _observe_fetches(self, factory: Any) -> None:
        """Wrap the SDK's feature-flag fetch to learn of outages, recoveries and changes."""
        try:
            api = factory._sync_manager._synchronizer._split_synchronizers.split_sync._api
        except AttributeError:
            _log.warning("flagwarden.split_outage_detection_unavailable")
            return
        fetch = api.fetch_splits

        def observed_fetch(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fetch(*args, **kwargs)
            except Exception as exc:
                self._fetch_failed(exc)
                raise
            self._fetch_succeeded(result)
            return result

        api.fetch_splits = observed_fetch

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        with self._lock:
            if self._factory is not None:
                return
            self._factory = self._build_factory()
            if self._snapshot is None:
                self._observe_fetches(self._factory)
            self._client = self._factory.client()
        wait = 5.0 if self._snapshot is not None else self.profile.start_wait
        try:
            self._factory.block_until_ready(wait)
        except TimeoutException:
            self._set_status(ProviderStatus.ERROR, f"split: not ready within {wait:g}s")
            threading.Thread(
                target=self._await_ready, name=f"flagwarden-split-{self.name}", daemon=True
            ).start()
            return
        self._set_status(ProviderStatus.READY)

    def _await_ready(self) -> None:
        while not self._stop.wait(0.1):
            factory = self._factory
            if factory is None:
                return
            if factory.ready:
                self._set_status(ProviderStatus.READY)
                return

    def _fetch_failed(self, exc: BaseException) -> None:
        self._fetch_ok = False
        message = f"split: feature flag fetch failed: {type(exc).__name__}"
        if self.has_data:
            self._set_status(ProviderStatus.STALE, message)
        else:
            self._set_status(ProviderStatus.ERROR, message)

    def _fetch_succeeded(self, result: Mapping[str, Any]) -> None:
        self._fetch_ok = True
        factory = self._factory
        if factory is not None and factory.ready:
            self._set_status(ProviderStatus.READY)
        changed = [s.get("name") for s in (result.get("ff") or {}).get("d") or []]
        if changed and self._status is ProviderStatus.READY:
            self._configuration_changed(sorted(n for n in changed if n))

    @property
    def has_data(self) -> bool:
        factory = self._factory
        return factory is not None and self._client is not None and factory.ready

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            factory, self._factory, self._client = self._factory, None, None
        if factory is not None:
            done = threading.Event()
            factory.destroy(done)
            done.wait(5)
        if self._snapshot_dir:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)

    def depends_on_key(self, flag_key: str) -> bool:
        factory = self._factory
        if factory is None:
            return False
        split = factory._storages["splits"].get(flag_key)
        return split is not None and split_depends_on_key(split.to_json())

    def recreate(self) -> SplitVendor:
        return SplitVendor(self.profile, snapshot=self._snapshot)

    def flag_version(self, flag_key: str) -> tuple[str | None, str | None]:
        """The split's change number (Split's version of a flag's definition)."""
        factory = self._factory
        if factory is None or not factory.ready:
            return None, None
        split = factory._storages["splits"].get(flag_key)
        number = getattr(split, "change_number", None) if split is not None else None
        return (None if number is None else str(number)), None

    def export_snapshot(self) -> dict[str, Any] | None:
        factory = self._factory
        if factory is None or not factory.ready:
            return None
        storages = factory._storages
        splits = storages["splits"]
        segments = storages["segments"]
        change_number = splits.get_change_number()
        segment_docs: dict[str, Any] = {}
        for name in splits.get_segment_names():
            segment = segments.get(name)
            if segment is None:
                continue
            segment_docs[name] = {
                "name": name,
                "added": sorted(segment.keys),
                "removed": [],
                "since": -1,
                "till": segment.change_number,
            }
        return {
            "splits": {
                "ff": {
                    "d": [s.to_json() for s in splits.get_all_splits()],
                    "s": -1,
                    "t": change_number,
                },
                "rbs": {"d": [], "s": -1, "t": -1},
            },
            "segments": segment_docs,
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
        if client is None or not self.has_data:
            return error_details(default_value, ErrorCode.PROVIDER_NOT_READY, "split: no data yet")
        if evaluation_context is None or not evaluation_context.targeting_key:
            return error_details(
                default_value, ErrorCode.TARGETING_KEY_MISSING, "split needs a targeting key"
            )
        local = self._labels.local
        local.label = None
        treatment, config = client.get_treatment_with_config(
            evaluation_context.targeting_key, flag_key, _split_attributes(evaluation_context)
        )
        label = local.label
        if treatment == "control":
            if label is None or label == "definition not found":
                return error_details(
                    default_value, ErrorCode.FLAG_NOT_FOUND, f"split {flag_key!r} not found"
                )
            return error_details(default_value, ErrorCode.GENERAL, f"split: {label}")
        try:
            value = parse_treatment(flag_type, treatment, config)
        except TreatmentError as exc:
            return error_details(default_value, exc.code, str(exc))
        reason = _LABEL_REASONS.get(label or "", Reason.TARGETING_MATCH)
        return FlagResolutionDetails(
            value=value,
            variant=treatment,
            reason=reason,
            flag_metadata={"split.label": label} if label else {},
        )
