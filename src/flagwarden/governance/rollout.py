"""State transitions: advance, rollback, kill, revive, pause, resume.

Each one reads the flag's state, checks the policy, and stores the next state with an atomic
compare-and-set; the audit log gets who, when, why, before and after. A refusal raises
:class:`TransitionRefused` with the reason; a store that cannot be written raises
:class:`~flagwarden.governance.state.StateStoreUnavailable` (a kill is never a silent no-op).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from flagwarden.audit.log import AuditLog
from flagwarden.errors import FlagwardenError
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState, StateCache, StateStore

__all__ = ["Rollout", "Transition", "TransitionRefused", "resolve_actor"]

ACTOR_ENV = "FLAGWARDEN_ACTOR"
_log = structlog.get_logger("flagwarden.rollout")


def resolve_actor(actor: str | None) -> str:
    """``--actor``, else ``$FLAGWARDEN_ACTOR``, else the OS user."""
    if actor:
        return actor
    if os.environ.get(ACTOR_ENV):
        return os.environ[ACTOR_ENV]
    try:
        return getpass.getuser()
    except Exception:
        return f"uid:{os.getuid()}"


class TransitionRefused(FlagwardenError):
    """The policy or a concurrent change refused a transition; nothing was changed."""


@dataclass(frozen=True)
class Transition:
    action: str
    before: FlagState
    after: FlagState
    violations: tuple[str, ...] = ()


def _stage(value: float) -> str:
    return f"{value:g}%"


class Rollout:
    """Transitions for the governed flags, against one state store and one audit log."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        store: StateStore,
        audit: AuditLog | None,
        cache: StateCache | None = None,
    ) -> None:
        self.policies = policies
        self.store = store
        self.audit = audit
        self.cache = cache

    def policy(self, flag: str) -> Policy:
        policy = self.policies.get(flag)
        if policy is None:
            known = ", ".join(sorted(self.policies)) or "none"
            raise TransitionRefused(f"{flag!r} has no policy (governed flags: {known})")
        return policy

    def state(self, flag: str) -> FlagState:
        self.policy(flag)
        return self.store.load(flag) or FlagState(flag)

    def _commit(
        self,
        action: str,
        before: FlagState,
        after: FlagState,
        *,
        actor: str,
        reason: str,
        violations: tuple[str, ...] = (),
        details: dict[str, Any] | None = None,
    ) -> Transition:
        if not self.store.compare_and_set(after):
            current = self.store.load(before.flag)
            raise TransitionRefused(
                f"{before.flag}: another change landed first "
                f"(version {current.version if current else 0}, "
                f"expected {before.version}); nothing was changed, look at the state and retry"
            )
        if self.cache is not None:
            self.cache.put(after)
        _log.info(
            "flagwarden.transition",
            flag=before.flag,
            action=action,
            actor=actor,
            reason=reason,
            before=before.summary(),
            after=after.summary(),
            violations=list(violations),
        )
        if self.audit is not None:
            data = {
                "action": action,
                "reason": reason,
                "before": before.summary(),
                "after": after.summary(),
                **(details or {}),
            }
            if violations:
                data["violations"] = list(violations)
            self.audit.append("transition", data, flag=before.flag, actor=actor)
            for violation in violations:
                self.audit.append(
                    "violation",
                    {"kind": violation, "count": 1, "action": action, "reason": reason},
                    flag=before.flag,
                    actor=actor,
                )
        return Transition(action, before, after, violations)

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
    ) -> Transition:
        policy = self.policy(flag)
        before = self.state(flag)
        if before.killed:
            raise TransitionRefused(f"{flag} is killed: revive it before advancing")
        if before.paused and not force:
            raise TransitionRefused(f"{flag} is paused: resume it first (or --force)")
        following = policy.next_stage(before.stage)
        if following is None:
            raise TransitionRefused(f"{flag} is at its last stage ({_stage(before.stage)})")
        target = following if to is None else to
        if target not in policy.stages:
            approved = ", ".join(_stage(s) for s in policy.stages)
            raise TransitionRefused(
                f"{_stage(target)} is not an approved stage of {flag} ({approved})"
            )
        if target <= before.stage:
            raise TransitionRefused(
                f"{flag} is at {_stage(before.stage)}: advancing to {_stage(target)} "
                "goes backwards, use rollback"
            )
        violations: list[str] = []
        if target != following:
            violations.append(f"stage_skipped:{_stage(following)}->{_stage(target)}")
        if (
            before.stage > 0
            and before.stage_entered_at is not None
            and policy.soak.total_seconds() > 0
        ):
            held = (now or datetime.now(UTC)) - before.stage_entered_at
            if held < policy.soak:
                if not force:
                    remaining = policy.soak - held
                    raise TransitionRefused(
                        f"{flag} has soaked at {_stage(before.stage)} for {_human(held)} of "
                        f"{_human(policy.soak)}; {_human(remaining)} to go "
                        "(or --force, recorded as a violation)"
                    )
                violations.append(f"soak_cut_short:{_human(held)}<{_human(policy.soak)}")
        if before.paused:
            violations.append("advanced_while_paused")
        after = before.changed(
            actor=actor, reason=reason, stage=target, history=(*before.history, target)
        )
        return self._commit(
            "advance",
            before,
            after,
            actor=actor,
            reason=reason,
            violations=tuple(violations),
            details=details,
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
        policy = self.policy(flag)
        before = self.state(flag)
        if before.stage <= 0:
            raise TransitionRefused(f"{flag} is at 0%: everyone already gets control")
        target = policy.previous_stage(before.stage) if to is None else to
        if target != 0 and target not in policy.stages:
            approved = ", ".join(["0%", *(_stage(s) for s in policy.stages)])
            raise TransitionRefused(
                f"{_stage(target)} is not an approved stage of {flag} ({approved})"
            )
        if target >= before.stage:
            raise TransitionRefused(
                f"{flag} is at {_stage(before.stage)}: "
                f"rolling back to {_stage(target)} is not backwards"
            )
        after = before.changed(
            actor=actor, reason=reason, stage=target, history=(*before.history, target)
        )
        return self._commit("rollback", before, after, actor=actor, reason=reason, details=details)

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
    ) -> Transition:
        """Set ``killed`` or ``paused`` to ``value``; refused when it already is."""
        before = self.state(flag)
        if getattr(before, field) == value:
            already = f"already {field}" if value else f"not {field}"
            by = f" (by {before.updated_by}: {before.reason})" if value else ""
            raise TransitionRefused(f"{flag} is {already}{by}")
        after = before.changed(actor=actor, reason=reason, **{field: value})
        return self._commit(action, before, after, actor=actor, reason=reason, details=details)

    def kill(self, flag: str, *, actor: str, reason: str) -> Transition:
        return self._switch("kill", flag, "killed", True, actor=actor, reason=reason)

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


def _human(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{max(seconds, 0)}s"
