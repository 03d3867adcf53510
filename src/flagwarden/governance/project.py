"""The governed flags of a project: policies, state store, audit log, and how workers use them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.config import Settings
from flagwarden.events import Event, EventSink
from flagwarden.governance.governed import GovernedProvider, ViolationLog
from flagwarden.governance.policy import Policy, load_policies
from flagwarden.governance.rollout import Rollout
from flagwarden.governance.state import (
    FlagState,
    StateCache,
    StateStore,
    StateStoreUnavailable,
    open_state_store,
)
from flagwarden.providers.failover import FailoverProvider
from flagwarden.storage import redact_url

__all__ = ["KILL_ENV", "Governance", "env_killed_flags"]

_log = structlog.get_logger("flagwarden.governance")

KILL_ENV = "FLAGWARDEN_KILL"


def env_killed_flags() -> frozenset[str]:
    """Flags killed by ``FLAGWARDEN_KILL=flag-a,flag-b``: works with no state store at all."""
    raw = os.environ.get(KILL_ENV, "")
    return frozenset(flag.strip() for flag in raw.split(",") if flag.strip())


@dataclass
class Governance:
    settings: Settings
    policies: dict[str, Policy]
    store: StateStore | None
    audit: AuditLog | None

    @classmethod
    def open(cls, settings: Settings, *, strict: bool = True) -> Governance:
        """Load policies and open the stores.

        ``strict`` (the CLI): an unreachable store raises. Not strict (a worker): it is
        logged, and evaluation goes on with the last known state (or stage 0: control).
        """
        policies = load_policies(settings.policies_dir)
        base = settings.base_dir
        store: StateStore | None = None
        audit: AuditLog | None = None
        try:
            store = open_state_store(settings.config.state, base)
        except StateStoreUnavailable as exc:
            if strict:
                raise
            _log.error("flagwarden.state_store_unreachable", error=str(exc), serving="control")
        try:
            audit = AuditLog(settings.config.audit, base)
        except AuditError as exc:
            if strict:
                raise
            _log.error("flagwarden.audit_unavailable", error=str(exc))
        return cls(settings, policies, store, audit)

    def rollout(self) -> Rollout:
        if self.store is None:
            raise StateStoreUnavailable(
                f"{redact_url(self.settings.config.state)}: the state store is not available"
            )
        return Rollout(self.policies, self.store, self.audit)

    def govern(
        self,
        failover: FailoverProvider,
        events: EventSink,
        on_state: Callable[[dict[str, FlagState]], None] | None = None,
    ) -> GovernedProvider:
        """Wrap the failover chain in the policy enforcement workers evaluate through."""
        cache = StateCache(self.store, self.policies, on_state)
        violations = ViolationLog(self.audit)
        if self.audit is not None:
            events.subscribe(self._audit_event)
        return GovernedProvider(
            failover,
            self.policies,
            cache,
            violations,
            unregistered=self.settings.config.unregistered,
            env_killed=env_killed_flags(),
        )

    def _audit_event(self, event: Event) -> None:
        if event.name == "flagwarden.outage" and self.audit is not None:
            self.audit.append("outage", dict(event.fields))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.audit is not None:
            self.audit.close()
