"""Three gateway replicas behind one real Redis: they share sessions, tickets, tokens, rules and teams.

Each replica is its own `wsgate serve` process with its own state directory
and port, as three machines behind a load balancer would be. The session
cookie is host-only per origin (`https://<domain>:<port>`), so a test that
moves a session from one replica to another copies the cookie, as a load
balancer in front of the replicas would make happen naturally.

Replicas must share the ticket HMAC key and the keyring (`<state_dir>/keys/`):
they are copied from the first replica to the others before those start, as a
deployment would have to. Without that, a ticket minted by one replica fails
its MAC check on another.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis_server import RedisServer
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway
from yarl import URL

pytestmark = pytest.mark.slow

SESSION_COOKIE = "__Host-wsgate-session"
HOST_COOKIE = "__Host-wsgate-host"
APP = f"app.{DOMAIN}"
PRIVATE = f"private.{DOMAIN}"
SHARED_KEYS = ("tickets.key", "auth.keyring")
LIMIT = 1.0  # seconds for a change on one replica to reach the others
OUTAGE_LIMIT = 5.0  # seconds for an answer while Redis is down
OUTAGE = 2.0  # seconds Redis stays down: longer than the subscriber's longest backoff (1 s)


def config(redis_url: str) -> str:
    return f"""
redis_url = "{redis_url}"

[auth]
dev_login = true
admins = ["dev:root"]

[launcher]
enabled = false
"""


@dataclass
class Replicas:
    a: Gateway
    b: Gateway
    c: Gateway
    ca: str  # the three local CAs in one bundle
    redis: RedisServer
    upstream: AiohttpUpstream

    @property
    def all(self) -> tuple[Gateway, Gateway, Gateway]:
        return self.a, self.b, self.c

    def name(self, gw: Gateway) -> str:
        return "ABC"[self.all.index(gw)]


@pytest.fixture
def replicas(
    redis_server: RedisServer,  # first, so that Redis outlives the gateways at teardown
    gateway_factory: Callable[..., Gateway],
    echo_upstream: AiohttpUpstream,
    tmp_path: Path,
) -> Replicas:
    toml = config(redis_server.url)
    a = gateway_factory(toml, name="a")
    others = [gateway_factory(toml, name=n, start=False) for n in ("b", "c")]
    for gw in others:
        keys = gw.dir / "state" / "keys"
        keys.mkdir(mode=0o700, parents=True)
        for name in SHARED_KEYS:
            shutil.copy2(a.dir / "state" / "keys" / name, keys / name)
    with ThreadPoolExecutor(len(others)) as pool:  # each start waits for /readyz: wait for both at once
        list(pool.map(Gateway.start, others))
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(b"".join(gw.ca.read_bytes() for gw in (a, *others)))
    return Replicas(a, others[0], others[1], str(bundle), redis_server, echo_upstream)


# --- helpers ---------------------------------------------------------------------------
def main_url(gw: Gateway, path: str = "/") -> str:
    return gw.url(DOMAIN, path)


def on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def rule(upstream: AiohttpUpstream, host: str = APP, access: str = "public") -> dict[str, Any]:
    return {"hosts": [host], "path_prefix": "/", "upstream": f"http://127.0.0.1:{upstream.port}", "access": access}


def set_cookies(headers: Any) -> list[str]:
    return list(headers.getall("Set-Cookie", []))


class Admin:
    """An admin's API client: a bearer token (scopes api + admin) that every replica accepts."""

    def __init__(self, b: Browser, token: str) -> None:
        self.b, self.token = b, token

    async def call(self, gw: Gateway, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        visit = await self.b.go(
            main_url(gw, path), method, data=json.dumps(body) if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        return visit.status, json.loads(visit.text) if visit.text.strip() else {}


async def admin(gw: Gateway, ca: str) -> Admin:
    """Signs root in on `gw` and makes an admin token there."""
    b = Browser(ca)
    await dev_sign_in(b, main_url(gw, "/auth/login"), "root")
    me = await b.go(main_url(gw, "/api/v1/me"))
    assert me.status == 200, me.text
    made = await b.go(main_url(gw, "/api/v1/tokens"), "POST",
                      data=json.dumps({"name": "admin", "scopes": ["api", "admin"]}),
                      headers={"Content-Type": "application/json", "X-CSRF-Token": json.loads(me.text)["csrf_token"]})
    assert made.status == 201, made.text
    return Admin(b, json.loads(made.text)["token"])


async def me_with(gw: Gateway, ca: str, sid: str) -> tuple[int, dict[str, Any]]:
    """/api/v1/me on `gw` from a browser that holds only the session cookie `sid` (for `gw`'s origin)."""
    async with Browser(ca) as b:
        b.jar.update_cookies({SESSION_COOKIE: sid}, response_url=URL(main_url(gw)))
        visit = await b.go(main_url(gw, "/api/v1/me"), follow=False)
        return visit.status, json.loads(visit.text) if visit.text.strip().startswith("{") else {}


def wait_status(
    r: Replicas,
    gateways: Sequence[Gateway],
    host: str,
    want: int,
    since: float,
    *,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    give_up: float = LIMIT + 2.0,
) -> dict[str, float]:
    """Polls each gateway (a fresh connection each time) until it answers `want`: the delay of each since `since`.

    Keeps polling past LIMIT (up to `give_up`) so that a failure shows how late the change was, or that it never came.
    """
    delays: dict[str, float] = {}
    last: dict[str, int] = {}
    while len(delays) < len(gateways) and time.monotonic() - since < give_up:
        for gw in gateways:
            name = r.name(gw)
            if name in delays:
                continue
            status = gw.request(host, "GET", path, headers=dict(headers or {}), timeout=5)[0]
            last[name] = status
            if status == want:
                delays[name] = time.monotonic() - since
        time.sleep(0.005)
    assert len(delays) == len(gateways), f"never {want} within {give_up:.1f}s: {delays=} last={last}"
    return delays


def report(what: str, delays: Mapping[str, float]) -> None:
    shown = ", ".join(f"{name} {1000 * d:.0f} ms" for name, d in sorted(delays.items()))
    print(f"{what}: {shown}")
    assert all(d < LIMIT for d in delays.values()), f"{what}: slower than {LIMIT}s: {dict(delays)}"


def no_tracebacks(*gateways: Gateway) -> None:
    for gw in gateways:
        assert "Traceback" not in gw.logs(), gw.logs()[-3000:]


# --- the cases ----------------------------------------------------------------------------
async def test_a_session_made_on_one_replica_works_on_the_others(replicas: Replicas) -> None:
    r = replicas
    async with Browser(r.ca) as alice:
        landed = await dev_sign_in(alice, main_url(r.a, "/auth/login"), "alice")
        assert landed.status == 200 and landed.url == main_url(r.a, "/"), landed.urls()
        sid = alice.cookie(SESSION_COOKIE)
        assert sid
        status, on_a = await me_with(r.a, r.ca, sid)
        assert status == 200 and on_a["identity"] == "dev:alice", on_a
    for gw in (r.b, r.c):
        status, there = await me_with(gw, r.ca, sid)
        assert status == 200, (r.name(gw), status, there)
        # The same identity, and the same session (its CSRF token is the session's, not the replica's).
        assert there["identity"] == "dev:alice" and there["csrf_token"] == on_a["csrf_token"], there
    # Without the cookie, no replica knows anyone.
    for gw in r.all:
        assert (await me_with(gw, r.ca, "not-a-session"))[0] == 401
    no_tracebacks(*r.all)


async def test_admin_changes_on_one_replica_reach_the_others_within_a_second(replicas: Replicas) -> None:
    r = replicas
    root = await admin(r.a, r.ca)
    try:
        for gw in r.all:
            assert gw.request(APP, "GET", "/")[0] == 404
        # A rule made on A routes on B and C.
        start = time.monotonic()
        status, data = await root.call(r.a, "PUT", "/api/v1/routes/app", rule(r.upstream))
        put_took = time.monotonic() - start
        assert status == 201, data
        delays = wait_status(r, (r.b, r.c), APP, 200, start)
        print(f"rule PUT on A took {1000 * put_took:.0f} ms")
        report("rule PUT on A seen (200) on", delays)
        assert json.loads(r.c.request(APP, "GET", "/via-c")[2])["path"] == "/via-c"

        # Deleted on A: gone on B and C.
        start = time.monotonic()
        status, data = await root.call(r.a, "DELETE", "/api/v1/routes/app")
        assert status == 204, data
        report("rule DELETE on A seen (404) on", wait_status(r, (r.b, r.c), APP, 404, start))

        # A team made on A is known to C (its teams API answers from C's memory).
        bearer = {"Authorization": f"Bearer {root.token}"}
        assert r.c.request(DOMAIN, "GET", "/api/v1/teams/web", headers=bearer)[0] == 404
        start = time.monotonic()
        status, data = await root.call(r.a, "PUT", "/api/v1/teams/web", {"members": ["dev:alice"]})
        assert status == 201, data
        delays = wait_status(r, (r.c,), DOMAIN, 200, start, path="/api/v1/teams/web", headers=bearer)
        report("team PUT on A seen on", delays)
        team = json.loads(r.c.request(DOMAIN, "GET", "/api/v1/teams/web", headers=bearer)[2])
        assert team["members"] == ["dev:alice"] and team["source"] == "api", team
    finally:
        await root.b.close()
    no_tracebacks(*r.all)


async def test_a_ticket_minted_on_one_replica_is_used_once_whichever_replica_redeems_it(replicas: Replicas) -> None:
    r = replicas
    root = await admin(r.a, r.ca)
    try:
        start = time.monotonic()
        status, data = await root.call(r.a, "PUT", "/api/v1/routes/private", rule(r.upstream, PRIVATE, "authenticated"))
        assert status == 201, data
        # Routed everywhere: an anonymous visitor is sent to sign in, on every replica.
        wait_status(r, r.all, PRIVATE, 302, start)
    finally:
        await root.b.close()

    async with Browser(r.ca) as alice:
        await dev_sign_in(alice, main_url(r.a, "/auth/login"), "alice")
        # The handoff on A, hop by hop: the host sends the browser to the main domain with a binding
        # cookie, and the main domain mints a ticket for the host.
        first = await alice.go(r.a.url(PRIVATE, "/handoff?x=1"), follow=False)
        assert first.status == 302 and "/auth/host?" in first.last.headers["Location"], first.text[:300]
        binding = {"Cookie": "; ".join(c.split(";", 1)[0] for c in set_cookies(first.last.headers))}
        hop = await alice.go(first.last.headers["Location"], follow=False)
        assert hop.status == 302, hop.text[:300]
        ticket_url = str(hop.last.headers["Location"])
        assert ticket_url.startswith(r.a.url(PRIVATE, "/.wsgate/auth?ticket=")), ticket_url

    # Redeemed on B: it opens the host there, and the host cookie B gave out is good on C as well.
    async with Browser(r.ca) as on_b:
        used = await on_b.go(on_port(ticket_url, r.b.port), headers=binding, follow=False)
        assert used.status == 303 and used.last.headers["Location"] == "/handoff?x=1", (used.status, used.text)
        grants = [c for c in set_cookies(used.last.headers) if c.startswith(HOST_COOKIE + "=")]
        assert len(grants) == 1, set_cookies(used.last.headers)
        page = await on_b.go(r.b.url(PRIVATE, "/handoff?x=1"), follow=False)
        assert page.status == 200 and json.loads(page.text)["path"] == "/handoff?x=1", page.text[:300]
        grant = {"Cookie": grants[0].split(";", 1)[0]}
        assert r.c.request(PRIVATE, "GET", "/with-b-cookie", headers=grant)[0] == 200

    # The same URL on C, then on A where it was minted: refused, and no host cookie.
    for gw in (r.c, r.a):
        async with Browser(r.ca) as replay:
            again = await replay.go(on_port(ticket_url, gw.port), headers=binding, follow=False)
            assert again.status == 400, (r.name(gw), again.status, again.text[:300])
            assert "already used" in again.text
            assert not any(c.startswith(HOST_COOKIE + "=") for c in set_cookies(again.last.headers))
            assert replay.cookie(HOST_COOKIE) is None
    no_tracebacks(*r.all)


async def test_the_other_replicas_keep_serving_when_one_is_killed(replicas: Replicas) -> None:
    r = replicas
    root = await admin(r.a, r.ca)
    try:
        start = time.monotonic()
        assert (await root.call(r.a, "PUT", "/api/v1/routes/app", rule(r.upstream)))[0] == 201
        wait_status(r, r.all, APP, 200, start)
        async with Browser(r.ca) as alice:
            await dev_sign_in(alice, main_url(r.b, "/auth/login"), "alice")
            sid = alice.cookie(SESSION_COOKIE)
            assert sid

        assert r.b.proc is not None
        r.b.proc.kill()
        r.b.proc.wait(10)
        with pytest.raises(OSError):
            r.b.request(APP, "GET", "/", timeout=2)

        # The session B made and the rule A made still work on A and C.
        for gw in (r.a, r.c):
            status, me = await me_with(gw, r.ca, sid)
            assert status == 200 and me["identity"] == "dev:alice", (r.name(gw), status, me)
            status, _, body = gw.request(APP, "GET", "/after-kill")
            assert status == 200 and json.loads(body)["path"] == "/after-kill", (r.name(gw), status)
        # And changes still flow between the survivors.
        start = time.monotonic()
        assert (await root.call(r.a, "DELETE", "/api/v1/routes/app"))[0] == 204
        report("rule DELETE on A, with B dead, seen (404) on", wait_status(r, (r.c,), APP, 404, start))
    finally:
        await root.b.close()
    no_tracebacks(r.a, r.c)


async def test_a_redis_restart_gives_clean_503s_then_every_replica_recovers_without_a_restart(
    replicas: Replicas,
) -> None:
    r = replicas
    root = await admin(r.a, r.ca)
    try:
        start = time.monotonic()
        assert (await root.call(r.a, "PUT", "/api/v1/routes/app", rule(r.upstream)))[0] == 201
        report("rule PUT on A (before the outage) seen on", wait_status(r, (r.b, r.c), APP, 200, start))
        async with Browser(r.ca) as alice:
            await dev_sign_in(alice, main_url(r.a, "/auth/login"), "alice")
            sid = alice.cookie(SESSION_COOKIE)
            assert sid
        before = {gw.port: gw.logs().count("docstore_subscriber_reconnected") for gw in r.all}

        r.redis.stop()
        stopped = time.monotonic()
        slowest = 0.0
        for gw in r.all:
            name = r.name(gw)
            # What needs Redis says so, quickly: the session, an admin change, starting a sign-in.
            t = time.monotonic()
            status, body = await me_with(gw, r.ca, sid)
            took = time.monotonic() - t
            assert status == 503 and "unavailable" in body["error"], (name, status, body)
            slowest = max(slowest, took)
            t = time.monotonic()
            status, body = await root.call(gw, "PUT", "/api/v1/routes/other", rule(r.upstream, f"other.{DOMAIN}"))
            took = time.monotonic() - t
            assert status == 503 and "unavailable" in body["error"], (name, status, body)
            slowest = max(slowest, took)
            t = time.monotonic()
            status, _, page = gw.request(DOMAIN, "GET", "/auth/login/dev")
            took = time.monotonic() - t
            assert status == 503 and b"unavailable" in page.lower() and b"traceback" not in page.lower(), (name, status)
            slowest = max(slowest, took)
            # What does not need Redis goes on: the public rule is served from memory.
            t = time.monotonic()
            status, _, page = gw.request(APP, "GET", "/during-outage")
            took = time.monotonic() - t
            assert status == 200 and json.loads(page)["path"] == "/during-outage", (name, status)
            slowest = max(slowest, took)
        print(f"slowest answer while Redis was down: {1000 * slowest:.0f} ms")
        assert slowest < OUTAGE_LIMIT
        # Every subscriber noticed, and stays down long enough to back off to its longest wait.
        while any("docstore_subscriber_lost" not in gw.logs() for gw in r.all):
            assert time.monotonic() - stopped < 5.0, [gw.logs()[-2000:] for gw in r.all]
            time.sleep(0.02)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))

        r.redis.start()  # the same port, and empty: sessions, tokens, rules and teams are gone
        t = time.monotonic()
        # Every replica's subscriber reconnects on its own (no replica is restarted).
        while any(gw.logs().count("docstore_subscriber_reconnected") <= before[gw.port] for gw in r.all):
            assert time.monotonic() - t < 5.0, [gw.logs()[-2000:] for gw in r.all]
            time.sleep(0.02)
        print(f"every subscriber reconnected {1000 * (time.monotonic() - t):.0f} ms after Redis came back")
        for gw in r.all:
            assert (await me_with(gw, r.ca, sid))[0] == 401  # the session was lost with Redis
    finally:
        await root.b.close()

    # Signing in works again, on every replica, and so do admin tokens.
    for gw in r.all:
        async with Browser(r.ca) as again:
            landed = await dev_sign_in(again, main_url(gw, "/auth/login"), "alice")
            assert landed.status == 200 and landed.url == main_url(gw, "/"), (r.name(gw), landed.urls())
    root = await admin(r.b, r.ca)
    try:
        # The empty Redis holds no rules any more, and every replica agrees.
        wait_status(r, r.all, APP, 404, time.monotonic())
        # A change on B reaches A and C within a second again.
        start = time.monotonic()
        assert (await root.call(r.b, "PUT", "/api/v1/routes/app", rule(r.upstream)))[0] == 201
        report("rule PUT on B (after the restart) seen on", wait_status(r, (r.a, r.c), APP, 200, start))
        start = time.monotonic()
        assert (await root.call(r.b, "PUT", "/api/v1/teams/ops", {"members": ["dev:alice"]}))[0] == 201
        bearer = {"Authorization": f"Bearer {root.token}"}
        report("team PUT on B (after the restart) seen on",
               wait_status(r, (r.a, r.c), DOMAIN, 200, start, path="/api/v1/teams/ops", headers=bearer))
    finally:
        await root.b.close()
    no_tracebacks(*r.all)
