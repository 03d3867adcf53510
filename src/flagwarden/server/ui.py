"""The dashboard: server-rendered HTML (Jinja2, autoescaped) with one script shipped in the
package (``static/app.js``: live updates over server-sent events; the page works without it).

Every button goes through a confirmation page (the reason prefilled, editable), then posts a
form carrying the session's CSRF token to the same library call the CLI and the API use.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from flagwarden.audit.log import AuditError
from flagwarden.governance.actions import ACTIONS
from flagwarden.governance.approvals import Requested
from flagwarden.governance.rollout import TransitionRefused
from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.humanize import percent, visible, when
from flagwarden.identity import AccessDenied, Identity, Role
from flagwarden.report import charts
from flagwarden.server.security import LOGIN_COOKIE, SESSION_COOKIE, Guard, Sessions, client_of
from flagwarden.server.service import Service

__all__ = ["ui_router"]

_env = Environment(
    loader=PackageLoader("flagwarden.server", "templates"),
    finalize=lambda v: visible(v) if isinstance(v, str) and not isinstance(v, Markup) else v,
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=when, stage=percent)
_env.globals.update(Role=Role, actions=ACTIONS)
_CHARTS_CSS = (files("flagwarden.report") / "templates" / "charts.css").read_text()
_VERBS = {
    "advance": "Advance",
    "rollback": "Roll back",
    "kill": "Kill",
    "revive": "Revive",
    "pause": "Pause",
    "resume": "Resume",
}


def _flash(request: Request, kind: str, text: str) -> None:
    session = getattr(request.state, "session", None)
    if session is not None:
        session.flash = [*getattr(session, "flash", []), (kind, text)]


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """The dashboard's cookies: HttpOnly, SameSite=Strict, Secure when served over https."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=max_age,
    )


def ui_router(service: Service, guard: Guard, sessions: Sessions) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def page(request: Request, template: str, identity: Identity | None, **values: Any) -> Any:
        session = getattr(request.state, "session", None)
        flashes = getattr(session, "flash", []) if session is not None else []
        if session is not None:
            session.flash = []
        return HTMLResponse(
            _env.get_template(template).render(
                me=identity,
                csrf=session.csrf if session is not None else "",
                flashes=flashes,
                verbs=_VERBS,
                **values,
            )
        )

    async def viewer(request: Request) -> Identity | Response:
        """The session's identity, or a redirect to the login page (not an attempt to
        audit: a browser that never logged in is simply sent there)."""
        if SESSION_COOKIE not in request.cookies and "authorization" not in request.headers:
            return RedirectResponse("/login", status_code=303)
        try:
            return await guard.require(request, Role.VIEWER, "reading")
        except HTTPException as exc:
            if exc.status_code == 401:
                return RedirectResponse("/login", status_code=303)
            raise

    def back_to_flag(flag: str) -> RedirectResponse:
        return RedirectResponse(f"/flags/{flag}", status_code=303)

    # -- login --------------------------------------------------------------------------------

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/flags", status_code=303)

    @router.get("/charts.css")
    async def charts_css() -> Response:
        return Response(_CHARTS_CSS, media_type="text/css")

    @router.get("/login")
    async def login_form(request: Request, error: str = "") -> Response:
        nonce = secrets.token_urlsafe(24)
        response = page(request, "login.html.j2", None, nonce=nonce, error=error)
        _cookie(response, request, LOGIN_COOKIE, nonce, 900)
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        nonce, token = str(form.get("nonce", "")), str(form.get("token", ""))
        if not nonce or nonce != request.cookies.get(LOGIN_COOKIE):
            raise await run_in_threadpool(guard.refuse, request, 403, "login form expired")
        try:
            identity = await run_in_threadpool(guard.check_token, request, token)
        except HTTPException as exc:
            return RedirectResponse(f"/login?error={exc.status_code}", status_code=303)
        sid, _ = sessions.create(identity)
        response = RedirectResponse("/flags", status_code=303)
        _cookie(response, request, SESSION_COOKIE, sid, int(sessions.lifetime))
        response.delete_cookie(LOGIN_COOKIE)
        login = {"client": client_of(request), "token": identity.token_id}
        await run_in_threadpool(service.record, "login", login, identity.name)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await guard.require(request, Role.VIEWER, "logging out")
        sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- pages --------------------------------------------------------------------------------

    def flags_values() -> dict[str, Any]:
        doc = service.status()
        pending = service.approvals().requests(open_only=True)
        return {"doc": doc, "pending": pending}

    def flag_values(flag: str) -> dict[str, Any]:
        if flag not in service.governance.policies and flag not in service.governance.broken:
            raise HTTPException(404, f"no governed flag {flag!r}")
        doc = service.status([flag])
        values: dict[str, Any] = {
            "flag": flag,
            "row": doc.flags[0] if doc.flags else None,
            "broken": doc.broken_policies[0] if doc.broken_policies else None,
            "provider": doc.provider,
            "pending": service.approvals().requests(flag, open_only=True),
            "trail": [],
            "audit_problem": None,
            "stage_chart": None,
            "guard_charts": [],
        }
        try:  # the state and the buttons never depend on the audit log
            values["trail"] = service.trail(flag, 50)
            report = service.report(timedelta(days=7), None, [flag], verify=False)
        except AuditError as exc:
            values["audit_problem"] = str(exc)
            return values
        if flag in service.governance.policies and report.flags:
            shown = report.flags[0]
            values["stage_chart"] = charts.stage_chart(shown, report.period, report.outages)
            values["guard_charts"] = [
                charts.guard_chart(shown, chart, report.period) for chart in shown.guard_charts
            ]
        return values

    async def render(request: Request, template: str, values: Any, *args: Any) -> Response:
        identity = await viewer(request)
        if isinstance(identity, Response):
            return identity
        try:
            found = await run_in_threadpool(values, *args)
        except (StateStoreUnavailable, AuditError) as exc:
            raise HTTPException(503, str(exc)) from None
        return page(request, template, identity, **found)

    @router.get("/flags")
    async def flags_page(request: Request) -> Response:
        return await render(request, "flags.html.j2", flags_values)

    @router.get("/fragments/flags")
    async def flags_fragment(request: Request) -> Response:
        return await render(request, "flags_live.html.j2", flags_values)

    @router.get("/flags/{flag}")
    async def flag_page(request: Request, flag: str) -> Response:
        return await render(request, "flag.html.j2", flag_values, flag)

    @router.get("/fragments/flags/{flag}")
    async def flag_fragment(request: Request, flag: str) -> Response:
        return await render(request, "flag_live.html.j2", flag_values, flag)

    @router.get("/flags/{flag}/confirm/{action}")
    async def confirm(request: Request, flag: str, action: str) -> Response:
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}")
        identity = await viewer(request)
        if isinstance(identity, Response):
            return identity
        values = await run_in_threadpool(flag_values, flag)
        return page(request, "confirm.html.j2", identity, action=action, **values)

    @router.post("/flags/{flag}/{action}")
    async def act(request: Request, flag: str, action: str) -> Response:
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}")
        if flag not in service.governance.policies and flag not in service.governance.broken:
            raise HTTPException(404, f"no governed flag {flag!r}")
        identity = await guard.require(request, Role.OPERATOR, f"{action} of a flag")
        form = await request.form()
        to_text = str(form.get("to", "")).strip()
        try:
            result = await run_in_threadpool(
                lambda: service.transition(
                    identity,
                    action,
                    flag,
                    reason=str(form.get("reason", "")),
                    to=float(to_text) if to_text else None,
                )
            )
        except ValueError:
            _flash(request, "error", f"not a stage: {to_text!r}")
            return back_to_flag(flag)
        except AccessDenied as exc:  # the library's own role check: audited like the guard's
            raise await run_in_threadpool(guard.refuse, request, 403, str(exc), identity) from None
        except (TransitionRefused, StateStoreUnavailable, AuditError) as exc:
            _flash(request, "error", f"refused: {exc}")
            return back_to_flag(flag)
        if isinstance(result, Requested):
            _flash(request, "pending", f"waiting for approval: {result.request.summary()}")
        elif result.changed:
            a = result.after
            _flash(
                request,
                "ok",
                f"{flag}: {action} done (stage {percent(a.stage)}, version {a.version})",
            )
        else:
            _flash(request, "ok", f"{result.note}; nothing changed")
        return back_to_flag(flag)

    @router.get("/approvals")
    async def approvals_page(request: Request) -> Response:
        return await render(
            request,
            "approvals.html.j2",
            lambda: {"requests": service.approvals().requests()},
        )

    @router.post("/approvals/{request_id}/{decision}")
    async def decide(request: Request, request_id: str, decision: str) -> Response:
        if decision not in ("approve", "reject"):
            raise HTTPException(404, "approve or reject")
        identity = await guard.require(request, Role.OPERATOR, f"{decision} a change request")
        form = await request.form()
        reason = str(form.get("reason", ""))
        try:
            decided, done = await run_in_threadpool(
                service.decide, identity, request_id, decision, reason
            )
        except AccessDenied as exc:  # the library's own role check: audited like the guard's
            raise await run_in_threadpool(guard.refuse, request, 403, str(exc), identity) from None
        except (TransitionRefused, StateStoreUnavailable, AuditError) as exc:
            _flash(request, "error", f"refused: {exc}")
            return RedirectResponse("/approvals", status_code=303)
        applied = f"; applied: stage {percent(done.after.stage)}" if done is not None else ""
        _flash(request, "ok", f"{decided.id} {decided.status}{applied}")
        return back_to_flag(decided.flag)

    @router.get("/events")
    async def events(request: Request) -> Response:
        identity = await viewer(request)
        if isinstance(identity, Response):
            return identity
        return StreamingResponse(
            service.live.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    return router
