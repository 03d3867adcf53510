"""``flagwarden.assign``: per-record routing for a batch, equal to per-key evaluation.

The recommended setup: the vendor decides whether a flag is on for the run (the shared
``context``), and the policy's stage decides which records get it. Then the vendor is asked
once per batch and the per-record work is bucketing alone. When the vendor's own rule depends
on the record key (its own percentage rollout, key targets, segments), the answer could
differ per key, so ``assign`` asks per key through the client, and says so once per flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType

from flagwarden.errors import FlagwardenError
from flagwarden.governance.bucketing import buckets, threshold
from flagwarden.governance.enforcement import (
    Ruling,
    arm_of,
    callers_default,
    outside_policy,
    rule,
    unit_of,
)

__all__ = ["assign"]

_log = structlog.get_logger("flagwarden.assign")
_per_key_noted: set[str] = set()

_GETTERS = {
    FlagType.BOOLEAN: "get_boolean_value",
    FlagType.STRING: "get_string_value",
    FlagType.INTEGER: "get_integer_value",
    FlagType.FLOAT: "get_float_value",
    FlagType.OBJECT: "get_object_value",
}


def _flag_type(default: Any) -> FlagType:
    if isinstance(default, bool):
        return FlagType.BOOLEAN
    if isinstance(default, str):
        return FlagType.STRING
    if isinstance(default, int):
        return FlagType.INTEGER
    if isinstance(default, float):
        return FlagType.FLOAT
    if isinstance(default, Mapping | list):
        return FlagType.OBJECT
    raise TypeError(f"unsupported default {default!r}: use a bool, str, int, float, dict or list")


def _as_list(keys: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The keys as a list, and how to give results back in the caller's shape."""
    module = type(keys).__module__.split(".")[0]
    if module == "pandas":
        import pandas

        return keys.tolist(), lambda out: pandas.Series(out, index=keys.index, name=keys.name)
    if module == "polars":
        import polars

        return keys.to_list(), lambda out: polars.Series(keys.name, out)
    if module == "pyarrow":
        import pyarrow

        return keys.to_pylist(), lambda out: pyarrow.array(out)
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise TypeError("keys must be a list, an iterable, or a pandas/polars/pyarrow column")
    return list(keys), list


def assign(
    flag_key: str,
    keys: Any,
    default: Any,
    *,
    context: EvaluationContext | None = None,
) -> Any:
    """The value served for each key: as evaluating ``flag_key`` for each one through the client
    with ``context`` plus ``targeting_key=key``, but without asking the vendor per record.

    ``keys`` is a list (or iterable) or a pandas/polars/pyarrow column; the result has the
    same shape (a list, or a column of the same kind and index).
    """
    from flagwarden.runtime import current

    runtime = current()
    if runtime is None:
        raise FlagwardenError("flagwarden.assign needs flagwarden.configure() first")
    values, rebuild = _as_list(keys)
    flag_type = _flag_type(default)
    base = context or EvaluationContext()
    governed = runtime.governed
    if not values:
        return rebuild([])
    policy = governed.policies.get(flag_key)
    failover = governed.inner
    reason = None
    if policy is None:
        reason = "it has no policy"
    elif failover.depends_on_key(flag_key):
        reason = f"the {failover.vendor.kind} rule depends on the record key"
    if reason is not None:
        if flag_key not in _per_key_noted:
            _per_key_noted.add(flag_key)
            _log.info("flagwarden.assign_per_key", flag=flag_key, why=reason)
        get = getattr(runtime.client, _GETTERS[flag_type])
        return rebuild(
            [
                get(flag_key, default, base.merge(EvaluationContext(targeting_key=str(k))))
                for k in values
            ]
        )

    assert policy is not None
    first = base.merge(EvaluationContext(targeting_key=str(values[0])))
    answer = failover.resolve(flag_type, flag_key, default, first)  # the vendor, once per batch
    source = str(answer.flag_metadata.get("flagwarden.source", ""))
    error = answer.error_code.value if answer.error_code else ""
    failover.count_served(source, len(values) - 1)  # resolve counted the first one

    def served(variant: str, reason: str, arm: str, n: int, capped: bool = False) -> None:
        runtime.telemetry.hook.record_batch(
            flag_key, variant, reason, error, source, n, arm=arm, capped=capped
        )

    state = governed.state(flag_key)
    control, treatment = policy.variants.control, policy.variants.treatment
    n = len(values)
    vendor_variant, vendor_reason = answer.variant or "", str(answer.reason or "")
    is_default = callers_default(answer.value, answer.variant, answer.error_code, default)
    ruling = rule(policy, state.stage, state.killed, state.paused, answer.value, is_default)
    if ruling is Ruling.KILLED:
        served("control", "DISABLED", "control", n)
        return rebuild([control] * n)
    if ruling is Ruling.PASS or ruling is Ruling.VENDOR:
        if ruling is Ruling.PASS and outside_policy(policy, answer.value, is_default):
            governed.violations.count(flag_key, "unknown_variant", n)
        served(vendor_variant, vendor_reason, arm_of(policy, answer.value), n)
        return rebuild([answer.value] * n)
    if ruling is Ruling.UNKNOWN:
        governed.violations.count(flag_key, "unknown_variant", n)
        served("control", "DEFAULT", "control", n)
        return rebuild([control] * n)
    # The vendor serves the treatment: the stage decides, record by record.
    if state.stage >= 100:  # paused at 100: everyone is inside the stage
        served(vendor_variant, vendor_reason, "treatment", n)
        return rebuild([treatment] * n)
    if policy.unit == "targeting_key":
        units: list[str] = [str(k) for k in values]
    else:
        unit = unit_of(policy, None, base.attributes)
        if unit is None:
            governed.violations.count(flag_key, "missing_unit", n)
            served("control", "SPLIT", "control", n)
            return rebuild([control] * n)
        units = [unit] * n
    limit = threshold(state.stage)
    inside = [b < limit for b in buckets(policy.bucket_salt, units)]
    missing = 0
    if policy.unit == "targeting_key" and "" in units:
        # An empty targeting key is no unit (as for one evaluation): control, and a violation.
        empty = [i for i, u in enumerate(units) if not u]
        for i in empty:
            inside[i] = False
        missing = len(empty)
        governed.violations.count(flag_key, "missing_unit", missing)
        served("control", "SPLIT", "control", missing)
    treated = sum(inside)
    served(vendor_variant, vendor_reason, "treatment", treated)
    served("control", "SPLIT", "control", n - treated - missing, capped=True)
    return rebuild([treatment if ok else control for ok in inside])
