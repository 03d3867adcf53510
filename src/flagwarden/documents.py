"""Reading the YAML documents flagwarden is configured with: a strict loader, ``${VAR}``
interpolation and durations. Every problem is a :class:`~flagwarden.errors.ConfigError` naming
the file and, where there is one, the position; never a value that might be a secret.

Hostile input is refused before it can cost anything: files over :data:`MAX_FILE_BYTES`,
text that is not UTF-8 (the byte offset is named), YAML aliases (``*name``; an anchor alone is
harmless) and nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from flagwarden.errors import ConfigError

__all__ = [
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_FILE_BYTES",
    "interpolate",
    "is_duration",
    "parse_duration",
    "parse_yaml",
    "read_text",
    "read_yaml",
]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Longer than any soak, window or report period anyone means; keeps date arithmetic in range.
MAX_DURATION = timedelta(days=3650)
# A policy or a config is a few kilobytes; a megabyte is a mistake or an attack.
MAX_FILE_BYTES = 1 << 20
# Real documents nest a handful of levels (flagd targeting a few dozen); Python's stack, 1000.
MAX_DEPTH = 100


def is_duration(text: str) -> bool:
    """Whether ``text`` is written as a duration (``30m``), whatever its size."""
    return bool(_DURATION.match(text))


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"30m"``, ``"1h"``, ``"2d"``, ``"45s"``, ``"500ms"`` or a number of seconds.

    Negative, not-a-number and longer than ten years are refused (ValueError).
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 30s, 30m, 1h or 2d, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds <= MAX_DURATION.total_seconds():  # also refuses NaN
        raise ValueError(f"expected a duration between 0s and 3650d, got {value!r}")
    return timedelta(seconds=seconds)


class _Refused(Exception):
    """Input the loader will not build, at a position."""

    def __init__(self, mark: yaml.Mark, problem: str) -> None:
        super().__init__(problem)
        self.mark = mark
        self.problem = problem


class _BoundedLoader(yaml.SafeLoader):
    """Safe YAML without what makes it hostile: aliases are refused (400 bytes of them expand
    to gigabytes when walked) and so is deep nesting."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise _Refused(
                self.peek_event().start_mark,
                "YAML aliases (*name) are not allowed: write the value out",
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    self.peek_event().start_mark, f"nested more than {MAX_DEPTH} levels deep"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _StrictLoader(_BoundedLoader):
    """Bounded YAML, stricter for flagwarden's own documents: a key given twice is an error
    (the second would silently win) and dates stay text (the models parse them, so a bad one
    is a field error, not a bad file)."""


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the key {key!r} is given twice (line {seen[key]} and line {mark.line + 1})",
                mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_text(path: Path) -> str:
    """A document's text: at most :data:`MAX_FILE_BYTES`, UTF-8 (a bad byte is named by offset)."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)  # never more, whatever the file claims
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the file ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            path, None, f"is larger than {MAX_FILE_BYTES} bytes (1 MiB), the limit for a document"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path,
            None,
            f"is not UTF-8 text: byte {data[exc.start]:#04x} at offset {exc.start} (line {line})",
        ) from None


def parse_yaml(text: str, file: Path | str, *, strict: bool = True) -> Any:
    """Parse YAML; every problem is a ConfigError naming ``file``. Aliases and deep nesting are
    always refused; ``strict`` (flagwarden's own documents) also refuses a key given twice and
    keeps dates as text, where ``strict=False`` reads them as YAML does (flag files)."""
    try:
        return yaml.load(text, Loader=_StrictLoader if strict else _BoundedLoader)
    except _Refused as exc:
        where = f"line {exc.mark.line + 1}, column {exc.mark.column + 1}"
        raise ConfigError(file, None, f"refused at {where}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        # Position and problem only: YAML's own message quotes the line, which may hold a key.
        mark = exc.problem_mark
        pos = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(file, None, f"malformed YAML at {pos}: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            file,
            None,
            f"malformed YAML: character {exc.character:#06x} at position {exc.position} "
            "is not allowed",
        ) from None
    except yaml.YAMLError:
        raise ConfigError(file, None, "malformed YAML") from None
    except RecursionError:  # a backstop: MAX_DEPTH stops nesting long before the stack ends
        raise ConfigError(file, None, "malformed YAML: nested too deep") from None
    except ValueError as exc:  # a scalar YAML resolves but cannot build
        raise ConfigError(file, None, f"malformed YAML: a value cannot be read ({exc})") from None


def read_yaml(path: Path) -> Any:
    """Read and parse one YAML document (config, profile, policy) with every limit applied."""
    return parse_yaml(read_text(path), path)


def interpolate(value: Any, file: Path | str, field: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-fallback}`` in every string of a parsed document."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if fallback is not None:
                return fallback
            raise ConfigError(
                file,
                field or None,
                f"environment variable {name} is not set "
                f"(set it, or give a fallback as ${{{name}:-value}})",
            )

        return _VAR.sub(sub, value)
    if isinstance(value, Mapping):
        return {
            k: interpolate(v, file, f"{field}.{k}" if field else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, file, f"{field}[{i}]") for i, v in enumerate(value)]
    return value
