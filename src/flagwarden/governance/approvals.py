"""Four-eyes approvals: an advance to a stage under a policy's ``approvals`` rule waits as a
change request until other identities with the ``approver`` role approve it.

The request is checked like the advance itself (soak, pause, prerequisites: a refused
advance makes no request), kept in the state store (``approval`` documents, compare-and-set,
so two approvers deciding at once cannot both win), and audited when made and when decided
(kind ``approval``). The advance it asks for is applied by the approval that completes it,
recorded under the requester with ``approval: {request, requested_by, approved_by}``. The
requester can never approve their own request; a request expires after ``approvals.expires``
and goes stale when the flag moved meanwhile (killed, rolled back, advanced). Kill, pause and
rollback never wait for approval.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from flagwarden.audit.log import AuditError
from flagwarden.governance.changes import OutcomeUnknown
from flagwarden.governance.rollout import Rollout
from flagwarden.governance.state import FlagState
from flagwarden.governance.transition import (
    ApprovalRequired,
    ConcurrentChange,
    Transition,
    TransitionRefused,
    require_reason,
)
from flagwarden.humanize import percent
from flagwarden.identity import Identity, Role
from flagwarden.logs import get_logger

__all__ = ["KIND", "Approvals", "ChangeRequest", "Requested"]

_log = get_logger("flagwarden.approvals")
KIND = "approval"  # the state store documents change requests are kept as
_OPEN = "approval_open"  # per flag: the id of its open request (a compare-and-set slot)
OPEN = "pending"
APPLYING = "applying"  # the last approval is being applied
ABANDONED = "abandoned"  # lost the race for its flag's slot: never opened, never listed
_CLAIM = timedelta(minutes=1)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ChangeRequest:
    """An advance waiting for approvers, and what became of it."""

    id: str
    flag: str
    from_stage: float
    to_stage: float
    force: bool
    requested_by: str
    reason: str
    requested_at: str
    expires_at: str
    required: int
    status: str = OPEN  # pending | applying | approved | rejected | expired | stale
    approvals: tuple[dict[str, str], ...] = ()  # {by, at, reason}
    decided_by: str | None = None
    decided_at: str | None = None
    decision_reason: str | None = None
    version: int | None = None  # the state version the approved advance stored
    state_version: int | None = None  # the flag's version when asked: it applies only to that
    violations: tuple[dict[str, str], ...] = ()  # what the (forced) advance breaks: shown

    @classmethod
    def from_json(cls, raw: str) -> ChangeRequest:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ChangeRequest:
        """From stored JSON or the API's answer (whose extra keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["approvals"] = tuple(values.get("approvals") or ())
        values["violations"] = tuple(values.get("violations") or ())
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def as_dict(self) -> dict[str, Any]:
        """The request as the API shows it (with ``approved_by``)."""
        return {**asdict(self), "approved_by": self.approved_by}

    def current(self, now: datetime | None = None) -> ChangeRequest:
        """The request as it stands at ``now``: an open request past its time is expired."""
        now = now or _now()
        if self.status == OPEN and now >= datetime.fromisoformat(self.expires_at):
            return replace(self, status="expired")
        if (
            self.status == APPLYING
            and self.decided_at is not None
            and now - datetime.fromisoformat(self.decided_at) > _CLAIM
        ):
            return replace(self, status=OPEN)  # its approver died mid-way: decide it again
        return self

    @property
    def approved_by(self) -> list[str]:
        return [a["by"] for a in self.approvals]

    def summary(self) -> str:
        broken = "; ".join(f"{v.get('kind')}: {v.get('detail')}" for v in self.violations)
        forced = f" [FORCED, breaks {broken}]" if broken else ""
        return (
            f"{self.flag} {percent(self.from_stage)} -> {percent(self.to_stage)}{forced}, asked "
            f"by {self.requested_by}: {self.reason}"
        )


@dataclass(frozen=True)
class Requested:
    """What :meth:`Approvals.advance` did when the advance must wait: the request it made."""

    request: ChangeRequest


class Approvals:
    """Change requests for one project's rollout (its store, audit log and notifier)."""

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self.store = rollout.store

    # -- reading ---------------------------------------------------------------------------

    def _raw(self) -> dict[str, str]:
        return self.store.documents(KIND)

    def requests(self, flag: str | None = None, *, open_only: bool = False) -> list[ChangeRequest]:
        """Every change request (of ``flag``), newest first; ``open_only``: pending ones."""
        now = _now()
        found = []
        for raw in self._raw().values():
            try:
                request = ChangeRequest.from_json(raw).current(now)
            except (ValueError, TypeError, KeyError):
                continue
            if request.status == ABANDONED:
                continue
            if (flag is None or request.flag == flag) and (not open_only or request.status == OPEN):
                found.append(request)
        return sorted(found, key=lambda r: r.requested_at, reverse=True)

    def get(self, request_id: str) -> tuple[ChangeRequest, str]:
        raw = self._raw().get(request_id)
        if raw is None:
            raise TransitionRefused(f"no change request {request_id!r} (approvals list shows them)")
        return ChangeRequest.from_json(raw), raw

    # -- asking ----------------------------------------------------------------------------

    def advance(
        self,
        flag: str,
        *,
        actor: str,
        reason: str,
        to: float | None = None,
        force: bool = False,
        authenticated: bool = True,
    ) -> Transition | Requested:
        """Advance ``flag``; when the stage is under four-eyes, make a change request instead.

        ``authenticated`` says ``actor`` was proven (a token, the service, the watch): a
        request from a free-text name could be approved by its own author under another name,
        so it is refused.
        """
        try:
            return self.rollout.advance(flag, actor=actor, reason=reason, to=to, force=force)
        except ApprovalRequired as need:
            if not authenticated:
                raise TransitionRefused(
                    f"{need}; a change request needs a proven identity: set $FLAGWARDEN_TOKEN "
                    "to your token or use the service"
                ) from None
            return Requested(self.request(need, actor=actor, reason=reason, force=force))

    def request(
        self, need: ApprovalRequired, *, actor: str, reason: str, force: bool = False
    ) -> ChangeRequest:
        """A change request for the advance ``need`` says must wait (one open per flag: the
        flag's slot in the ``approval_open`` documents is taken by compare-and-set, so two
        askers at once cannot both open one)."""
        # The slot first, then the requests: a request is stored before it takes the slot,
        # so the one a slot names is always there to be read.
        slot = self.store.documents(_OPEN).get(need.flag)
        taken = self._open_request(self._raw(), slot)
        if taken is not None:
            raise TransitionRefused(
                f"{need.flag} already has a pending change request {taken.id} "
                f"({taken.summary()}): approve or reject it first"
            )
        policy = self.rollout.policy(need.flag)
        assert policy.approvals is not None
        now = _now()
        request = ChangeRequest(
            id=f"cr-{secrets.token_hex(4)}",
            flag=need.flag,
            from_stage=need.before.stage,
            to_stage=need.target,
            force=force,
            requested_by=actor,
            reason=require_reason(reason),
            requested_at=now.isoformat(),
            expires_at=(now + policy.approvals.expires).isoformat(timespec="seconds"),
            required=need.required,
            state_version=need.before.version,
            violations=tuple(v.as_dict() for v in need.violations),
        )
        raw = request.to_json()
        if not self.store.put_document(KIND, request.id, raw, expected=None):
            raise TransitionRefused("change request id collision: try again")
        if not self.store.put_document(
            _OPEN, need.flag, json.dumps(request.id), expected=slot, announce=request.flag
        ):
            # Another request took the slot first: this one never opened (not listed).
            self._put(replace(request, status=ABANDONED), raw)
            raise TransitionRefused(
                f"{need.flag}: another change request was asked at the same moment; look at "
                "flagwarden approvals list"
            )
        self._record("requested", request, actor)
        return request

    @staticmethod
    def _open_request(raws: dict[str, str], slot: str | None) -> ChangeRequest | None:
        """The request holding a flag's slot, if it is still open (pending or applying)."""
        if not slot:
            return None
        try:
            raw = raws.get(json.loads(slot))
            request = ChangeRequest.from_json(raw).current() if raw else None
        except (ValueError, TypeError, KeyError):
            return None
        return request if request is not None and request.status in (OPEN, APPLYING) else None

    def latest(self, flag: str) -> ChangeRequest | None:
        """The flag's newest change request, whatever became of it."""
        found = self.requests(flag)
        return found[0] if found else None

    # -- deciding --------------------------------------------------------------------------

    def approve(
        self, request_id: str, *, by: Identity, reason: str = ""
    ) -> tuple[ChangeRequest, Transition | None]:
        """Add ``by``'s approval; the one that completes the request applies the advance.

        Returns the request as stored and the transition (None while more approvals are
        needed). Refused (:class:`TransitionRefused`) for the requester, a repeated approver,
        a decided, expired or stale request, or a role below ``approver``.
        """
        by.require(Role.APPROVER, "approving a change request")
        stored, raw = self.get(request_id)
        request = self._open(stored, raw, by.name)
        if by.name == request.requested_by:
            raise TransitionRefused(
                f"{request.id} was asked by {by.name}: a request needs another identity's "
                "approval (four eyes)"
            )
        if by.name in request.approved_by:
            raise TransitionRefused(f"{by.name} already approved {request.id}")
        now = _now().isoformat(timespec="seconds")
        approvals = (*request.approvals, {"by": by.name, "at": now, "reason": reason})
        request = replace(request, approvals=approvals)
        if len(approvals) < request.required:
            self._put(request, raw)
            self._record("approval", request, by.name)
            return request, None
        # The last approval: claim the request first (so a second approver racing this one
        # is refused, not told "stale" after this one applied it), then apply, then close.
        claimed = replace(request, status=APPLYING, decided_by=by.name, decided_at=now)
        claimed_raw = self._put(claimed, raw)
        state = self.rollout.state(request.flag)
        pinned = request.state_version
        if state.killed or state.stage != request.from_stage or pinned not in (None, state.version):
            raise self._stale(request, claimed_raw, by.name, state)
        try:
            done = self.rollout.advance(
                request.flag,
                actor=request.requested_by,
                reason=request.reason,
                to=request.to_stage,
                force=request.force,
                approval={
                    "request": request.id,
                    "requested_by": request.requested_by,
                    "requested_at": request.requested_at,
                    "approved_by": request.approved_by,
                },
                expect_version=pinned,
            )
        except ConcurrentChange:  # changed between the look and the write
            now_state = self.rollout.state(request.flag)
            raise self._stale(request, claimed_raw, by.name, now_state) from None
        except OutcomeUnknown:
            raise  # the claim lapses after a minute; the flag's version then says what happened
        except Exception:
            self._put(stored, claimed_raw)  # refused (paused, say) or failed: still pending
            raise
        request = replace(
            claimed,
            status="approved",
            decision_reason=reason or None,
            version=done.after.version,
        )
        self._put(request, claimed_raw)
        self._record("approved", request, by.name)
        return request, done

    def _stale(
        self, request: ChangeRequest, raw: str, by: str, state: FlagState
    ) -> TransitionRefused:
        """Close ``request`` as stale: the flag changed since it was asked (any change: a
        kill, a pause, a rollback, even one undone since). The refusal to raise."""
        self._close(request, raw, "stale", by, "the flag changed since it was asked")
        return TransitionRefused(
            f"{request.id} is stale: {request.flag} changed since it was asked (now at "
            f"{percent(state.stage)}{', killed' if state.killed else ''}"
            f"{', paused' if state.paused else ''}, version {state.version}; asked at "
            f"{percent(request.from_stage)}, version {request.state_version}); ask again"
        )

    def _put(self, request: ChangeRequest, expected: str) -> str:
        """Store ``request`` over ``expected``; refused when someone else got there first."""
        raw = request.to_json()
        if not self.store.put_document(
            KIND, request.id, raw, expected=expected, announce=request.flag
        ):
            raise TransitionRefused(f"{request.id} was decided by someone else meanwhile")
        return raw

    def reject(self, request_id: str, *, by: Identity, reason: str) -> ChangeRequest:
        """Reject (an approver) or withdraw (the requester) a pending request."""
        reason = require_reason(reason)
        stored, raw = self.get(request_id)
        request = self._open(stored, raw, by.name)
        if by.name != request.requested_by:
            by.require(Role.APPROVER, "rejecting a change request")
        return self._close(request, raw, "rejected", by.name, reason)

    def _open(self, stored: ChangeRequest, raw: str, by: str) -> ChangeRequest:
        request = stored.current()
        if request.status == "expired" and stored.status == OPEN:
            self._close(stored, raw, "expired", by, "not approved in time")
        if request.status != OPEN:
            raise TransitionRefused(f"{request.id} is {request.status}: nothing to decide")
        return request

    def _close(
        self, request: ChangeRequest, raw: str, status: str, by: str, reason: str
    ) -> ChangeRequest:
        closed = replace(
            request,
            status=status,
            decided_by=by,
            decided_at=_now().isoformat(timespec="seconds"),
            decision_reason=reason,
        )
        self._put(closed, raw)
        self._record(status, closed, by)
        return closed

    # -- records ---------------------------------------------------------------------------

    def _record(self, event: str, request: ChangeRequest, actor: str) -> None:
        """Audit the request's step and tell the notifier; neither can undo the step."""
        data: dict[str, Any] = {"event": event, "request": asdict(request)}
        audit = self.rollout.audit
        if audit is not None:
            try:
                audit.append(
                    "approval",
                    data,
                    flag=request.flag,
                    actor=actor,
                    ref=f"approval:{request.id}:{event}:{len(request.approvals)}",
                )
            except AuditError as exc:
                _log.error("flagwarden.approval_unrecorded", request=request.id, error=str(exc))
        _log.info("flagwarden.approval", step=event, request=request.id, flag=request.flag)
        notifier = self.rollout.notifier
        if notifier is not None:
            name = "approval_requested" if event == "requested" else "approval_decided"
            notifier.publish(
                name,
                flag=request.flag,
                summary=f"{request.id} {event} by {actor}: {request.summary()}",
                actor=actor,
                reason=request.reason,
                request=asdict(request),
                decision=event,
            )
