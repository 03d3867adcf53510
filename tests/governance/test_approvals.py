"""Four-eyes approvals and API tokens on each state backend: requests, self-approval,
several approvers, expiry, staleness, races, and kill, pause and rollback never waiting."""

from __future__ import annotations

import threading
import time

import pytest

from flagwarden.config import load_settings
from flagwarden.governance.approvals import Approvals, Requested
from flagwarden.governance.guards import GuardEvaluator
from flagwarden.governance.project import Governance
from flagwarden.governance.rollout import ApprovalRequired, TransitionRefused
from flagwarden.governance.watch import Watch
from flagwarden.identity import AccessDenied, Identity, InvalidToken, Role, TokenStore
from flagwarden.report import build_report, render_html, render_markdown
from tests.conftest import POLICY, Project, governed_project

FLAG = POLICY["flag"]


def person(name: str, role: Role = Role.APPROVER) -> Identity:
    return Identity(name, role, f"id-{name}")


@pytest.fixture
def open_governance(project: Project, state_url: str):
    opened: list[Governance] = []

    def make(**approvals: object) -> Governance:
        rule = {"from_stage": 25, "required": 1, **approvals}
        governed_project(project, state=state_url, policy={"soak": "0s", "approvals": rule})
        gov = Governance.open(load_settings(project.root / "flagwarden.yaml"))
        opened.append(gov)
        return gov

    yield make
    for gov in opened:
        gov.close()


def at_stage(gov: Governance, stage: float) -> None:
    gov.rollout().advance(FLAG, actor="setup", reason="setup", to=stage, force=True)


def test_an_advance_under_four_eyes_waits_for_another_approver(open_governance):
    gov = open_governance()
    at_stage(gov, 5)
    rollout, approvals = gov.rollout(), Approvals(gov.rollout())
    with pytest.raises(ApprovalRequired, match="needs 1 approval"):
        rollout.advance(FLAG, actor="alice", reason="to 25")  # the library refuses to skip it
    asked = approvals.advance(FLAG, actor="alice", reason="to 25")
    assert isinstance(asked, Requested) and rollout.state(FLAG).stage == 5
    request = asked.request
    assert (request.from_stage, request.to_stage, request.status) == (5, 25, "pending")
    with pytest.raises(TransitionRefused, match="four eyes"):
        approvals.approve(request.id, by=person("alice"))
    with pytest.raises(AccessDenied, match="needs approver"):
        approvals.approve(request.id, by=person("olga", Role.OPERATOR))
    decided, done = approvals.approve(request.id, by=person("bob"), reason="fine")
    assert decided.status == "approved" and done is not None and done.after.stage == 25
    assert decided.version == done.after.version == rollout.state(FLAG).version
    with pytest.raises(TransitionRefused, match="approved: nothing to decide"):
        approvals.approve(request.id, by=person("carol"))
    # The audit log: requested, approved, and the transition under the requester.
    records = list(gov.audit.records(flag=FLAG))
    steps = [(r.kind, r.actor, r.data.get("event") or r.data.get("action")) for r in records]
    assert ("approval", "alice", "requested") in steps
    assert ("approval", "bob", "approved") in steps
    advance = [r for r in records if r.kind == "transition"][-1]
    assert advance.actor == "alice"
    assert advance.data["approval"]["approved_by"] == ["bob"]
    assert advance.data["approval"]["request"] == request.id
    assert gov.audit.verify().ok
    # The report shows who asked and who approved.
    report = build_report(gov.audit, gov.policies, gov.store.load_all(), flags=[FLAG])
    change = report.flags[0].changes[-1]
    assert (change.requested_by, change.approved_by, change.request) == (
        "alice",
        ["bob"],
        request.id,
    )
    assert report.flags[0].changes[0].approved_by is None  # the setup advance needed none
    assert "alice, approved by bob" in render_markdown(report)
    assert "approved by bob (" + request.id in render_html(report)


def test_several_approvals_and_refusals(open_governance):
    gov = open_governance(required=2)
    at_stage(gov, 5)
    approvals = Approvals(gov.rollout())
    request = approvals.advance(FLAG, actor="alice", reason="to 25").request
    with pytest.raises(TransitionRefused, match="already has a pending change request"):
        approvals.advance(FLAG, actor="dave", reason="me too")
    first, done = approvals.approve(request.id, by=person("bob"))
    assert done is None and first.status == "pending" and first.approved_by == ["bob"]
    with pytest.raises(TransitionRefused, match="bob already approved"):
        approvals.approve(request.id, by=person("bob"))
    second, done = approvals.approve(request.id, by=person("carol"))
    assert second.status == "approved" and done is not None and done.after.stage == 25
    # Rejected and withdrawn requests apply nothing.
    to_50 = approvals.advance(FLAG, actor="alice", reason="to 50").request
    with pytest.raises(AccessDenied):
        approvals.reject(to_50.id, by=person("eve", Role.OPERATOR), reason="no")
    withdrawn = approvals.reject(to_50.id, by=person("alice", Role.OPERATOR), reason="later")
    assert withdrawn.status == "rejected" and gov.rollout().state(FLAG).stage == 25
    again = approvals.advance(FLAG, actor="alice", reason="to 50 now").request
    assert approvals.reject(again.id, by=person("bob"), reason="not yet").status == "rejected"
    assert [r.status for r in approvals.requests(FLAG)] == ["rejected", "rejected", "approved"]
    assert approvals.requests(FLAG, open_only=True) == []


def test_requests_expire(open_governance):
    gov = open_governance(expires="1s")
    at_stage(gov, 5)
    approvals = Approvals(gov.rollout())
    late = approvals.advance(FLAG, actor="alice", reason="to 25").request
    time.sleep(1.2)
    assert approvals.requests(FLAG)[0].status == "expired"
    with pytest.raises(TransitionRefused, match="expired"):
        approvals.approve(late.id, by=person("bob"))
    assert gov.rollout().state(FLAG).stage == 5
    assert approvals.requests(FLAG, open_only=True) == []  # a new one may be asked


def test_kill_pause_rollback_never_wait_and_leave_a_request_stale(open_governance):
    gov = open_governance()
    at_stage(gov, 5)
    approvals = Approvals(gov.rollout())
    stale = approvals.advance(FLAG, actor="alice", reason="to 25").request
    rollout = gov.rollout()
    assert rollout.rollback(FLAG, actor="ops", reason="nulls").after.stage == 1
    assert rollout.kill(FLAG, actor="ops", reason="stop").after.killed
    assert rollout.pause(FLAG, actor="ops", reason="hold").after.paused
    with pytest.raises(TransitionRefused, match="stale"):
        approvals.approve(stale.id, by=person("bob"))
    assert rollout.state(FLAG).stage == 1
    assert approvals.requests(FLAG)[0].status == "stale"


def test_two_approvers_at_once_apply_one_advance(open_governance):
    gov = open_governance()
    at_stage(gov, 5)
    request = Approvals(gov.rollout()).advance(FLAG, actor="alice", reason="go").request
    results: list[object] = []

    def approve(name: str) -> None:
        try:
            results.append(Approvals(gov.rollout()).approve(request.id, by=person(name)))
        except TransitionRefused as exc:
            results.append(exc)

    threads = [threading.Thread(target=approve, args=(n,)) for n in ("bob", "carol")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = [r for r in results if isinstance(r, tuple) and r[1] is not None and r[1].changed]
    assert len(applied) == 1
    state = gov.rollout().state(FLAG)
    assert state.stage == 25
    advances = [r for r in gov.audit.records(flag=FLAG, kind="transition")]
    assert [r.data["after"]["stage"] for r in advances] == [5, 25]


def test_tokens_roles_and_revocation(open_governance):
    gov = open_governance()
    tokens = TokenStore(gov.store)
    record, token = tokens.create("alice", Role.OPERATOR, created_by="root")
    assert token.startswith(f"fwt_{record.id}_") and token not in str(record)
    identity = tokens.authenticate(token)
    assert (identity.name, identity.role) == ("alice", Role.OPERATOR)
    assert tokens.authenticate(token) == identity  # the verified cache answers the same
    for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), "fwt_x", "", token + "x"):
        with pytest.raises(InvalidToken):
            tokens.authenticate(wrong)
    with pytest.raises(ValueError, match="token name"):
        tokens.create("bad name\n", Role.VIEWER, created_by="root")
    assert [r.id for r in tokens.revoke("alice", by="root")] == [record.id]
    with pytest.raises(InvalidToken):  # at once, although the token was verified before
        tokens.authenticate(token)
    assert TokenStore(gov.store).identity(record.id) is None
    assert Role.parse("Approver") is Role.APPROVER
    with pytest.raises(ValueError, match="viewer, operator, approver, admin"):
        Role.parse("root")


def test_documents_are_compare_and_set(open_governance):
    store = open_governance().store
    assert store.put_document("t", "k", '{"a":1}', expected=None)
    assert not store.put_document("t", "k", '{"a":2}', expected=None)
    assert not store.put_document("t", "k", '{"a":2}', expected='{"a":0}')
    assert store.put_document("t", "k", '{"a":2}', expected='{"a":1}')
    assert store.documents("t") == {"k": '{"a":2}'} and store.documents("other") == {}


def test_a_request_applies_only_to_the_state_it_was_asked_about(open_governance):
    gov = open_governance()
    at_stage(gov, 5)
    rollout, approvals = gov.rollout(), Approvals(gov.rollout())
    asked = approvals.advance(FLAG, actor="alice", reason="to 25").request
    assert asked.state_version == rollout.state(FLAG).version
    # A kill undone by a revive leaves the stage where it was, and the request stale.
    rollout.kill(FLAG, actor="ops", reason="incident")
    rollout.revive(FLAG, actor="ops", reason="fixed")
    with pytest.raises(TransitionRefused, match="changed since it was asked"):
        approvals.approve(asked.id, by=person("bob"))
    assert rollout.state(FLAG).stage == 5
    # A kill alone: stale too.
    killed = approvals.advance(FLAG, actor="alice", reason="to 25 again").request
    rollout.kill(FLAG, actor="ops", reason="again")
    with pytest.raises(TransitionRefused, match="stale"):
        approvals.approve(killed.id, by=person("bob"))
    assert [r.status for r in approvals.requests(FLAG)] == ["stale", "stale"]


def test_a_forced_request_says_what_it_breaks(open_governance):
    gov = open_governance()
    rollout = gov.rollout()
    rollout.advance(FLAG, actor="setup", reason="setup", to=5, force=True)
    approvals = Approvals(rollout)
    rollout.pause(FLAG, actor="ops", reason="look first")
    with pytest.raises(TransitionRefused, match="paused"):
        approvals.advance(FLAG, actor="alice", reason="to 25")
    forced = approvals.advance(FLAG, actor="alice", reason="to 25 anyway", force=True).request
    assert forced.violations == ({"kind": "advanced_while_paused", "detail": "at 5%"},)
    assert "[FORCED, breaks advanced_while_paused: at 5%]" in forced.summary()
    _, done = approvals.approve(forced.id, by=person("bob"))
    assert done is not None and [v.kind for v in done.violations] == ["advanced_while_paused"]


def test_two_askers_at_once_open_one_request(open_governance):
    gov = open_governance()
    at_stage(gov, 5)
    results: list[object] = []
    start = threading.Barrier(4)

    def ask(name: str) -> None:
        start.wait()
        try:
            results.append(Approvals(gov.rollout()).advance(FLAG, actor=name, reason="go"))
        except TransitionRefused as exc:
            results.append(exc)

    threads = [threading.Thread(target=ask, args=(f"asker{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Requested) for r in results) == 1
    assert len(Approvals(gov.rollout()).requests(FLAG, open_only=True)) == 1


def test_the_watch_asks_once_and_not_again_after_a_rejection(open_governance):
    gov = open_governance()
    at_stage(gov, 5)
    policy = gov.policies[FLAG]
    gov.policies[FLAG] = policy.model_copy(update={"auto_advance": True})
    watch = Watch(gov, GuardEvaluator(None, None))
    (first,) = watch.tick()
    assert first.action == "hold" and "asked for approval" in first.detail
    (second,) = watch.tick()
    assert "waiting for approval" in second.detail
    approvals = Approvals(gov.rollout())
    (request,) = approvals.requests(FLAG)
    assert request.requested_by == "flagwarden-watch"
    approvals.reject(request.id, by=person("bob"), reason="not on a Friday")
    for _ in range(3):
        (held,) = watch.tick()
        assert "was rejected: asks again once the flag changes" in held.detail
    assert len(approvals.requests(FLAG)) == 1
    gov.rollout().pause(FLAG, actor="ops", reason="x")
    gov.rollout().resume(FLAG, actor="ops", reason="x")
    (again,) = watch.tick()
    assert "asked for approval" in again.detail and len(approvals.requests(FLAG)) == 2


def test_a_bad_approvals_rule_is_named_and_the_flag_can_still_be_killed(project: Project):
    governed_project(
        project, policy={"approvals": {"from_stage": 0, "required": 11, "expires": "0s"}}
    )
    gov = Governance.open(load_settings(project.root / "flagwarden.yaml"))
    try:
        problem = gov.broken[FLAG]
        fields = {p.field for p in problem.problems}
        assert {"approvals.from_stage", "approvals.required", "approvals.expires"} <= fields
        assert str(project.root / "policies") in str(problem)
        killed = gov.rollout().kill(FLAG, actor="ops", reason="bad rule, stop anyway")
        assert killed.changed and killed.after.killed
    finally:
        gov.close()
