"""The admin API over real HTTP (a real uvicorn process): authentication, roles, CSRF, the
throttle, refused attempts in the audit log, tokens that never leak, and live events."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from flagwarden.audit.log import AuditError, AuditLog
from flagwarden.config import load_settings
from flagwarden.errors import ConfigError
from flagwarden.identity import Identity, Role
from flagwarden.server.app import create_app
from flagwarden.server.security import RefusalLog, Sessions
from flagwarden.server.service import Service
from tests.conftest import Project, governed_project, run_cli, wait_for
from tests.server.conftest import FLAG, ROLES, Console, free_port

CHROMIUM = Path("/usr/bin/chromium")

# Every API route, with a body where it takes one, and the least role that may call it.
ROUTES: list[tuple[str, str, dict[str, object] | None, str]] = [
    ("GET", "/api/v1/whoami", None, "viewer"),
    ("GET", "/api/v1/flags", None, "viewer"),
    ("GET", f"/api/v1/flags/{FLAG}", None, "viewer"),
    ("GET", f"/api/v1/flags/{FLAG}/audit", None, "viewer"),
    ("GET", "/api/v1/approvals", None, "viewer"),
    ("GET", "/api/v1/report?format=json", None, "viewer"),
    ("GET", "/api/v1/report?format=md", None, "viewer"),
    ("GET", "/api/v1/events", None, "viewer"),  # server-sent events: a stream that stays open
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
    """The answer's status; the body is not read (the event stream never ends)."""
    with client.stream(method, path, json=body) as answer:
        return answer.status_code


@pytest.mark.slow
def test_every_route_needs_a_token_and_enough_role(console: Console):
    for method, path, body, least in ROUTES:
        for role in ROLES:
            with console.as_(role) as client:
                status = call(client, method, path, body)
            if ROLES.index(role) < ROLES.index(least):
                assert status == 403, (method, path, role, status)
            else:
                assert status not in (401, 403), (method, path, role, status)
    # A wrong token too (a few: more would trip the throttle, tested below).
    with console.client("fwt_0123456789abcdef_" + "x" * 43) as bad:
        for method, path, body, _ in ROUTES[:: len(ROUTES) // 3]:
            assert call(bad, method, path, body) == 401, (method, path)
    # No credentials: 401 (they count as failures, but there is no slow check to throttle).
    with console.client() as anonymous:
        for method, path, body, _ in ROUTES:
            assert call(anonymous, method, path, body) == 401, (method, path)
    with console.as_("viewer") as viewer:  # a token already checked is never throttled
        assert viewer.get("/api/v1/whoami").status_code == 200
    # Refused attempts are audited, with what was tried and who, never the token.
    audit = audit_of(console)
    refused = list(audit.records(kind="access_refused"))
    assert {r.data["status"] for r in refused} == {401, 403}
    assert any(r.actor == "viewer" and r.data["path"] == "/api/v1/tokens" for r in refused)
    every_record = json.dumps([r.data for r in audit.records()]) + console.output()
    for token in console.tokens.values():
        secret = token.split("_", 2)[2]  # fwt_ID_SECRET: the secret may hold "_" itself
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
    # Kill bypasses approval, and leaves the request stale (even once revived).
    with console.as_("operator") as operator:
        assert operator.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": "k"}).status_code == 200
        assert (
            operator.post(f"/api/v1/flags/{FLAG}/revive", json={"reason": "r"}).status_code == 200
        )
    with console.as_("approver") as approver:
        stale = approver.post(f"/api/v1/approvals/{request}/approve", json={})
        assert stale.status_code == 409 and "stale" in stale.json()["detail"]
    with console.as_("operator") as operator:
        asked = operator.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": "to 25"}).json()
        request = asked["request"]["id"]
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
        assert (
            run_cli(
                console.config, "token", "revoke", "operator", token=console.tokens["admin"]
            ).returncode
            == 0
        )
        assert browser.get(f"/api/v1/flags/{FLAG}").status_code == 401
    with console.as_("admin") as admin:
        trail = admin.get(f"/api/v1/flags/{FLAG}/audit").json()
    kill = next(r for r in trail if r["data"].get("action") == "kill")
    assert kill["actor"] == "operator" and kill["data"]["reason"] == "from the page"


BAD = "fwt_0123456789abcdef_" + "y" * 43


def test_repeated_failures_are_slowed_down_but_known_tokens_are_not(console: Console):
    with console.as_("viewer") as viewer:
        assert viewer.get("/api/v1/whoami").status_code == 200  # verified once
    # X-Forwarded-For is believed from no one by default: one address, whatever it says.
    with console.client(BAD) as bad:
        statuses = [
            bad.get("/api/v1/flags", headers={"X-Forwarded-For": f"10.9.0.{i}"}) for i in range(8)
        ]
    # Five free failures, the sixth is tried and sets a wait of 1 s: then 429.
    assert [r.status_code for r in statuses] == [401] * 6 + [429] * 2
    assert int(statuses[-1].headers["retry-after"]) >= 1
    with console.client() as anonymous:  # no credentials: counted, the wait doubles
        assert [anonymous.get("/api/v1/flags").status_code for _ in range(3)] == [401] * 3
    # A token this process already verified is never throttled, the kill endpoint included;
    with console.as_("viewer") as viewer:
        assert [viewer.get("/api/v1/whoami").status_code for _ in range(3)] == [200] * 3
    with console.as_("operator") as operator:
        # one it has not (it needs the slow check) waits like a wrong one.
        slowed = operator.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": "now"})
        assert slowed.status_code == 429 and int(slowed.headers["retry-after"]) >= 1


@pytest.fixture
def proxied(console_for) -> Console:
    """A console behind a "proxy" on 127.0.0.1: X-Forwarded-For names the client."""
    return console_for(server={"forwarded_allow_ips": ["127.0.0.1"]})


def from_(console: Console, address: str, token: str | None = None) -> httpx.Client:
    client = console.client(token)
    client.headers["X-Forwarded-For"] = address
    return client


def test_behind_a_proxy_each_client_is_throttled_on_its_own(proxied: Console):
    with from_(proxied, "10.0.0.1", proxied.tokens["operator"]) as operator:
        assert operator.get("/api/v1/whoami").status_code == 200
    # Requests without credentials, or with a malformed one, count as failures too.
    with from_(proxied, "10.0.0.1") as anonymous:
        for _ in range(4):
            assert anonymous.get("/api/v1/flags").status_code == 401
        bad_scheme = {"Authorization": "Basic dXNlcjpwYXNz"}
        for _ in range(4):
            assert anonymous.get("/api/v1/flags", headers=bad_scheme).status_code == 401
    with from_(proxied, "10.0.0.1", BAD) as bad:
        assert bad.get("/api/v1/flags").status_code == 429
    with from_(proxied, "10.0.0.1", proxied.tokens["viewer"]) as fresh:
        assert fresh.get("/api/v1/flags").status_code == 429  # needs the slow check: waits
    # Another client behind the same proxy is not locked out by the first one.
    with from_(proxied, "10.0.0.2", BAD) as other:
        assert other.get("/api/v1/flags").status_code == 401
    with from_(proxied, "10.0.0.2", proxied.tokens["viewer"]) as viewer:
        assert viewer.get("/api/v1/flags").status_code == 200
    # And an operator who used their token before can still kill from the throttled one.
    with from_(proxied, "10.0.0.1", proxied.tokens["operator"]) as operator:
        killed = operator.post(f"/api/v1/flags/{FLAG}/kill", json={"reason": "stop it"})
        assert killed.status_code == 200, killed.text
    audit = audit_of(proxied)
    clients = {r.data["client"] for r in audit.records(kind="access_refused")}
    audit.close()
    assert {"10.0.0.1", "10.0.0.2"} <= clients and "127.0.0.1" not in clients


def test_a_good_call_does_not_reset_the_throttle(proxied: Console):
    with from_(proxied, "10.0.0.3", proxied.tokens["viewer"]) as viewer:
        assert viewer.get("/api/v1/whoami").status_code == 200
        with from_(proxied, "10.0.0.3", BAD) as bad:
            rounds = []
            for _ in range(3):  # 4 guesses, 1 good call, again and again
                rounds.append([bad.get("/api/v1/whoami").status_code for _ in range(4)])
                assert viewer.get("/api/v1/whoami").status_code == 200
    assert rounds[0] == [401] * 4
    # Without the reset the fifth and sixth failures are tried, then the address waits.
    assert rounds[1] == [401, 401, 429, 429]
    assert 429 in rounds[2]


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
    assert token.encode() not in db and token.split("_", 2)[2].encode() not in db
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


# -- refused attempts: aggregated, never a flood ---------------------------------------------


def stop(console: Console, timeout: float = 10) -> float:
    """SIGTERM the console; seconds it took to exit."""
    started = time.monotonic()
    console.process.send_signal(signal.SIGTERM)
    console.process.wait(timeout)
    return time.monotonic() - started


def test_a_flood_of_refusals_makes_few_audit_records_with_counts(console: Console):
    sent: Counter[tuple[int, str]] = Counter()
    with console.client() as anonymous:
        for _ in range(300):
            assert anonymous.get("/api/v1/flags").status_code == 401
        sent[401, "/api/v1/flags"] += 300
        for i in range(100):
            assert anonymous.get(f"/api/v1/flags/flag-{i}").status_code == 401
        sent[401, "/api/v1/flags/{flag}"] += 100
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        for _ in range(100):
            assert anonymous.get("/api/v1/whoami", headers=basic).status_code == 401
        sent[401, "/api/v1/whoami"] += 100
        anonymous.cookies.set("flagwarden_session", "not-a-session")
        for _ in range(100):
            assert anonymous.get("/api/v1/approvals").status_code == 401
        sent[401, "/api/v1/approvals"] += 100
        anonymous.cookies.clear()
    with console.client(BAD) as bad:  # the address is throttled by now: 429s, also counted
        for _ in range(50):
            assert bad.get("/api/v1/tokens").status_code == 429
        sent[429, "/api/v1/tokens"] += 50
    with console.as_("viewer") as viewer:  # a valid token not verified yet waits too
        assert viewer.get("/api/v1/whoami").status_code == 429
    # While it runs: the first of each kind only, at once.
    audit = audit_of(console)
    now = list(audit.records(kind="access_refused"))
    audit.close()
    assert len(now) <= 10, [r.data for r in now]
    assert all(r.data["count"] == 1 for r in now)
    # At shutdown the rest is written: nothing counted is lost.
    stop(console)
    audit = audit_of(console)
    records = list(audit.records(kind="access_refused"))
    audit.close()
    assert len(records) <= 2 * len(sent) + 2, [r.data for r in records]
    got: Counter[tuple[int, str]] = Counter()
    for record in records:
        data = record.data
        assert {"status", "method", "path", "client", "why", "identity"} <= set(data)
        assert data["count"] >= 1 and data["first_at"] <= data["last_at"]
        assert data["client"] == "127.0.0.1"
        got[data["status"], data["route"]] += data["count"]
    assert {key: got[key] for key in sent} == dict(sent)
    flagged = [r.data for r in records if r.data["route"] == "/api/v1/flags/{flag}"]
    assert flagged[0]["path"] == "/api/v1/flags/flag-0"  # the first one's path


def test_refusal_log_windows_and_bounds():
    written: list[dict[str, Any]] = []
    log = RefusalLog(written.append, window=0.3, most=50)
    attempt = {"status": 401, "method": "GET", "path": "/p", "route": "/p", "why": "no"}
    for _ in range(100):
        log.note({**attempt, "client": "10.0.0.1", "identity": None})
    assert [w["count"] for w in written] == [1]
    time.sleep(0.35)
    log.flush()  # the window closed: one record for the other 99
    assert [w["count"] for w in written] == [1, 99]
    assert written[1]["first_at"] <= written[1]["last_at"]
    log.note({**attempt, "client": "10.0.0.1", "identity": None})
    assert len(written) == 2  # within a minute of the last record: counted
    time.sleep(0.35)
    log.flush()
    assert [w["count"] for w in written] == [1, 99, 1]
    time.sleep(0.35)
    log.flush()  # a quiet window: forgotten
    assert log.tracked == 0
    # An address sweep: memory and records stay bounded.
    written.clear()
    for i in range(5000):
        log.note({**attempt, "client": f"10.1.{i // 256}.{i % 256}", "identity": None})
    assert log.tracked <= 51 and len(written) <= 51
    log.close()  # shutdown: the rest, counted under client "*"
    assert sum(w["count"] for w in written) == 5000
    assert any(w["client"] == "*" for w in written)


# -- the library's refusals, unknown requests -------------------------------------------------


def test_unknown_requests_are_404_and_the_librarys_refusals_are_audited(console: Console):
    run_cli(console.config, "advance", FLAG, "--reason", "go", "--to", "5", "--force")
    console.token("oscar", "operator")
    with console.as_("operator") as operator:
        asked = operator.post(f"/api/v1/flags/{FLAG}/advance", json={"reason": "to 25"}).json()
        request = asked["request"]["id"]
        gone = operator.post("/api/v1/approvals/cr-00000000/reject", json={"reason": "x"})
        assert gone.status_code == 404, gone.text
    with console.as_("approver") as approver:
        unknown = approver.post("/api/v1/approvals/cr-00000000/approve", json={})
        assert unknown.status_code == 404 and "no change request" in unknown.json()["detail"]
        blank = approver.post(f"/api/v1/approvals/{request}/reject", json={"reason": " "})
        assert blank.status_code == 409, blank.text
    with console.as_("oscar") as oscar:  # an operator may withdraw their own, not reject this
        denied = oscar.post(f"/api/v1/approvals/{request}/reject", json={"reason": "no"})
        assert denied.status_code == 403 and "approver" in denied.json()["detail"]
    audit = audit_of(console)
    refused = [r for r in audit.records(kind="access_refused") if r.actor == "oscar"]
    audit.close()
    assert len(refused) == 1 and refused[0].data["status"] == 403
    assert refused[0].data["path"] == f"/api/v1/approvals/{request}/reject"


def test_a_made_token_is_answered_even_when_its_audit_record_fails(
    project: Project, monkeypatch: pytest.MonkeyPatch
):
    settings = load_settings(governed_project(project))
    service = Service.open(settings)
    _, admin = service.tokens.create("root", Role.ADMIN, created_by="test")

    def broken(*_: object) -> None:
        raise AuditError("the audit disk is full")

    monkeypatch.setattr(service, "record", broken)
    with TestClient(create_app(settings, service)) as client:
        bearer = {"Authorization": f"Bearer {admin}"}
        made = client.post("/api/v1/tokens", json={"name": "eve", "role": "viewer"}, headers=bearer)
        assert made.status_code == 200, made.text
        assert made.json()["token"].startswith("fwt_") and made.json()["audit_pending"]
        assert client.delete("/api/v1/tokens/eve", headers=bearer).status_code == 200
        eve = {"Authorization": f"Bearer {made.json()['token']}"}
        assert client.get("/api/v1/whoami", headers=eve).status_code == 401


# -- sessions -----------------------------------------------------------------------------------


def test_sessions_are_capped_per_identity():
    sessions = Sessions(3600, most=100, per_identity=20)
    alice, bob = Identity("alice", Role.VIEWER, "a" * 16), Identity("bob", Role.ADMIN, "b" * 16)
    bobs, _ = sessions.create(bob)
    alices = [sessions.create(alice)[0] for _ in range(25)]
    assert sessions.get(bobs) is not None  # alice logging in again and again: not bob's
    assert [sessions.get(sid) is not None for sid in alices] == [False] * 5 + [True] * 20
    for i in range(100):  # the overall cap still holds: the oldest go
        sessions.create(Identity(f"u{i}", Role.VIEWER, f"{i:016x}"))
    assert sessions.count == 100 and sessions.get(bobs) is None
    sessions.end(alices[-1])
    assert sessions.get(alices[-1]) is None


def log_in(console: Console, token: str) -> httpx.Client:
    browser = console.client()
    nonce = re.search(r'name="nonce" value="([^"]+)"', browser.get("/login").text).group(1)
    assert browser.post("/login", data={"nonce": nonce, "token": token}).status_code == 303
    return browser


def test_logging_in_again_and_again_ends_only_ones_own_sessions(console: Console):
    operator = log_in(console, console.tokens["operator"])
    viewers = [log_in(console, console.tokens["viewer"]) for _ in range(21)]
    try:
        assert viewers[0].get("/api/v1/whoami").status_code == 401  # the oldest of 21
        assert {b.get("/api/v1/whoami").status_code for b in viewers[1:]} == {200}
        assert operator.get("/api/v1/whoami").json()["name"] == "operator"
    finally:
        for browser in [operator, *viewers]:
            browser.close()


# -- outages ------------------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of the test's own on a free port (``.kill()`` it for an outage)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed")
    import redis

    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def pings() -> bool:
        try:
            return bool(redis.Redis(port=port).ping())
        except redis.RedisError:
            return False

    wait_for(pings, timeout=10)
    yield f"redis://127.0.0.1:{port}/0", proc
    proc.kill()
    proc.wait()


def test_a_state_store_outage_answers_503_never_500(console_for, private_redis):
    url, redis_server = private_redis
    console = console_for(state=url)
    with console.as_("viewer") as viewer:
        assert viewer.get("/api/v1/whoami").status_code == 200  # verified: cached
    browser = log_in(console, console.tokens["operator"])
    redis_server.kill()
    redis_server.wait()
    try:
        with console.as_("viewer") as viewer:
            down = viewer.get("/api/v1/whoami")
        assert down.status_code == 503 and "state store" in down.json()["detail"]
        assert "127.0.0.1" not in down.text  # the cause is logged, not told
        for role in ("viewer", "admin"):  # a cached token, and one that needs the slow check
            with console.as_(role) as client:
                statuses = {call(client, method, path, body) for method, path, body, _ in ROUTES}
            assert statuses == {503}, (role, statuses)
        assert browser.get("/api/v1/flags").status_code == 503  # a session
        assert browser.get("/flags").status_code == 503  # the dashboard's pages
        with console.client() as anonymous:
            assert anonymous.get("/healthz").status_code == 503
            assert anonymous.get("/api/v1/flags").status_code == 401  # no store needed
    finally:
        browser.close()
    assert "Exception in ASGI application" not in console.output()


# -- content security policies ------------------------------------------------------------------


def directives(csp: str) -> dict[str, str]:
    return dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())


def test_the_docs_page_and_the_html_report_have_csps_of_their_own(console: Console):
    with console.client() as anonymous:
        docs = anonymous.get("/api/docs")
    assert docs.status_code == 200
    csp = directives(docs.headers["content-security-policy"])
    inline = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert len(inline) == 1 and f"'sha256-{digest}'" in csp["script-src"]
    assert "https://cdn.jsdelivr.net" in csp["script-src"]
    assert "unsafe-inline" not in csp["script-src"] and "unsafe-eval" not in csp["script-src"]
    assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert csp["default-src"] == "'none'"
    with console.as_("viewer") as viewer:
        report = viewer.get("/api/v1/report?format=html")
        login = viewer.get("/login")
    assert report.status_code == 200 and "<style>" in report.text
    csp = directives(report.headers["content-security-policy"])
    assert csp["script-src"] == "'none'" and csp["style-src"] == "'unsafe-inline'"
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert directives(login.headers["content-security-policy"])["script-src"] == "'self'"


# A stand-in for Swagger UI's bundle (the CDN is not reachable from the tests): it starts the
# way Swagger UI does (the spec from this service, an inline <style>, styles via the DOM).
FAKE_SWAGGER = """
window.SwaggerUIBundle = function (options) {
  var root = document.querySelector(options.dom_id);
  var style = document.createElement("style");
  style.textContent = "#swagger-ui { font-weight: 700; }";
  document.head.appendChild(style);
  root.style.color = "rgb(1, 2, 3)";
  fetch(options.url).then(function (r) { return r.json(); }).then(function (spec) {
    root.textContent = spec.info.title;
    root.dataset.loaded = "yes";
  });
};
window.SwaggerUIBundle.presets = { apis: {} };
window.SwaggerUIBundle.SwaggerUIStandalonePreset = {};
"""


@pytest.mark.slow
def test_the_docs_page_and_the_html_report_render_under_their_csp(console: Console):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    def cdn(route: Any) -> None:
        if route.request.url.endswith(".js"):
            route.fulfill(body=FAKE_SWAGGER, content_type="application/javascript")
        else:
            route.fulfill(body="#swagger-ui { margin: 1px; }", content_type="text/css")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = browser.new_context(
                base_url=console.url,
                extra_http_headers={"Authorization": f"Bearer {console.tokens['viewer']}"},
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("https://cdn.jsdelivr.net/**", cdn)
            page.goto("/api/docs")
            page.wait_for_selector('#swagger-ui[data-loaded="yes"]', timeout=15_000)
            assert page.text_content("#swagger-ui") == "flagwarden admin API"
            weight = page.evaluate(
                "getComputedStyle(document.getElementById('swagger-ui')).fontWeight"
            )
            assert weight == "700"
            page.goto("/api/v1/report?format=html")
            assert page.evaluate("getComputedStyle(document.body).maxWidth") == "1000px"
            assert page.text_content("h1") == "flagwarden compliance report"
            assert errors == []
        finally:
            browser.close()


# -- shutdown -----------------------------------------------------------------------------------


def test_shutdown_ends_open_event_streams_cleanly(console: Console):
    browser = log_in(console, console.tokens["viewer"])
    opened: list[str] = []
    ended: list[str] = []

    def listen(client: httpx.Client, path: str) -> None:
        try:
            with client.stream("GET", path, timeout=30) as stream:
                for line in stream.iter_lines():
                    if line.startswith("retry:"):
                        opened.append(path)
            ended.append("clean")
        except Exception as exc:
            ended.append(repr(exc))

    clients = [console.as_("viewer"), console.as_("viewer"), browser]
    paths = ["/api/v1/events", "/api/v1/events", "/events"]
    threads = [
        threading.Thread(target=listen, args=(client, path), daemon=True)
        for client, path in zip(clients, paths, strict=True)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(opened) == 3, timeout=15)
    time.sleep(0.3)
    took = stop(console)
    for thread in threads:
        thread.join(10)
    for client in clients:
        client.close()
    assert took < 3, took
    assert ended == ["clean"] * 3
    output = console.output()
    for sign in ("Traceback", "Exception in ASGI application", "Cancel", "timeout graceful"):
        assert sign not in output, output[-3000:]


def test_forwarded_allow_ips_must_be_addresses(project: Project):
    config = governed_project(project, server={"forwarded_allow_ips": ["10.0.0.0/8", "::1"]})
    assert load_settings(config).config.server.forwarded_allow_ips == ["10.0.0.0/8", "::1"]
    config = governed_project(project, server={"forwarded_allow_ips": ["proxy.local"]})
    with pytest.raises(ConfigError, match=r"proxy\.local"):
        load_settings(config)
