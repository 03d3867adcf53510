"""The one enforcement decision, shared by the governing provider and ``assign``.

Pure functions over a policy, a flag's state and the answer the chain gave: no I/O, no
clock, no counters. The caller applies the result (one evaluation, or a whole batch) and
does the bookkeeping (violations, exposures).

The rules, in order: a killed flag serves control to everyone. At stage 100, not paused, the
answer passes through untouched (value, variant and reason). Below it, a treatment answer is
served only to units whose bucket is inside the stage (the others get control: *capped*, the
mechanism, not a violation); a control answer, or the caller's own default after an error,
passes through; any other answer is outside the policy: control, and a violation.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from flagwarden.governance.bucketing import bucket, threshold
from flagwarden.governance.policy import Policy

__all__ = [
    "ARM",
    "CAPPED",
    "KILLED",
    "STAGE",
    "VIOLATION",
    "Ruling",
    "admitted",
    "arm_of",
    "callers_default",
    "outside_policy",
    "rule",
    "same_value",
    "unit_of",
]

# flag_metadata keys every governed evaluation carries (with flagwarden.source), and the one
# an answer that is itself a violation carries (its kind).
STAGE, ARM, CAPPED, KILLED, VIOLATION = (
    "flagwarden.stage",
    "flagwarden.arm",
    "flagwarden.capped",
    "flagwarden.killed",
    "flagwarden.violation",
)


class Ruling(Enum):
    """What the policy does with an answer, before looking at the unit."""

    KILLED = "killed"  # control for everyone
    PASS = "pass"  # stage 100, live: the answer exactly as it came
    VENDOR = "vendor"  # control from the vendor, or the caller's own default
    UNKNOWN = "unknown"  # neither arm: control, and a violation
    BUCKET = "bucket"  # the treatment, for units inside the stage; control for the others


def same_value(value: Any, variant: Any) -> bool:
    """Equal, and not a bool standing in for a number (True == 1 in Python)."""
    return bool(value == variant) and isinstance(value, bool) is isinstance(variant, bool)


def arm_of(policy: Policy, value: Any) -> str:
    """``treatment`` or ``control`` when ``value`` is one of the policy's arms, else ``none``."""
    if same_value(value, policy.variants.treatment):
        return "treatment"
    if same_value(value, policy.variants.control):
        return "control"
    return "none"


def callers_default(value: Any, variant: str | None, error_code: Any, default_value: Any) -> bool:
    """Whether an answer is the caller's own default rather than a value the vendor chose:
    after an error, or from a flag with nothing to serve (no variant)."""
    return error_code is not None or (variant is None and same_value(value, default_value))


def rule(
    policy: Policy, stage: float, killed: bool, paused: bool, value: Any, is_default: bool
) -> Ruling:
    """The ruling for an answer ``value`` (``is_default``: it is the caller's own default)."""
    if killed:
        return Ruling.KILLED
    if stage >= 100 and not paused:
        return Ruling.PASS
    if same_value(value, policy.variants.treatment):
        return Ruling.BUCKET
    if same_value(value, policy.variants.control) or is_default:
        return Ruling.VENDOR
    return Ruling.UNKNOWN


def outside_policy(policy: Policy, value: Any, is_default: bool) -> bool:
    """A vendor answer that is neither arm (the caller's own default is not)."""
    return not is_default and arm_of(policy, value) == "none"


def unit_of(policy: Policy, targeting_key: str | None, attributes: Mapping[str, Any]) -> str | None:
    """The value the policy buckets by, or None when the context lacks it."""
    if policy.unit == "targeting_key":
        return targeting_key or None
    value = attributes.get(policy.unit)
    return None if value is None else str(value)


def admitted(policy: Policy, stage: float, unit: str | None) -> bool:
    """Whether ``unit`` may get the treatment at ``stage``: everyone at 100, else its bucket.

    Below 100 a missing unit is never admitted (it is a violation: the caller must say who).
    """
    if stage >= 100:
        return True
    return unit is not None and bucket(policy.bucket_salt, unit) < threshold(stage)
