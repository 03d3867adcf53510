"""Deterministic, sticky, monotone bucketing (the formula docs/policy.md gives).

A unit's bucket is ``murmur3_x86_32(utf8(f"{salt}:{unit_value}"), seed=0, unsigned) % 100000``
and it gets the treatment at stage ``p`` percent when ``bucket < p * 1000``. The bucket does
not depend on the stage, so a unit that is in at 5% stays in at 25%.
"""

from __future__ import annotations

from collections.abc import Iterable

import mmh3

__all__ = ["BUCKETS", "bucket", "buckets", "in_stage", "threshold"]

BUCKETS = 100_000


def bucket(salt: str, unit_value: str) -> int:
    return mmh3.hash(f"{salt}:{unit_value}".encode(), 0, signed=False) % BUCKETS


def buckets(salt: str, unit_values: Iterable[str]) -> list[int]:
    """Buckets for many units at once (the per-record work of ``assign``)."""
    prefix = f"{salt}:"
    hash32 = mmh3.hash
    return [hash32((prefix + value).encode(), 0, signed=False) % BUCKETS for value in unit_values]


def threshold(stage: float) -> float:
    """Buckets below this number get the treatment at ``stage`` percent."""
    return stage * 1000


def in_stage(salt: str, unit_value: str, stage: float) -> bool:
    return bucket(salt, unit_value) < threshold(stage)
