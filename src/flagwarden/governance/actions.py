"""The six transitions by name: the one code path the command line, the admin API and the
dashboard act through (an advance under four-eyes becomes a change request)."""

from __future__ import annotations

from flagwarden.governance.approvals import Approvals, Requested
from flagwarden.governance.rollout import Rollout, Transition, TransitionRefused

__all__ = ["ACTIONS", "perform"]

ACTIONS = ("advance", "rollback", "kill", "revive", "pause", "resume")


def perform(
    rollout: Rollout,
    action: str,
    flag: str,
    *,
    actor: str,
    reason: str,
    authenticated: bool,
    to: float | None = None,
    force: bool = False,
) -> Transition | Requested:
    """Run ``action`` on ``flag`` as ``actor`` (``authenticated``: proven by a token)."""
    if action == "advance":
        return Approvals(rollout).advance(
            flag, actor=actor, reason=reason, to=to, force=force, authenticated=authenticated
        )
    if action == "rollback":
        return rollout.rollback(flag, actor=actor, reason=reason, to=to)
    if action in ("kill", "revive", "pause", "resume"):
        if to is not None or force:
            raise TransitionRefused(f"{action} takes no stage and cannot be forced")
        done: Transition = getattr(rollout, action)(flag, actor=actor, reason=reason)
        return done
    raise TransitionRefused(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
