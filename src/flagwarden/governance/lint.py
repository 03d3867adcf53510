"""Lints over policies, their state and the audit log (``flagwarden check``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from flagwarden.audit.log import AuditLog
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState

__all__ = ["STALE_AFTER", "lint_policy", "lint_state", "lint_unregistered"]

STALE_AFTER = timedelta(days=30)


def lint_policy(policy: Policy, today: date | None = None) -> list[str]:
    found = []
    if policy.is_expired(today):
        found.append(
            f"{policy.flag}: expired on {policy.expires} (owner {policy.owner}): remove the flag"
        )
    if policy.expires is None:
        found.append(f"{policy.flag}: no expiry date: every flag should have one")
    if "@" not in policy.owner and " " in policy.owner.strip():
        found.append(f"{policy.flag}: owner {policy.owner!r} is not a team handle or an address")
    return found


def lint_state(
    policies: dict[str, Policy], states: dict[str, FlagState], now: datetime | None = None
) -> list[str]:
    now = now or datetime.now(UTC)
    found = []
    for flag, policy in sorted(policies.items()):
        state = states.get(flag)
        if state is None or state.stage < 100 or state.stage_entered_at is None:
            continue
        held = now - state.stage_entered_at
        if held > STALE_AFTER:
            found.append(
                f"{flag}: at 100% for {held.days} days (owner {policy.owner}): "
                "remove the flag and its policy"
            )
    return found


def lint_unregistered(audit: AuditLog, policies: dict[str, Policy]) -> list[str]:
    seen: dict[str, int] = {}
    for record in audit.records(kind="violation"):
        if record.data.get("kind") == "unregistered" and record.flag:
            seen[record.flag] = seen.get(record.flag, 0) + int(record.data.get("count", 1))
    return [
        f"{flag}: evaluated {n} time{'s' * (n != 1)} with no policy: "
        f"give it a policy (policies/{flag}.yaml) or stop asking for it"
        for flag, n in sorted(seen.items())
        if flag not in policies
    ]
