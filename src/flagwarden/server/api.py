"""The JSON admin API, ``/api/v1/...`` (OpenAPI at ``/api/docs``).

Every route needs a token (``Authorization: Bearer ...``) or a dashboard session (then a
state-changing request carries ``X-CSRF-Token``); roles: reading is ``viewer``, transitions
``operator``, approving ``approver``, tokens ``admin``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from flagwarden.audit.log import AuditError, AuditRecord
from flagwarden.governance.actions import ACTIONS
from flagwarden.governance.approvals import ChangeRequest, Requested
from flagwarden.governance.rollout import Transition, TransitionRefused
from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.identity import AccessDenied, Identity, Role
from flagwarden.logs import get_logger
from flagwarden.report import PeriodError, render_html, render_markdown, resolve_period
from flagwarden.server.security import Guard, store_unavailable
from flagwarden.server.service import Service

__all__ = ["REPORT_CSP", "api_router", "audit_dict", "transition_dict"]

_log = get_logger("flagwarden.server")

# The HTML report is one self-contained file: its own inline <style>, inline SVG; no script.
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class TransitionBody(BaseModel):
    reason: str = Field(min_length=1, description="why: recorded in the audit log")
    to: float | None = Field(default=None, description="advance/rollback: this stage")
    force: bool = Field(default=False, description="advance: break a rule (a violation)")


class DecisionBody(BaseModel):
    reason: str = ""


class TokenBody(BaseModel):
    name: str
    role: Literal["viewer", "operator", "approver", "admin"]


def transition_dict(done: Transition) -> dict[str, Any]:
    return {
        "result": "changed" if done.changed else "unchanged",
        "action": done.action,
        "flag": done.before.flag,
        "note": done.note,
        "before": done.before.summary(),
        "after": done.after.summary(),
        "violations": [v.as_dict() for v in done.violations],
        "audit_pending": done.audit_error,
        "also_paused": [p.after.flag for p in done.cascade],
        "not_paused": list(done.cascade_failures),
    }


def audit_dict(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "at": record.at.isoformat(),
        "kind": record.kind,
        "flag": record.flag,
        "actor": record.actor,
        "data": dict(record.data),
        "hash": record.hash,
    }


def _failure(exc: Exception) -> HTTPException:
    if isinstance(exc, TransitionRefused):
        return HTTPException(409, str(exc))
    if isinstance(exc, StateStoreUnavailable):
        return store_unavailable(exc)
    _log.error("flagwarden.audit_unavailable", error=str(exc))
    return HTTPException(503, f"the audit log cannot be reached: {exc}")


def api_router(service: Service, guard: Guard) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["admin"])

    async def caller(request: Request, role: Role, action: str) -> Identity:
        return await guard.require(request, role, action)

    async def refused(request: Request, exc: AccessDenied, identity: Identity) -> HTTPException:
        """A role too weak, found by the library call: audited like the guard's own."""
        return await run_in_threadpool(guard.refuse, request, 403, str(exc), identity)

    def known(flag: str) -> None:
        if flag not in service.governance.policies and flag not in service.governance.broken:
            raise HTTPException(404, f"no governed flag {flag!r}")

    @router.get("/whoami", summary="The identity of the caller")
    async def whoami(request: Request) -> dict[str, Any]:
        identity = await caller(request, Role.VIEWER, "reading")
        return {"name": identity.name, "role": identity.role.label, "token": identity.token_id}

    @router.get("/flags", summary="Every governed flag: stage, state, guards, provider")
    async def flags(request: Request) -> dict[str, Any]:
        await caller(request, Role.VIEWER, "reading")
        try:
            return (await run_in_threadpool(service.status)).as_dict()
        except (StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None

    @router.get("/flags/{flag}", summary="One flag, with its pending change requests")
    async def flag_detail(request: Request, flag: str) -> dict[str, Any]:
        await caller(request, Role.VIEWER, "reading")
        known(flag)
        try:
            doc = (await run_in_threadpool(service.status, [flag])).as_dict()
            pending = await run_in_threadpool(
                lambda: service.approvals().requests(flag, open_only=True)
            )
            doc["approvals"] = [r.as_dict() for r in pending]
        except (StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None
        return doc

    @router.post("/flags/{flag}/{action}", summary="advance, rollback, kill, revive, pause, resume")
    async def act(request: Request, flag: str, action: str, body: TransitionBody) -> dict[str, Any]:
        if action not in ACTIONS:  # first: the refusal's reason never quotes a made-up action
            raise HTTPException(404, f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        identity = await caller(request, Role.OPERATOR, f"{action} of a flag")
        if action not in ("kill", "revive"):  # the red button reaches a flag without a policy
            known(flag)
        try:
            result = await run_in_threadpool(
                lambda: service.transition(
                    identity, action, flag, reason=body.reason, to=body.to, force=body.force
                )
            )
        except AccessDenied as exc:
            raise await refused(request, exc, identity) from None
        except (TransitionRefused, StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None
        if isinstance(result, Requested):
            return {"result": "pending", "request": result.request.as_dict()}
        return transition_dict(result)

    @router.get("/flags/{flag}/audit", summary="The flag's audit trail, newest first")
    async def trail(
        request: Request, flag: str, limit: Annotated[int, Query(ge=1, le=5000)] = 200
    ) -> list[dict[str, Any]]:
        await caller(request, Role.VIEWER, "reading")
        known(flag)
        try:
            return [audit_dict(r) for r in await run_in_threadpool(service.trail, flag, limit)]
        except (StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None

    @router.get("/approvals", summary="Change requests (pending; all=true: every one)")
    async def approvals(
        request: Request, flag: str | None = None, all: bool = False
    ) -> list[dict[str, Any]]:
        await caller(request, Role.VIEWER, "reading")
        try:
            found = await run_in_threadpool(
                lambda: service.approvals().requests(flag, open_only=not all)
            )
        except (StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None
        return [r.as_dict() for r in found]

    @router.post("/approvals/{request_id}/{decision}", summary="approve or reject a request")
    async def decide(
        request: Request, request_id: str, decision: str, body: DecisionBody
    ) -> dict[str, Any]:
        if decision not in ("approve", "reject"):
            raise HTTPException(404, "approve or reject")
        # Approving needs an approver; rejecting an operator (the requester withdraws; anyone
        # else needs an approver, which the library checks).
        least = Role.APPROVER if decision == "approve" else Role.OPERATOR
        identity = await caller(request, least, f"{decision} a change request")

        def decide_it() -> tuple[ChangeRequest, Transition | None]:
            try:
                service.approvals().get(request_id)
            except TransitionRefused as exc:  # "no change request ...": an unknown id
                raise HTTPException(404, str(exc)) from None
            return service.decide(identity, request_id, decision, body.reason)

        try:
            decided, done = await run_in_threadpool(decide_it)
        except AccessDenied as exc:
            raise await refused(request, exc, identity) from None
        except (TransitionRefused, StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None
        answer: dict[str, Any] = {"request": decided.as_dict()}
        if done is not None:
            answer["transition"] = transition_dict(done)
        return answer

    @router.get("/report", summary="The compliance report (md, html or json)")
    async def report(
        request: Request,
        format: Literal["md", "html", "json"] = "json",
        since: str = "7d",
        until: str | None = None,
        flag: Annotated[list[str] | None, Query()] = None,
    ) -> Any:
        await caller(request, Role.VIEWER, "reading")
        try:
            start, end = resolve_period(since, until)
        except PeriodError as exc:
            raise HTTPException(422, str(exc)) from None
        for name in flag or ():
            known(name)
        try:
            doc = await run_in_threadpool(service.report, start, end, flag or None)
        except (StateStoreUnavailable, AuditError) as exc:
            raise _failure(exc) from None
        if format == "json":
            return doc.to_json()
        if format == "html":
            page = await run_in_threadpool(render_html, doc)
            return HTMLResponse(page, headers={"Content-Security-Policy": REPORT_CSP})
        text = await run_in_threadpool(render_markdown, doc)
        return PlainTextResponse(text, media_type="text/markdown")

    # Tokens: scrypt, store writes and audit appends, all off the event loop.

    @router.get("/tokens", summary="Every token (never the token or its hash)")
    async def tokens(request: Request) -> list[dict[str, Any]]:
        await caller(request, Role.ADMIN, "listing tokens")
        try:
            found = await run_in_threadpool(service.tokens.records)
        except StateStoreUnavailable as exc:
            raise _failure(exc) from None
        return [r.public() for r in found]

    @router.post("/tokens", summary="Make a token; the answer is the only time it is shown")
    async def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
        identity = await caller(request, Role.ADMIN, "creating a token")

        def create() -> dict[str, Any]:
            record, token = service.tokens.create(
                body.name, Role.parse(body.role), created_by=identity.name
            )
            # The token exists from here on: whatever happens to its audit record, the
            # answer must carry it (else it is made but never shown).
            answer: dict[str, Any] = {**record.public(), "token": token}
            try:
                service.record("token_created", record.public(), identity.name)
            except Exception as exc:
                _log.error("flagwarden.token_created_unrecorded", id=record.id, error=str(exc))
                answer["audit_pending"] = "the audit log could not be written"
            return answer

        try:
            return await run_in_threadpool(create)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except StateStoreUnavailable as exc:
            raise _failure(exc) from None

    @router.delete("/tokens/{which}", summary="Revoke a token by id, or every one of a name")
    async def revoke_token(request: Request, which: str) -> list[dict[str, Any]]:
        identity = await caller(request, Role.ADMIN, "revoking a token")

        def revoke() -> list[dict[str, Any]]:
            revoked = service.tokens.revoke(which, by=identity.name)
            for record in revoked:  # revoked already: the answer says so whatever the audit
                try:
                    service.record("token_revoked", record.public(), identity.name)
                except Exception as exc:
                    _log.error("flagwarden.token_revoked_unrecorded", id=record.id, error=str(exc))
            return [r.public() for r in revoked]

        try:
            done = await run_in_threadpool(revoke)
        except StateStoreUnavailable as exc:
            raise _failure(exc) from None
        if not done:
            raise HTTPException(404, f"no active token with id or name {which!r}")
        return done

    @router.get("/events", summary="Server-sent events: which flags changed, as they change")
    async def events(request: Request) -> StreamingResponse:
        await caller(request, Role.VIEWER, "reading")
        return StreamingResponse(
            service.live.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    return router
