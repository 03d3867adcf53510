"""``flagwarden token ...`` and ``flagwarden approvals ...``, and who the command line acts as.

With ``$FLAGWARDEN_TOKEN`` set, every change the command line makes is recorded under that
token's identity (checked against the state store, its role enforced); ``--actor`` may not
say otherwise. Without it, the actor is ``--actor``, ``$FLAGWARDEN_ACTOR`` or the OS user, as
typed: enough for the red button, not for four-eyes (a change request and an approval need a
proven identity).
"""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import typer

from flagwarden.cli.app import ActorOption, ConfigOption, app, fail, open_project, say, warn
from flagwarden.humanize import percent
from flagwarden.identity import TOKEN_ENV, AccessDenied, Identity, InvalidToken, Role, TokenStore

if TYPE_CHECKING:
    from flagwarden.governance.approvals import Approvals, ChangeRequest
    from flagwarden.governance.project import Governance

__all__ = ["acting_as"]

token_app = typer.Typer(help="API tokens: identities and roles for the service.")
approvals_app = typer.Typer(help="Four-eyes change requests.")
app.add_typer(token_app, name="token", no_args_is_help=True)
app.add_typer(approvals_app, name="approvals", no_args_is_help=True)

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="a flagwarden service URL to ask instead of the stores ($FLAGWARDEN_TOKEN "
        "authenticates)",
    ),
]


def token_identity(governance: "Governance") -> Identity | None:
    """The identity of ``$FLAGWARDEN_TOKEN`` (None when unset); exit 1 when it is not valid."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        return None
    assert governance.store is not None
    try:
        return TokenStore(governance.store).authenticate(token)
    except InvalidToken as exc:
        raise fail(f"${TOKEN_ENV}: {exc}") from None


def acting_as(
    governance: "Governance", actor: str | None, role: Role, action: str
) -> tuple[str, bool]:
    """Who a command acts as, and whether that is proven (a token) rather than typed."""
    from flagwarden.governance.rollout import resolve_actor

    identity = token_identity(governance)
    if identity is None:
        return resolve_actor(actor), False
    if actor and actor != identity.name:
        raise fail(f"--actor {actor!r} conflicts with ${TOKEN_ENV}, which is {identity.name}")
    try:
        identity.require(role, action)
    except AccessDenied as exc:
        raise fail(str(exc)) from None
    return identity.name, True


# -- tokens ------------------------------------------------------------------------------


def _admin(governance: "Governance", actor: str | None, action: str) -> str:
    """Who manages tokens: an admin's token, or anyone who can write the store while no
    admin token exists yet (how the first one is made)."""
    by, proven = acting_as(governance, actor, Role.ADMIN, action)
    if not proven:
        assert governance.store is not None
        admins = [
            r for r in TokenStore(governance.store).records() if r.active and r.role == "admin"
        ]
        if admins:
            raise fail(
                f"{action} needs an admin's token in ${TOKEN_ENV} (this store has an admin "
                "token: only its holders manage tokens now)"
            )
    return by


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="the identity changes are recorded under")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator, approver or admin")],
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a token; it is printed once (only a slow hash of it is stored)."""
    from flagwarden.governance.state import StateStoreUnavailable

    try:
        parsed = Role.parse(role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--role") from None
    _, governance = open_project(config)
    try:
        by = _admin(governance, actor, "creating a token")
        assert governance.store is not None
        record, token = TokenStore(governance.store).create(name, parsed, created_by=by)
        _audit(governance, "token_created", record.public(), by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from None
    except StateStoreUnavailable as exc:
        raise fail(f"the token could not be stored: {exc}") from None
    finally:
        governance.close()
    say(f"token {record.id} for {record.name} ({record.role}); shown once, keep it secret:")
    print(token)


@token_app.command("list")
def token_list(
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    config: ConfigOption = None,
) -> None:
    """Every token: id, name, role, created, revoked (never the token or its hash)."""
    from flagwarden.governance.state import StateStoreUnavailable

    _, governance = open_project(config)
    try:
        if token_identity(governance) is not None:
            acting_as(governance, None, Role.ADMIN, "listing tokens")
        assert governance.store is not None
        records = TokenStore(governance.store).records()
    except StateStoreUnavailable as exc:
        raise fail(str(exc)) from None
    finally:
        governance.close()
    if json_out:
        print(json.dumps([r.public() for r in records], indent=2))
        return
    if not records:
        say("no tokens yet: flagwarden token create --name NAME --role admin", tag="none")
    for r in records:
        state = f"revoked {r.revoked_at} by {r.revoked_by}" if r.revoked_at else "active"
        say(f"{r.id}  {r.name}  {r.role}  created {r.created_at} by {r.created_by}  {state}")


@token_app.command("revoke")
def token_revoke(
    which: Annotated[
        str, typer.Argument(metavar="ID|NAME", help="a token id, or every token of a name")
    ],
    actor: ActorOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a token (or all of a name's): the service refuses it from the next request."""
    from flagwarden.governance.state import StateStoreUnavailable

    _, governance = open_project(config)
    try:
        by = _admin(governance, actor, "revoking a token")
        assert governance.store is not None
        revoked = TokenStore(governance.store).revoke(which, by=by)
        for record in revoked:
            _audit(governance, "token_revoked", record.public(), by)
    except StateStoreUnavailable as exc:
        raise fail(str(exc)) from None
    finally:
        governance.close()
    if not revoked:
        raise fail(f"no active token with id or name {which!r}")
    for record in revoked:
        say(f"token {record.id} of {record.name} revoked")


def _audit(governance: "Governance", kind: str, data: dict[str, Any], actor: str) -> None:
    if governance.audit is None:
        warn(f"not in the audit log (it cannot be opened: {governance.audit_problem})")
        return
    try:
        governance.audit.append(kind, data, actor=actor)
    except Exception as exc:
        warn(f"not in the audit log: {exc}")


# -- approvals ---------------------------------------------------------------------------


def describe_request(r: "ChangeRequest") -> str:
    approved = f"; approved by {', '.join(r.approved_by)}" if r.approvals else ""
    why = f": {r.decision_reason}" if r.decision_reason else ""
    if r.status == "approved" and r.decided_by in r.approved_by:
        decided = why  # "approved by bob" is said above
    else:
        decided = f"; {r.status} by {r.decided_by}{why}" if r.decided_by else ""
    return (
        f"{r.id} [{r.status}] {r.flag} {percent(r.from_stage)} -> {percent(r.to_stage)}, "
        f"asked by {r.requested_by} at {r.requested_at} ({r.reason}), expires {r.expires_at}, "
        f"needs {r.required}{approved}{decided}"
    )


def _remote(server: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Ask a flagwarden service, authenticated by ``$FLAGWARDEN_TOKEN``."""
    import urllib.error
    import urllib.request

    from flagwarden.notify.delivery import make_opener

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise fail(f"--server needs ${TOKEN_ENV}")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"--server: expected http(s)://HOST[:PORT], got {parts.scheme!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        warn(f"--server {parts.hostname} over plain http: the token crosses the network readable")
    request = urllib.request.Request(
        server.rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        # Never follow a redirect: the token would go along to wherever it points.
        with make_opener().open(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail")
        except ValueError:
            detail = exc.reason
        raise fail(f"{server}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"{server}: cannot reach it ({exc})") from None


def _local(config: Path | None) -> tuple["Governance", "Approvals"]:
    from flagwarden.governance.approvals import Approvals

    _, governance = open_project(config)
    return governance, Approvals(governance.rollout())


@approvals_app.command("list")
def approvals_list(
    flag: Annotated[str | None, typer.Argument(metavar="[FLAG]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="decided and expired ones too")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    server: ServerOption = None,
    config: ConfigOption = None,
) -> None:
    """Pending change requests (of FLAG)."""
    from flagwarden.governance.approvals import ChangeRequest
    from flagwarden.governance.state import StateStoreUnavailable

    if server:
        query = "?" + urlencode(
            {"all": "true" if all_ else "false", **({"flag": flag} if flag else {})}
        )
        found = [
            ChangeRequest.from_dict(r) for r in _remote(server, "GET", f"/api/v1/approvals{query}")
        ]
    else:
        governance, approvals = _local(config)
        try:
            found = approvals.requests(flag, open_only=not all_)
        except StateStoreUnavailable as exc:
            raise fail(str(exc)) from None
        finally:
            governance.close()
    if json_out:
        print(json.dumps([r.as_dict() for r in found], indent=2))
        return
    if not found:
        say("no pending change requests" if not all_ else "no change requests", tag="none")
    for r in found:
        say(describe_request(r), tag=r.status)


def _decide(
    decision: str, request_id: str, reason: str, server: str | None, config: Path | None
) -> None:
    from flagwarden.governance.approvals import ChangeRequest
    from flagwarden.governance.rollout import TransitionRefused
    from flagwarden.governance.state import StateStoreUnavailable

    if server:
        path = f"/api/v1/approvals/{quote(request_id, safe='')}/{decision}"
        doc = _remote(server, "POST", path, {"reason": reason})
        say(describe_request(ChangeRequest.from_dict(doc["request"])))
        if "transition" in doc:
            after = doc["transition"]["after"]
            say(f"advanced to {after['stage']:g}% (version {after['version']})", tag="applied")
        return
    governance, approvals = _local(config)
    try:
        identity = token_identity(governance)
        if identity is None:
            raise fail(f"deciding a change request needs a proven identity: set ${TOKEN_ENV}")
        if decision == "approve":
            request, done = approvals.approve(request_id, by=identity, reason=reason)
        else:
            request, done = approvals.reject(request_id, by=identity, reason=reason), None
    except (TransitionRefused, AccessDenied) as exc:
        raise fail(f"refused: {exc}") from None
    except StateStoreUnavailable as exc:
        raise fail(str(exc)) from None
    finally:
        governance.close()
    say(describe_request(request))
    if done is not None:
        from flagwarden.cli.transitions import describe

        say(describe(done), tag="applied")


@approvals_app.command("approve")
def approvals_approve(
    request_id: Annotated[str, typer.Argument(metavar="REQUEST")],
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")] = "",
    server: ServerOption = None,
    config: ConfigOption = None,
) -> None:
    """Approve a change request (role approver, not its requester); the last needed
    approval applies the advance."""
    _decide("approve", request_id, reason, server, config)


@approvals_app.command("reject")
def approvals_reject(
    request_id: Annotated[str, typer.Argument(metavar="REQUEST")],
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")],
    server: ServerOption = None,
    config: ConfigOption = None,
) -> None:
    """Reject a change request (an approver), or withdraw your own."""
    _decide("reject", request_id, reason, server, config)
