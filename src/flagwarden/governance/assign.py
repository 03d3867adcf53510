"""``flagwarden.assign``: per-record routing for a batch, equal to per-key evaluation.

The recommended setup: the vendor decides whether a flag is on for the run (the shared
``context``), and the policy's stage decides which records get it. Then the vendor is asked
once per batch and the per-record work is bucketing alone. When the vendor's own rule depends
on the record key (its own percentage rollout, key targets, segments), the answer could
differ per key, so ``assign`` asks per key through the client, and says so once per flag.

The decision is the governing provider's own :class:`~flagwarden.governance.enforcement.
FlagPlan` (one enforcement core); the per-record half, bucketing and building the column, is
:mod:`flagwarden.governance.columns` (compiled with the ``[fast]`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType

from flagwarden.errors import FlagwardenError
from flagwarden.governance import columns
from flagwarden.governance.enforcement import Ruling
from flagwarden.logs import get_logger

__all__ = ["assign"]

_log = get_logger("flagwarden.assign")
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
    if isinstance(keys, Iterator):
        keys = list(keys)  # the batch is read more than once
    n = columns.size(keys)  # TypeError for what is not a list, an iterable or a column
    flag_type = _flag_type(default)
    base = context or EvaluationContext()
    governed = runtime.governed
    if n == 0:
        return columns.constant(keys, default)
    plan = governed.plan(flag_key)
    failover = governed.inner
    reason = None
    if plan is None:
        reason = "it has no policy"
    elif failover.depends_on_key(flag_key):
        reason = f"the {failover.vendor.kind} rule depends on the record key"
    if reason is not None:
        if flag_key not in _per_key_noted:
            _per_key_noted.add(flag_key)
            _log.info("flagwarden.assign_per_key", flag=flag_key, why=reason)
        get = getattr(runtime.client, _GETTERS[flag_type])
        return columns.wrap(
            keys,
            [
                get(flag_key, default, base.merge(EvaluationContext(targeting_key=k)))
                for k in columns.as_strings(keys)
            ],
        )

    assert plan is not None
    first = base.merge(EvaluationContext(targeting_key=columns.first_key(keys)))
    # The vendor, once per batch; its source as the provider would report it.
    answer, source = failover.answer(flag_type, flag_key, default, first)
    error = answer.error_code
    failover.count_served(source, n - 1)  # answer() counted the first one
    recorder = runtime.telemetry.recorder

    def served(variant: str, reason: Any, arm: str, count: int, capped: bool = False) -> None:
        recorder.count(flag_key, variant, reason, error, source, arm, capped, count)

    vendor_variant, vendor_reason = answer.variant or "", answer.reason
    ruling = plan.ruling(answer.value, answer.variant, error, default)
    control, treatment = plan.control, plan.treatment
    if ruling is Ruling.KILLED:
        served("control", "DISABLED", "control", n)
        return columns.constant(keys, control)
    if ruling is Ruling.PASS or ruling is Ruling.VENDOR:
        if ruling is Ruling.PASS and plan.outside(answer.value, answer.variant, error, default):
            governed.violations.count(flag_key, "unknown_variant", n)
        served(vendor_variant, vendor_reason, plan.arm_of(answer.value), n)
        return columns.constant(keys, answer.value)
    if ruling is Ruling.UNKNOWN:
        governed.violations.count(flag_key, "unknown_variant", n)
        served("control", "DEFAULT", "control", n)
        return columns.constant(keys, control)
    # The vendor serves the treatment: the stage decides, record by record.
    if plan.stage >= 100:  # paused at 100: everyone is inside the stage
        served(vendor_variant, vendor_reason, "treatment", n)
        return columns.constant(keys, treatment)
    if plan.unit is not None:  # one unit (an attribute of the shared context) for the batch
        unit = plan.unit_of(None, base.attributes)
        if unit is None:
            governed.violations.count(flag_key, "missing_unit", n)
            served("control", "SPLIT", "control", n)
            return columns.constant(keys, control)
        if plan.admits(unit):
            served(vendor_variant, vendor_reason, "treatment", n)
            return columns.constant(keys, treatment)
        served("control", "SPLIT", "control", n, capped=True)
        return columns.constant(keys, control)
    out, treated, missing = columns.route(
        keys, plan.policy.bucket_salt, plan.limit, treatment, control
    )
    if missing:
        # An empty or missing key is no unit (as for one evaluation): control, and a violation.
        governed.violations.count(flag_key, "missing_unit", missing)
        served("control", "SPLIT", "control", missing)
    served(vendor_variant, vendor_reason, "treatment", treated)
    served("control", "SPLIT", "control", n - treated - missing, capped=True)
    return out
