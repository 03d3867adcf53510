"""The console when the audit store cannot be reached: the state, the flag pages and the red
button keep working; what needs the log says it is missing."""

from __future__ import annotations

import re

import httpx

from tests.server.conftest import FLAG, Console


def browser_session(console: Console, role: str) -> tuple[httpx.Client, str]:
    browser = httpx.Client(base_url=console.url, timeout=30)
    form = browser.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
    assert (
        browser.post("/login", data={"nonce": nonce, "token": console.tokens[role]}).status_code
        == 303
    )
    page = browser.get(f"/flags/{FLAG}/confirm/kill")
    assert page.status_code == 200, page.text
    return browser, re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_without_the_audit_store_the_dashboard_still_kills(console_for):
    # Nothing listens on port 9: the audit store cannot be opened, the state store can.
    console = console_for(audit="postgresql://postgres@127.0.0.1:9/test?connect_timeout=1")
    browser, csrf = browser_session(console, "operator")
    try:
        flags = browser.get("/flags")
        assert flags.status_code == 200 and f'data-flag="{FLAG}"' in flags.text
        page = browser.get(f"/flags/{FLAG}")
        assert page.status_code == 200
        assert "The audit log cannot be read now" in page.text and 'id="action-kill"' in page.text
        killed = browser.post(f"/flags/{FLAG}/kill", data={"reason": "incident", "csrf": csrf})
        assert killed.status_code == 303
        after = browser.get(f"/flags/{FLAG}")
        assert 'data-state="killed"' in after.text
    finally:
        browser.close()
    with console.as_("viewer") as viewer:
        assert viewer.get(f"/api/v1/flags/{FLAG}").json()["flags"][0]["killed"] is True
        assert viewer.get(f"/api/v1/flags/{FLAG}/audit").status_code == 503
