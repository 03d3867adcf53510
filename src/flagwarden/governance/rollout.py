"""State transitions: advance, rollback, kill, revive, pause, resume.

Each one reads the flag's state, checks the policy, and stores the next state with an atomic
compare-and-set; the audit log gets who, when, why, before and after. A refusal raises
:class:`TransitionRefused` with the reason; a store that cannot be written raises
:class:`~flagwarden.governance.state.StateStoreUnavailable` (a kill is never a silent no-op).

No change without its record: the audit records of a change are stored with the change, in
the same compare-and-set (the store's outbox), then written to the audit log
(:mod:`flagwarden.governance.changes`). A change that took effect is reported as done, with
its record pending if so.

Transitions are idempotent where a retry is natural: killing a killed flag, pausing a paused
one, advancing to the stage it is at (or past its last stage), rolling back to where it is:
nothing changes, nothing is audited, and the result says so (``changed`` is False).

Sequencing: a policy's ``requires`` lets a flag advance only while each prerequisite flag
stands at its stage (not killed); a kill or a rollback of a prerequisite below that stage
pauses the live dependants, in the same act and under the same actor.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.governance.changes import ChangeRecorder, Reconciled, Unrecorded
from flagwarden.governance.policy import Policy
from flagwarden.governance.sequencing import dependants, short_prerequisites
from flagwarden.governance.state import (
    FlagState,
    StateStore,
    StateStoreUnavailable,
)
from flagwarden.governance.transition import (
    ApprovalRequired,
    ConcurrentChange,
    Transition,
    TransitionRefused,
    Violation,
    require_reason,
    resolve_actor,
    storable,
)
from flagwarden.humanize import duration, percent
from flagwarden.logs import get_logger

if TYPE_CHECKING:  # a worker's cache and the webhooks come in from outside, already built
    from flagwarden.governance.cache import StateCache
    from flagwarden.notify import Notifier

__all__ = [
    "ApprovalRequired",
    "Reconciled",
    "Rollout",
    "Transition",
    "TransitionRefused",
    "Unrecorded",
    "Violation",
    "resolve_actor",
    "storable",
]

_log = get_logger("flagwarden.rollout")
_SWITCH_ATTEMPTS = 50  # with the backoff below: a couple of seconds of contention at most


class Rollout:
    """Transitions for the governed flags, against one state store and one audit log."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        store: StateStore,
        audit: AuditLog | None,
        cache: StateCache | None = None,
        *,
        broken: Mapping[str, str] | None = None,
        any_flag_switchable: bool = False,
        audit_problem: str | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.policies = policies
        self.store = store
        self.audit = audit
        self.cache = cache
        # Flags whose policy file cannot be read, and why: they can still be killed, revived,
        # paused and resumed (the red button needs no policy: any flag can be killed), not
        # advanced or rolled back.
        self.broken = dict(broken or {})
        # The policies folder could not be listed: no flag can be told to be ungoverned, so
        # pause and resume reach any flag too.
        self.any_flag_switchable = any_flag_switchable
        self.changes = ChangeRecorder(store, audit, audit_problem=audit_problem, cache=cache)
        # Webhooks hear of every stored change (never blocks, never raises).
        self.notifier = notifier

    def policy(self, flag: str) -> Policy:
        policy = self.policies.get(flag)
        if policy is None:
            if flag in self.broken:
                raise TransitionRefused(
                    f"{flag}'s policy cannot be read ({self.broken[flag]}): fix it first "
                    "(kill, revive, pause and resume still work)"
                )
            known = ", ".join(sorted(self.policies)) or "none"
            raise TransitionRefused(f"{flag!r} has no policy (governed flags: {known})")
        return policy

    def state(self, flag: str) -> FlagState:
        self.policy(flag)
        state = self.store.load(flag)
        if state is None and flag in self.store.last_unreadable:
            # Not "not started": a watch pass must not take a live flag for one at 0%.
            raise StateStoreUnavailable(
                f"{flag}: its stored state cannot be read ({self.store.last_unreadable[flag]})"
            )
        return state or FlagState(flag)

    def _switchable_state(self, flag: str, field: str) -> FlagState:
        """The flag's stored state, for a kill, revive, pause or resume. A kill and a revive
        reach any flag (workers serve the caller's default for a killed flag without a
        policy); a pause and a resume need a policy, one that cannot be read, or a policies
        folder that cannot be listed (without a policy, a pause means nothing to workers)."""
        if not flag.strip():
            raise TransitionRefused("a flag key cannot be blank")
        if field != "killed" and flag not in self.broken and not self.any_flag_switchable:
            self.policy(flag)
        return self.store.load(flag) or FlagState(flag)

    def _unchanged(self, action: str, state: FlagState, note: str) -> Transition:
        return Transition(action, state, state, changed=False, note=note)

    def _commit(
        self,
        action: str,
        before: FlagState,
        after: FlagState,
        *,
        actor: str,
        reason: str,
        violations: tuple[Violation, ...] = (),
        details: dict[str, Any] | None = None,
        record_now: bool = True,
    ) -> Transition:
        """Store the change with its records; write them now, or (``record_now`` False: a kill
        or rollback pauses its dependants first) when :meth:`_record` is called."""
        data = {
            "action": action,
            "reason": reason,
            "before": before.summary(),
            "after": after.summary(),
            **(details or {}),
        }
        if violations:
            data["violations"] = [v.as_dict() for v in violations]
        records = [{"kind": "transition", "data": data, "actor": actor}]
        records += [
            {
                "kind": "violation",
                "data": {**violation.as_dict(), "count": 1, "action": action, "reason": reason},
                "actor": actor,
            }
            for violation in violations
        ]
        entry = self.changes.store_change(before, after, records)
        if entry is None:
            current = self.store.load(before.flag)
            raise ConcurrentChange(
                f"{before.flag}: another change landed first "
                f"(version {current.version if current else 0}, "
                f"expected {before.version}); nothing was changed, look at the state and retry"
            )
        _log.info(
            "flagwarden.transition",
            flag=before.flag,
            action=action,
            actor=actor,
            reason=reason,
            before=before.summary(),
            after=after.summary(),
            violations=[v.as_dict() for v in violations],
        )
        done = Transition(action, before, after, violations, entry=entry)
        return self._record(done) if record_now else done

    def _record(self, done: Transition) -> Transition:
        """Write the records of ``done`` and of the dependants it paused."""
        if not done.changed or done.entry is None:
            return done
        error = self.changes.record(done.entry)
        if self.notifier is not None:  # kill, rollback or transition; then each dependant's pause
            self.notifier.publish_transition(done)
        cascade = tuple(self._record(paused) for paused in done.cascade)
        return replace(done, audit_error=error, cascade=cascade)

    def reconcile(self) -> Reconciled:
        """Write every record waiting in the outbox (see :class:`ChangeRecorder`)."""
        return self.changes.reconcile()

    def store_guard_counts(self, state: FlagState, failures: dict[str, int]) -> FlagState:
        """Keep a watch pass's consecutive-breach counts (see :class:`ChangeRecorder`)."""
        return self.changes.store_guard_counts(state, failures)

    def unrecorded(self) -> list[Unrecorded]:
        """Every state version without its audit record (see :class:`ChangeRecorder`)."""
        return self.changes.unrecorded()

    # -- sequencing --------------------------------------------------------------------

    def _pause_dependants(self, done: Transition, actor: str) -> Transition:
        """After a kill or a rollback: pause the live dependants whose prerequisite fell short."""
        flag, after = done.before.flag, done.after
        paused: list[Transition] = []
        failed: list[str] = []
        for policy, needed in dependants(self.policies, flag):
            if not after.killed and after.stage >= needed:
                continue
            why = (
                f"prerequisite {flag} was killed"
                if after.killed
                else f"prerequisite {flag} fell to {percent(after.stage)} (needs {percent(needed)})"
            )
            try:
                pause = self._switch(
                    "pause",
                    policy.flag,
                    "paused",
                    True,
                    actor=actor,
                    reason=why,
                    details={"cause": {"flag": flag, "action": done.action}},
                    only_if_live=True,
                    record_now=False,  # recorded with the change that caused it
                )
            except (TransitionRefused, StateStoreUnavailable, AuditError) as exc:
                failed.append(f"{policy.flag}: {exc}")
                continue
            if pause.changed:
                paused.append(pause)
        return replace(done, cascade=tuple(paused), cascade_failures=tuple(failed))

    # -- the transitions ---------------------------------------------------------------

    def advance(
        self,
        flag: str,
        *,
        actor: str,
        reason: str,
        to: float | None = None,
        force: bool = False,
        now: datetime | None = None,
        details: dict[str, Any] | None = None,
        approval: dict[str, Any] | None = None,
        expect_version: int | None = None,
    ) -> Transition:
        """Move ``flag`` to its next stage (or ``to``). A stage under the policy's four-eyes
        rule raises :class:`ApprovalRequired` once every other rule passed, unless
        ``approval`` (the approved change request: who asked, who approved) is given; it is
        recorded with the change. ``expect_version``: refuse (:class:`ConcurrentChange`)
        unless the flag is still at that version, and store only over it (an approved
        request applies to the state it was asked about, or not at all)."""
        reason = require_reason(reason)
        policy = self.policy(flag)
        before = self.state(flag)
        if expect_version is not None and before.version != expect_version:
            raise ConcurrentChange(
                f"{flag} changed since (version {before.version}, expected {expect_version})"
            )
        if to is not None and to == before.stage:
            return self._unchanged("advance", before, f"{flag} is already at {percent(to)}")
        following = policy.next_stage(before.stage)
        if following is None and to is None:
            return self._unchanged(
                "advance", before, f"{flag} is already at its last stage ({percent(before.stage)})"
            )
        if before.killed:
            raise TransitionRefused(f"{flag} is killed: revive it before advancing")
        if before.paused and not force:
            raise TransitionRefused(
                f"{flag} is paused ({before.reason}): resume it first "
                "(or --force, recorded as a violation)"
            )
        target = following if to is None else to
        assert target is not None
        if target not in policy.stages:
            approved = ", ".join(percent(s) for s in policy.stages)
            raise TransitionRefused(
                f"{percent(target)} is not an approved stage of {flag} ({approved})"
            )
        if target < before.stage:
            raise TransitionRefused(
                f"{flag} is at {percent(before.stage)}: advancing to {percent(target)} "
                "goes backwards, use rollback"
            )
        violations: list[Violation] = []
        short = short_prerequisites(self.policies, self.store, policy)
        if short:
            if not force:
                raise TransitionRefused(
                    f"{flag} requires {'; '.join(short)}: advance the prerequisites first "
                    "(or --force, recorded as a violation)"
                )
            violations.append(Violation("prerequisite_short", "; ".join(short)))
        if target != following:
            skipped = [stage for stage in policy.stages if before.stage < stage < target]
            violations.append(
                Violation(
                    "stage_skipped",
                    f"{percent(before.stage)} -> {percent(target)}, "
                    f"skipping {', '.join(percent(stage) for stage in skipped)}",
                )
            )
        if (
            before.stage > 0
            and before.stage_entered_at is not None
            and policy.soak.total_seconds() > 0
        ):
            held = (now or datetime.now(UTC)) - before.stage_entered_at
            if held < policy.soak:
                if not force:
                    remaining = math.ceil((policy.soak - held).total_seconds())
                    raise TransitionRefused(
                        f"{flag} has soaked at {percent(before.stage)} for {duration(held)} of "
                        f"{duration(policy.soak)}; {duration(remaining)} to go "
                        "(or --force, recorded as a violation)"
                    )
                violations.append(
                    Violation("soak_cut_short", f"{duration(held)} of {duration(policy.soak)}")
                )
        if before.paused:
            violations.append(Violation("advanced_while_paused", f"at {percent(before.stage)}"))
        if approval is None and policy.needs_approval(target):
            assert policy.approvals is not None
            raise ApprovalRequired(
                flag, before, target, policy.approvals.required, tuple(violations)
            )
        after = before.changed(
            actor=actor, reason=reason, stage=target, history=(*before.history, target)
        )
        # The soak that applied, so the report judges this advance by the policy of its time.
        recorded = {"soak_seconds": policy.soak.total_seconds(), **(details or {})}
        if approval is not None:
            recorded["approval"] = approval
        return self._commit(
            "advance",
            before,
            after,
            actor=actor,
            reason=reason,
            violations=tuple(violations),
            details=recorded,
        )

    def rollback(
        self,
        flag: str,
        *,
        actor: str,
        reason: str,
        to: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> Transition:
        reason = require_reason(reason)
        policy = self.policy(flag)
        before = self.state(flag)
        if before.stage <= 0:
            return self._unchanged(
                "rollback", before, f"{flag} is at 0%: everyone already gets control"
            )
        target = policy.previous_stage(before.stage) if to is None else to
        if target == before.stage:
            return self._unchanged("rollback", before, f"{flag} is already at {percent(target)}")
        if target != 0 and target not in policy.stages:
            approved = ", ".join(["0%", *(percent(s) for s in policy.stages)])
            raise TransitionRefused(
                f"{percent(target)} is not an approved stage of {flag} ({approved})"
            )
        if target > before.stage:
            raise TransitionRefused(
                f"{flag} is at {percent(before.stage)}: "
                f"rolling back to {percent(target)} is not backwards"
            )
        after = before.changed(
            actor=actor, reason=reason, stage=target, history=(*before.history, target)
        )
        done = self._commit(
            "rollback", before, after, actor=actor, reason=reason, details=details, record_now=False
        )
        return self._record(self._pause_dependants(done, actor))

    def _switch(
        self,
        action: str,
        flag: str,
        field: str,
        value: bool,
        *,
        actor: str,
        reason: str,
        details: dict[str, Any] | None = None,
        only_if_live: bool = False,
        record_now: bool = True,
    ) -> Transition:
        """Set ``killed`` or ``paused`` to ``value``; nothing to do when it already is.

        Unconditional, so a concurrent change (a watch pass counting breaches, say) never
        refuses it: it is tried again on the new state. ``only_if_live``: a no-op for a flag
        at 0% or killed (pausing a dependant).
        """
        reason = require_reason(reason)
        for attempt in range(_SWITCH_ATTEMPTS):
            before = self._switchable_state(flag, field)
            if only_if_live and (before.stage <= 0 or before.killed):
                return self._unchanged(action, before, f"{flag} is not live")
            if getattr(before, field) == value:
                already = f"already {field}" if value else f"not {field}"
                by = f" (by {before.updated_by}: {before.reason})" if value else ""
                return self._unchanged(action, before, f"{flag} is {already}{by}")
            after = before.changed(actor=actor, reason=reason, **{field: value})
            try:
                return self._commit(
                    action,
                    before,
                    after,
                    actor=actor,
                    reason=reason,
                    details=details,
                    record_now=record_now,
                )
            except ConcurrentChange:
                # Let the other writer finish; jittered so two retrying writers part ways.
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                continue
        raise TransitionRefused(
            f"{flag}: changed by others {_SWITCH_ATTEMPTS} times while trying to {action} it; "
            "nothing was changed, retry"
        )

    def kill(self, flag: str, *, actor: str, reason: str) -> Transition:
        # The dependants are paused before any record is written: a slow audit log never
        # stands between a kill and the pauses it causes.
        done = self._switch(
            "kill", flag, "killed", True, actor=actor, reason=reason, record_now=False
        )
        return self._record(self._pause_dependants(done, actor) if done.changed else done)

    def revive(self, flag: str, *, actor: str, reason: str) -> Transition:
        return self._switch("revive", flag, "killed", False, actor=actor, reason=reason)

    def pause(
        self, flag: str, *, actor: str, reason: str, details: dict[str, Any] | None = None
    ) -> Transition:
        return self._switch(
            "pause", flag, "paused", True, actor=actor, reason=reason, details=details
        )

    def resume(self, flag: str, *, actor: str, reason: str) -> Transition:
        return self._switch("resume", flag, "paused", False, actor=actor, reason=reason)
