"""Flags from a local flagd flag-definition file (JSON or YAML), evaluated in-process.

Evaluation is openfeature-flagd-core's (JSON Logic, ``fractional``, ``sem_ver``...), so a file
behaves as it would under a flagd server; flagd-core itself answers a flag without (or with a
null) ``defaultVariant`` with the caller's default and reason DEFAULT. Added here: an invalid
flag is reported (every problem of it) and skipped (flagd-core refuses the whole file), as is
one holding a value JSON cannot carry (an unquoted YAML date: flagd-core or its ``$ref``
substitution would fail on the whole file); fields flagd ignores are dropped (flagd-core refuses
those too) and noted, not skipped; and a boolean asked for as a number is a TYPE_MISMATCH.

The file is polled (a stat call on a background thread, never on the evaluation path). A file
that disappears, becomes unreadable or fails to parse makes the provider STALE: the last good
definitions keep answering until a good file makes it READY again.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, OpenFeatureError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType
from openfeature.provider import ProviderStatus

from flagwarden.background import run_supervised
from flagwarden.documents import parse_yaml
from flagwarden.errors import ConfigError
from flagwarden.logs import get_logger
from flagwarden.providers.base import SourceProvider, error_details, too_deep, type_matches
from flagwarden.providers.snapshot import write_private_json

__all__ = ["MAX_NESTING", "FileProvider", "FlagFile", "FlagProblem", "read_flag_file"]

_log = get_logger("flagwarden.file")

_RESOLVERS = {t: f"resolve_{t.value.lower()}_value" for t in FlagType}  # FlagdCore's methods
# The flag fields flagd-core knows; it refuses the whole file for any other (flagd ignores them).
_FLAG_FIELDS = ("state", "variants", "defaultVariant", "targeting", "metadata")
_SCALAR = (str, int, float, bool)
_IGNORED = f"ignored: is not a flagd flag field ({', '.join(_FLAG_FIELDS)})"
_MISFIT = "holds a value JSON cannot carry ({}): quote it in YAML"
# Deeper than this, a file is refused whole: copying, hashing and JSON Logic evaluation all
# recurse per level, and a RecursionError there must never depend on the caller's stack.
MAX_NESTING = 100


@dataclass(frozen=True)
class FlagProblem:
    """One problem of a flag file: ``flag`` is None for the flag set itself.

    ``skipped``: the flag (or the flag set's part) is not used; False for a note, such as a
    field flagd ignores.
    """

    path: str
    flag: str | None
    field: str
    problem: str
    skipped: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.problem}"


@dataclass
class FlagFile:
    """A parsed flag file: the document as written, its usable flags and evaluators, and every
    problem (the skipped ones and the notes)."""

    path: Path
    document: dict[str, Any]
    flags: dict[str, dict[str, Any]]
    problems: list[FlagProblem] = field(default_factory=list)
    evaluators: dict[str, Any] = field(default_factory=dict)  # the usable ``$evaluators``

    def evaluable(self) -> dict[str, Any]:
        """The document flagd-core gets: valid flags, known fields only, a private copy."""
        doc: dict[str, Any] = {"flags": self.flags}
        if self.evaluators:
            doc["$evaluators"] = self.evaluators
        if "metadata" in self.document and not any(
            p.flag is None and p.skipped and p.field.split(".")[0] == "metadata"
            for p in self.problems
        ):
            doc["metadata"] = self.document["metadata"]
        return copy.deepcopy(doc)  # flagd-core's FlagStore.update mutates its input


def _json_misfit(value: Any) -> tuple[list[str], str] | None:
    """Where (a path of keys) and what (a type) the first value JSON cannot carry is, or None.

    What a JSON round trip would refuse (a YAML date, set or binary; a cycle of YAML aliases;
    NaN or infinity, which no JSON parser reads) or change (a mapping key that is not a string).
    """
    done: set[int] = set()  # containers already found fine (YAML aliases share them)
    ancestors: set[int] = set()

    def walk(node: Any) -> tuple[list[str], str] | None:
        if node is None or isinstance(node, (str, bool, int)):
            return None
        if isinstance(node, float):
            return None if math.isfinite(node) else ([], f"float {node!r}")
        if not isinstance(node, (dict, list)):
            return [], type(node).__name__
        if id(node) in done:
            return None
        if id(node) in ancestors:
            return [], f"{type(node).__name__} that contains itself"
        ancestors.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(node, dict) and not isinstance(key, str):
                return [], f"{type(key).__name__} key {key!r}"
            if (found := walk(item)) is not None:
                return [str(key), *found[0]], found[1]
        ancestors.discard(id(node))
        done.add(id(node))
        return None

    try:
        return walk(value)
    except RecursionError:
        return [], "nesting too deep"


def _misfit_problem(where: str, value: Any) -> tuple[str, str] | None:
    """(field, problem) when ``value`` (at ``where``) holds something JSON cannot carry."""
    found = _json_misfit(value)
    if found is None:
        return None
    return ".".join([where, *found[0]]), _MISFIT.format(found[1])


def _metadata_problems(metadata: Any) -> list[str]:
    if not isinstance(metadata, Mapping):
        return [f"expected a mapping of names to strings, numbers or booleans, got {metadata!r}"]
    return [
        f"{key!r}: {value!r} is not a string, number or boolean"
        for key, value in metadata.items()
        if not isinstance(key, str) or not key or not isinstance(value, _SCALAR)
    ]


def _flag_problems(flag: Any) -> list[tuple[str, str, bool]]:
    """Every (field, problem, skipped) of a flag definition: skipped when it is unusable.

    A check is left out only when an earlier part it needs is unusable (whether the default
    variant is one of the variants needs variants named by strings).
    """
    if not isinstance(flag, Mapping):
        return [("", f"expected a flag definition mapping, got {type(flag).__name__}", True)]
    found: list[tuple[str, str]] = []
    if "state" not in flag:
        found.append(("state", "is required but missing"))
    elif (state := flag["state"]) not in ("ENABLED", "DISABLED"):
        found.append(("state", f"expected ENABLED or DISABLED, got {state!r}"))
    variants: Any = flag.get("variants")
    names_usable = False
    if "variants" not in flag:
        found.append(("variants", "is required but missing"))
    elif not isinstance(variants, Mapping):
        found.append(("variants", f"expected a non-empty mapping of variants, got {variants!r}"))
    else:
        names_usable = True
        if not variants:
            found.append(("variants", "expected a non-empty mapping of variants, got {}"))
        for name, value in variants.items():
            if not isinstance(name, str) or not name:
                # YAML 1.1 reads unquoted on/off/yes/no/true/false as booleans.
                found.append(
                    ("variants", f"variant name {name!r} is not a string (quote it in YAML)")
                )
                names_usable = False
            elif value is None:
                found.append((f"variants.{name}", "null is not a variant value"))
            elif misfit := _misfit_problem(f"variants.{name}", value):
                found.append(misfit)
    default = flag.get("defaultVariant")
    if isinstance(default, bool):
        default = str(default).lower()  # as flagd-core reads it
    if default is not None and default != "":
        if not isinstance(default, str):
            found.append(("defaultVariant", f"expected a variant name or null, got {default!r}"))
        elif names_usable and default not in variants:
            found.append(
                ("defaultVariant", f"{default!r} is not one of the variants {sorted(variants)}")
            )
    targeting = flag.get("targeting")
    if targeting is not None:
        if not isinstance(targeting, Mapping):
            found.append(
                ("targeting", f"expected a JSON Logic rule (a mapping), got {targeting!r}")
            )
        elif misfit := _misfit_problem("targeting", targeting):
            found.append(misfit)
    metadata = flag.get("metadata")
    if metadata is not None:
        if problems := _metadata_problems(metadata):
            found.extend(("metadata", problem) for problem in problems)
        elif misfit := _misfit_problem("metadata", metadata):
            found.append(misfit)
    ignored = [(str(name), _IGNORED, False) for name in flag if name not in _FLAG_FIELDS]
    return [(where, problem, True) for where, problem in found] + ignored


def read_flag_file(path: Path) -> FlagFile:
    """Parse a flagd flag file; each invalid flag becomes problems, the others stay usable.

    Raises ConfigError (file, field, problem) when the file is unreadable, malformed or has no
    ``flags`` mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(path, None, f"cannot read the flag file ({reason})") from None
    try:
        # YAML with aliases refused (a few hundred bytes of them expand to billions of nodes
        # for whatever walks the document) and nesting bounded; otherwise read as YAML reads it.
        data = json.loads(text) if path.suffix == ".json" else parse_yaml(text, path, strict=False)
    except RecursionError:
        raise ConfigError(path, None, f"nested deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:
        raise ConfigError(path, None, f"malformed flag file: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(path, None, f"malformed flag file: {exc.problem}") from None
    if (deep := too_deep(data, MAX_NESTING)) is not None:
        raise ConfigError(path, deep, f"nested deeper than {MAX_NESTING} levels")
    if not isinstance(data, dict) or not isinstance(data.get("flags"), dict):
        raise ConfigError(path, "flags", "expected a mapping of flag definitions (flagd format)")
    loaded = FlagFile(path=path, document=data, flags={})

    def report(flag: str | None, where: str, problem: str, skipped: bool = True) -> None:
        loaded.problems.append(FlagProblem(str(path), flag, where, problem, skipped))

    if "metadata" in data:
        if problems := _metadata_problems(data["metadata"]):
            for problem in problems:
                report(None, "metadata", problem)
        elif misfit := _misfit_problem("metadata", data["metadata"]):
            report(None, *misfit)
    evaluators = data.get("$evaluators")
    if evaluators is not None and not isinstance(evaluators, Mapping):
        report(
            None, "$evaluators", f"expected a mapping of named targeting rules, got {evaluators!r}"
        )
    elif evaluators is not None:
        for name, rule in evaluators.items():  # each usable alone: a bad one is only left out
            if not isinstance(name, str):
                report(
                    None,
                    "$evaluators",
                    f"evaluator name {name!r} is not a string (quote it in YAML)",
                )
            elif misfit := _misfit_problem(f"$evaluators.{name}", rule):
                report(None, *misfit)
            else:
                loaded.evaluators[name] = rule
    for key, flag in data["flags"].items():
        found = _flag_problems(flag)
        if not isinstance(key, str) or not key:
            found.insert(0, ("", "a flag key must be a non-empty string (quote it in YAML)", True))
        for where, problem, skipped in found:
            report(str(key), f"flags.{key}" + (f".{where}" if where else ""), problem, skipped)
        if not any(skipped for *_, skipped in found):
            loaded.flags[key] = {f: flag[f] for f in _FLAG_FIELDS if f in flag}
    return loaded


def _uses_targeting_key(targeting: Any) -> bool:
    """Whether a flagd targeting rule can tell targeting keys apart (fractional buckets by it)."""
    if not targeting:
        return False
    text = json.dumps(targeting)
    # A $ref'd evaluator may use any of these: count it in, conservatively.
    return any(marker in text for marker in ("targetingKey", "fractional", "$flagd", "$ref"))


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
        self._stamp: tuple[int, ...] | None = None
        self._problem: str | None = None  # what is wrong with the file now, reported once
        self._invalid: dict[str, str] = {}
        self._variants: dict[str, Mapping[str, Any]] = {}
        self._key_dependent: dict[str, bool] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # The stamp of a file that failed to load once while the watcher polls: judged only
        # when a second look finds it unchanged, so a file caught mid-write (truncated, then
        # written) is not reported as broken.
        self._unsettled: tuple[tuple[int, ...] | None] | None = None

    @property
    def invalid_flags(self) -> dict[str, str]:
        """Flags skipped at the last load: key -> "field: problem" (several joined by "; ")."""
        return dict(self._invalid)

    def _file_stamp(self) -> tuple[int, ...] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        # ctime and inode too: chmod and an atomic rename-over change neither mtime nor size.
        return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)

    def _load(self, stamp: tuple[int, ...] | None) -> list[str]:
        """Load the file; ConfigError (file and reason) for whatever makes it unusable, so a
        failure can never leave the provider READY on definitions it no longer has."""
        try:
            return self._load_file(stamp)
        except ConfigError:
            raise
        except Exception as exc:  # RecursionError, MemoryError, a bug: the file is not loaded
            reason = f"cannot load the flag file ({type(exc).__name__}: {exc})"
            raise ConfigError(self.path, None, reason) from None

    def _load_file(self, stamp: tuple[int, ...] | None) -> list[str]:
        loaded = read_flag_file(self.path)
        # Everything derived first, kept aside until flagd-core takes the definitions: a file it
        # refuses leaves the previous flags and all of this consistent with them.
        invalid: dict[str, list[str]] = {}
        for problem in loaded.problems:
            if problem.flag and problem.skipped:
                invalid.setdefault(problem.flag, []).append(f"{problem.field}: {problem.problem}")
        variants = {key: flag["variants"] for key, flag in loaded.flags.items()}
        key_dependent = {
            key: _uses_targeting_key(flag.get("targeting")) for key, flag in loaded.flags.items()
        }
        definitions = loaded.evaluable()
        served = loaded.evaluable()  # flagd-core mutates its copy: the snapshot keeps its own
        try:
            changed = self._core.set_flags_and_get_changed_keys(definitions)
        except Exception as exc:  # whatever flagd-core still refuses: the file, not a crash
            raise ConfigError(self.path, None, f"flagd-core refused the file: {exc}") from None
        self._data = served
        self._invalid = {key: "; ".join(problems) for key, problems in invalid.items()}
        self._variants = variants
        self._key_dependent = key_dependent
        self._stamp = stamp
        for problem in loaded.problems:
            event = "flag_definition_invalid" if problem.skipped else "flag_field_ignored"
            _log.warning(f"flagwarden.{event}", **asdict(problem))
        return changed

    def _fail(self, exc: ConfigError, stamp: tuple[int, ...] | None) -> None:
        """The file cannot be used: go STALE (ERROR before any good load), reported once."""
        self._stamp = stamp
        message = str(exc)
        if message == self._problem or self._stop.is_set():
            return
        self._problem = message
        stale = self._data is not None  # the last good definitions keep answering
        _log.error("flagwarden.flag_file_unusable", path=str(self.path), error=message, stale=stale)
        self._set_status(ProviderStatus.STALE if stale else ProviderStatus.ERROR, message)

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        stamp = self._file_stamp()
        try:
            self._load(stamp)
        except ConfigError as exc:
            self._fail(exc, stamp)
            raise
        finally:
            if self._watcher is None and self._snapshot_file is None:  # a snapshot never changes
                # Supervised: a pass that raises is reported and retried with backoff.
                self._watcher = run_supervised(
                    self.watcher_name, self._poll, self.poll_interval, self._stop
                )
        self._set_status(ProviderStatus.READY)

    @property
    def watcher_name(self) -> str:
        """The watcher thread's name (one per profile), as background health keys it."""
        return f"flagwarden-file-{self.name}"

    def _poll(self) -> None:
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Reload when the file changed since the last load; True when flags were replaced.

        A file that fails to load is reported when the next call finds it unchanged.
        """
        stamp = self._file_stamp()
        if stamp == self._stamp and (stamp is not None or self._problem is not None):
            return False  # unchanged, or still gone and already reported
        try:
            changed = self._load(stamp)
        except ConfigError as exc:
            if self._unsettled != (stamp,):
                self._unsettled = (stamp,)
                return False
            self._fail(exc, stamp)
            return False
        self._unsettled = None
        if self._problem is not None:
            _log.info("flagwarden.flag_file_recovered", path=str(self.path))
        self._problem = None
        self._set_status(ProviderStatus.READY)
        self._configuration_changed(changed)
        return True

    def depends_on_key(self, flag_key: str) -> bool:
        return self._key_dependent.get(flag_key, False)

    def flag_version(self, flag_key: str) -> tuple[str | None, str | None]:
        """flagd's ``version`` and ``flagSetId`` metadata: the flag's over the file's."""
        data = self._data
        if data is None:
            return None, None
        flag = data["flags"].get(flag_key)
        if flag is None:
            return None, None
        metadata = {**data.get("metadata", {}), **(flag.get("metadata") or {})}
        version, set_id = metadata.get("version"), metadata.get("flagSetId")
        return (
            None if version is None else str(version),
            None if set_id is None else str(set_id),
        )

    def export_snapshot(self) -> dict[str, Any] | None:
        """The definitions being served (flagd format: the valid flags of the file as last
        loaded), for a last-known-good snapshot that replays exactly what was served."""
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
            details = getattr(self._core, _RESOLVERS[flag_type])(
                flag_key, default_value, evaluation_context
            )
        except OpenFeatureError as exc:
            problem = self._invalid.get(flag_key)
            if problem is not None and exc.error_code is ErrorCode.FLAG_NOT_FOUND:
                message = f"flag definition invalid in {self.path}, skipped: {problem}"
                return error_details(default_value, ErrorCode.PARSE_ERROR, message)
            return error_details(default_value, exc.error_code, exc.error_message or str(exc))
        except Exception as exc:  # a broken targeting rule must not reach the pipeline
            return error_details(default_value, ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}")
        if details.variant is not None:
            # flagd-core passes a boolean as a float (bool is an int in Python) and converts it.
            raw = self._variants.get(flag_key, {}).get(details.variant, details.value)
            if not type_matches(flag_type, raw):
                message = f"flag {flag_key!r} is {type(raw).__name__}, not {flag_type.value}"
                return error_details(
                    default_value, ErrorCode.TYPE_MISMATCH, message, details.flag_metadata
                )
        return details
