"""Lints over policies, their state and the audit log (``flagwarden check``), and status rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from flagwarden.audit.log import AuditLog
from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState

__all__ = [
    "STALE_AFTER",
    "describe_flag",
    "guard_health",
    "last_change",
    "lint_policy",
    "lint_state",
    "lint_unregistered",
    "provider_health",
]

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
    for record in audit.records():
        if record.kind == "violation" and record.data.get("kind") == "unregistered" and record.flag:
            seen[record.flag] = seen.get(record.flag, 0) + int(record.data.get("count", 1))
    return [
        f"{flag}: evaluated {n} times with no policy: write policies/{flag}.yaml"
        for flag, n in sorted(seen.items())
        if flag not in policies
    ]


def describe_flag(
    policy: Policy,
    state: FlagState,
    now: datetime | None = None,
    states: dict[str, FlagState] | None = None,
) -> dict[str, Any]:
    """A governed flag's status: policy, stage, state, soak and prerequisites, for ``status``."""
    now = now or datetime.now(UTC)
    soak_left = None
    following = policy.next_stage(state.stage)
    if state.stage > 0 and state.stage_entered_at is not None and following:
        left = policy.soak - (now - state.stage_entered_at)
        if left > timedelta(0):
            soak_left = round(left.total_seconds())
    states = states or {}
    return {
        "flag": policy.flag,
        "owner": policy.owner,
        "description": policy.description,
        "expires": policy.expires.isoformat() if policy.expires else None,
        "expired": policy.is_expired(now.date()),
        "stages": policy.stages,
        "stage": state.stage,
        "next_stage": following,
        "killed": state.killed,
        "paused": state.paused,
        "version": state.version,
        "stage_entered_at": state.stage_entered_at.isoformat() if state.stage_entered_at else None,
        "soak_seconds": policy.soak.total_seconds(),
        "soak_remaining_seconds": soak_left,
        "updated_at": state.updated_at.isoformat() if state.updated_at else None,
        "updated_by": state.updated_by,
        "reason": state.reason,
        "guard_names": [guard.name for guard in policy.guards],
        "requires": [
            {
                "flag": p.flag,
                "stage": p.stage,
                "now": (states.get(p.flag) or FlagState(p.flag)).stage,
                "killed": (states.get(p.flag) or FlagState(p.flag)).killed,
            }
            for p in policy.requires
        ],
    }


def guard_health(audit: AuditLog, flag: str) -> list[dict[str, Any]]:
    """The latest verdict of each of the flag's guards, from the audit log (watch decisions)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in audit.records(flag=flag):
        for guard in record.data.get("guards", []):
            latest[guard["guard"]] = {"at": record.at.isoformat(), **guard}
    return [latest[name] for name in sorted(latest)]


def last_change(audit: AuditLog, flag: str) -> dict[str, Any] | None:
    """The flag's latest transition in the audit log: when, who, what, why."""
    found = None
    for record in audit.records(flag=flag):
        if record.kind == "transition":
            found = record
    if found is None:
        return None
    return {
        "at": found.at.isoformat(),
        "actor": found.actor,
        "action": found.data.get("action"),
        "reason": found.data.get("reason"),
        "before": found.data.get("before"),
        "after": found.data.get("after"),
    }


def provider_health(
    audit: AuditLog | None, snapshot: Any, now: datetime | None = None
) -> dict[str, Any]:
    """What can be known about the provider without a worker: snapshot age, last outage."""
    now = now or datetime.now(UTC)
    health: dict[str, Any] = {"snapshot_written_at": None, "snapshot_age_seconds": None}
    if snapshot is not None:
        health["snapshot_written_at"] = snapshot.written_at.isoformat()
        health["snapshot_age_seconds"] = round((now - snapshot.written_at).total_seconds(), 1)
    outages = [r for r in audit.records() if r.kind == "outage"] if audit is not None else []
    health["last_outage"] = dict(outages[-1].data) if outages else None
    return health
