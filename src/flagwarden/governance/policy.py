"""Rollout policies as code: ``policies/<flag>.yaml``, one per governed flag."""

from __future__ import annotations

import itertools
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

from flagwarden.config import describe_validation_error
from flagwarden.documents import interpolate, parse_duration, read_yaml
from flagwarden.errors import ConfigError

__all__ = [
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

    @field_validator("max", "min")
    @classmethod
    def _per_stage(cls, limit: Limit | None) -> Limit | None:
        if isinstance(limit, dict):
            if not limit:
                raise ValueError("a per-stage limit needs at least one 'stage: limit' entry")
            bad = [f"{stage:g}" for stage in limit if not 0 < stage <= 100]
            if bad:
                raise ValueError(
                    f"per-stage limit keys are stages in (0, 100], got {', '.join(bad)}"
                )
        return limit

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


class Prerequisite(_Model):
    """Sequencing: this flag advances only while ``flag`` stands at ``stage`` or above."""

    flag: str = Field(min_length=1)
    stage: float = Field(default=100, gt=0, le=100)


class Variants(_Model):
    control: Any
    treatment: Any

    @model_validator(mode="after")
    def _distinct_and_typed(self) -> Variants:
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
    flag: str = Field(min_length=1)
    owner: str
    description: str = ""
    expires: date | None = None
    variants: Variants
    unit: str = "targeting_key"
    salt: str | None = None
    stages: list[float]
    soak: timedelta = timedelta(0)
    guards: list[Guard] = []
    on_breach: Literal["rollback", "pause"] = "rollback"
    auto_advance: bool = False
    requires: list[Prerequisite] = []

    _soak = field_validator("soak", mode="before")(lambda cls, v: parse_duration(v))

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
    """The policies of a folder: the valid ones by flag, their files, and every problem."""

    policies: dict[str, Policy] = dc_field(default_factory=dict)
    sources: dict[str, Path] = dc_field(default_factory=dict)
    problems: list[ConfigError] = dc_field(default_factory=list)


def read_policies(directory: Path) -> PolicySet:
    """Every valid policy in ``directory`` by flag, and every problem of every file."""
    found = PolicySet()
    policies, sources, problems = found.policies, found.sources, found.problems
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.y*ml")):
        try:
            policy = load_policy(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if policy.flag in policies:
            problems.append(
                ConfigError(
                    path, "flag", f"{policy.flag!r} already has a policy in {sources[policy.flag]}"
                )
            )
            continue
        policies[policy.flag] = policy
        sources[policy.flag] = path
    return found


def load_policies(directory: Path) -> dict[str, Policy]:
    """Every policy in ``directory``, by flag; a missing folder means no governed flags.

    Raises the first file's :class:`ConfigError` when any policy is invalid.
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
