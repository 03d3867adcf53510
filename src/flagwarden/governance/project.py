"""The governed flags of a project: policies, state store, audit log, and how workers use them.

One broken policy file never blocks the others, nor the red button: its flag is *broken*
(``Governance.broken``), workers serve the caller's default for it (reason ``DISABLED``,
``flagwarden.policy_error`` saying why), and kill, revive, pause and resume still work on it
(the state store does not need the policy for them); advance and rollback refuse, naming the
file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.config import Settings
from flagwarden.errors import ConfigError
from flagwarden.governance.policy import Policy, read_policies
from flagwarden.governance.rollout import Rollout
from flagwarden.governance.state import (
    FlagState,
    StateStore,
    StateStoreUnavailable,
    open_state_store,
)
from flagwarden.logs import get_logger
from flagwarden.storage import redact_url

# What only workers (govern), signing keys or webhooks need is imported where it is used: the
# command line opens a project for one transition and should not load the provider chain,
# OpenFeature, Prometheus or cryptography for it.
if TYPE_CHECKING:
    from flagwarden.audit.signing import Signer
    from flagwarden.events import Event, EventSink
    from flagwarden.governance.cache import StateCache
    from flagwarden.governance.governed import GovernedProvider
    from flagwarden.notify import Notifier
    from flagwarden.providers.failover import FailoverProvider
    from flagwarden.telemetry.recorder import ExposureRecorder

__all__ = ["KILL_ENV", "Governance", "env_killed_flags"]

_log = get_logger("flagwarden.governance")

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
    # Flags whose policy file cannot be used, with the file's problem: served the default.
    broken: dict[str, ConfigError] = field(default_factory=dict)
    # False when the policies folder could not be listed (missing or unreadable).
    listed: bool = True
    # Why the audit log could not be opened (None: it is open): changes still go through,
    # their records wait in the state store's outbox.
    audit_problem: str | None = None
    # Webhook notifications (``notify:``); None when there are no targets.
    notifier: Notifier | None = None

    @classmethod
    def open(cls, settings: Settings, *, strict: bool = True) -> Governance:
        """Load policies (per file: a broken one is kept in ``broken``) and open the stores.

        ``strict`` (the CLI): an unreachable state store raises. Not strict (a worker): it is
        logged, and evaluation goes on with the last known state (or stage 0: control). An
        audit log that cannot be opened never raises: a kill must not wait for it, and the
        records of changes made meanwhile wait in the state store's outbox.
        """
        found = read_policies(settings.policies_dir)
        base = settings.base_dir
        store: StateStore | None = None
        audit: AuditLog | None = None
        try:
            store = open_state_store(settings.config.state, base)
        except StateStoreUnavailable as exc:
            if strict:
                raise
            _log.error("flagwarden.state_store_unreachable", error=str(exc), serving="control")
        audit_problem = None
        try:
            signer: Signer | None = None
            if settings.config.audit.signing_key is not None:  # cryptography only with a key
                from flagwarden.audit.signing import signer_from_settings

                signer = signer_from_settings(settings)  # a key that does not load: not opened
            audit = AuditLog(settings.config.audit.url, base, signer=signer)
        except (AuditError, ConfigError) as exc:
            audit_problem = str(exc)
            _log.error("flagwarden.audit_unavailable", error=audit_problem)
        notify = settings.config.notify
        notifier: Notifier | None = None
        if notify:
            from flagwarden.notify import Notifier

            notifier = Notifier(notify)
        return cls(
            settings,
            found.policies,
            store,
            audit,
            found.broken,
            found.listed,
            audit_problem,
            notifier=notifier,
        )

    def rollout(self, cache: StateCache | None = None, store: StateStore | None = None) -> Rollout:
        """Transitions against ``store`` (default: the project's), seen at once by ``cache``."""
        store = self.store if store is None else store
        if store is None:
            raise StateStoreUnavailable(
                f"{redact_url(self.settings.config.state)}: the state store is not available"
            )
        broken = {flag: str(problem) for flag, problem in self.broken.items()}
        return Rollout(
            self.policies,
            store,
            self.audit,
            cache,
            broken=broken,
            any_flag_switchable=not self.listed,
            audit_problem=self.audit_problem,
            notifier=self.notifier,
        )

    def govern(
        self,
        failover: FailoverProvider,
        events: EventSink,
        on_state: Callable[[dict[str, FlagState]], None] | None = None,
        exposures: ExposureRecorder | None = None,
    ) -> GovernedProvider:
        """Wrap the failover chain in the policy enforcement workers evaluate through;
        ``exposures`` counts and logs every answer it gives."""
        from flagwarden.governance.cache import StateCache
        from flagwarden.governance.governed import GovernedProvider
        from flagwarden.governance.violations import ViolationLog

        for flag, problem in sorted(self.broken.items()):
            _log.error(
                "flagwarden.policy_invalid",
                flag=flag,
                file=problem.file,
                field=problem.field,
                problem=problem.problem,
                more=len(problem.problems) - 1,
                serving="the caller's default",
            )
        # Broken flags are cached too: their kill and stage still show in metadata and metrics.
        cache = StateCache(self.store, [*self.policies, *self.broken])
        if on_state is not None:
            cache.subscribe(on_state)
        violations = ViolationLog(self.audit)
        if self.audit is not None:
            events.subscribe(self._audit_event)
        if self.notifier is not None:  # outage windows: outage_start, outage_end
            events.subscribe(self.notifier.on_event)
        return GovernedProvider(
            failover,
            self.policies,
            cache,
            violations,
            exposures=exposures,
            unregistered=self.settings.config.unregistered,
            env_killed=env_killed_flags(),
            broken=self.broken,
        )

    def _audit_event(self, event: Event) -> None:
        if event.name == "flagwarden.outage" and self.audit is not None:
            self.audit.append("outage", dict(event.fields))

    def close(self) -> None:
        if self.notifier is not None:  # drains for at most notify.CLOSE_TIMEOUT seconds
            self.notifier.close()
        if self.store is not None:
            self.store.close()
        if self.audit is not None:
            self.audit.close()
