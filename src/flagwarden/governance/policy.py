"""Rollout policies as code: ``policies/<flag>.yaml``, one per governed flag.

Policies load per file: a file that cannot be read or validated is a problem of that file
and its flag (the ``flag:`` it names when that much can be read, else the file's stem); the
other policies are unaffected.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flagwarden.documents import interpolate, parse_duration, read_yaml
from flagwarden.errors import ConfigError
from flagwarden.validation import describe_validation_error

__all__ = [
    "Approvals",
    "Guard",
    "Policy",
    "PolicySet",
    "Prerequisite",
    "load_policies",
    "parse_duration",
    "read_policies",
    "sequencing_problems",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# A guard limit: one number, or a number per stage ({1: 0.05, 25: 0.03, 100: 0.02}).
Limit = float | dict[float, float]


def _finite(value: Any) -> float | None:
    """``value`` as a finite number, or None (bools, text that is no number, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _limit_at(limit: Limit | None, stage: float) -> float | None:
    """The limit that applies at ``stage``: the per-stage entry at or below it."""
    if limit is None or not isinstance(limit, dict):
        return limit
    below = [s for s in limit if s <= stage]
    return limit[max(below)] if below else None


class Guard(_Model):
    """A data-quality limit: ``metric`` reads ``record_metric`` values, ``promql`` queries."""

    name: str = Field(min_length=1)
    metric: str | None = None
    promql: str | None = None
    max: Limit | None = None
    min: Limit | None = None
    relative_to_control: bool = False
    window: timedelta = timedelta(minutes=15)
    min_samples: int = Field(default=1, ge=1)
    failure_limit: int = Field(default=1, ge=1)

    _window = field_validator("window", mode="before")(lambda cls, v: parse_duration(v))

    # One check for both shapes, so a bad limit is one problem naming the field, not one per
    # member of the union.
    @field_validator("max", "min", mode="before")
    @classmethod
    def _limit(cls, limit: Any) -> Limit | None:
        if limit is None:
            return None
        if not isinstance(limit, Mapping) and (number := _finite(limit)) is not None:
            return number
        if not isinstance(limit, Mapping):
            raise ValueError(
                f"expected a finite number, or limits per stage as {{stage: limit}}, got {limit!r}"
            )
        if not limit:
            raise ValueError("a per-stage limit needs at least one 'stage: limit' entry")
        stages = {key: _finite(key) for key in limit}
        bad = [str(key) for key, stage in stages.items() if stage is None or not 0 < stage <= 100]
        if bad:
            raise ValueError(f"per-stage limit keys are stages in (0, 100], got {', '.join(bad)}")
        values = {key: _finite(value) for key, value in limit.items()}
        wrong = [str(key) for key, value in values.items() if value is None]
        if wrong:
            raise ValueError(f"per-stage limits must be finite numbers (not at {', '.join(wrong)})")
        return {stages[key]: values[key] for key in limit}  # type: ignore[misc]

    @model_validator(mode="after")
    def _one_source_one_limit(self) -> Guard:
        if (self.metric is None) == (self.promql is None):
            raise ValueError("give exactly one of 'metric' or 'promql'")
        if self.max is None and self.min is None:
            raise ValueError("give a 'max' or a 'min' limit")
        return self

    def limits_at(self, stage: float) -> tuple[float | None, float | None]:
        """(max, min) at ``stage``: for a per-stage limit, the entry at or below the stage."""
        return _limit_at(self.max, stage), _limit_at(self.min, stage)


def _flag_key(value: str) -> str:
    if not value.strip() or value != value.strip():
        raise ValueError(f"a flag key is needed, without blanks around it, got {value!r}")
    return value


class Prerequisite(_Model):
    """Sequencing: this flag advances only while ``flag`` stands at ``stage`` or above."""

    flag: str
    stage: float = Field(default=100, gt=0, le=100)

    _flag = field_validator("flag")(lambda cls, v: _flag_key(v))


class Approvals(_Model):
    """Four-eyes: advancing to ``from_stage`` or above waits for ``required`` approvers."""

    from_stage: float = Field(gt=0, le=100)
    required: int = Field(default=1, ge=1, le=10)
    expires: timedelta = timedelta(hours=24)

    _expires = field_validator("expires", mode="before")(lambda cls, v: parse_duration(v))

    @field_validator("expires")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("a request must be able to wait: give a duration above 0 (24h)")
        return value


class Variants(_Model):
    control: Any
    treatment: Any

    @model_validator(mode="after")
    def _distinct_and_typed(self) -> Variants:
        for value in (self.control, self.treatment):
            if isinstance(value, float) and not math.isfinite(value):
                # NaN equals nothing, so no answer could ever be told to be this arm.
                raise ValueError(f"control and treatment must be finite, got {value!r}")
        if self.control == self.treatment:
            raise ValueError("control and treatment must differ")
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool)
            for v in (self.control, self.treatment)
        )
        if type(self.control) is not type(self.treatment) and not numbers:
            raise ValueError(
                f"control and treatment must have the same type "
                f"({type(self.control).__name__} vs {type(self.treatment).__name__})"
            )
        return self


class Policy(_Model):
    flag: str
    owner: str
    description: str = ""
    expires: date | None = None
    variants: Variants
    unit: str = Field(default="targeting_key", min_length=1)
    salt: str | None = None
    stages: list[float]
    soak: timedelta = timedelta(0)
    guards: list[Guard] = []
    on_breach: Literal["rollback", "pause"] = "rollback"
    auto_advance: bool = False
    requires: list[Prerequisite] = []
    approvals: Approvals | None = None

    _soak = field_validator("soak", mode="before")(lambda cls, v: parse_duration(v))
    _flag = field_validator("flag")(lambda cls, v: _flag_key(v))

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an owner is required (a team or an address)")
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: list[float]) -> list[float]:
        if not stages:
            raise ValueError("at least one stage is required")
        problems = [
            f"not strictly ascending ({before:g} then {after:g})"
            for before, after in itertools.pairwise(stages)
            if after <= before
        ]
        outside = [f"{stage:g}" for stage in stages if not 0 < stage <= 100]
        if outside:
            problems.append(f"outside (0, 100]: {', '.join(outside)}")
        if problems:
            raise ValueError(
                f"stages must be strictly ascending percents in (0, 100]: {'; '.join(problems)}"
            )
        return stages

    # Checks across fields are field validators (the fields they need come first), so they
    # are reported together with every other problem of the file, not after them.

    @field_validator("guards")
    @classmethod
    def _guards(cls, guards: list[Guard], info: ValidationInfo) -> list[Guard]:
        problems = []
        names = [g.name for g in guards]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            problems.append(f"guard names must be unique ({', '.join(twice)} given twice)")
        stages = info.data.get("stages")
        for guard in guards:
            for field in ("max", "min"):
                limit = getattr(guard, field)
                if stages and isinstance(limit, dict) and min(limit) > stages[0]:
                    problems.append(
                        f"guard {guard.name!r}: {field} has no limit for the first stage "
                        f"({stages[0]:g}%): give an entry at or below it"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return guards

    @field_validator("requires")
    @classmethod
    def _requires(cls, requires: list[Prerequisite], info: ValidationInfo) -> list[Prerequisite]:
        flags = [p.flag for p in requires]
        if info.data.get("flag") in flags:
            raise ValueError("a flag cannot require itself")
        if len(flags) != len(set(flags)):
            raise ValueError("each prerequisite flag once")
        return requires

    @property
    def bucket_salt(self) -> str:
        return self.salt if self.salt is not None else self.flag

    def next_stage(self, stage: float) -> float | None:
        return next((s for s in self.stages if s > stage), None)

    def previous_stage(self, stage: float) -> float:
        return max((s for s in self.stages if s < stage), default=0.0)

    def needs_approval(self, target: float) -> bool:
        """Whether advancing to ``target`` waits for approvers (kill, pause, rollback never do)."""
        return self.approvals is not None and target >= self.approvals.from_stage

    def is_expired(self, today: date | None = None) -> bool:
        return self.expires is not None and self.expires < (today or date.today())


def load_policy(path: Path) -> Policy:
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(
            path, None, "expected a mapping with at least 'flag', 'owner', 'variants', 'stages'"
        )
    try:
        return Policy.model_validate(interpolate(dict(raw), path))
    except ValidationError as exc:
        raise describe_validation_error(exc, path) from None


@dataclass
class PolicySet:
    """The policies of a folder: the valid ones by flag, their files, and every problem.

    ``broken`` holds each flag whose policy cannot be used, with its file's problem (its
    ``problems`` list them all): a file that cannot be read or validated, or a second policy
    for a flag (which of the two was approved cannot be told). A broken flag is in
    ``broken``, never in ``policies``. ``listed`` is False when the folder could not be
    listed (missing or unreadable): then no flag can be told to be ungoverned.
    """

    policies: dict[str, Policy] = dc_field(default_factory=dict)
    sources: dict[str, Path] = dc_field(default_factory=dict)
    problems: list[ConfigError] = dc_field(default_factory=list)
    broken: dict[str, ConfigError] = dc_field(default_factory=dict)
    listed: bool = True


def _flag_of_broken(path: Path) -> str:
    """The flag a broken policy file is for: its ``flag:`` when readable, else the file stem."""
    try:
        raw = read_yaml(path)
        flag = raw.get("flag") if isinstance(raw, Mapping) else None
        if isinstance(flag, str):
            flag = interpolate(flag, path, "flag").strip()
            if flag:
                return str(flag)
    except ConfigError:
        pass
    return path.stem


def read_policies(directory: Path) -> PolicySet:
    """Every valid policy in ``directory`` by flag, every broken one, and every problem."""
    found = PolicySet()
    policies, sources, problems, broken = (
        found.policies,
        found.sources,
        found.problems,
        found.broken,
    )
    if not directory.is_dir():
        found.listed = False
        return found
    try:
        os.listdir(directory)  # glob() would hide an unreadable folder as an empty one
    except OSError as exc:
        found.listed = False
        problems.append(ConfigError(directory, None, f"cannot list the folder ({exc.strerror})"))
        return found
    for path in sorted(directory.glob("*.y*ml")):
        try:
            policy = load_policy(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            broken.setdefault(_flag_of_broken(path), exc)
            continue
        if policy.flag in sources:
            twice = ConfigError(
                path, "flag", f"{policy.flag!r} already has a policy in {sources[policy.flag]}"
            )
            problems.append(twice)
            broken.setdefault(policy.flag, twice)
            continue
        policies[policy.flag] = policy
        sources[policy.flag] = path
    for flag in broken:  # a flag with a broken file too: which of its files rules is unknown
        policies.pop(flag, None)
        sources.pop(flag, None)
    return found


def load_policies(directory: Path) -> dict[str, Policy]:
    """Every policy in ``directory``, by flag; a missing folder means no governed flags.

    Raises the first file's :class:`ConfigError` when any policy is invalid (strict: for
    tools; workers and commands use :func:`read_policies`, which keeps the good ones).
    """
    found = read_policies(directory)
    if found.problems:
        raise found.problems[0]
    return found.policies


def sequencing_problems(found: PolicySet) -> list[ConfigError]:
    """``requires`` that name a flag without a policy, and cycles of prerequisites."""
    policies, sources = found.policies, found.sources
    problems = []
    for flag, policy in sorted(policies.items()):
        for i, prerequisite in enumerate(policy.requires):
            if prerequisite.flag not in policies:
                problems.append(
                    ConfigError(
                        sources[flag],
                        f"requires[{i}].flag",
                        f"{prerequisite.flag!r} has no valid policy (governed flags: "
                        f"{', '.join(sorted(policies))})",
                    )
                )
    reported: set[frozenset[str]] = set()
    for start in sorted(policies):
        # Depth-first along requires; a path that comes back to a flag on it is a cycle.
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            flag, path = stack.pop()
            for prerequisite in policies[flag].requires:
                nxt = prerequisite.flag
                if nxt not in policies:
                    continue
                if nxt in path:
                    cycle = path[path.index(nxt) :]
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        problems.append(
                            ConfigError(
                                sources[cycle[0]],
                                "requires",
                                "a cycle of prerequisites: "
                                + " -> ".join([*cycle, cycle[0]])
                                + " (none of them could ever advance)",
                            )
                        )
                    continue
                stack.append((nxt, [*path, nxt]))
    return problems
