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
from typing import TYPE_CHECKING, Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagType

from flagwarden.errors import FlagwardenError
from flagwarden.governance import columns
from flagwarden.governance.assignment import Assignment, Exposure
from flagwarden.governance.enforcement import Ruling
from flagwarden.governance.runs import current_run, pinned
from flagwarden.logs import get_logger

if TYPE_CHECKING:
    from flagwarden.runtime import Runtime

__all__ = ["assign", "getter", "plan", "record_exposures"]

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


def getter(client: Any, default: Any) -> Any:
    """The client's typed ``get_*_value`` for ``default``'s type (TypeError for other types)."""
    return getattr(client, _GETTERS[_flag_type(default)])


def _runtime(what: str) -> Runtime:
    from flagwarden.runtime import current

    runtime = current()
    if runtime is None:
        raise FlagwardenError(f"flagwarden.{what} needs flagwarden.configure() first")
    return runtime


def plan(
    flag_key: str,
    default: Any,
    *,
    context: EvaluationContext | None = None,
    run_id: str | None = None,
) -> Assignment:
    """The decision for a batch of ``flag_key`` under ``context``, taken once: the vendor asked
    once (or, when its rule depends on the record key, a note that it must be asked per key),
    the flag's stage, kill, pause, salt, unit and arm values. ``Assignment.apply(keys)`` then
    gives each key's value anywhere, exactly as :func:`assign` would here.

    With ``run_id`` (or inside ``flagwarden.run(run_id)``) the decision is the run's pinned one:
    a retried run gets back what its first attempt planned, unless the flag is killed.

    Counts nothing: record what the applied batches served with ``record_exposures``.
    """
    runtime = _runtime("plan")
    probe = context.targeting_key if context is not None and context.targeting_key else None
    return _decided(runtime, flag_key, default, context, probe or _PROBE, run_id)


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
    same shape (a list, or a column of the same kind and index). ``plan(...).apply(keys)`` on
    this process, counted here.
    """
    runtime = _runtime("assign")
    if isinstance(keys, Iterator):
        keys = list(keys)  # the batch is read more than once
    n = columns.size(keys)  # TypeError for what is not a list, an iterable or a column
    _flag_type(default)  # TypeError for an unsupported default, whatever the batch
    if n == 0:
        return columns.constant(keys, default)
    # The vendor is asked with the batch's first key, as one evaluation of it would be.
    assignment = _decided(runtime, flag_key, default, context, columns.first_key(keys), None)
    if assignment.mode == "per_key":
        if flag_key not in _per_key_noted:
            _per_key_noted.add(flag_key)
            _log.info("flagwarden.assign_per_key", flag=flag_key, why=assignment.why)
        return assignment.apply(keys)  # through the client: counted there, key by key
    values, treated, missing = assignment.route(keys)
    runtime.governed.inner.count_served(assignment.source, n)
    _record(runtime, assignment, assignment.exposures(n, treated=treated, missing=missing))
    return values


def record_exposures(
    assignment: Assignment, n: int, *, treated: int = 0, missing: int = 0, killed: int = 0
) -> None:
    """Count ``n`` answers an :class:`Assignment` gave elsewhere (a Spark, Dask or Ray job's
    workers), once, in this process: ``treated`` of them inside the stage, ``missing`` no
    unit (what ``Assignment.route`` returns, summed over the batches) and ``killed`` served
    control after a kill reached the job. Counted as the same answers of one evaluation each
    would be: Prometheus, the exposure summaries, violations and the open outage window (no
    exposure lines: those are per unit).

    A ``per_key`` plan's rows were answered by the workers' own clients, and counted there:
    only its ``killed`` rows are counted here, under the source the vendor chain answers from
    now (as a per-key evaluation of the killed flag would be counted)."""
    runtime = _runtime("record_exposures")
    exposures = assignment.exposures(n, treated=treated, missing=missing, killed=killed)
    if not exposures:
        return
    source, served = assignment.source, n
    if assignment.mode == "per_key":  # the driver's record stands for the killed rows alone
        source, served = _answering_source(runtime, assignment), killed
    runtime.governed.inner.count_served(source, served)
    _record(runtime, assignment, exposures, source)


def _answering_source(runtime: Runtime, assignment: Assignment) -> str:
    """The source the vendor chain answers ``assignment``'s flag from now (one probe, not
    counted: the caller counts what it stands for)."""
    failover = runtime.governed.inner
    flag_type = _flag_type(assignment.default)
    context = EvaluationContext(assignment.context_key or _PROBE, dict(assignment.context))
    _, source = failover.answer(flag_type, assignment.flag, assignment.default, context)
    failover.uncount_served(source)
    return source


def _record(
    runtime: Runtime,
    assignment: Assignment,
    exposures: list[Exposure],
    source: str | None = None,
) -> None:
    recorder = runtime.telemetry.recorder
    violations = runtime.governed.violations
    flag = assignment.flag
    error = ErrorCode(assignment.error) if assignment.error else None
    source = assignment.source if source is None else source
    for e in exposures:
        recorder.count(flag, e.variant, e.reason, error, source, e.arm, e.capped, e.count)
        if e.violation is not None:
            violations.count(flag, e.violation, e.count)


# The targeting key a plan asks the vendor with when neither the batch nor the context has one
# (its rule does not depend on the key: the plan checked).
_PROBE = "flagwarden-plan"


def _decided(
    runtime: Runtime,
    flag_key: str,
    default: Any,
    context: EvaluationContext | None,
    probe: str,
    run_id: str | None,
) -> Assignment:
    """The plan, or the run's pinned one inside ``flagwarden.run`` (or with ``run_id``)."""
    run_id = run_id if run_id is not None else current_run()

    def decide() -> Assignment:
        return _plan(runtime, flag_key, default, context, probe, run_id)

    if run_id is None:
        return decide()
    attributes = dict(context.attributes) if context is not None else {}
    key = context.targeting_key if context is not None else None
    return pinned(runtime, run_id, flag_key, default, attributes, key, decide)


def _plan(
    runtime: Runtime,
    flag_key: str,
    default: Any,
    context: EvaluationContext | None,
    probe: str,
    run_id: str | None,
) -> Assignment:
    flag_type = _flag_type(default)
    base = context or EvaluationContext()
    governed = runtime.governed
    failover = governed.inner
    flag_plan = governed.plan(flag_key)  # stage, kill and state read together
    common: dict[str, Any] = {
        "flag": flag_key,
        "default": default,
        "stage": flag_plan.stage if flag_plan is not None else None,
        "killed": flag_plan.killed if flag_plan is not None else False,
        "state_version": flag_plan.state.version if flag_plan is not None else 0,
        "control": flag_plan.control if flag_plan is not None else None,
        "treatment": flag_plan.treatment if flag_plan is not None else None,
        "run_id": run_id,
    }
    why = None
    if flag_plan is None:
        why = "it has no policy"
    elif not flag_plan.killed and failover.depends_on_key(flag_key):  # killed: control, here
        why = f"the {failover.vendor.kind} rule depends on the record key"
    if why is not None:
        return Assignment(
            mode="per_key",
            source="",
            error=None,
            why=why,
            context=dict(base.attributes),
            context_key=base.targeting_key,
            **common,
        )
    assert flag_plan is not None
    first = base.merge(EvaluationContext(targeting_key=probe))
    answer, source = failover.answer(flag_type, flag_key, default, first)
    failover.uncount_served(source)  # a probe: the batch's answers are counted when served
    error = answer.error_code
    common.update(source=source, error=str(error.value) if error is not None else None)
    vendor_variant, vendor_reason = answer.variant or "", str(answer.reason or "")

    def constant(value: Any, variant: str, reason: str, arm: str, **kw: Any) -> Assignment:
        outcome = Exposure(
            variant, reason, arm, kw.pop("capped", False), 0, kw.pop("violation", None)
        )
        return Assignment(mode="constant", value=value, outcome=outcome, **common)

    ruling = flag_plan.ruling(answer.value, answer.variant, error, default)
    control, treatment = flag_plan.control, flag_plan.treatment
    if ruling is Ruling.KILLED:
        return constant(control, "control", "DISABLED", "control")
    if ruling is Ruling.PASS or ruling is Ruling.VENDOR:
        outside = ruling is Ruling.PASS and flag_plan.outside(
            answer.value, answer.variant, error, default
        )
        return constant(
            answer.value,
            vendor_variant,
            vendor_reason,
            flag_plan.arm_of(answer.value),
            violation="unknown_variant" if outside else None,
        )
    if ruling is Ruling.UNKNOWN:
        return constant(control, "control", "DEFAULT", "control", violation="unknown_variant")
    # The vendor serves the treatment: the stage decides, record by record.
    if flag_plan.stage >= 100:  # paused at 100: everyone is inside the stage
        return constant(treatment, vendor_variant, vendor_reason, "treatment")
    if flag_plan.unit is not None:  # one unit (an attribute of the shared context) for the batch
        unit = flag_plan.unit_of(None, base.attributes)
        if unit is None:
            return constant(control, "control", "SPLIT", "control", violation="missing_unit")
        if flag_plan.admits(unit):
            return constant(treatment, vendor_variant, vendor_reason, "treatment")
        return constant(control, "control", "SPLIT", "control", capped=True)
    return Assignment(
        mode="bucket",
        salt=flag_plan.policy.bucket_salt,
        limit=flag_plan.limit,
        vendor_variant=vendor_variant,
        vendor_reason=vendor_reason,
        **common,
    )
