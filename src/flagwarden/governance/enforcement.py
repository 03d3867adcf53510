"""The one enforcement decision, shared by the governing provider and ``assign``.

Pure functions over a policy, a flag's state and the answer the chain gave: no I/O, no
clock, no counters. The caller applies the result (one evaluation, or a whole batch) and
does the bookkeeping (violations, exposures).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from flagwarden.governance.bucketing import bucket, threshold
from flagwarden.governance.policy import Policy

__all__ = ["Ruling", "admitted", "rule", "same_value", "unit_of"]


class Ruling(Enum):
    """What the policy does with an answer, before looking at the unit."""

    KILLED = "killed"  # control for everyone
    VENDOR = "vendor"  # the answer as it came (control from the vendor, or the caller's default)
    UNKNOWN = "unknown"  # neither arm: control, and a violation
    BUCKET = "bucket"  # the treatment, for units inside the stage; control for the others


def same_value(value: Any, variant: Any) -> bool:
    """Equal, and not a bool standing in for a number (True == 1 in Python)."""
    return bool(value == variant) and isinstance(value, bool) is isinstance(variant, bool)


def rule(policy: Policy, killed: bool, value: Any, error_code: Any) -> Ruling:
    """The ruling for an answer ``value`` (``error_code`` set when it is the caller's default)."""
    if killed:
        return Ruling.KILLED
    if same_value(value, policy.variants.treatment):
        return Ruling.BUCKET
    if same_value(value, policy.variants.control) or error_code is not None:
        return Ruling.VENDOR
    return Ruling.UNKNOWN


def unit_of(policy: Policy, targeting_key: str | None, attributes: Mapping[str, Any]) -> str | None:
    """The value the policy buckets by, or None when the context lacks it."""
    if policy.unit == "targeting_key":
        return targeting_key or None
    value = attributes.get(policy.unit)
    return None if value is None else str(value)


def admitted(policy: Policy, stage: float, unit: str) -> bool:
    """Whether ``unit`` is inside the stage: it may get the treatment."""
    return bucket(policy.bucket_salt, unit) < threshold(stage)
