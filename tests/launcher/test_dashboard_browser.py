"""The dashboard at https://<domain>/: driven in headless Chromium, and its forms' CSRF and escaping over HTTP."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from urllib.parse import urljoin

import pytest
from browser import launch_chromium, require_chromium
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
[launcher]
stop_on_exit = true
stop_grace = 2
"""
# Every name of the gateway resolves to loopback; the port is in each URL.
RESOLVER = f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1, MAP *.{DOMAIN} 127.0.0.1"
COMMAND = "mkdir -p /workspace && echo dashboard-ok > /workspace/index.html && exec python3 -m http.server 8000"


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(CONFIG)


def test_alice_runs_a_workspace_from_the_dashboard(gw: Gateway) -> None:
    require_chromium()
    from playwright.sync_api import Page, expect

    def body_of(page: Page, url: str, want: str, timeout: float = 15.0) -> str:
        """Opens url until its body shows `want` (the server inside needs a moment to listen)."""
        deadline = time.monotonic() + timeout
        while True:
            page.goto(url)
            text = page.inner_text("body")
            if want in text or time.monotonic() > deadline:
                return text
            time.sleep(0.3)

    home = gw.url(DOMAIN, "/")
    with launch_chromium(extra_args=(RESOLVER,)) as chromium:
        alice = chromium.new_context(ignore_https_errors=True).new_page()
        alice.goto(home)
        alice.click("text=Sign in")
        alice.click("a.button")  # the only provider: the development sign-in
        alice.fill("input[name=login]", "alice")
        with alice.expect_navigation(url=home):
            alice.click("button[type=submit]")
        expect(alice.locator("body")).to_contain_text("Signed in as alice")
        expect(alice.locator("#no-workspaces")).to_be_visible()

        alice.fill("textarea[name=command]", COMMAND)
        alice.fill("input[name=ports]", "8000")
        with alice.expect_navigation():
            alice.click("#start button[type=submit]")
        workspaces = alice.locator("li.ws")
        expect(workspaces).to_have_count(1)
        wid = workspaces.get_attribute("id", timeout=5000)
        assert wid is not None and wid.startswith("ws-")
        wid = wid.removeprefix("ws-")
        card = alice.locator(f"#ws-{wid}")
        expect(alice.locator(".flash")).to_contain_text(f"Workspace {wid} started.")
        expect(card.locator(".state")).to_have_text("running")
        expect(card.locator(".command")).to_have_text(COMMAND)
        port = card.locator(f"#port-{wid}-8000")
        expect(port.locator(".visibility")).to_have_text("private")
        link = port.locator("a.port-link").get_attribute("href")
        assert link == gw.url(f"8000-{wid}.ws.{DOMAIN}", "/")

        # The private port, through the owner's sign-in handoff.
        alice.click(f"#port-{wid}-8000 a.port-link")
        assert "dashboard-ok" in body_of(alice, link, "dashboard-ok")
        assert alice.url == link

        # Nobody else gets in while it is private; once public, anyone does.
        stranger = chromium.new_context(ignore_https_errors=True).new_page()
        stranger.goto(link)
        assert "dashboard-ok" not in stranger.inner_text("body")
        alice.goto(home)
        with alice.expect_navigation():
            port.locator("button", has_text="Make public").click()
        expect(port.locator(".visibility")).to_have_text("public")
        expect(port.locator("button")).to_have_text("Make private")
        expect(alice.locator(".flash")).to_contain_text(f"Port 8000 of {wid} is now public")
        assert "dashboard-ok" in body_of(stranger, link, "dashboard-ok")

        with alice.expect_navigation():
            card.locator("button", has_text="Stop").click()
        expect(card.locator(".state")).to_have_text("stopped")
        expect(card.locator("button", has_text="Start")).to_be_visible()

        with alice.expect_navigation():
            card.locator("button", has_text="Delete").click()
        expect(alice.locator(".flash")).to_contain_text(f"Workspace {wid} deleted.")
        expect(card).to_have_count(0)
        expect(alice.locator("#no-workspaces")).to_be_visible()


def _csrf(html: str) -> str:
    found = re.search(r'<input type="hidden" name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def _workspaces(b: Browser, gw: Gateway) -> list[dict[str, object]]:
    visit = await b.go(gw.url(DOMAIN, "/api/v1/workspaces"))
    assert visit.status == 200, visit.text
    found = json.loads(visit.text)["workspaces"]
    assert isinstance(found, list)
    return found


async def test_forms_need_the_csrf_token_and_show_commands_escaped(gw: Gateway) -> None:
    home = gw.url(DOMAIN, "/")
    async with Browser(str(gw.ca)) as alice, Browser(str(gw.ca)) as bob, Browser(str(gw.ca)) as anonymous:
        plain = await anonymous.go(home)
        assert plain.status == 200 and 'href="/auth/login">Sign in</a>' in plain.text
        assert plain.last.headers["Cache-Control"] == "no-store"

        first = await dev_sign_in(alice, gw.url(DOMAIN, "/auth/login"), "alice")
        assert first.url == home and first.last.headers["Cache-Control"] == "no-store"
        csrf = _csrf(first.text)
        create = gw.url(DOMAIN, "/dashboard/workspaces")
        command = "echo '<script>alert(1)</script>' && exec sleep 600"
        for fields in ({}, {"csrf": ""}, {"csrf": "x" * len(csrf)}, {"csrf": csrf + "x"}):
            refused = await alice.go(create, "POST", data={**fields, "command": command, "ports": "8000"})
            assert refused.status == 403, fields
            assert refused.last.headers["Cache-Control"] == "no-store"
        assert await _workspaces(alice, gw) == []

        # A form that does not parse starts nothing, and says which field is wrong.
        bad = await alice.go(create, "POST", data={"csrf": csrf, "command": command, "ports": "80a"})
        assert bad.status == 400 and "ports: &#x27;80a&#x27; is not a port number" in bad.text
        assert await _workspaces(alice, gw) == []

        started = await alice.go(create, "POST", data={"csrf": csrf, "command": command, "ports": "8000, 9000"})
        assert started.hops[0].status == 303 and started.status == 200
        (w,) = await _workspaces(alice, gw)
        wid = str(w["id"])
        assert w["state"] == "running" and [p["number"] for p in w["ports"]] == [8000, 9000]  # type: ignore[attr-defined]
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in started.text
        assert "<script>" not in started.text

        # Actions on the workspace: refused without the right token, and nothing changes.
        actions = [f"/dashboard/workspaces/{wid}/{a}" for a in ("stop", "delete", "start")]
        actions.append(f"/dashboard/workspaces/{wid}/ports/8000")
        for path in actions:
            for fields in ({}, {"csrf": "nope"}):
                refused = await alice.go(gw.url(DOMAIN, path), "POST", data={**fields, "visibility": "public"})
                assert refused.status == 403, (path, fields)
        (after,) = await _workspaces(alice, gw)
        assert after["state"] == "running" and {p["visibility"] for p in after["ports"]} == {"private"}  # type: ignore[attr-defined]

        # Bob, with his own valid token, finds nothing there: 404 as for an id that does not exist.
        bobs = await dev_sign_in(bob, gw.url(DOMAIN, "/auth/login"), "bob")
        assert wid not in bobs.text and "You have no workspaces yet" in bobs.text
        bob_csrf = _csrf(bobs.text)
        for path in [*actions, "/dashboard/workspaces/wnosuchworkspace0/stop"]:
            denied = await bob.go(gw.url(DOMAIN, path), "POST", data={"csrf": bob_csrf, "visibility": "public"})
            assert denied.status == 404, path
        (after,) = await _workspaces(alice, gw)
        assert after["state"] == "running" and {p["visibility"] for p in after["ports"]} == {"private"}  # type: ignore[attr-defined]

        # A flash message comes from a fixed table: a crafted link puts no text on the page.
        crafted = await alice.go(urljoin(home, "/?done=started&ws=%3Cscript%3Ex"))
        assert crafted.status == 200 and "<script>" not in crafted.text
        assert 'class="flash"' not in crafted.text

        # Without a session an action goes to sign-in and does nothing.
        nobody = await anonymous.go(gw.url(DOMAIN, actions[0]), "POST", data={"csrf": csrf}, follow=False)
        assert nobody.status == 303 and nobody.last.headers["Location"].startswith("/auth/login")

        gone = await alice.go(gw.url(DOMAIN, f"/dashboard/workspaces/{wid}/delete"), "POST", data={"csrf": csrf})
        assert gone.hops[0].status == 303 and wid not in gone.text.replace(f"Workspace {wid} deleted.", "")
        assert await _workspaces(alice, gw) == []
