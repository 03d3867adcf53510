"""The arm column of the batch engines' adapters: which rows got the treatment, from the
outcome codes of :mod:`flagwarden.governance.batches` and the plan."""

from __future__ import annotations

from typing import Any

from flagwarden.governance.assignment import Assignment
from flagwarden.governance.batches import CONSTANT, TREATED, is_pandas

__all__ = ["ArmRule", "arm_names", "arm_of", "arm_rule", "constant_arm"]

ArmRule = str | tuple[Any, Any]  # an arm, or a per-key plan's (treatment, control) values


def arm_rule(assignment: Assignment, shipped: Assignment) -> ArmRule:
    """The arm of the rows served the plan's one answer: its arm, or, when the vendor is asked
    per key, each row's by its value (the shipped treatment and control values)."""
    if assignment.mode == "per_key":
        return (shipped.treatment, shipped.control)
    return constant_arm(assignment)


def constant_arm(assignment: Assignment) -> str:
    outcome = assignment.outcome
    return outcome.arm if outcome is not None else "none"


def arm_names(values: Any, outcome: Any, arm_rule: ArmRule) -> Any:
    """Each row's arm (an object ndarray of str) from its outcome code; the rows served the
    plan's one answer get ``arm_rule`` (an arm), or, for a per-key plan, the arm of their value
    (``arm_rule`` is then the (treatment, control) values; "none" for any other value)."""
    import numpy as np

    codes = outcome.to_numpy(zero_copy_only=False)
    constant: Any = arm_rule
    if isinstance(arm_rule, tuple):
        treatment, control = arm_rule
        constant = np.array(
            [arm_of(value, treatment, control) for value in _to_list(values)], dtype=object
        )
    arms = np.where(codes == TREATED, "treatment", np.where(codes == CONSTANT, constant, "control"))
    return arms.astype(object)


def _to_list(values: Any) -> list[Any]:
    return values.tolist() if is_pandas(values) else values.to_pylist()


def arm_of(value: Any, treatment: Any, control: Any) -> str:
    def same(a: Any, b: Any) -> bool:
        return b is not None and isinstance(a, bool) == isinstance(b, bool) and a == b

    if same(value, treatment):
        return "treatment"
    return "control" if same(value, control) else "none"
