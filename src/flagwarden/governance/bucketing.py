"""Deterministic, sticky, monotone bucketing (the formula docs/policy.md gives).

A unit's bucket is ``murmur3_x86_32(utf8(f"{salt}:{unit_value}"), seed=0, unsigned) % 100000``
and it gets the treatment at stage ``p`` percent when ``bucket < p * 1000``. The bucket does
not depend on the stage, so a unit that is in at 5% stays in at 25%.
"""

from __future__ import annotations

import mmh3

__all__ = ["BUCKETS", "bucket", "threshold"]

BUCKETS = 100_000


def bucket(salt: str, unit_value: str) -> int:
    """The reference: the evaluation path (``FlagPlan.admits``) and ``assign``
    (:mod:`flagwarden.governance.columns`) compute the same number their own faster ways."""
    return mmh3.hash(f"{salt}:{unit_value}".encode(), 0, signed=False) % BUCKETS


def threshold(stage: float) -> float:
    """Buckets below this number get the treatment at ``stage`` percent."""
    return stage * 1000
