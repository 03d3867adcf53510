"""``flagwarden watch``: evaluate guards, roll back or pause on breach, advance when healthy.

For each governed flag that is live (stage above 0, not killed): evaluate its guards. A guard
that breaches ``failure_limit`` times in a row triggers ``on_breach`` (rollback to control for
everyone, or pause). An unreachable guard source pauses (and the watch resumes the rollout
itself once the source answers again). With ``auto_advance``, a flag whose guards are all
healthy (not merely inconclusive) and whose soak has passed moves to its next stage. Every
decision is audited with the measurements that led to it.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flagwarden.audit.log import AuditError
from flagwarden.background import report_failure, report_ok
from flagwarden.governance.approvals import Approvals
from flagwarden.governance.guards import GuardEvaluator, GuardResult
from flagwarden.governance.policy import Policy
from flagwarden.governance.project import Governance
from flagwarden.governance.rollout import ApprovalRequired, Rollout, TransitionRefused
from flagwarden.governance.state import FlagState, StateStoreUnavailable
from flagwarden.logs import get_logger
from flagwarden.telemetry.metrics import GUARD_BREACHES

__all__ = ["Decision", "Watch"]

_log = get_logger("flagwarden.watch")

ACTOR = "flagwarden-watch"
UNREACHABLE = "guard source unreachable"
WATCH_THREAD = "flagwarden-watch"  # its passes' health, as background work


@dataclass
class Decision:
    flag: str
    action: str  # rollback | pause | resume | advance | hold | healthy | skip | error
    results: list[GuardResult] = field(default_factory=list)
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "flag": self.flag,
            "action": self.action,
            "detail": self.detail,
            "guards": [r.as_dict() for r in self.results],
        }


class Watch:
    def __init__(
        self, governance: Governance, evaluator: GuardEvaluator, rollout: Rollout | None = None
    ) -> None:
        self.governance = governance
        self.evaluator = evaluator
        self.rollout: Rollout = rollout or governance.rollout()

    def tick(self, now: float | None = None) -> list[Decision]:
        now = time.time() if now is None else now
        decisions = []
        for flag, policy in sorted(self.governance.policies.items()):
            if not policy.guards and not policy.auto_advance:
                continue
            try:
                decisions.append(self._check(policy, now))
            except TransitionRefused as exc:
                decisions.append(Decision(flag, "hold", detail=str(exc)))
            except Exception as exc:  # one flag's trouble never stops the other flags' guards
                _log.error("flagwarden.watch_flag_failed", flag=flag, error=str(exc))
                decisions.append(Decision(flag, "error", detail=f"{type(exc).__name__}: {exc}"))
        # After the decisions: records waiting in the outbox never delay a rollback.
        pending = self.rollout.reconcile()
        if pending.error is not None:
            _log.warning("flagwarden.audit_records_pending", error=pending.error)
        for decision in decisions:
            _log.info(
                "flagwarden.watch_decision",
                flag=decision.flag,
                action=decision.action,
                detail=decision.detail,
                guards=[r.as_dict() for r in decision.results],
            )
        return decisions

    def _check(self, policy: Policy, now: float) -> Decision:
        flag = policy.flag
        state = self.rollout.state(flag)
        if state.killed or state.stage <= 0:
            why = (
                "killed"
                if state.killed
                else "not started"
                if state.version == 0
                else "at 0%: control for everyone"
            )
            return Decision(flag, "skip", detail=why)
        results = [self.evaluator.evaluate(policy, guard, state, now) for guard in policy.guards]
        # One tick's verdicts may reach the audit log twice (the breach and the rollback it
        # caused): the tick id lets the report show them once.
        measurements = {"guards": [r.as_dict() for r in results], "tick": uuid.uuid4().hex[:16]}
        self._keep_verdicts(flag, results, now, state.stage_version)
        failures = dict(state.guard_failures)
        for result in results:
            if result.verdict == "breach":
                failures[result.guard] = failures.get(result.guard, 0) + 1
                GUARD_BREACHES.labels(flag, result.guard).inc()
            elif result.verdict == "healthy":
                failures.pop(result.guard, None)  # no churn: only breaches are counted
        limits = {g.name: g.failure_limit for g in policy.guards}
        acting = [
            r for r in results if r.verdict == "breach" and failures[r.guard] >= limits[r.guard]
        ]
        breaches = [r for r in results if r.verdict == "breach"]
        if breaches and state.paused and policy.on_breach == "pause":
            # Already paused: a breach changes nothing more. Said, not audited again each pass.
            names = ", ".join(f"{r.guard}={r.value:.4g} ({r.limit})" for r in breaches)
            return Decision(flag, "hold", results, f"paused; still breaching: {names}")
        if breaches and self.governance.audit is not None:
            try:
                self.governance.audit.append(
                    "guard",
                    {**measurements, "failures": failures, "acting": [r.guard for r in acting]},
                    flag=flag,
                    actor=ACTOR,
                )
            except AuditError as exc:  # the rollback below carries the verdicts in its record
                _log.error("flagwarden.guard_not_audited", flag=flag, error=str(exc))
        if acting:
            names = ", ".join(
                f"{r.guard}={r.value:.4g} ({r.limit})" for r in acting if r.value is not None
            )
            reason = f"guard breach: {names}"
            details = {**measurements, "failures": failures}
            if policy.on_breach == "rollback":
                # A new stage starts with no failures and a new measurement window.
                self.rollout.rollback(flag, actor=ACTOR, reason=reason, to=0, details=details)
                return self._breach(Decision(flag, "rollback", results, reason), state.stage)
            # A pause starts the failure counts afresh (FlagState.changed).
            self.rollout.pause(flag, actor=ACTOR, reason=reason, details=details)
            return self._breach(Decision(flag, "pause", results, reason), state.stage)
        if failures != state.guard_failures:
            state = self._store_failures(state, failures)
        unreachable = [r for r in results if r.verdict == "unreachable"]
        if unreachable:
            detail = "; ".join(f"{r.guard}: {r.detail}" for r in unreachable)
            if not state.paused:
                self.rollout.pause(
                    flag, actor=ACTOR, reason=f"{UNREACHABLE}: {detail}", details=measurements
                )
                return Decision(flag, "pause", results, detail)
            return Decision(flag, "hold", results, detail)
        if (
            not breaches
            and state.paused
            and state.updated_by == ACTOR
            and (state.reason or "").startswith(UNREACHABLE)
        ):
            # Only the watch's own pause for an unreachable source, and only when nothing
            # breaches: a person's pause, or one for a breach, is a person's to lift.
            self.rollout.resume(flag, actor=ACTOR, reason="guard sources answer again")
            return Decision(flag, "resume", results, "guard sources answer again")
        if breaches:
            counts = ", ".join(
                f"{r.guard} {failures[r.guard]} of {limits[r.guard]}" for r in breaches
            )
            return Decision(flag, "hold", results, f"breaching ({counts}): the stage holds")
        if any(r.verdict == "inconclusive" for r in results):
            return Decision(flag, "hold", results, "not enough data: the stage holds")
        if not policy.auto_advance or state.paused or policy.next_stage(state.stage) is None:
            return Decision(flag, "healthy", results)
        entered = state.stage_entered_at or datetime.now(UTC)
        if (datetime.fromtimestamp(now, UTC) - entered) < policy.soak:
            return Decision(flag, "hold", results, "soaking")
        reason = "guards healthy and soak passed"
        try:
            done = self.rollout.advance(
                flag,
                actor=ACTOR,
                reason=reason,
                now=datetime.fromtimestamp(now, UTC),
                details=measurements,
            )
        except ApprovalRequired as need:
            # Four-eyes: ask, then hold until an approver decides; a request turned down (or
            # let expire) at this very state is not asked again until the flag changes.
            approvals = Approvals(self.rollout)
            latest = approvals.latest(flag)
            if latest is not None and latest.status in ("pending", "applying"):
                return Decision(flag, "hold", results, f"waiting for approval ({latest.id})")
            if latest is not None and latest.state_version == need.before.version:
                return Decision(
                    flag,
                    "hold",
                    results,
                    f"{latest.id} was {latest.status}: asks again once the flag changes",
                )
            asked = approvals.request(need, actor=ACTOR, reason=reason)
            return Decision(flag, "hold", results, f"asked for approval ({asked.id})")
        return Decision(
            flag, "advance", results, f"{done.before.stage:g}% -> {done.after.stage:g}%"
        )

    def _breach(self, decision: Decision, stage: float) -> Decision:
        """Webhooks hear of a rollback or pause on a guard breach, with the verdicts (besides
        the transition's own notification)."""
        notifier = self.rollout.notifier
        if notifier is not None:
            notifier.publish_breach(decision.as_dict(), actor=ACTOR, stage=stage)
        return decision

    def _keep_verdicts(self, flag: str, results: list[GuardResult], now: float, epoch: int) -> None:
        """The latest verdicts, for ``status`` (not a transition: no version, no audit), with
        the epoch of the stage they judged: a later stage shows none until it is judged."""
        store = self.evaluator.measurements
        if store is None or not results:
            return
        try:
            store.save_verdicts(flag, [{**r.as_dict(), "epoch": epoch} for r in results], now)
        except StateStoreUnavailable as exc:
            _log.warning("flagwarden.verdicts_not_kept", flag=flag, error=str(exc))

    def _store_failures(self, state: FlagState, failures: dict[str, int]) -> FlagState:
        return self.rollout.store_guard_counts(state, failures)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set (SIGTERM sets it in the CLI).

        A flag that fails is that flag's ``error`` decision (``tick``); a whole pass that fails
        (the store, say) is reported as background work ``flagwarden-watch`` and the next pass
        waits longer, doubling up to a minute, until one succeeds.
        """
        failures = 0
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # keep watching through a store hiccup
                failures += 1
                report_failure(WATCH_THREAD, exc)
            else:
                failures = 0
                report_ok(WATCH_THREAD)
            backoff = min(max(interval, 1.0) * 2 ** min(failures, 16), 60.0) if failures else 0
            stop.wait(max(interval, backoff))
