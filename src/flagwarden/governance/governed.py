"""The governing provider: the policy decides what is served, whatever the vendor says.

Enforcement lives in a provider, not a hook: OpenFeature after-hooks cannot change the value
served. The rules are :mod:`flagwarden.governance.enforcement`'s: killed -> control for
everyone (DISABLED); stage 100, live -> the vendor's answer untouched; below it a treatment
answer is capped by the stage through deterministic bucketing on the policy's unit (control,
reason SPLIT); an answer outside the policy -> control plus a violation. Whenever the vendor's
answer is served its variant name and reason are kept. Every answer carries
``flagwarden.source``, ``flagwarden.stage``, ``flagwarden.arm``, ``flagwarden.capped`` and
``flagwarden.killed``. Violations are counted in memory and written to the audit log in
aggregate (:class:`~flagwarden.governance.violations.ViolationLog`), never once per
evaluation; capping is counted with the exposures, never as a
violation.

Each governed flag's :class:`~flagwarden.governance.enforcement.FlagPlan` is rebuilt when the
state cache changes, so an evaluation does one dict lookup for its plan. Exposures are counted
and logged here, by the :class:`~flagwarden.telemetry.recorder.ExposureRecorder`, for every
answer this provider gives (governed, broken or unregistered flags alike).

A flag whose policy file cannot be used (broken) is governed as if killed, but by the caller's
default rather than control, since the broken file's ``variants`` cannot be trusted: reason
``DISABLED``, ``flagwarden.source: default``, ``flagwarden.arm: none`` and
``flagwarden.policy_error`` saying what is wrong with the file.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.flag_evaluation import FlagResolutionDetails, FlagType, Reason
from openfeature.provider import FeatureProvider, Metadata

from flagwarden.errors import ConfigError
from flagwarden.governance.bucketing import BUCKETS
from flagwarden.governance.cache import StateCache
from flagwarden.governance.enforcement import (
    ARM,
    CAPPED,
    KILLED,
    STAGE,
    VIOLATION,
    FlagPlan,
    Ruling,
    unit_hash,
)
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState
from flagwarden.governance.violations import ViolationLog
from flagwarden.logs import get_logger
from flagwarden.providers.base import SourceProvider
from flagwarden.providers.failover import SOURCE, FailoverProvider
from flagwarden.telemetry.cardinality import OVERFLOW, flag_labels
from flagwarden.telemetry.recorder import ExposureRecorder

__all__ = ["POLICY_ERROR", "GovernedProvider"]

_log = get_logger("flagwarden.governance")

# flag_metadata on the answer for a flag whose policy is broken: the file's problem, short.
POLICY_ERROR = "flagwarden.policy_error"
_POLICY_ERROR_CHARS = 200

Unregistered = Literal["allow", "warn", "deny"]


class GovernedProvider(SourceProvider):
    """The provider registered with OpenFeature: policy first, then the failover chain."""

    def __init__(
        self,
        inner: FailoverProvider,
        policies: Mapping[str, Policy],
        cache: StateCache,
        violations: ViolationLog,
        *,
        exposures: ExposureRecorder | None = None,
        unregistered: Unregistered = "warn",
        env_killed: frozenset[str] = frozenset(),
        broken: Mapping[str, ConfigError] | None = None,
    ) -> None:
        super().__init__(name=inner.name, kind="governed")
        self.inner = inner
        self.policies = dict(policies)
        self.cache = cache
        self.violations = violations
        self.exposures = exposures
        self.unregistered = unregistered
        self.env_killed = env_killed
        self.unregistered_seen: set[str] = set()
        # Made short once here: the answer carries it on every evaluation of the flag.
        self.broken = {flag: _short(problem) for flag, problem in (broken or {}).items()}
        self._plans: dict[str, FlagPlan] = {}
        self._plans_lock = threading.Lock()
        self._replan()
        cache.subscribe(self._replan)

    def get_metadata(self) -> Metadata:
        return self.inner.get_metadata()

    @property
    def status(self) -> Any:
        return self.inner.status

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self.inner.attach(self._forward)
        self.cache.start()
        self.violations.start()
        self.inner.initialize(evaluation_context)

    def _forward(
        self, provider: FeatureProvider, event: ProviderEvent, details: ProviderEventDetails
    ) -> None:
        self.emit(event, details)

    def shutdown(self) -> None:
        self.inner.shutdown()
        self.violations.close()
        self.cache.close()

    def after_fork_in_child(self) -> None:
        self._plans_lock = threading.Lock()
        self.inner.after_fork_in_child()
        self.cache.after_fork_in_child()
        if self.violations.audit is not None:
            self.violations.audit.after_fork_in_child()
        self.violations.after_fork_in_child()

    # -- plans ---------------------------------------------------------------------------

    def _replan(self, _states: Mapping[str, FlagState] | None = None) -> None:
        """Rebuild the plan of every flag whose state changed. Reads the cache's latest
        states under a lock (not the argument): of two threads replanning at once, the one
        that assigns last has seen the newest state, so a kill is never overwritten."""
        with self._plans_lock:
            plans = dict(self._plans)
            for flag, policy in self.policies.items():
                state = self.cache.get(flag)
                plan = plans.get(flag)
                if plan is None or plan.state is not state:
                    plans[flag] = FlagPlan(policy, state, killed=flag in self.env_killed)
            self._plans = plans  # one assignment: evaluations see the old plans or the new

    def plan(self, flag: str) -> FlagPlan | None:
        """The plan this process evaluates ``flag`` by now (None: the flag has no policy)."""
        return self._plans.get(flag)

    def state(self, flag: str) -> FlagState:
        state = self.cache.get(flag)
        if flag in self.env_killed and not state.killed:
            return FlagState(
                flag, stage=state.stage, killed=True, paused=state.paused, version=state.version
            )
        return state

    # -- evaluation ----------------------------------------------------------------------

    def resolve(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        plan = self._plans.get(flag_key)
        if plan is None:
            if flag_key in self.broken:
                return self._policy_broken(flag_key, default_value, evaluation_context)
            return self._unregistered(flag_type, flag_key, default_value, evaluation_context)
        details, source = self.inner.answer(flag_type, flag_key, default_value, evaluation_context)
        if (
            details.value is plan.bucketed
            and plan.unit is None
            and evaluation_context is not None
            and (unit := evaluation_context.targeting_key).__class__ is str
            and unit
        ):
            # The commonest answer, decided here without a call: a boolean treatment bucketed
            # by the targeting key (what _decide() says for it, through ruling() and admits()).
            violation = None
            if unit_hash((plan.prefix + unit).encode()) % BUCKETS < plan.limit:
                arm, capped = "treatment", False
            else:
                arm, capped = "control", True
                details.value, details.variant, details.reason = plan.control, "control", SPLIT
            key_text = unit
        else:
            arm, capped, violation = _decide(plan, details, default_value, evaluation_context)
            key_text = _key_text(evaluation_context)
        template = plan.templates.get((source, arm, capped)) or plan.metadata(source, arm, capped)
        vendor = details.flag_metadata
        metadata = {**vendor, **template} if vendor else template.copy()
        if violation is not None:
            self.violations.count(flag_key, violation)
            metadata[VIOLATION] = violation
        details.flag_metadata = metadata
        exposures = self.exposures
        if exposures is not None:  # _record's work, inline: one call fewer on every evaluation
            try:
                exposures.record(
                    flag_key,
                    details.variant or "",
                    details.reason,
                    details.error_code,
                    source,
                    arm,
                    capped,
                    key_text,
                    details.value,
                    plan.stage,
                )
            except Exception as exc:  # bookkeeping never changes what is served
                exposures.failed(exc)
        return details

    def _policy_broken(
        self, flag_key: str, default_value: Any, evaluation_context: EvaluationContext | None
    ) -> FlagResolutionDetails[Any]:
        state = self.state(flag_key)
        details: FlagResolutionDetails[Any] = FlagResolutionDetails(
            value=default_value,
            reason=Reason.DISABLED,
            flag_metadata={
                SOURCE: "default",
                STAGE: state.stage,
                ARM: "none",
                CAPPED: False,
                KILLED: state.killed,
                POLICY_ERROR: self.broken[flag_key],
            },
        )
        self._record(flag_key, details, "default", "none", evaluation_context, state.stage)
        return details

    def _killed_without_policy(
        self,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
        label: str,
    ) -> FlagResolutionDetails[Any]:
        details: FlagResolutionDetails[Any] = FlagResolutionDetails(
            value=default_value,
            reason=Reason.DISABLED,
            flag_metadata={SOURCE: "default", ARM: "none", CAPPED: False, KILLED: True},
        )
        self._record(flag_key, details, "default", "none", evaluation_context, None, label)
        return details

    def _unregistered(
        self,
        flag_type: FlagType,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
    ) -> FlagResolutionDetails[Any]:
        # Counted and said under a bounded label: a flood of keys must not grow memory.
        label = flag_labels(flag_key, registered=False)
        if self.cache.killed_elsewhere(flag_key) or flag_key in self.env_killed:
            # A kill always wins, policy or not: with no control value, the caller's default.
            return self._killed_without_policy(flag_key, default_value, evaluation_context, label)
        if self.unregistered == "allow":
            details = self.inner.resolve(flag_type, flag_key, default_value, evaluation_context)
            source = str(details.flag_metadata.get(SOURCE, ""))
            self._record(flag_key, details, source, "", evaluation_context, None, label)
            return details
        self.violations.count(label, "unregistered")
        if label not in self.unregistered_seen:
            self.unregistered_seen.add(label)
            _log.warning(
                "flagwarden.unregistered_flag",
                flag=label,
                mode=self.unregistered,
                **(
                    {"note": "beyond telemetry.max_unregistered_flags"} if label == OVERFLOW else {}
                ),
            )
        if self.unregistered == "deny":
            details = FlagResolutionDetails(
                value=default_value,
                reason=Reason.DISABLED,
                flag_metadata={SOURCE: "default", "flagwarden.unregistered": True},
            )
        else:
            details = self.inner.resolve(flag_type, flag_key, default_value, evaluation_context)
        source = str(details.flag_metadata.get(SOURCE, ""))
        self._record(flag_key, details, source, "", evaluation_context, None, label)
        return details

    def _record(
        self,
        flag_key: str,
        details: FlagResolutionDetails[Any],
        source: str,
        arm: str,
        evaluation_context: EvaluationContext | None,
        stage: float | None,
        label: str | None = None,
    ) -> None:
        """Exposure bookkeeping for the answers off the governed path (broken, unregistered)."""
        exposures = self.exposures
        if exposures is None:
            return
        try:
            exposures.record(
                flag_key,
                details.variant or "",
                details.reason,
                details.error_code,
                source,
                arm,
                False,
                _key_text(evaluation_context),
                details.value,
                stage,
                label=label,
            )
        except Exception as exc:  # bookkeeping never changes what is served
            exposures.failed(exc)


def _decide(
    plan: FlagPlan,
    details: FlagResolutionDetails[Any],
    default_value: Any,
    evaluation_context: EvaluationContext | None,
) -> tuple[str, bool, str | None]:
    """The policy applied to the chain's answer: ``details`` updated in place when control is
    served; the arm, whether the stage capped it, and the violation (or None)."""
    value = details.value
    ruling = plan.ruling(value, details.variant, details.error_code, default_value)
    if ruling is Ruling.BUCKET:
        if evaluation_context is None:
            unit = None
        elif plan.unit is None:
            unit = evaluation_context.targeting_key or None  # admits() makes a number text
        else:
            unit = plan.unit_of(None, evaluation_context.attributes)
        if plan.admits(unit):
            return "treatment", False, None
        details.value, details.variant, details.reason = plan.control, "control", SPLIT
        return ("control", False, "missing_unit") if unit is None else ("control", True, None)
    if ruling is Ruling.KILLED:
        details.value, details.variant, details.reason = plan.control, "control", DISABLED
        return "control", False, None
    if ruling is Ruling.UNKNOWN:
        details.value, details.variant, details.reason = plan.control, "control", DEFAULT
        return "control", False, "unknown_variant"
    # PASS or VENDOR: the answer as it came
    outside = ruling is Ruling.PASS and plan.outside(
        value, details.variant, details.error_code, default_value
    )
    return plan.arm_of(value), False, "unknown_variant" if outside else None


def _key_text(context: EvaluationContext | None) -> str:
    """The targeting key as the exposure log shows it ("" without one)."""
    key = context.targeting_key if context is not None else None
    if not key:
        return ""
    return key if key.__class__ is str else str(key)


# Reasons the policy serves control with (bound once: the evaluation path uses them).
SPLIT, DISABLED, DEFAULT = Reason.SPLIT, Reason.DISABLED, Reason.DEFAULT


def _short(problem: ConfigError) -> str:
    """``b.yaml: expires: input should be a valid date``: the file's name, not its path."""
    parts = [Path(problem.file).name if problem.file else "-", problem.field, problem.problem]
    text = ": ".join(part for part in parts if part)
    if len(problem.problems) > 1:
        text += f" (and {len(problem.problems) - 1} more)"
    return text if len(text) <= _POLICY_ERROR_CHARS else text[: _POLICY_ERROR_CHARS - 3] + "..."
