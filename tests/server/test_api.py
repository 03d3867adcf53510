"""The admin API over real HTTP (a real uvicorn process): authentication, roles, CSRF, the
throttle, refused attempts in the audit log, tokens that never leak, and live events."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from flagwarden.audit.log import AuditLog
from tests.conftest import run_cli, wait_for
from tests.server.conftest import FLAG, ROLES, Console

# Every API route, with a body where it takes one, and the least role that may call it.
ROUTES: list[tuple[str, str, dict[str, object] | None, str]] = [
    ("GET", "/api/v1/whoami", None, "viewer"),
    ("GET", "/api/v1/flags", None, "viewer"),
    ("GET", f"/api/v1/flags/{FLAG}", None, "viewer"),
    ("GET", f"/api/v1/flags/{FLAG}/audit", None, "viewer"),
    ("GET", "/api/v1/approvals", None, "viewer"),
    ("GET", "/api/v1/report?format=json", None, "viewer"),
    ("POST", f"/api/v1/flags/{FLAG}/pause", {"reason": "r"}, "operator"),
    ("POST", f"/api/v1/flags/{FLAG}/resume", {"reason": "r"}, "operator"),
    ("POST", "/api/v1/approvals/cr-none/reject", {"reason": "r"}, "operator"),
    ("POST", "/api/v1/approvals/cr-none/approve", {"reason": "r"}, "approver"),
    ("GET", "/api/v1/tokens", None, "admin"),
    ("POST", "/api/v1/tokens", {"name": "carol", "role": "viewer"}, "admin"),
    ("DELETE", "/api/v1/tokens/nobody", None, "admin"),
]


def audit_of(console: Console) -> AuditLog:
    return AuditLog(f"sqlite:///{console.config.parent}/.flagwarden/audit.db")


@pytest.fixture
def console(console_for) -> Console:
    return console_for(policy={"soak": "0s", "approvals": {"from_stage": 25, "required": 1}})


def call(client: httpx.Client, method: str, path: str, body: dict[str, object] | None) -> int:
    return client.request(method, path, json=body).status_code


@pytest.mark.slow
def test_every_route_needs_a_token_and_enough_role(console: Console):
    with console.client() as anonymous:
        for method, path, body, _ in ROUTES:
            assert call(anonymous, method, path, body) == 401, (method, path)
    # A wrong token too (a few: more would trip the throttle, tested below).
    with console.client("fwt_0123456789abcdef_" + "x" * 43) as bad:
        for method, path, body, _ in ROUTES[:: len(ROUTES) // 3]:
            assert call(bad, method, path, body) == 401, (method, path)
    for method, path, body, least in ROUTES:
        for role in ROLES:
            with console.as_(role) as client:
                status = call(client, method, path, body)
            if ROLES.index(role) < ROLES.index(least):
                assert status == 403, (method, path, role, status)
            else:
                assert status not in (401, 403), (method, path, role, status)
    # Refused attempts are audited, with what was tried and who, never the token.
    audit = audit_of(console)
    refused = list(audit.records(kind="access_refused"))
    assert {r.data["status"] for r in refused} == {401, 403}
    assert any(r.actor == "viewer" and r.data["path"] == "/api/v1/tokens" for r in refused)
    every_record = json.dumps([r.data for r in audit.records()]) + console.output()
    for token in console.tokens.values():
        secret = token.rsplit("_", 1)[1]
        assert secret not in every_record
    audit.close()


def test_changes_are_recorded_under_the_authenticated_identity(console: Console):
    with console.as_("operator") as client:
        answer = client.post(
            f"/api/v1/flags/{FLAG}/advance", json={"reason": "start", "actor": "mallory"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["after"]["stage"] == 1
        trail = client.get(f"/api/v1/flags/{FLAG}/audit").json()
    transition = next(r for r in trail if r["kind"] == "transition")
    assert transition["actor"] == "operator"  # never the client-supplied actor
    # A blank reason is refused by the API's own validation (nothing changes).
    with console.as_("operator") as client:
        assert client.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": ""}).status_code == 422
        assert client.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": " "}).status_code == 409
        assert client.get(f"/api/v1/flags/{FLAG}").json()["flags"][0]["killed"] is False


def test_four_eyes(console: Console, monkeypatch: pytest.MonkeyPatch):
    run_cli(console.config, "advance", FLAG, "--reason", "go", "--to", "5", "--force")
    console.token("olivia", "approver")
    with console.as_("operator") as operator:
        asked = operator.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": "to 25"}).json()
        assert asked["result"] == "pending"
        request = asked["request"]["id"]
        # One open request per flag; the flag has not moved.
        again = operator.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": "again"})
        assert again.status_code == 409 and request in again.json()["detail"]
        assert operator.get(f"/api/v1/flags/{FLAG}").json()["flags"][0]["stage"] == 5
        # An operator cannot approve.
        assert operator.post(f"/api/v1/approvals/{request}/approve", json={}).status_code == 403
    # Kill bypasses approval, and while killed the request cannot apply.
    with console.as_("operator") as operator:
        assert operator.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": "k"}).status_code == 200
        assert (
            operator.post(f"/api/v1/flags/{FLAG}/revive", json={"reason": "r"}).status_code == 200
        )
    with console.as_("approver") as approver:
        done = approver.post(f"/api/v1/approvals/{request}/approve", json={"reason": "looks ok"})
        assert done.status_code == 200, done.text
        assert done.json()["request"]["status"] == "approved"
        assert done.json()["transition"]["after"]["stage"] == 25
        assert approver.post(f"/api/v1/approvals/{request}/approve", json={}).status_code == 409
    # The transition is the requester's, with who approved it.
    with console.as_("viewer") as viewer:
        trail = viewer.get(f"/api/v1/flags/{FLAG}/audit").json()
    advance = next(r for r in trail if r["kind"] == "transition")
    assert advance["actor"] == "operator"
    assert advance["data"]["approval"]["approved_by"] == ["approver"]
    # Self-approval is refused, even for an approver asking through the CLI with a token.
    monkeypatch.setenv("FLAGWARDEN_TOKEN", console.tokens["olivia"])
    asked_cli = run_cli(console.config, "advance", FLAG, "--reason", "to 50")
    assert asked_cli.returncode == 0 and "pending" in asked_cli.stdout, asked_cli.stderr
    mine = re.search(r"cr-[0-9a-f]{8}", asked_cli.stdout).group(0)
    self_approve = run_cli(console.config, "approvals", "approve", mine)
    assert self_approve.returncode == 1 and "four eyes" in self_approve.stderr
    # ... and through the service, with --server.
    monkeypatch.setenv("FLAGWARDEN_TOKEN", console.tokens["approver"])
    listed = run_cli(console.config, "approvals", "list", "--server", console.url)
    assert mine in listed.stdout, listed.stderr
    approved = run_cli(console.config, "approvals", "approve", mine, "--server", console.url)
    assert approved.returncode == 0, approved.stderr
    with console.as_("viewer") as viewer:
        assert viewer.get(f"/api/v1/flags/{FLAG}").json()["flags"][0]["stage"] == 50


def test_a_request_without_a_proven_identity_is_refused(console: Console):
    run_cli(console.config, "advance", FLAG, "--reason", "go", "--to", "5", "--force")
    typed = run_cli(console.config, "advance", FLAG, "--reason", "to 25", actor="alice")
    assert typed.returncode == 1 and "FLAGWARDEN_TOKEN" in typed.stderr


def test_csrf_and_session_cookie(console: Console):
    with console.client() as browser:
        form = browser.get("/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
        logged_in = browser.post(
            "/login", data={"nonce": nonce, "token": console.tokens["operator"]}
        )
        assert logged_in.status_code == 303
        cookie = logged_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        page = browser.get(f"/flags/{FLAG}/confirm/kill")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        # Without the CSRF token: refused, nothing changed.
        assert browser.post(f"/flags/{FLAG}/kill", data={"reason": "x"}).status_code == 403
        assert browser.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": "x"}).status_code == 403
        wrong = {"reason": "x", "csrf": "not-it"}
        assert browser.post(f"/flags/{FLAG}/kill", data=wrong).status_code == 403
        assert browser.get(f"/api/v1/flags/{FLAG}").json()["flags"][0]["killed"] is False
        # With it: done, as the session's identity.
        done = browser.post(f"/flags/{FLAG}/kill", data={"reason": "from the page", "csrf": csrf})
        assert done.status_code == 303
        header = {"X-CSRF-Token": csrf}
        revived = browser.post(f"/api/v1/flags/{FLAG}/revive", json={"reason": "x"}, headers=header)
        assert revived.status_code == 200
        # A revoked token ends its sessions.
        assert run_cli(console.config, "token", "revoke", "operator").returncode == 0
        assert browser.get(f"/api/v1/flags/{FLAG}").status_code == 401
    with console.as_("admin") as admin:
        trail = admin.get(f"/api/v1/flags/{FLAG}/audit").json()
    kill = next(r for r in trail if r["data"].get("action") == "kill")
    assert kill["actor"] == "operator" and kill["data"]["reason"] == "from the page"


def test_repeated_failures_are_slowed_down(console: Console):
    with console.client("fwt_0123456789abcdef_" + "y" * 43) as bad:
        statuses = [bad.get("/api/v1/flags").status_code for _ in range(8)]
    assert statuses[:5] == [401] * 5 and 429 in statuses[5:]
    with console.as_("viewer") as good:  # same client address: must wait too
        slowed = good.get("/api/v1/flags")
        assert slowed.status_code == 429 and int(slowed.headers["retry-after"]) >= 1


def test_security_headers_health_metrics_and_docs(console: Console):
    with console.client() as anonymous:
        login = anonymous.get("/login")
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and login.headers["x-frame-options"] == "DENY"
        assert anonymous.get("/healthz").json()["status"] == "ok"
        assert "flagwarden_flag_stage_percent" in anonymous.get("/metrics").text
        assert anonymous.get("/api/docs").status_code == 200
        paths = anonymous.get("/api/openapi.json").json()["paths"]
        assert "/api/v1/flags/{flag}/{action}" in paths


def test_tokens_are_stored_as_slow_hashes_only(console: Console):
    with console.as_("admin") as admin:
        made = admin.post("/api/v1/tokens", json={"name": "dave", "role": "operator"}).json()
        listed = admin.get("/api/v1/tokens").json()
    token = made["token"]
    assert all("digest" not in t and "salt" not in t for t in listed)
    db = (console.config.parent / ".flagwarden" / "state.db").read_bytes()
    assert token.encode() not in db and token.rsplit("_", 1)[1].encode() not in db
    with console.client(token) as dave:
        assert dave.get("/api/v1/whoami").json()["name"] == "dave"


@pytest.mark.slow
def test_live_events_follow_changes_made_by_other_processes(console: Console):
    seen: list[dict[str, object]] = []
    ready = threading.Event()

    def listen() -> None:
        with (
            console.as_("viewer") as viewer,
            viewer.stream("GET", "/api/v1/events", timeout=30) as stream,
        ):
            for line in stream.iter_lines():
                ready.set()
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.5)
    started = time.monotonic()
    assert run_cli(console.config, "kill", FLAG, "--reason", "from elsewhere").returncode == 0
    wait_for(lambda: seen, timeout=10)
    assert seen[0]["flags"] == [FLAG]
    assert time.monotonic() - started < 10
