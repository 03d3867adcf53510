"""Flags from a local flagd flag-definition file (JSON or YAML), evaluated in-process.

Evaluation is openfeature-flagd-core's (JSON Logic, ``fractional``, ``sem_ver``...), so a file
behaves exactly as it would under a flagd server. The file is polled for changes (a stat call
on a background thread, never on the evaluation path); a file that fails to parse on reload is
reported and the previous flags stay in force.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import structlog
import yaml
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, OpenFeatureError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType
from openfeature.provider import ProviderStatus

from flagwarden.errors import ConfigError
from flagwarden.providers.base import SourceProvider, error_details
from flagwarden.providers.snapshot import write_private_json

__all__ = ["FileProvider", "read_flag_file"]

_log = structlog.get_logger("flagwarden.file")

_RESOLVERS = {
    FlagType.BOOLEAN: "resolve_boolean_value",
    FlagType.STRING: "resolve_string_value",
    FlagType.INTEGER: "resolve_integer_value",
    FlagType.FLOAT: "resolve_float_value",
    FlagType.OBJECT: "resolve_object_value",
}


def read_flag_file(path: Path) -> dict[str, Any]:
    """Parse a flagd flag file; raises ConfigError naming the file and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the flag file ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(path, None, f"malformed flag file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("flags"), dict):
        raise ConfigError(path, "flags", "expected a mapping of flag definitions (flagd format)")
    for key, flag in data["flags"].items():
        if not isinstance(flag, dict):
            raise ConfigError(path, f"flags.{key}", "expected a flag definition mapping")
        for field in ("state", "variants", "defaultVariant"):
            if field not in flag:
                raise ConfigError(path, f"flags.{key}.{field}", "is required but missing")
        if flag["defaultVariant"] is not None and flag["defaultVariant"] not in flag["variants"]:
            raise ConfigError(
                path,
                f"flags.{key}.defaultVariant",
                f"{flag['defaultVariant']!r} is not one of the variants {sorted(flag['variants'])}",
            )
    return data


def _uses_targeting_key(targeting: Any) -> bool:
    """Whether a flagd targeting rule can tell targeting keys apart (fractional buckets by it)."""
    if not targeting:
        return False
    text = json.dumps(targeting)
    return any(marker in text for marker in ("targetingKey", "fractional", "$flagd"))


class FileProvider(SourceProvider):
    source: ClassVar[str] = "file"

    def __init__(
        self,
        path: Path,
        *,
        name: str = "file",
        poll_interval: float = 0.5,
        snapshot: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name=name, kind="file")
        self._snapshot_file: str | None = None
        if snapshot is not None:
            # Replaying a last-known-good snapshot: the definitions, from a private file.
            self._snapshot_file = write_private_json(dict(snapshot), "flagwarden-flags-")
            path = Path(self._snapshot_file)
        self.path = Path(path)
        self._data: dict[str, Any] | None = None
        self.poll_interval = poll_interval
        self._core = FlagdCore()
        self._stamp: tuple[int, int] | None = None
        self._key_dependent: dict[str, bool] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _load(self) -> list[str]:
        stamp = self._file_stamp()
        data = read_flag_file(self.path)
        pristine = copy.deepcopy(data)  # flagd-core's FlagStore.update mutates its input
        changed = self._core.set_flags_and_get_changed_keys(data)
        self._data = pristine
        self._key_dependent = {
            key: _uses_targeting_key(flag.get("targeting")) for key, flag in data["flags"].items()
        }
        self._stamp = stamp
        return changed

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        try:
            self._load()
        except ConfigError as exc:
            self._set_status(ProviderStatus.ERROR, str(exc))
            raise
        finally:
            self._start_watcher()
        self._set_status(ProviderStatus.READY)

    def _start_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name=f"flagwarden-file-{self.name}", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Reload when the file changed since the last load; True when flags were replaced."""
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            changed = self._load()
        except ConfigError as exc:
            self._stamp = stamp  # report a broken file once, not every poll
            _log.error("flagwarden.flag_file_invalid", path=str(self.path), error=str(exc))
            return False
        self._set_status(ProviderStatus.READY)
        self._configuration_changed(changed)
        return True

    def depends_on_key(self, flag_key: str) -> bool:
        return self._key_dependent.get(flag_key, False)

    def export_snapshot(self) -> dict[str, Any] | None:
        """The flag file as last loaded (flagd format), for a last-known-good snapshot."""
        return None if self._data is None else dict(self._data)

    def shutdown(self) -> None:
        self._stop.set()
        if self._snapshot_file:
            Path(self._snapshot_file).unlink(missing_ok=True)

    def recreate(self) -> FileProvider:
        return FileProvider(self.path, name=self.name, poll_interval=self.poll_interval)

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        try:
            return getattr(self._core, _RESOLVERS[flag_type])(
                flag_key, default_value, evaluation_context
            )
        except OpenFeatureError as exc:
            return error_details(default_value, exc.error_code, exc.error_message or str(exc))
        except Exception as exc:  # a broken targeting rule must not reach the pipeline
            return error_details(default_value, ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}")
