"""The one enforcement decision, shared by the governing provider and ``assign``.

A :class:`FlagPlan` holds everything the decision needs for one governed flag (stage, kill,
pause, the arms, the bucketing salt and unit, the stage's threshold), computed once when the
flag's state or policy changes, so that the evaluation path does one dict lookup for the plan,
one hash and one metadata dict. Its methods are pure: no I/O, no clock, no counters. The caller
applies the result (one evaluation, or a whole batch) and does the bookkeeping (violations,
exposures).

The rules, in order: a killed flag serves control to everyone. At stage 100, not paused, the
answer passes through untouched (value, variant and reason). Below it, a treatment answer is
served only to units whose bucket is inside the stage (the others get control: *capped*, the
mechanism, not a violation), whatever gave it: the vendor, a snapshot, or the caller's own
default after an error; a control answer, or the caller's own default when it is not the
treatment, passes through; any other answer is outside the policy: control, and a violation.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import mmh3

from flagwarden.governance.bucketing import BUCKETS, threshold
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState

__all__ = [
    "ARM",
    "CAPPED",
    "KILLED",
    "SOURCE",
    "STAGE",
    "VIOLATION",
    "FlagPlan",
    "Ruling",
    "callers_default",
    "same_value",
    "unit_hash",
]

# flag_metadata keys every governed evaluation carries, and the one an answer that is itself a
# violation carries (its kind).
SOURCE, STAGE, ARM, CAPPED, KILLED, VIOLATION = (
    "flagwarden.source",
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


def callers_default(value: Any, variant: str | None, error_code: Any, default_value: Any) -> bool:
    """Whether an answer is the caller's own default rather than a value the vendor chose:
    after an error, or from a flag with nothing to serve (no variant)."""
    return error_code is not None or (variant is None and same_value(value, default_value))


class FlagPlan:
    """One governed flag's decision, ready for the evaluation path (immutable; rebuilt by
    :meth:`build` whenever the flag's state changes)."""

    __slots__ = (
        "bool_arms",
        "bucketed",
        "control",
        "flag",
        "killed",
        "limit",
        "passes",
        "paused",
        "policy",
        "prefix",
        "stage",
        "state",
        "templates",
        "treatment",
        "unit",
    )

    def __init__(self, policy: Policy, state: FlagState, *, killed: bool = False) -> None:
        """The plan for ``policy`` at ``state``; ``killed`` adds a kill from outside the store
        (``FLAGWARDEN_KILL``)."""
        self.policy = policy
        self.state = state
        self.flag = policy.flag
        self.stage = state.stage
        self.killed = state.killed or killed
        self.paused = state.paused
        # Stage 100, live: the vendor's answer exactly as it came.
        self.passes = not self.killed and self.stage >= 100 and not self.paused
        self.limit = threshold(self.stage)
        self.prefix = f"{policy.bucket_salt}:"
        self.unit = None if policy.unit == "targeting_key" else policy.unit
        self.control = policy.variants.control
        self.treatment = policy.variants.treatment
        # Booleans are singletons: ``is`` is the whole comparison (and keeps 1 != True).
        self.bool_arms = isinstance(self.control, bool) and isinstance(self.treatment, bool)
        # The answer that is certainly ``Ruling.BUCKET`` by identity alone, for the evaluation
        # path's shortcut (which hashes the unit): the treatment when it is a bool (a singleton)
        # and the flag is not killed and below 100 (paused at 100 admits everyone unhashed);
        # otherwise an object no answer ever is.
        live_below_100 = not self.killed and self.stage < 100
        self.bucketed: Any = self.treatment if self.bool_arms and live_below_100 else _NEVER
        # (source, arm, capped) -> the metadata flagwarden adds to an answer (a cache).
        self.templates: dict[tuple[str, str, bool], dict[str, Any]] = {}

    def metadata(self, source: str, arm: str, capped: bool) -> dict[str, Any]:
        """The ``flagwarden.*`` metadata of an answer (the caller copies it: it is shared)."""
        key = (source, arm, capped)
        template = self.templates.get(key)
        if template is None:
            template = self.templates[key] = {
                SOURCE: source,
                STAGE: self.stage,
                ARM: arm,
                CAPPED: capped,
                KILLED: self.killed,
            }
        return template

    def is_treatment(self, value: Any) -> bool:
        if self.bool_arms:
            return value is self.treatment
        return same_value(value, self.treatment)

    def is_control(self, value: Any) -> bool:
        if self.bool_arms:
            return value is self.control
        return same_value(value, self.control)

    def arm_of(self, value: Any) -> str:
        """``treatment`` or ``control`` when ``value`` is one of the arms, else ``none``."""
        if self.is_treatment(value):
            return "treatment"
        return "control" if self.is_control(value) else "none"

    def ruling(self, value: Any, variant: str | None, error_code: Any, default: Any) -> Ruling:
        """What the policy does with the answer ``value`` (its ``variant`` and ``error_code``
        as the chain gave them; ``default``: the caller's default)."""
        if self.killed:
            return Ruling.KILLED
        if self.passes:
            return Ruling.PASS
        if value is self.treatment if self.bool_arms else same_value(value, self.treatment):
            return Ruling.BUCKET
        if self.is_control(value) or callers_default(value, variant, error_code, default):
            return Ruling.VENDOR
        return Ruling.UNKNOWN

    def outside(self, value: Any, variant: str | None, error_code: Any, default: Any) -> bool:
        """A vendor answer that is neither arm (the caller's own default is not)."""
        return self.arm_of(value) == "none" and not callers_default(
            value, variant, error_code, default
        )

    def unit_of(self, targeting_key: Any, attributes: Mapping[str, Any]) -> str | None:
        """The value the policy buckets by (as text), or None when the context lacks it."""
        if self.unit is None:
            if not targeting_key:
                return None
            return targeting_key if targeting_key.__class__ is str else str(targeting_key)
        value = attributes.get(self.unit)
        return None if value is None else str(value)

    def admits(self, unit: str | None) -> bool:
        """Whether ``unit`` may get the treatment: everyone at 100, else by its bucket.

        Below 100 a missing unit is never admitted (it is a violation: the caller must say who).
        """
        if self.stage >= 100:
            return True
        if unit is None:
            return False
        if unit.__class__ is not str:  # a targeting key given as a number: its text
            unit = str(unit)
        return unit_hash((self.prefix + unit).encode()) % BUCKETS < self.limit


_NEVER = object()  # no answer is this object

# murmur3_x86_32, seed 0, unsigned (mmh3 >= 5's positional form: a third faster than
# ``hash(data, 0, signed=False)``): a unit's bucket is ``unit_hash(f"{salt}:{unit}".encode())
# % BUCKETS``. Always given bytes: mmh3 crashes on a ``str`` holding a lone surrogate, where
# ``encode()`` raises.
unit_hash = mmh3.mmh3_32_uintdigest
