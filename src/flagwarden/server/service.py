"""What ``flagwarden serve`` does, without HTTP: the project's stores, opened once, and the
library calls the API and the dashboard share with the command line (:func:`perform` for
every transition, :class:`Approvals` for change requests, :func:`project_status`,
:func:`build_report`), each acting as an authenticated :class:`Identity`.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from flagwarden.audit.log import AuditError, AuditRecord
from flagwarden.audit.signing import public_key_from_settings
from flagwarden.background import run_supervised
from flagwarden.config import Settings
from flagwarden.governance.actions import perform
from flagwarden.governance.approvals import KIND as APPROVAL_KIND
from flagwarden.governance.approvals import Approvals, ChangeRequest, Requested
from flagwarden.governance.cache import StateCache
from flagwarden.governance.measurements import open_measurement_store
from flagwarden.governance.project import Governance
from flagwarden.governance.rollout import Rollout, Transition
from flagwarden.governance.state import FlagState, StateStoreUnavailable, open_state_store
from flagwarden.governance.status import StatusDocument, project_status
from flagwarden.identity import Identity, Role, TokenStore
from flagwarden.logs import get_logger
from flagwarden.report import Report, build_report
from flagwarden.server.live import Broadcaster
from flagwarden.telemetry.telemetry import Telemetry

__all__ = ["Service"]

_log = get_logger("flagwarden.server")
REQUESTS_THREAD = "flagwarden-serve-requests"
REQUESTS_POLL = 2.0  # seconds between looks at the change requests


class Service:
    """One project, served: open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, settings: Settings, governance: Governance) -> None:
        self.settings = settings
        self.governance = governance
        assert governance.store is not None
        self.tokens = TokenStore(governance.store)
        self.live = Broadcaster()
        self._seen: dict[str, tuple[str, int]] = {}
        self._requests: dict[str, str] | None = None  # approval documents last seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.public_key = public_key_from_settings(settings)
        # Its own store connection: the cache's watcher closes it with the cache.
        self._cache = StateCache(
            open_state_store(settings.config.state, settings.base_dir),
            [*governance.policies, *governance.broken],
        )
        self._cache.subscribe(self._changed)

    @classmethod
    def open(cls, settings: Settings) -> Service:
        """The stores of ``settings``' project; raises when the state store cannot be opened
        (the service exists to change it)."""
        return cls(settings, Governance.open(settings, strict=True))

    def start(self) -> None:
        self._cache.start()
        # Change requests are documents, not states: a request made by the CLI or the watch
        # reaches open pages by this poll (SQLite's change poll looks at states only).
        run_supervised(REQUESTS_THREAD, self._requests_changed, REQUESTS_POLL, self._stop)

    def close(self) -> None:
        self._stop.set()
        self._cache.close()
        self.governance.close()

    def _requests_changed(self) -> None:
        assert self.governance.store is not None
        now = self.governance.store.documents(APPROVAL_KIND)
        moved = sorted(
            {
                flag
                for key, raw in now.items()
                if self._requests is None or self._requests.get(key) != raw
                for flag in [_flag_of(raw)]
                if flag
            }
        )
        first, self._requests = self._requests is None, now
        if moved and not first:
            self.live.publish({"flags": moved})

    # -- live updates -------------------------------------------------------------------------

    def _changed(self, states: dict[str, FlagState]) -> None:
        """The state store said something changed (anyone's change: a worker, the CLI, the
        watch, us): tell the open pages which flags moved."""
        Telemetry.flag_states(states)  # this process's /metrics shows stages and kills too
        now = {flag: (s.generation, s.version) for flag, s in states.items()}
        with self._lock:
            moved = sorted(flag for flag, seen in now.items() if self._seen.get(flag) != seen)
            first = not self._seen
            self._seen = now
        if moved and not first:
            self.live.publish({"flags": moved})

    # -- reading ------------------------------------------------------------------------------

    def rollout(self) -> Rollout:
        return self.governance.rollout()

    def approvals(self) -> Approvals:
        return Approvals(self.rollout())

    def status(self, flags: list[str] | None = None) -> StatusDocument:
        """The status document; with the audit log failing, without its last changes (the
        state, and so the red button, does not depend on it)."""
        try:
            return project_status(self.settings, self.governance, flags)
        except AuditError as exc:
            _log.error("flagwarden.audit_unreadable", error=str(exc), serving="status without it")
            return project_status(self.settings, replace(self.governance, audit=None), flags)

    def trail(self, flag: str, limit: int = 200) -> list[AuditRecord]:
        """The newest audit records of ``flag``, newest first."""
        audit = self.governance.audit
        if audit is None:
            raise AuditError(f"the audit store cannot be opened: {self.governance.audit_problem}")
        return list(audit.records(None, flag, newest_first=True, limit=limit))

    def report(
        self,
        since: datetime | timedelta = timedelta(days=7),
        until: datetime | None = None,
        flags: list[str] | None = None,
        *,
        verify: bool = True,
    ) -> Report:
        """The compliance report, signatures checked with the configured key (``verify``
        False: the chain is not walked, for the dashboard's charts)."""
        audit = self.governance.audit
        store = self.governance.store
        if audit is None or store is None:
            raise AuditError(f"the audit store cannot be opened: {self.governance.audit_problem}")
        try:
            measurements = open_measurement_store(
                self.settings.config.state, self.settings.base_dir
            )
        except StateStoreUnavailable:
            measurements = None
        try:
            return build_report(
                audit,
                self.governance.policies,
                store.load_all(),
                since=since,
                until=until,
                flags=flags,
                measurements=measurements,
                provider=self.settings.provider_name,
                public_key=self.public_key if verify else None,
                verify=verify,
            )
        finally:
            if measurements is not None:
                measurements.close()

    # -- acting -------------------------------------------------------------------------------

    def transition(
        self,
        identity: Identity,
        action: str,
        flag: str,
        *,
        reason: str,
        to: float | None = None,
        force: bool = False,
    ) -> Transition | Requested:
        """``action`` on ``flag`` as ``identity`` (operator or above): the CLI's code path."""
        identity.require(Role.OPERATOR, f"{action} of a flag")
        rollout = self.rollout()
        result = perform(
            rollout,
            action,
            flag,
            actor=identity.name,
            reason=reason,
            authenticated=True,
            to=to,
            force=force,
        )
        backlog = rollout.reconcile()
        if backlog.error is not None:
            _log.warning("flagwarden.audit_records_pending", error=backlog.error)
        self.live.publish({"flags": [flag]})
        return result

    def decide(
        self, identity: Identity, request_id: str, decision: str, reason: str
    ) -> tuple[ChangeRequest, Transition | None]:
        approvals = self.approvals()
        if decision == "approve":
            request, done = approvals.approve(request_id, by=identity, reason=reason)
        else:
            request, done = approvals.reject(request_id, by=identity, reason=reason), None
        self.live.publish({"flags": [request.flag]})
        return request, done

    def refused(self, data: dict[str, Any]) -> None:
        """Audit refused attempts (401, 403, 429; grouped by the guard, with ``count``,
        ``first_at``, ``last_at``): what was tried, from where, by whom if known; never the
        credential."""
        audit = self.governance.audit
        if audit is None:
            _log.warning("flagwarden.access_refused", **data)
            return
        try:
            audit.append("access_refused", data, actor=data.get("identity"))
        except AuditError as exc:
            _log.error("flagwarden.access_refused_unrecorded", error=str(exc), **data)

    def record(self, kind: str, data: dict[str, Any], actor: str) -> None:
        """Audit a service act that is not a transition (a login, a token made or revoked);
        an audit log that cannot take it is logged, never a failure of the act itself."""
        audit = self.governance.audit
        if audit is None:
            _log.error("flagwarden.audit_unavailable", kind=kind, actor=actor)
            return
        try:
            audit.append(kind, data, actor=actor)
        except AuditError as exc:
            _log.error("flagwarden.service_act_unrecorded", kind=kind, actor=actor, error=str(exc))


def _flag_of(raw: str) -> str | None:
    try:
        return ChangeRequest.from_json(raw).flag
    except (ValueError, TypeError, KeyError):
        return None  # not a request flagwarden wrote: nothing to show
