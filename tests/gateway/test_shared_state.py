"""Shared auth state through a real Redis: two workers, two gateways, and Redis going away.

Sign-in, sessions, host cookies, tickets and tokens must work whichever worker
or replica a connection lands on, because browsers open new connections all the
time. Each request here is made on a fresh connection (the test Browser closes
every connection after one request), so the kernel picks the worker each time.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis_server import RedisServer
from signin_client import Browser, Visit, dev_sign_in
from wsgate_testing import DOMAIN, REPO, AiohttpUpstream, Gateway
from yarl import URL

pytestmark = pytest.mark.slow

ALICE_WS = "8080-abc"
SESSION_COOKIE = "__Host-wsgate-session"
HOST_COOKIE = "__Host-wsgate-host"


def config(redis_url: str, upstream: int) -> str:
    return f"""
redis_url = "{redis_url}"

[auth]
dev_login = true

[[workspaces]]
id = "abc"
port = 8080
upstream = "127.0.0.1:{upstream}"
owner = "dev:alice"
"""


def ws_url(gw: Gateway, path: str = "/", label: str = ALICE_WS) -> str:
    return gw.url(f"{label}.ws.{DOMAIN}", path)


def main_url(gw: Gateway, path: str = "/") -> str:
    return gw.url(DOMAIN, path)


def echoed(visit: Visit) -> dict[str, object]:
    data = json.loads(visit.text)
    assert isinstance(data, dict), visit.text[:200]
    return data


def request_id(visit: Visit) -> str:
    """The X-Request-Id the upstream received: `<worker prefix>-<counter>`."""
    headers = echoed(visit)["headers"]
    assert isinstance(headers, list)
    return str(next(v for k, v in headers if k.lower() == "x-request-id"))


def on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def plant_session(b: Browser, gw: Gateway, sid: str) -> None:
    b.jar.update_cookies({SESSION_COOKIE: sid}, response_url=URL(main_url(gw)))


async def csrf_of(b: Browser, gw: Gateway) -> str:
    me = await b.go(main_url(gw, "/api/v1/me"))
    assert me.status == 200, me.text
    return str(json.loads(me.text)["csrf_token"])


async def start_handoff(b: Browser, gw: Gateway, path: str) -> tuple[str, dict[str, str]]:
    """The ticket URL a signed-in browser is sent to for the workspace host, and the cookie header that
    the host gave this browser when the handoff began (which binds the ticket to it)."""
    first = await b.go(ws_url(gw, path), follow=False)
    assert first.status == 302 and "/auth/host?" in first.last.headers["Location"], first.text[:300]
    binding = "; ".join(c.split(";", 1)[0] for c in first.last.headers.getall("Set-Cookie", []))
    hop = await b.go(first.last.headers["Location"], follow=False)
    assert hop.status == 302, hop.text[:300]
    location = str(hop.last.headers["Location"])
    assert location.startswith(ws_url(gw, "/.wsgate/auth?ticket=")), location
    return location, {"Cookie": binding} if binding else {}


def no_tracebacks(*gateways: Gateway) -> None:
    for gw in gateways:
        assert "Traceback" not in gw.logs(), gw.logs()[-3000:]


@pytest.fixture
def upstream(echo_upstream: AiohttpUpstream) -> AiohttpUpstream:
    return echo_upstream


@pytest.fixture
def gw2(gateway_factory: Callable[..., Gateway], redis_url: str, upstream: AiohttpUpstream) -> Gateway:
    """A gateway with two workers sharing state in Redis."""
    return gateway_factory(config(redis_url, upstream.port), workers=2)


async def test_every_request_succeeds_whichever_worker_answers(gw2: Gateway) -> None:
    async with Browser(str(gw2.ca)) as b:
        visit = await dev_sign_in(b, ws_url(gw2, "/start"), "alice")
        assert visit.status == 200 and echoed(visit)["path"] == "/start"
        seen: set[str] = set()
        for _ in range(5):  # a few batches, until both workers have answered
            batch = await asyncio.gather(
                *(b.go(ws_url(gw2, f"/r{i}"), follow=False) for i in range(10)),
                *(b.go(main_url(gw2, "/api/v1/me"), follow=False) for _ in range(10)),
            )
            for v in batch[:10]:
                assert v.status == 200, (v.status, v.text[:300])
                seen.add(request_id(v).rsplit("-", 1)[0])
            for v in batch[10:]:
                assert v.status == 200, (v.status, v.text[:300])
                assert json.loads(v.text)["identity"] == "dev:alice"
            if len(seen) >= 2:
                break
        # Each worker stamps request ids with its own prefix: two prefixes, two workers.
        assert len(seen) == 2, f"only one worker answered: {seen}"
    no_tracebacks(gw2)


def cache_count(gw: Gateway) -> int:
    """Requests whose session or token came from a worker's cache, as last reported."""
    found = re.search(r'^wsgate_auth_checks_total\{source="cache"\} (\d+)$', gw.metrics(), re.M)
    return int(found.group(1)) if found else 0


async def cache_hits(gw: Gateway, above: int = 0) -> int:
    """`cache_count` once more than `above` (workers report their counters every second), or as it
    stands after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        count = cache_count(gw)
        if count > above or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def test_sign_out_in_one_worker_is_seen_by_the_next_request_in_every_worker(gw2: Gateway) -> None:
    """Both workers have just answered for the host cookie (their caches hold the session); the
    sign-out goes to one worker; not one request after it gets through, on either worker."""
    async with Browser(str(gw2.ca)) as b:
        visit = await dev_sign_in(b, ws_url(gw2, "/start"), "alice")
        assert visit.status == 200
        for attempt in range(3):
            seen: set[str] = set()
            for _ in range(8):  # until both workers have answered (each request is a fresh connection)
                batch = await asyncio.gather(*(b.go(ws_url(gw2, f"/warm{i}"), follow=False) for i in range(10)))
                assert all(v.status == 200 for v in batch), [(v.status, v.text[:200]) for v in batch]
                seen |= {request_id(v).rsplit("-", 1)[0] for v in batch}
                if len(seen) == 2:
                    break
            assert len(seen) == 2, f"only one worker answered: {seen}"
            # The warm-up was answered from the workers' session caches (what is being tested).
            assert await cache_hits(gw2) > 0, gw2.metrics()
            out = await b.go(main_url(gw2, "/auth/logout"), "POST", data={"csrf": await csrf_of(b, gw2)})
            assert out.status == 200
            after = await asyncio.gather(*(b.go(ws_url(gw2, f"/after{i}"), follow=False) for i in range(20)))
            for v in after:
                assert v.status == 302 and "/auth/host?" in v.last.headers["Location"], (v.status, v.text[:200])
                assert "/after" not in v.text  # nothing of the upstream's answer
            if attempt < 2:  # again, with a fresh session
                visit = await dev_sign_in(b, ws_url(gw2, "/again"), "alice")
                assert visit.status == 200
    no_tracebacks(gw2)


async def test_a_revoked_token_is_refused_by_the_next_request_in_every_worker(gw2: Gateway) -> None:
    """Both workers have just answered for the token from their caches; it is revoked through the
    API on one worker (a second one with `wsgate tokens revoke`): nothing gets through after that."""
    async with Browser(str(gw2.ca)) as owner:
        await dev_sign_in(owner, main_url(gw2, "/auth/login"), "alice")
        for how in ("api", "cli"):
            made = await owner.go(
                main_url(gw2, "/api/v1/tokens"),
                "POST",
                data=json.dumps({"name": f"ide {how}", "scopes": ["workspace"], "expires_in": 3600}),
                headers={"Content-Type": "application/json", "X-CSRF-Token": await csrf_of(owner, gw2)},
            )
            assert made.status == 201, made.text
            created = json.loads(made.text)
            bearer = {"Authorization": f"Bearer {created['token']}"}
            hits_before = cache_count(gw2)
            async with Browser(str(gw2.ca)) as ide:
                seen: set[str] = set()
                for n in range(10):  # until both workers have answered (each request is a fresh connection),
                    batch = await asyncio.gather(  # then once more: the first answers came from the store
                        *(ide.go(ws_url(gw2, f"/tok{i}"), headers=bearer, follow=False) for i in range(10))
                    )
                    assert all(v.status == 200 for v in batch), [(v.status, v.text[:200]) for v in batch]
                    if len(seen) == 2 and n >= 1:
                        break
                    seen |= {request_id(v).rsplit("-", 1)[0] for v in batch}
                assert len(seen) == 2, f"only one worker answered: {seen}"
                assert await cache_hits(gw2, hits_before) > hits_before, gw2.metrics()  # answered from the token caches
                if how == "api":
                    gone = await owner.go(
                        main_url(gw2, f"/api/v1/tokens/{created['id']}"),
                        "DELETE",
                        headers={"X-CSRF-Token": await csrf_of(owner, gw2)},
                    )
                    assert gone.status == 204
                else:
                    out = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "gateway", "tokens", "revoke", created["id"], "--config",
                        str(gw2.config), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    )
                    _, err = await out.communicate()
                    assert out.returncode == 0, err.decode()
                after = await asyncio.gather(
                    *(ide.go(ws_url(gw2, f"/after{i}"), headers=bearer, follow=False) for i in range(20))
                )
                for v in after:
                    assert v.status == 401 and "invalid_token" in v.last.headers["WWW-Authenticate"], (how, v.status)
                    assert "/after" not in v.text
    no_tracebacks(gw2)


async def test_ticket_is_single_use_across_workers(gw2: Gateway) -> None:
    async with Browser(str(gw2.ca)) as b:
        await dev_sign_in(b, main_url(gw2, "/auth/login"), "alice")
        ticket_url, binding = await start_handoff(b, gw2, "/p")
        # Each attempt below carries the binding cookie of the browser that asked, so that only the
        # ticket's single use can refuse it; and each is a fresh connection, so any worker may answer.
        async with Browser(str(gw2.ca)) as first:
            used = await first.go(ticket_url, headers=binding, follow=False)
            assert used.status == 303 and used.last.headers["Location"] == "/p"
            assert any(c.startswith(HOST_COOKIE + "=") for c in used.last.headers.getall("Set-Cookie"))
            assert (await first.go(ws_url(gw2, "/p"), follow=False)).status == 200
        for _ in range(6):
            async with Browser(str(gw2.ca)) as replay:
                again = await replay.go(ticket_url, headers=binding, follow=False)
                assert again.status == 400 and "Set-Cookie" not in again.last.headers
                assert "already used" in again.text

        # Redeemed many times at once, a ticket still opens the host once.
        racing, binding = await start_handoff(b, gw2, "/race")
        browsers = [Browser(str(gw2.ca)) for _ in range(10)]
        try:
            results = await asyncio.gather(*(r.go(racing, headers=binding, follow=False) for r in browsers))
            assert sorted(v.status for v in results) == [303] + [400] * 9
            assert sum(
                any(c.startswith(HOST_COOKIE + "=") for c in v.last.headers.getall("Set-Cookie", [])) for v in results
            ) == 1
        finally:
            for r in browsers:
                await r.close()
    no_tracebacks(gw2)


async def test_two_gateways_share_sessions_tickets_and_tokens(
    gateway_factory: Callable[..., Gateway], redis_url: str, upstream: AiohttpUpstream, tmp_path: Path
) -> None:
    toml = config(redis_url, upstream.port)
    a = gateway_factory(toml, name="a")
    b = gateway_factory(toml, name="b", start=False)
    # Replicas share the ticket HMAC key and the keyring, as a deployment would.
    keys = b.dir / "state" / "keys"
    keys.mkdir(mode=0o700, parents=True)
    for name in ("tickets.key", "auth.keyring"):
        shutil.copy2(a.dir / "state" / "keys" / name, keys / name)
    b.start()
    bundle = tmp_path / "both-cas.pem"
    bundle.write_bytes(a.ca.read_bytes() + b.ca.read_bytes())
    ca = str(bundle)

    async with Browser(ca) as alice:
        landed = await dev_sign_in(alice, main_url(a, "/auth/login"), "alice")
        assert landed.status == 200 and landed.url == main_url(a, "/")
        sid = alice.cookie(SESSION_COOKIE)
        assert sid

        # The session cookie from A is a session on B: the API, and B's own handoff to the workspace.
        async with Browser(ca) as on_b:
            plant_session(on_b, b, sid)
            me = await on_b.go(main_url(b, "/api/v1/me"))
            assert me.status == 200 and json.loads(me.text)["identity"] == "dev:alice"
            page = await on_b.go(ws_url(b, "/via-b"))
            assert page.status == 200 and page.url == ws_url(b, "/via-b") and echoed(page)["path"] == "/via-b"

        # A ticket minted by A opens the workspace on B, once; A then refuses it.
        ticket_url, binding = await start_handoff(alice, a, "/handoff")
        async with Browser(ca) as other:
            swapped = await other.go(on_port(ticket_url, b.port), headers=binding, follow=False)
            assert swapped.status == 303 and swapped.last.headers["Location"] == "/handoff"
            assert (await other.go(ws_url(b, "/handoff"), follow=False)).status == 200
        async with Browser(ca) as other:
            replay = await other.go(ticket_url, headers=binding, follow=False)
            assert replay.status == 400

        # A token made on A works on B; revoked on A, B refuses it at once.
        made = await alice.go(
            main_url(a, "/api/v1/tokens"),
            "POST",
            data=json.dumps({"name": "ide", "scopes": ["api", "workspace"], "expires_in": 3600}),
            headers={"Content-Type": "application/json", "X-CSRF-Token": await csrf_of(alice, a)},
        )
        assert made.status == 201, made.text
        created = json.loads(made.text)
        bearer = {"Authorization": f"Bearer {created['token']}"}
        async with Browser(ca) as script:
            me = await script.go(main_url(b, "/api/v1/me"), headers=bearer)
            assert me.status == 200 and json.loads(me.text)["identity"] == "dev:alice"
            ws = await script.go(ws_url(b, "/tok"), headers=bearer, follow=False)
            assert ws.status == 200 and echoed(ws)["path"] == "/tok"
            listed = await script.go(main_url(b, "/api/v1/tokens"), headers=bearer)
            assert [t["id"] for t in json.loads(listed.text)["tokens"]] == [created["id"]]

            gone = await alice.go(
                main_url(a, f"/api/v1/tokens/{created['id']}"),
                "DELETE",
                headers={"X-CSRF-Token": await csrf_of(alice, a)},
            )
            assert gone.status == 204
            assert (await script.go(main_url(b, "/api/v1/me"), headers=bearer)).status == 401
            refused = await script.go(ws_url(b, "/tok"), headers=bearer, follow=False)
            assert refused.status == 401 and "invalid_token" in refused.last.headers["WWW-Authenticate"]

        # Signing out on A ends the session on B too, with the host cookie B gave out.
        async with Browser(ca) as on_b:
            plant_session(on_b, b, sid)
            assert (await on_b.go(ws_url(b, "/before"))).status == 200
            out = await alice.go(main_url(a, "/auth/logout"), "POST", data={"csrf": await csrf_of(alice, a)})
            assert out.status == 200
            assert (await on_b.go(main_url(b, "/api/v1/me"))).status == 401
            after = await on_b.go(ws_url(b, "/after"), follow=False)
            assert after.status == 302 and "/auth/host?" in after.last.headers["Location"]
    no_tracebacks(a, b)


async def test_redis_restart_gives_clean_503s_then_sign_in_works_again(
    gw2: Gateway, redis_server: RedisServer
) -> None:
    async with Browser(str(gw2.ca)) as b:
        assert (await dev_sign_in(b, ws_url(gw2, "/one"), "alice")).status == 200
        redis_server.stop()

        for i in range(6):  # fresh connections: each worker finds Redis gone
            start = time.monotonic()
            down = await b.go(ws_url(gw2, f"/down{i}"), follow=False)
            elapsed = time.monotonic() - start
            assert down.status == 503, (down.status, down.text[:300])
            assert "unavailable" in down.text.lower() and "traceback" not in down.text.lower()
            assert elapsed < 6, f"took {elapsed:.1f}s"
        # The main domain says the same, as JSON to API clients and as a page to browsers.
        api = await b.go(main_url(gw2, "/api/v1/me"))
        assert api.status == 503 and "unavailable" in json.loads(api.text)["error"]
        for path in ("/", "/auth/login"):
            page = await b.go(main_url(gw2, path))
            assert page.status == 503 and "unavailable" in page.text.lower(), (path, page.status, page.text[:300])

        redis_server.start()  # same port, empty: every session was lost with it
        lost = await b.go(ws_url(gw2, "/lost"), follow=False)
        assert lost.status == 302 and "/auth/host?" in lost.last.headers["Location"]
        async with Browser(str(gw2.ca)) as fresh:
            back = await dev_sign_in(fresh, ws_url(gw2, "/back"), "alice")
            assert back.status == 200 and echoed(back)["path"] == "/back"
            for v in await asyncio.gather(*(fresh.go(ws_url(gw2, f"/again{i}"), follow=False) for i in range(10))):
                assert v.status == 200
            assert (await fresh.go(main_url(gw2, "/api/v1/me"))).status == 200
    no_tracebacks(gw2)
