"""Sign-in through a real OIDC identity provider process, end to end through the gateway.

Driven twice: by an HTTP client that follows redirects (verifying TLS against
the local CA), and by headless Chromium, which also opens a WebSocket from the
workspace page after the ticket handoff.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import pytest
from browser import launch_chromium, require_chromium
from idp_process import IdP
from signin_client import Browser
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway, free_port

pytestmark = pytest.mark.slow

ALICE = {"login": "alice", "sub": "u-1001", "email": "alice@example.com", "email_verified": True, "groups": ["Devs"]}
MALLORY = {"login": "mallory", "sub": "u-666", "email": "m@example.com", "email_verified": False, "groups": []}

_PAGE = """<!doctype html><html><head><title>workspace app</title></head><body>
<h1 id="who">workspace page</h1><p id="ws">connecting</p>
<script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onopen = () => ws.send("hello from the page");
ws.onmessage = (e) => { document.getElementById("ws").textContent = "echo: " + e.data; };
ws.onerror = () => { document.getElementById("ws").textContent = "websocket failed"; };
</script></body></html>"""


def app() -> object:
    from aiohttp import WSMsgType, web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        resp = web.WebSocketResponse()
        await resp.prepare(request)
        async for msg in resp:
            if msg.type == WSMsgType.TEXT:
                await resp.send_str(msg.data)
        return resp

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.raw_path, "headers": dict(request.headers)})

    a = web.Application()
    a.router.add_get("/", page)
    a.router.add_get("/ws", ws)
    a.router.add_get("/echo", echo)
    return a


@pytest.fixture
def upstream() -> Iterator[AiohttpUpstream]:
    up = AiohttpUpstream(app)
    yield up
    up.close()


@pytest.fixture
def stack(
    gateway_factory: Callable[..., Gateway], idp_factory: Callable[..., IdP], upstream: AiohttpUpstream
) -> tuple[Gateway, IdP]:
    idp_port = free_port()
    gw = gateway_factory(
        f"""
[auth]
membership_ttl = 1
[[auth.providers]]
name = "corp"
type = "oidc"
display_name = "Corp SSO"
issuer = "http://127.0.0.1:{idp_port}"
client_id = "wsgate"
client_secret = "s3cret"

[[workspaces]]
id = "abc"
port = 3000
upstream = "127.0.0.1:{upstream.port}"
owner = "corp:u-1001"

[[routes]]
host = "devs.{DOMAIN}"
upstream = "http://127.0.0.1:{upstream.port}"
access = "team:corp:devs"
""",
        start=False,
    )
    redirect = f"https://{DOMAIN}:{gw.port}/auth/callback/corp"
    idp = idp_factory(
        [ALICE, MALLORY], [{"client_id": "wsgate", "client_secret": "s3cret", "redirect_uris": [redirect]}], idp_port
    )
    gw.start()
    return gw, idp


async def oidc_sign_in(b: Browser, start: str, login: str) -> list[str]:
    """Follows from `start` through the gateway and the IdP's form; returns every URL visited."""
    visit = await b.go(start)
    urls = visit.urls()
    link = re.search(r'href="(/auth/login/corp[^"]*)"', visit.text)
    assert link, visit.text[:400]
    visit = await b.go(urljoin(visit.url, link.group(1).replace("&amp;", "&")))
    urls += visit.urls()
    form = re.search(r'<form method="post" action="([^"]+)"', visit.text)
    assert form, visit.text[:400]
    visit = await b.go(urljoin(visit.url, form.group(1)), "POST", data={"login": login})
    urls += visit.urls()
    return urls


async def test_http_client_signs_in_and_reaches_its_workspace(stack: tuple[Gateway, IdP]) -> None:
    gw, idp = stack
    target = gw.url(f"3000-abc.ws.{DOMAIN}", "/echo?q=1")
    async with Browser(str(gw.ca)) as b:
        urls = await oidc_sign_in(b, target, "alice")
        assert urls[-1] == target
        assert any(u.startswith(idp.issuer) for u in urls)
        assert any("/.wsgate/auth?ticket=" in u for u in urls)
        final = await b.go(target, follow=False)
        seen = json.loads(final.text)
        assert final.status == 200 and seen["path"] == "/echo?q=1"
        assert "__Host-wsgate" not in seen["headers"].get("Cookie", "")
        me = json.loads((await b.go(gw.url(DOMAIN, "/api/v1/me"))).text)
        assert me["identity"] == "corp:u-1001" and me["email"] == "alice@example.com" and me["groups"] == ["devs"]
        # Group membership comes from the IdP and follows it (membership_ttl = 1 s).
        devs = gw.url(f"devs.{DOMAIN}", "/echo")
        # Already signed in: the handoff to this admin-routed host needs no second sign-in.
        handoff = await b.go(devs)
        assert handoff.url == devs and handoff.status == 200
        assert json.loads(handoff.text)["headers"]["X-Wsgate-User"] == "corp:u-1001"
        assert (await b.go(devs, follow=False)).status == 200
        idp.set_groups("alice", [])
        await asyncio.sleep(1.5)
        assert (await b.go(devs, follow=False)).status == 404


async def test_unverified_email_is_not_used_and_others_workspaces_are_404(stack: tuple[Gateway, IdP]) -> None:
    gw, _ = stack
    async with Browser(str(gw.ca)) as b:
        await oidc_sign_in(b, gw.url(DOMAIN, "/auth/login"), "mallory")
        me = json.loads((await b.go(gw.url(DOMAIN, "/api/v1/me"))).text)
        assert me["identity"] == "corp:u-666" and me["email"] == ""
        theirs = await b.go(gw.url(f"3000-abc.ws.{DOMAIN}", "/"))
        assert theirs.status == 404


async def test_replayed_callback_and_foreign_state_are_refused(stack: tuple[Gateway, IdP]) -> None:
    gw, idp = stack
    async with Browser(str(gw.ca)) as b:
        visit = await b.go(gw.url(DOMAIN, "/auth/login/corp"))
        form = re.search(r'<form method="post" action="([^"]+)"', visit.text)
        assert form
        # Stop at the callback to keep its URL, then use it twice.
        posted = await b.go(urljoin(visit.url, form.group(1)), "POST", data={"login": "alice"}, follow=False)
        url = urljoin(posted.url, posted.last.headers["Location"])
        while not url.startswith(gw.url(DOMAIN, "/auth/callback/")):
            hop = await b.go(url, follow=False)
            url = urljoin(url, hop.last.headers["Location"])
        async with Browser(str(gw.ca)) as other:
            stolen = await other.go(url)
            assert stolen.status == 400  # not this browser's sign-in
        again = await b.go(url)
        assert again.status == 400  # the state was spent by the first use
        assert b.cookie("__Host-wsgate-session") is None
    assert idp.issuer


def test_chromium_signs_in_opens_the_workspace_and_its_websocket(stack: tuple[Gateway, IdP]) -> None:
    require_chromium()
    gw, _ = stack
    target = gw.url(f"3000-abc.ws.{DOMAIN}", "/")
    with launch_chromium() as chromium:
        context = chromium.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.goto(target)
        page.get_by_role("link", name="Continue with Corp SSO").click()
        page.fill("input[name=login]", "alice")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(target, timeout=15_000)
        assert page.title() == "workspace app"
        page.wait_for_function("document.getElementById('ws').textContent.startsWith('echo')", timeout=10_000)
        assert page.text_content("#ws") == "echo: hello from the page"
        assert "ticket=" not in page.url
        cookies = {c["name"]: c for c in context.cookies()}
        host_cookie = cookies["__Host-wsgate-host"]
        assert host_cookie["domain"] == f"3000-abc.ws.{DOMAIN}" and host_cookie["httpOnly"] and host_cookie["secure"]
        assert cookies["__Host-wsgate-session"]["domain"] == DOMAIN
        # A page on another workspace host cannot open a WebSocket to this one with the cookie.
        other = context.new_page()
        other.goto(gw.url(f"3000-abc.ws.{DOMAIN}", "/echo"))
        result = other.evaluate(
            """(url) => new Promise((resolve) => {
                const ws = new WebSocket(url);
                ws.onopen = () => resolve("open");
                ws.onerror = () => resolve("refused");
            })""",
            gw.url(f"3000-abc.ws.{DOMAIN}", "/ws").replace("https://", "wss://"),
        )
        assert result == "open"  # same origin: allowed
        stranger = context.new_page()
        stranger.goto(gw.url(DOMAIN, "/"))
        result = stranger.evaluate(
            """(url) => new Promise((resolve) => {
                const ws = new WebSocket(url);
                ws.onopen = () => resolve("open");
                ws.onerror = () => resolve("refused");
            })""",
            gw.url(f"3000-abc.ws.{DOMAIN}", "/ws").replace("https://", "wss://"),
        )
        assert result == "refused"  # cross-site WebSocket hijacking: the Origin is not the host's
        context.close()


