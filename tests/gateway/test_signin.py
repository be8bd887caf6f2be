"""Sign-in end to end through a real gateway: the workspace-host handoff, sessions, logout, tokens.

The dev provider stands in for a Git provider here (it goes through the same
state/cookie-bound callback); tests/auth has the real-provider flows. Every
check is on what a browser or the upstream actually saw.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from signin_client import Browser, Visit, dev_sign_in
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway
from yarl import URL

pytestmark = pytest.mark.slow

ALICE_WS = "8080-abc"
PUBLIC_WS = "9090-abc"
PRIVATE_MALLORY = "8080-mallorys"


def config(upstream: int, extra: str = "") -> str:
    return f"""
[auth]
dev_login = true
{extra}

[[workspaces]]
id = "abc"
port = 8080
upstream = "127.0.0.1:{upstream}"
owner = "dev:alice"
ide = true

[[workspaces]]
id = "abc"
port = 9090
upstream = "127.0.0.1:{upstream}"
public = true

[[routes]]
host = "team.{DOMAIN}"
upstream = "http://127.0.0.1:{upstream}"
access = "authenticated"

[[workspaces]]
id = "mallorys"
port = 8080
upstream = "127.0.0.1:{upstream}"
owner = "dev:mallory"

[[workspaces]]
id = "bobs"
port = 8080
upstream = "127.0.0.1:{upstream}"
owner = "dev:bob"
"""


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream) -> Gateway:
    return gateway_factory(config(echo_upstream.port))


@pytest.fixture
def browser_factory(gw: Gateway) -> Iterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def make() -> Browser:
        b = Browser(str(gw.ca))
        made.append(b)
        return b

    yield make
    # Closed by each test's event loop; see close_all.
    made.clear()


def ws_url(gw: Gateway, label: str, path: str = "/") -> str:
    return gw.url(f"{label}.ws.{DOMAIN}", path)


def main_url(gw: Gateway, path: str = "/") -> str:
    return gw.url(DOMAIN, path)


def echoed(text: str) -> dict[str, object]:
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def header_values(data: dict[str, object], name: str) -> list[str]:
    return [v for k, v in data["headers"] if k.lower() == name.lower()]  # type: ignore[attr-defined]


def strip_request_id(body: str) -> str:
    return re.sub(r"request id [^<]+", "request id X", body)


def plant(b: Browser, gw: Gateway, session_id: str) -> None:
    b.jar.update_cookies({"__Host-wsgate-session": session_id}, response_url=URL(main_url(gw)))


async def signed_in(gw: Gateway, login: str, path: str = "/hello?x=1") -> tuple[Browser, str]:
    b = Browser(str(gw.ca))
    visit = await dev_sign_in(b, ws_url(gw, ALICE_WS, path), login)
    return b, visit.url


async def test_workspace_handoff_ends_on_the_page_with_no_ticket_in_the_url(gw: Gateway) -> None:
    async with Browser(str(gw.ca)) as b:
        visit = await dev_sign_in(b, ws_url(gw, ALICE_WS, "/hello?x=1"), "alice")
        urls = visit.urls()
        # Sent to the main domain, to sign in, back through a ticket, then to the original path.
        assert urls[1].startswith(main_url(gw, "/auth/host?next="))
        assert any(u.startswith(ws_url(gw, ALICE_WS, "/.wsgate/auth?ticket=")) for u in urls)
        assert visit.status == 200 and visit.url == ws_url(gw, ALICE_WS, "/hello?x=1")
        assert echoed(visit.text)["path"] == "/hello?x=1"
        swap = next(h for h in visit.hops if "/.wsgate/auth?" in h.url)
        assert swap.status == 303
        cookie = swap.headers["Set-Cookie"]
        assert cookie.startswith("__Host-wsgate-host=")
        for attr in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            assert attr in cookie
        assert "Domain" not in cookie
        # Next visits go straight through on the host cookie.
        again = await b.go(ws_url(gw, ALICE_WS, "/again"))
        assert len(again.hops) == 1 and again.status == 200


async def test_session_cookie_is_host_only_and_fresh_at_every_sign_in(gw: Gateway) -> None:
    async with Browser(str(gw.ca)) as b:
        planted = "attacker-chosen-session-id-0123456789abcdef"
        plant(b, gw, planted)
        visit = await dev_sign_in(b, main_url(gw, "/auth/login"), "alice")
        set_cookies = [h.headers.getall("Set-Cookie", []) for h in visit.hops]
        session_cookie = next(c for cs in set_cookies for c in cs if c.startswith("__Host-wsgate-session="))
        value = session_cookie.split(";")[0].split("=", 1)[1]
        assert value != planted and len(value) >= 22  # >= 128 bits, base64url
        for attr in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            assert attr in session_cookie
        assert "Domain" not in session_cookie
        # Signing in again issues another id and ends the first one.
        second = await dev_sign_in(b, main_url(gw, "/auth/login"), "alice")
        cookies2 = [c for h in second.hops for c in h.headers.getall("Set-Cookie", [])]
        value2 = next(c for c in cookies2 if c.startswith("__Host-wsgate-session=")).split(";")[0].split("=", 1)[1]
        assert value2 != value
    async with Browser(str(gw.ca)) as stale:
        plant(stale, gw, value)
        me = await stale.go(main_url(gw, "/api/v1/me"))
        assert me.status == 401


async def test_tampered_session_cookie_signs_nobody_in(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        value = b.cookie("__Host-wsgate-session")
        assert value
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 200
        tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
        plant(b, gw, tampered)
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 401


async def test_someone_elses_workspace_answers_like_one_that_does_not_exist(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "bob", "/")
    async with b:
        # bob's sign-in started on alice's host: after sign-in the main domain refuses the ticket.
        theirs = await b.go(ws_url(gw, ALICE_WS, "/secret"))
        nothing = await b.go(ws_url(gw, "8080-doesnotexist", "/secret"))
        assert theirs.status == nothing.status == 404
        assert strip_request_id(theirs.text) == strip_request_id(nothing.text)
        assert [h.status for h in theirs.hops[:-1]] == [h.status for h in nothing.hops[:-1]]
        # His own workspace works.
        own = await b.go(ws_url(gw, "8080-bobs", "/mine"))
        assert own.status == 200 and echoed(own.text)["path"] == "/mine"
        # A host cookie from his workspace does not open alice's.
        grant = next(c.value for c in b.jar if c.key == "__Host-wsgate-host")
        direct = await b.go(
            ws_url(gw, ALICE_WS, "/secret"), headers={"Cookie": f"__Host-wsgate-host={grant}"}, follow=False
        )
        assert direct.status == 302  # treated as anonymous: sent to sign in, not let through


async def test_anonymous_requests_to_existing_and_missing_hosts_look_the_same(gw: Gateway) -> None:
    async with Browser(str(gw.ca)) as b:
        real = await b.go(ws_url(gw, ALICE_WS, "/x"), follow=False)
        fake = await b.go(ws_url(gw, "8080-nope", "/x"), follow=False)
        assert real.status == fake.status == 302

        def shape(visit: Visit, label: str) -> tuple[str, str]:
            location = re.sub(r"bind=[0-9a-f]{64}", "bind=B", visit.last.headers["Location"].replace(label, "L"))
            cookie = re.sub(r"=[^;]+;", "=V;", visit.last.headers["Set-Cookie"], count=1)
            return location, cookie

        assert shape(real, ALICE_WS) == shape(fake, "8080-nope")
        post_real = await b.go(ws_url(gw, ALICE_WS, "/x"), "POST", data=b"x", follow=False)
        post_fake = await b.go(ws_url(gw, "8080-nope", "/x"), "POST", data=b"x", follow=False)
        assert post_real.status == post_fake.status == 401


async def test_public_port_needs_no_sign_in(gw: Gateway) -> None:
    async with Browser(str(gw.ca)) as b:
        visit = await b.go(ws_url(gw, PUBLIC_WS, "/open"), follow=False)
        assert visit.status == 200 and echoed(visit.text)["path"] == "/open"
        # /.wsgate/ belongs to the gateway on every host: a public port's app never sees it
        # (no ticket reaches a workspace's code), and nothing there is forwarded.
        for path in ("/.wsgate/auth?ticket=x.y", "/.wsgate/other"):
            reserved = await b.go(ws_url(gw, PUBLIC_WS, path), follow=False)
            assert reserved.status in (400, 404) and "path" not in reserved.text, path


async def mint_ticket(b: Browser, gw: Gateway, label: str, path: str) -> str:
    """What a browser gets when it asks for a ticket: the /.wsgate/auth URL (not followed)."""
    start = await b.go(ws_url(gw, label, path), follow=False)
    assert start.status == 302
    hop = await b.go(start.last.headers["Location"], follow=False)
    assert hop.status == 302 and "/.wsgate/auth?ticket=" in hop.last.headers["Location"], hop.urls()
    return str(hop.last.headers["Location"])


async def test_ticket_is_single_use_and_bound_to_its_host(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        b.jar.clear_domain(f"{ALICE_WS}.ws.{DOMAIN}")
        ticket_url = await mint_ticket(b, gw, ALICE_WS, "/p")
        ticket = parse_qs(urlsplit(ticket_url).query)["ticket"][0]
        # Shown to another host (even one alice owns), the ticket is refused.
        wrong = await b.go(ws_url(gw, "abc", "/.wsgate/auth?ticket=" + quote(ticket)), follow=False)
        assert wrong.status == 400
        first = await b.go(ticket_url, follow=False)
        assert first.status == 303 and first.last.headers["Location"] == "/p"
        again = await b.go(ticket_url, follow=False)
        assert again.status == 400 and "Set-Cookie" not in again.last.headers


async def test_a_ticket_cannot_be_pushed_into_another_browser(gw: Gateway) -> None:
    # Mallory mints a ticket with her session and sends the link to alice: redeeming it would
    # sign alice in as mallory on that host. The ticket is bound to the browser that asked.
    mallory, _ = await signed_in(gw, "mallory", "/")
    async with mallory, Browser(str(gw.ca)) as victim:
        ticket_url = await mint_ticket(mallory, gw, PRIVATE_MALLORY, "/")
        pushed = await victim.go(ticket_url, follow=False)
        assert pushed.status == 400 and "Set-Cookie" not in pushed.last.headers
        # Asking /auth/host directly (no binding from the host) only sends you back to the host.
        direct = await mallory.go(
            main_url(gw, "/auth/host?next=" + quote(ws_url(gw, PRIVATE_MALLORY, "/"), safe="")), follow=False
        )
        assert direct.status == 302 and direct.last.headers["Location"] == ws_url(gw, PRIVATE_MALLORY, "/")


async def test_logout_needs_csrf_token_and_ends_the_session_on_every_host(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        assert (await b.go(ws_url(gw, ALICE_WS, "/x"), follow=False)).status == 200
        # A cross-site form post carries the cookie but cannot know the token.
        forged = await b.go(main_url(gw, "/auth/logout"), "POST", data={"csrf": "guess"})
        assert forged.status == 403
        missing = await b.go(main_url(gw, "/auth/logout"), "POST", data={})
        assert missing.status == 403
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 200
        page = await b.go(main_url(gw, "/auth/logout"))
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token
        out = await b.go(main_url(gw, "/auth/logout"), "POST", data={"csrf": token.group(1)})
        assert out.status == 200 and "signed out" in out.text.lower()
        assert (await b.go(main_url(gw, "/api/v1/me"))).status == 401
        # The workspace host's cookie referred to the session: it is dead too.
        after = await b.go(ws_url(gw, ALICE_WS, "/x"), follow=False)
        assert after.status == 302 and "/auth/host?" in after.last.headers["Location"]


async def test_gateway_credentials_never_reach_the_upstream(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        grant = b.cookie("__Host-wsgate-host")
        assert grant
        cookie = f"app=1; __Host-wsgate-host={grant}; theme=dark%3B;  __Host-wsgate-session=x; z=\"q r\""
        visit = await b.go(
            ws_url(gw, ALICE_WS, "/echo"),
            headers={
                "Cookie": cookie,
                "X-Wsgate-User": "dev:admin",
                "X_Wsgate_User": "dev:admin",
                "x-wsgate-email": "admin@example.com",
                "X-Forwarded-User": "admin",
                "Remote-User": "admin",
            },
            follow=False,
        )
        assert visit.status == 200
        seen = echoed(visit.text)
        assert header_values(seen, "Cookie") == ['app=1; theme=dark%3B; z="q r"']
        for name in ("X-Wsgate-User", "X_Wsgate_User", "x-wsgate-email", "X-Forwarded-User", "Remote-User"):
            assert header_values(seen, name) == [], name
        flat = json.dumps(seen["headers"]).lower()
        assert "__host-wsgate" not in flat and "x-wsgate" not in flat and "x_wsgate" not in flat


async def test_upstream_cannot_set_or_clear_the_host_cookie(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        visit = await b.go(ws_url(gw, ALICE_WS, "/cookies"), follow=False)
        assert visit.status == 200
        cookies = visit.last.headers.getall("Set-Cookie", [])
        assert cookies == ["app=1; Path=/"]


async def test_cross_site_websocket_is_refused_and_same_origin_allowed(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        url = ws_url(gw, ALICE_WS, "/ws").replace("https://", "wss://")
        own_origin = ws_url(gw, ALICE_WS, "").rstrip("/")
        for origin in (ws_url(gw, "9090-abc", "").rstrip("/"), "https://evil.example", "null", None):
            headers = {"Origin": origin} if origin else {}
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await b.session.ws_connect(url, headers=headers, origin=None)
            assert e.value.status == 403, origin
        async with b.session.ws_connect(url, headers={"Origin": own_origin}) as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str()) == "hi"


async def test_tokens_work_over_websocket_without_origin_and_die_when_revoked(gw: Gateway) -> None:
    b, _ = await signed_in(gw, "alice")
    async with b:
        me = await b.go(main_url(gw, "/api/v1/me"))
        csrf = json.loads(me.text)["csrf_token"]
        body = json.dumps({"name": "ide", "scopes": ["workspace"], "expires_in": 3600})
        nocsrf = await b.go(
            main_url(gw, "/api/v1/tokens"), "POST", data=body, headers={"Content-Type": "application/json"}
        )
        assert nocsrf.status == 403
        made = await b.go(
            main_url(gw, "/api/v1/tokens"),
            "POST",
            data=body,
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
        )
        assert made.status == 201
        created = json.loads(made.text)
        token, tid = created["token"], created["id"]
        assert token.startswith("wsg_")
        listed = json.loads((await b.go(main_url(gw, "/api/v1/tokens"))).text)["tokens"]
        assert [t["id"] for t in listed] == [tid] and "token" not in listed[0]
    auth = {"Authorization": f"Bearer {token}"}
    async with Browser(str(gw.ca)) as ide:
        url = ws_url(gw, ALICE_WS, "/ws").replace("https://", "wss://")
        async with ide.session.ws_connect(url, headers={**auth, "Origin": "https://elsewhere.example"}) as ws:
            await ws.send_str("over token")
            assert (await ws.receive_str()) == "over token"
        plain = await ide.go(ws_url(gw, ALICE_WS, "/t"), headers=auth, follow=False)
        assert plain.status == 200 and "Set-Cookie" not in plain.last.headers
        assert header_values(echoed(plain.text), "Authorization") == []
        # Not bob's workspace, and not the API (scope "workspace" only).
        assert (await ide.go(ws_url(gw, "8080-bobs", "/t"), headers=auth, follow=False)).status == 404
        assert (await ide.go(main_url(gw, "/api/v1/me"), headers=auth)).status == 401
    async with Browser(str(gw.ca)) as owner:
        await dev_sign_in(owner, main_url(gw, "/auth/login"), "alice")
        csrf = json.loads((await owner.go(main_url(gw, "/api/v1/me"))).text)["csrf_token"]
        gone = await owner.go(main_url(gw, f"/api/v1/tokens/{tid}"), "DELETE", headers={"X-CSRF-Token": csrf})
        assert gone.status == 204
    async with Browser(str(gw.ca)) as ide:
        refused = await ide.go(ws_url(gw, ALICE_WS, "/t"), headers=auth, follow=False)
        assert refused.status == 401 and "invalid_token" in refused.last.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "nxt",
    ["https://evil.example/", "//evil.example", f"https://{DOMAIN}.evil.example/", "javascript:alert(1)", "/\\evil"],
)
async def test_next_outside_the_gateway_lands_on_the_home_page(gw: Gateway, nxt: str) -> None:
    async with Browser(str(gw.ca)) as b:
        visit = await dev_sign_in(b, main_url(gw, "/auth/login?next=" + quote(nxt, safe="")), "alice")
        assert visit.url == main_url(gw, "/") and visit.status == 200


async def test_callback_state_is_single_use_and_bound_to_the_browser(gw: Gateway) -> None:
    async with Browser(str(gw.ca)) as victim, Browser(str(gw.ca)) as attacker:
        # The attacker starts a sign-in and hands the victim the callback URL (login CSRF).
        start = await attacker.go(main_url(gw, "/auth/login/dev"), follow=False)
        state = parse_qs(urlsplit(start.last.headers["Location"]).query)["state"][0]
        callback = main_url(gw, f"/auth/callback/dev?code=mallory&state={quote(state)}")
        forced = await victim.go(callback)
        assert forced.status == 400 and victim.cookie("__Host-wsgate-session") is None
        # The state was consumed by that attempt: the attacker cannot use it either.
        replay = await attacker.go(callback)
        assert replay.status == 400
        # A made-up state finds nothing.
        bogus = await attacker.go(main_url(gw, "/auth/callback/dev?code=x&state=made-up"))
        assert bogus.status == 400 and "start again" in bogus.text.lower()


async def test_trailer_fields_are_never_read_as_headers(gw: Gateway) -> None:
    # A chunked body may end with trailer fields; they must not slip past the checks on the head.
    mallory, _ = await signed_in(gw, "mallory", "/")
    async with mallory:
        await mallory.go(gw.url(f"team.{DOMAIN}", "/"))
        grant = mallory.cookie("__Host-wsgate-host", f"team.{DOMAIN}") or next(
            c.value for c in mallory.jar if c.key == "__Host-wsgate-host" and "team" in c["domain"]
        )
    cases = ((f"{PUBLIC_WS}.ws.{DOMAIN}", ""), (f"team.{DOMAIN}", f"Cookie: __Host-wsgate-host={grant}\r\n"))
    for host, extra in cases:
        request = (
            f"POST /t HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n{extra}\r\n"
            "5\r\nhello\r\n0\r\n"
            f"Cookie: __Host-wsgate-host={grant}\r\nX-Wsgate-User: github:1\r\nX-Forwarded-User: admin\r\n\r\n"
        ).encode()
        raw = gw.raw(host, request)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        seen = json.loads(body.split(b"\r\n", 1)[1].rsplit(b"\r\n0", 1)[0] if b"chunked" in head.lower() else body)
        assert header_values(seen, "X-Forwarded-User") == []
        assert "github:1" not in header_values(seen, "X-Wsgate-User")
        assert "__Host-wsgate" not in json.dumps(seen["headers"])


async def test_cookie_smuggled_into_another_cookies_value_is_not_a_session(gw: Gateway) -> None:
    alice, _ = await signed_in(gw, "alice")
    mallory, _ = await signed_in(gw, "mallory", "/")
    async with alice, mallory:
        a = alice.cookie("__Host-wsgate-session")
        m = mallory.cookie("__Host-wsgate-session")
        assert a and m
        me = main_url(gw, "/api/v1/me")

        async def who(cookie: str) -> int | str:
            async with Browser(str(gw.ca)) as b:
                visit = await b.go(me, headers={"Cookie": cookie})
                return json.loads(visit.text)["login"] if visit.status == 200 else visit.status

        assert await who(f"__Host-wsgate-session={a}") == "alice"
        # A workspace can toss `foo=x __Host-wsgate-session=<mallory>` onto the parent domain:
        # lenient parsers split on the space and let the last one win.
        assert await who(f"__Host-wsgate-session={a}; foo=x __Host-wsgate-session={m}") == "alice"
        # Two session cookies: one was planted beside ours, so neither is trusted.
        assert await who(f"__Host-wsgate-session={a}; __Host-wsgate-session={m}") == 401
        assert await who(f'__Host-wsgate-session="{a}"') == 401


async def test_tokens_in_any_authorization_form_are_stripped_and_identity_headers_stay(gw: Gateway) -> None:
    import base64

    alice, _ = await signed_in(gw, "alice")
    async with alice:
        visit = await alice.go(gw.url(f"team.{DOMAIN}", "/echo"), headers={"Connection": "X-Wsgate-User, keep-alive"})
        seen = echoed(visit.text)
        # The client cannot make the gateway's identity header vanish by naming it in Connection.
        assert header_values(seen, "X-Wsgate-User") == ["dev:alice"]
    token = "wsg_" + "a" * 16 + "_" + "b" * 43
    basic = base64.b64encode(f"x:{token}".encode()).decode()
    async with Browser(str(gw.ca)) as b:
        for value in (f"Bearer\t{token}", f"token {token}", f"Basic {basic}", f"bearer  {token}"):
            visit = await b.go(ws_url(gw, PUBLIC_WS, "/echo"), headers={"Authorization": value}, follow=False)
            assert visit.status == 200 and header_values(echoed(visit.text), "Authorization") == [], value
        kept = await b.go(ws_url(gw, PUBLIC_WS, "/echo"), headers={"Authorization": "Bearer app-token"})
        assert header_values(echoed(kept.text), "Authorization") == ["Bearer app-token"]


async def test_cross_workspace_request_forgery_is_refused(gw: Gateway) -> None:
    # Every workspace host is same-site with every other, so SameSite=Lax does not stop a page on
    # mallory's port from posting into alice's workspace with alice's cookie. The gateway does.
    alice, _ = await signed_in(gw, "alice")
    async with alice:
        target = ws_url(gw, ALICE_WS, "/echo")
        evil = ws_url(gw, PRIVATE_MALLORY, "").rstrip("/")
        sibling = ws_url(gw, PUBLIC_WS, "").rstrip("/")  # another port of alice's workspace "abc"
        cases = [
            ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Origin": evil}, "POST", 403),
            ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Origin": evil}, "POST", 403),
            ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Origin": "https://evil.example"}, "POST",
             403),
            ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}, "GET", 403),  # <img>/<script> probing
            ({"Origin": evil}, "POST", 403),  # a browser without Sec-Fetch-*
            ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}, "GET", 200),  # a plain link
            ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Origin": sibling}, "POST", 200),
            ({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Origin": ws_url(gw, ALICE_WS, "")[:-1]},
             "POST", 200),
            ({}, "POST", 200),  # scripts and curl
        ]
        for headers, method, status in cases:
            visit = await alice.go(target, method, data=b"x" if method == "POST" else None, headers=headers,
                                   follow=False)
            assert visit.status == status, (headers, method, visit.status)
