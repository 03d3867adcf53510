"""Four-eyes approvals end to end, as people run them: a change request and its decision
notified to a webhook (a real ``flagwarden serve``, the tests' own receiver), and
``flagwarden approvals reject`` run in a process of its own, against the stores
(``$FLAGWARDEN_TOKEN``) and through the service (``--server URL``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwarden.audit.log import AuditLog
from flagwarden.config import load_settings
from flagwarden.governance.approvals import Approvals
from flagwarden.governance.project import Governance
from flagwarden.identity import Role, TokenStore
from tests.conftest import Project, governed_project, run_cli, wait_for
from tests.server.conftest import FLAG, Console
from tests.servers.webhook import Receiver

FOUR_EYES = {"soak": "0s", "approvals": {"from_stage": 25, "required": 1}}
REQUEST_ID = re.compile(r"cr-[0-9a-f]{8}")


def arrived(receiver: Receiver, path: str, count: int) -> list[dict[str, Any]]:
    """The JSON messages delivered at ``path`` once there are ``count`` of them."""

    def enough() -> list[dict[str, Any]] | None:
        found = receiver.delivered(path)
        return found if len(found) >= count else None

    return wait_for(enough, timeout=15)


def assert_no_token(text: str, tokens: dict[str, str]) -> None:
    for token in tokens.values():
        assert token not in text
        assert token.split("_", 2)[2] not in text  # nor its secret alone (fwt_ID_SECRET)


def flat(text: str) -> str:
    return " ".join(text.split())


def audit_of(config: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{config.parent}/.flagwarden/audit.db")


def approval_steps(config: Path) -> list[tuple[str | None, str, str]]:
    """``(actor, event, request status)`` of every ``approval`` record, oldest first."""
    audit = audit_of(config)
    try:
        return [
            (r.actor, r.data["event"], r.data["request"]["status"])
            for r in audit.records(flag=FLAG, kind="approval")
        ]
    finally:
        audit.close()


def transitions_to(config: Path, stage: float) -> list[str | None]:
    """Who made each audited transition of FLAG that ended at ``stage``."""
    audit = audit_of(config)
    try:
        return [
            r.actor
            for r in audit.records(flag=FLAG, kind="transition")
            if r.data["after"]["stage"] == stage
        ]
    finally:
        audit.close()


# -- notifications: approval_requested, approval_decided ------------------------------------


@pytest.fixture
def notified(console_for, receiver: Receiver) -> Console:
    """A served project under four-eyes from 25%, at 5%, with two webhook targets: one for
    the approval events, one for transitions."""
    console = console_for(
        policy=FOUR_EYES,
        notify=[
            {
                "url": f"{receiver.url}/approvals",
                "name": "approvers",
                "events": ["approval_requested", "approval_decided"],
            },
            {"url": f"{receiver.url}/changes", "name": "changes", "events": ["transition"]},
        ],
    )
    at_5 = run_cli(console.config, "advance", FLAG, "--reason", "setup", "--to", "5", "--force")
    assert at_5.returncode == 0, at_5.stderr
    arrived(receiver, "/changes", 1)  # the setup advance (the CLI's own message)
    return console


def ask(console: Console, who: str, reason: str) -> str:
    """``who`` asks to advance through the API; the id of the change request it made."""
    with console.as_(who) as client:
        answer = client.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": reason})
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == "pending", answer.json()
    return str(answer.json()["request"]["id"])


def stage_of(console: Console) -> float:
    with console.as_("viewer") as viewer:
        return float(viewer.get(f"/api/v1/flags/{FLAG}").json()["flags"][0]["stage"])


def test_a_request_and_its_approval_are_notified(notified: Console, receiver: Receiver):
    console = notified
    request = ask(console, "operator", "scores look right")
    (requested,) = arrived(receiver, "/approvals", 1)
    assert requested["event"] == "approval_requested" and requested["flag"] == FLAG
    assert requested["decision"] == "requested"
    assert requested["actor"] == "operator" and requested["reason"] == "scores look right"
    asked = requested["request"]
    assert (asked["id"], asked["requested_by"], asked["status"]) == (request, "operator", "pending")
    assert (asked["from_stage"], asked["to_stage"], asked["required"]) == (5, 25, 1)
    assert requested["summary"] == (
        f"{request} requested by operator: {FLAG} 5% -> 25%, asked by operator: scores look right"
    )
    assert stage_of(console) == 5  # asking changed nothing

    with console.as_("approver") as approver:
        done = approver.post(f"/api/v1/approvals/{request}/approve", json={"reason": "checked"})
    assert done.status_code == 200, done.text
    first, decided = arrived(receiver, "/approvals", 2)
    assert first == requested
    assert (decided["event"], decided["decision"], decided["flag"]) == (
        "approval_decided",
        "approved",
        FLAG,
    )
    assert decided["actor"] == "approver"  # who decided; the request says who asked
    approved = decided["request"]
    assert (approved["id"], approved["status"], approved["requested_by"]) == (
        request,
        "approved",
        "operator",
    )
    assert approved["decided_by"] == "approver" and approved["decision_reason"] == "checked"
    assert [a["by"] for a in approved["approvals"]] == ["approver"]
    assert decided["summary"].startswith(f"{request} approved by approver: {FLAG} 5% -> 25%")
    assert requested["at"] <= decided["at"]  # ISO 8601 in UTC, one width: ordered as text
    # The transition the approval applied, under the requester (and none when it was asked:
    # the setup's and this one are the only two).
    setup, applied = arrived(receiver, "/changes", 2)
    assert (setup["after"]["stage"], applied["after"]["stage"]) == (5, 25)
    assert (applied["event"], applied["action"], applied["actor"]) == (
        "transition",
        "advance",
        "operator",
    )
    assert (applied["before"]["stage"], applied["after"]["stage"]) == (5, 25)
    assert applied["version"] == approved["version"] == applied["after"]["version"]
    assert stage_of(console) == 25
    # Never a token, in any message.
    assert_no_token(json.dumps(receiver.posts), console.tokens)


def test_a_rejection_is_notified_and_applies_nothing(notified: Console, receiver: Receiver):
    console = notified
    request = ask(console, "operator", "to a quarter")
    with console.as_("approver") as approver:
        rejected = approver.post(
            f"/api/v1/approvals/{request}/reject", json={"reason": "not before Monday"}
        )
    assert rejected.status_code == 200, rejected.text
    requested, decided = arrived(receiver, "/approvals", 2)
    assert (requested["event"], requested["actor"]) == ("approval_requested", "operator")
    assert (decided["event"], decided["decision"], decided["actor"]) == (
        "approval_decided",
        "rejected",
        "approver",
    )
    closed = decided["request"]
    assert (closed["id"], closed["status"], closed["decided_by"]) == (
        request,
        "rejected",
        "approver",
    )
    assert closed["decision_reason"] == "not before Monday" and closed["version"] is None
    assert decided["summary"].startswith(f"{request} rejected by approver: {FLAG} 5% -> 25%")
    # Nothing applied: the flag where it was, and no transition sent (a pause after it is
    # the next message the transitions' target gets).
    assert stage_of(console) == 5
    with console.as_("operator") as operator:
        paused = operator.post(f"/api/v1/flags/{FLAG}/pause", json={"reason": "hold"})
    assert paused.status_code == 200, paused.text
    setup, after = arrived(receiver, "/changes", 2)
    assert (setup["action"], after["action"]) == ("advance", "pause")
    assert_no_token(json.dumps(receiver.posts), console.tokens)


# -- flagwarden approvals reject, against the stores ($FLAGWARDEN_TOKEN) ----------------------


@pytest.fixture
def store_project(project: Project) -> Iterator[tuple[Path, Governance, dict[str, str]]]:
    """A project under four-eyes at 5%, no service; tokens made in the state store."""
    config = governed_project(project, policy=FOUR_EYES)
    governance = Governance.open(load_settings(config))
    try:
        assert governance.store is not None
        store = TokenStore(governance.store)
        tokens = {
            name: store.create(name, role, created_by="setup")[1]
            for name, role in (
                ("olga", Role.OPERATOR),
                ("oscar", Role.OPERATOR),
                ("ada", Role.APPROVER),
                ("bob", Role.APPROVER),
            )
        }
        governance.rollout().advance(FLAG, actor="setup", reason="setup", to=5, force=True)
        yield config, governance, tokens
    finally:
        governance.close()


def test_cli_reject_against_the_store(store_project):
    config, governance, tokens = store_project
    asked = run_cli(config, "advance", FLAG, "--reason", "to a quarter", token=tokens["ada"])
    assert asked.returncode == 0 and "pending" in asked.stdout, asked.stderr
    found = REQUEST_ID.search(asked.stdout)
    assert found is not None, asked.stdout
    request = found.group(0)
    outputs = [asked]

    def reject(who: str | None, reason: str = "not before Monday") -> Any:
        token = tokens[who] if who else None
        result = run_cli(config, "approvals", "reject", request, "--reason", reason, token=token)
        outputs.append(result)
        return result

    # Refused, each saying why, nothing decided: no token, a blank reason, an operator who
    # did not ask it; and the requester's own approval (ada is an approver: four eyes).
    anonymous = reject(None)
    assert anonymous.returncode == 1 and "FLAGWARDEN_TOKEN" in anonymous.stderr
    blank = reject("bob", " ")
    assert blank.returncode == 1 and "a reason is required" in blank.stderr
    oscar = reject("oscar")
    assert oscar.returncode == 1, oscar.stdout
    assert "oscar is operator: rejecting a change request needs approver" in flat(oscar.stderr)
    own = run_cli(config, "approvals", "approve", request, token=tokens["ada"])
    outputs.append(own)
    assert own.returncode == 1 and "four eyes" in own.stderr
    (pending,) = Approvals(governance.rollout()).requests(FLAG, open_only=True)
    assert pending.id == request
    assert approval_steps(config) == [("ada", "requested", "pending")]

    # An approver rejects it.
    done = reject("bob")
    assert done.returncode == 0, done.stderr
    assert f"{request} [rejected]" in done.stdout
    assert "rejected by bob: not before Monday" in flat(done.stdout)
    # Nothing applies: the flag stays at 5%, no transition to 25% was recorded.
    state = governance.rollout().state(FLAG)
    assert (state.stage, state.version) == (5, 1)
    assert transitions_to(config, 25) == []
    (closed,) = Approvals(governance.rollout()).requests(FLAG)
    assert (closed.status, closed.decided_by, closed.decision_reason) == (
        "rejected",
        "bob",
        "not before Monday",
    )
    assert approval_steps(config) == [
        ("ada", "requested", "pending"),
        ("bob", "rejected", "rejected"),
    ]
    # A decided request is decided: neither approving nor rejecting it again does anything.
    again = run_cli(config, "approvals", "approve", request, token=tokens["bob"])
    outputs.append(again)
    assert again.returncode == 1 and f"{request} is rejected: nothing to decide" in again.stderr
    assert reject("ada", "withdrawn").returncode == 1
    assert governance.rollout().state(FLAG).stage == 5
    assert len(approval_steps(config)) == 2
    for result in outputs:
        assert_no_token(result.stdout + result.stderr, tokens)


def test_cli_reject_of_ones_own_request_withdraws_it(store_project):
    """``approvals reject``: "Reject a change request (an approver), or withdraw your own"."""
    config, governance, tokens = store_project
    request = Approvals(governance.rollout()).advance(FLAG, actor="olga", reason="go").request
    withdrawn = run_cli(
        config, "approvals", "reject", request.id, "--reason", "too early", token=tokens["olga"]
    )
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert "rejected by olga: too early" in flat(withdrawn.stdout)
    assert governance.rollout().state(FLAG).stage == 5
    assert approval_steps(config) == [
        ("olga", "requested", "pending"),
        ("olga", "rejected", "rejected"),
    ]
    assert Approvals(governance.rollout()).requests(FLAG, open_only=True) == []


# -- flagwarden approvals reject --server URL ------------------------------------------------


def test_cli_reject_through_the_service(console_for):
    console = console_for(policy=FOUR_EYES)
    at_5 = run_cli(console.config, "advance", FLAG, "--reason", "setup", "--to", "5", "--force")
    assert at_5.returncode == 0, at_5.stderr
    console.token("olivia", "approver")  # an approver who asks: may not approve her own
    request = ask(console, "olivia", "to a quarter")
    outputs = []

    def decide(decision: str, who: str, *reason: str) -> Any:
        result = run_cli(
            console.config,
            "approvals",
            decision,
            request,
            *(("--reason", reason[0]) if reason else ()),
            "--server",
            console.url,
            token=console.tokens[who],
        )
        outputs.append(result)
        return result

    own = decide("approve", "olivia")
    assert own.returncode == 1 and "409" in own.stderr and "four eyes" in own.stderr
    operator = decide("reject", "operator", "no")
    assert operator.returncode == 1 and "403" in operator.stderr
    assert "needs approver" in flat(operator.stderr)
    with console.as_("viewer") as viewer:
        (pending,) = viewer.get("/api/v1/approvals").json()
    assert pending["id"] == request and pending["status"] == "pending"

    done = decide("reject", "approver", "not before Monday")
    assert done.returncode == 0, done.stderr
    assert f"{request} [rejected]" in done.stdout
    assert "rejected by approver: not before Monday" in flat(done.stdout)
    # Nothing applied; the request is closed; the audit trail says who rejected it and why.
    assert stage_of(console) == 5
    with console.as_("viewer") as viewer:
        assert viewer.get("/api/v1/approvals").json() == []
        (closed,) = viewer.get("/api/v1/approvals?all=true").json()
        trail = viewer.get(f"/api/v1/flags/{FLAG}/audit").json()
    assert (closed["status"], closed["decided_by"], closed["decision_reason"]) == (
        "rejected",
        "approver",
        "not before Monday",
    )
    steps = [
        (r["actor"], r["data"]["event"], r["data"]["request"]["status"])
        for r in reversed(trail)
        if r["kind"] == "approval"
    ]
    assert steps == [("olivia", "requested", "pending"), ("approver", "rejected", "rejected")]
    assert not [r for r in trail if r["kind"] == "transition" and r["data"]["after"]["stage"] == 25]
    # Decided: approving it now is refused and changes nothing.
    with console.as_("approver") as approver:
        late = approver.post(f"/api/v1/approvals/{request}/approve", json={})
    assert late.status_code == 409 and "rejected: nothing to decide" in late.json()["detail"]
    assert stage_of(console) == 5
    for result in outputs:
        assert_no_token(result.stdout + result.stderr, console.tokens)
    assert_no_token(console.output(), console.tokens)
