"""Admin routing rules through a real gateway: the API, path matching and its bypass corpus, live changes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from redis_server import RedisServer
from redis_server import available as redis_available
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
admins = ["dev:root"]
[launcher]
enabled = false
"""
APP = f"app.{DOMAIN}"
SVC = f"svc.{DOMAIN}"


class Admin:
    """An admin's API client with a bearer token (scopes api + admin)."""

    def __init__(self, gw: Gateway, b: Browser, token: str) -> None:
        self.gw, self.b, self.token = gw, b, token

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   **headers: str) -> tuple[int, dict[str, Any], str]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        visit = await self.b.go(
            self.gw.url(DOMAIN, path), method, data=data,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     **{k.replace("_", "-"): v for k, v in headers.items()}},
        )
        parsed = json.loads(visit.text) if visit.text.strip() else {}
        return visit.status, parsed, visit.last.headers.get("ETag", "")


async def admin(gw: Gateway) -> Admin:
    b = Browser(str(gw.ca))
    await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), "root")
    me = json.loads((await b.go(gw.url(DOMAIN, "/api/v1/me"))).text)
    made = await b.go(gw.url(DOMAIN, "/api/v1/tokens"), "POST",
                      data=json.dumps({"name": "admin", "scopes": ["api", "admin"]}),
                      headers={"Content-Type": "application/json", "X-CSRF-Token": me["csrf_token"]})
    assert made.status == 201, made.text
    return Admin(gw, b, json.loads(made.text)["token"])


async def user(gw: Gateway, login: str) -> Browser:
    b = Browser(str(gw.ca))
    await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), login)
    return b


def rule(upstream: AiohttpUpstream, host: str = APP, prefix: str = "/", access: str = "authenticated",
         **extra: Any) -> dict[str, Any]:
    return {"hosts": [host], "path_prefix": prefix, "upstream": f"http://127.0.0.1:{upstream.port}",
            "access": access, **extra}


def echoed(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def header(data: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in data["headers"] if k.lower() == name.lower()]


async def test_admins_add_a_rule_and_the_service_gets_a_verifiable_assertion(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream,
) -> None:
    gw = gateway_factory(CONFIG)
    root = await admin(gw)
    alice = await user(gw, "alice")
    try:
        status, data, tag = await root.call("PUT", "/api/v1/routes/app", rule(echo_upstream, prefix="/app"))
        assert status == 201 and tag == '"1"' and data["id"] == "app" and data["version"] == 1, data
        visit = await alice.go(gw.url(APP, "/app/x?q=1"), headers={"X-Wsgate-Assertion": "forged",
                                                                  "X-Wsgate-User": "dev:root"})
        assert visit.status == 200, visit.text
        got = echoed(visit.text)
        assert got["path"] == "/app/x?q=1"
        assert header(got, "X-Wsgate-User") == []  # plain identity headers are off unless asked for
        (token,) = header(got, "X-Wsgate-Assertion")
        jwks = json.loads((await alice.go(gw.url(DOMAIN, "/.well-known/jwks.json"))).text)
        kid = jwt.get_unverified_header(token)["kid"]
        key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=APP, issuer=gw.url(DOMAIN, "/"))
        assert claims["sub"] == "dev:alice" and claims["exp"] - claims["iat"] <= 600 and claims["jti"]
        with pytest.raises(jwt.InvalidAudienceError):
            jwt.decode(token, key, algorithms=["ES256"], audience=SVC)
        # /apple is not under /app; nothing else on this host: 404.
        assert (await alice.go(gw.url(APP, "/apple"))).status == 404
        # identity_headers: the plain headers too, and the forged ones never pass.
        status, _, _ = await root.call("PUT", "/api/v1/routes/app", rule(echo_upstream, prefix="/app",
                                                                         identity_headers=True), If_Match='"1"')
        assert status == 200
        got = echoed((await alice.go(gw.url(APP, "/app/y"), headers={"X-Wsgate-User": "dev:root"})).text)
        assert header(got, "X-Wsgate-User") == ["dev:alice"]
        # Anonymous: sent to sign in, never forwarded.
        async with Browser(str(gw.ca)) as anon:
            first = await anon.go(gw.url(APP, "/app/x"), follow=False)
            assert first.status == 302 and "/auth/host" in first.last.headers["Location"]
    finally:
        await root.b.close()
        await alice.close()


async def test_the_path_that_is_authorised_is_the_path_that_is_forwarded(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream,
) -> None:
    gw = gateway_factory(CONFIG)
    root = await admin(gw)
    try:
        assert (await root.call("PUT", "/api/v1/routes/svc-admin", rule(echo_upstream, SVC, "/", "admin")))[0] == 201
        assert (await root.call("PUT", "/api/v1/routes/svc-public",
                                rule(echo_upstream, SVC, "/public", "public")))[0] == 201
        cases: list[tuple[bytes, int, str | None]] = [
            # raw target, status for an anonymous client, path the upstream must see (None: never forwarded)
            (b"/public/x", 200, "/public/x"),
            (b"/public", 200, "/public"),
            (b"/public/", 200, "/public/"),
            (b"//public//x", 200, "/public/x"),
            (b"/./public/./x", 200, "/public/x"),
            (b"/public/../admin", 302, None),
            (b"/public/%2e%2e/admin", 302, None),
            (b"/public/%2E%2e/admin", 302, None),
            (b"/public/.%2e/admin", 302, None),
            (b"/public%2f..%2fadmin", 400, None),
            (b"/public/..%2Fadmin", 400, None),
            (b"/public/%5c../admin", 400, None),
            (b"/public\\..\\admin", 400, None),
            (b"/public/%252e%252e/admin", 400, None),
            (b"/public/%00", 400, None),
            (b"/public#/x", 400, None),
            (b"/admin?x=/public", 302, None),
            (b"/admin%23/public", 302, None),
            (b"/PUBLIC/x", 302, None),
            (b"/publicity", 302, None),
            (b"/public/%61", 200, "/public/a"),
            (b"/../public", 400, None),
        ]
        for target, status, seen in cases:
            s = gw.tls_socket(SVC)
            s.sendall(b"GET " + target + f" HTTP/1.1\r\nHost: {SVC}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            head, _, body = data.partition(b"\r\n\r\n")
            got_status = int(head.split(b" ", 2)[1])
            assert got_status == status, (target, head[:200], body[:300])
            if seen is not None:
                forwarded = json.loads(body.split(b"\r\n", 1)[1] if b"chunked" in head.lower() else body)["path"]
                assert forwarded == seen, target
            if status == 400:
                assert b"connection: close" in head.lower(), target
    finally:
        await root.b.close()


async def test_bad_rules_are_refused_with_the_field_and_nothing_is_written(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream,
) -> None:
    gw = gateway_factory(CONFIG)
    root = await admin(gw)
    alice = await user(gw, "alice")
    try:
        good = rule(echo_upstream)
        assert (await root.call("PUT", "/api/v1/routes/app", good))[0] == 201
        bad: list[tuple[dict[str, Any], str]] = [
            ({**good, "access": "everyone"}, "access"),
            ({**good, "hosts": ["evil.example.org"]}, "hosts[0]"),
            ({**good, "hosts": [DOMAIN]}, "hosts[0]"),
            ({**good, "hosts": [f"8080-abc.ws.{DOMAIN}"]}, "hosts[0]"),
            ({**good, "upstream": "ftp://127.0.0.1:21"}, "upstream"),
            ({**good, "upstream": f"https://{DOMAIN}:{gw.port}"}, "upstream"),
            ({**good, "upstream": f"http://127.0.0.1:{gw.port}"}, "upstream"),
            ({**good, "upstream": "workspace:wnosuchworkspace2:8080"}, "upstream"),
            ({**good, "colour": "red"}, "colour"),
            ({**good, "websocket": "yes"}, "websocket"),
            ({**good, "connect_timeout": True}, "connect_timeout"),
            ({**good, "request_headers": {"Host": "x"}}, "request_headers"),
        ]
        for body, field in bad:
            status, data, _ = await root.call("PUT", "/api/v1/routes/other", body)
            assert status == 400 and str(data["field"]).startswith(field), (body, data)
        # A rule that would tie with another is refused.
        status, data, _ = await root.call("PUT", "/api/v1/routes/twin", good)
        assert status == 400 and "conflicts with rule app" in str(data["error"]), data
        assert (await root.call("PUT", "/api/v1/routes/other", raw=b"{nope"))[0] == 400
        assert (await root.call("PUT", "/api/v1/routes/other", raw=b"[" * (10 << 20)))[0] == 413
        assert (await root.call("PUT", "/api/v1/routes/app", {**good, "access": "admin"}, If_Match='"9"'))[0] == 412
        # Nothing half-written: one rule, version 1, one audit entry; non-admins are refused.
        status, data, _ = await root.call("GET", "/api/v1/routes")
        assert [(r["id"], r["version"], r["access"]) for r in data["routes"]] == [("app", 1, "authenticated")]
        status, data, _ = await root.call("GET", "/api/v1/audit")
        assert status == 200 and [(e["action"], e["id"], e["actor"]) for e in data["entries"]] == [
            ("put", "app", "dev:root")]
        assert data["entries"][0]["before"] is None and data["entries"][0]["after"]["hosts"] == [APP]
        me = json.loads((await alice.go(gw.url(DOMAIN, "/api/v1/me"))).text)
        denied = await alice.go(gw.url(DOMAIN, "/api/v1/routes/x"), "PUT", data=json.dumps(good),
                                headers={"Content-Type": "application/json", "X-CSRF-Token": me["csrf_token"]})
        assert denied.status == 403
        assert (await alice.go(gw.url(DOMAIN, "/api/v1/audit"))).status == 403
    finally:
        await root.b.close()
        await alice.close()


async def test_changes_apply_at_once_and_close_only_the_websockets_they_no_longer_allow(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream,
) -> None:
    other = AiohttpUpstream(lambda: _named_app("second"))
    gw = gateway_factory(CONFIG)
    root = await admin(gw)
    try:
        ws_rule = rule(echo_upstream, prefix="/ws", access="public")
        assert (await root.call("PUT", "/api/v1/routes/ws", ws_rule))[0] == 201
        assert (await root.call("PUT", "/api/v1/routes/svc", rule(echo_upstream, SVC, "/ws", "public")))[0] == 201
        ctx = gw.ssl_context()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=ctx, resolver=_Loopback())) as http:
            kept = await http.ws_connect(gw.url(SVC, "/ws"))
            cut = await http.ws_connect(gw.url(APP, "/ws"))
            for ws in (kept, cut):
                await ws.send_str("hello")
                assert (await ws.receive(timeout=5)).data == "hello"
            # Another upstream for svc: new requests go there; the open WebSocket keeps its upstream.
            moved = rule(other, SVC, "/ws", "public")
            assert (await root.call("PUT", "/api/v1/routes/svc", moved))[0] == 200
            async with http.get(gw.url(SVC, "/ws/x")) as resp:
                assert (await resp.text()) == "second"
            # Deleting the rule closes its WebSocket at once.
            started = time.monotonic()
            assert (await root.call("DELETE", "/api/v1/routes/ws"))[0] == 204
            msg = await cut.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            print(f"WebSocket closed {1000 * (time.monotonic() - started):.0f} ms after the delete")
            await kept.send_str("still here")
            assert (await kept.receive(timeout=5)).data == "still here"
            # Narrowed to admins: the anonymous WebSocket is closed too.
            assert (await root.call("PUT", "/api/v1/routes/svc", {**moved, "access": "admin"}))[0] == 200
            msg = await kept.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            async with http.get(gw.url(APP, "/ws/x"), allow_redirects=False) as resp:
                assert resp.status == 404
    finally:
        await root.b.close()
        other.close()


async def test_workers_see_a_change_within_a_second(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, tmp_path: Path,
) -> None:
    if not redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server is not installed")
    redis = RedisServer(tmp_path / "redis").start()
    gw = gateway_factory(f'redis_url = "{redis.url}"\n' + CONFIG, workers=2)
    root = await admin(gw)
    try:
        assert (await root.call("PUT", "/api/v1/routes/app", rule(echo_upstream, access="public")))[0] == 201
        changed = time.monotonic()
        # New connections land on either worker; all of them see the rule within a second.
        seen_ok = 0
        while seen_ok < 20:
            status = gw.request(APP, "GET", "/x")[0]
            if status == 200:
                seen_ok += 1
            else:
                assert time.monotonic() - changed < 1.0, status
            await asyncio.sleep(0.01)
        assert (await root.call("DELETE", "/api/v1/routes/app"))[0] == 204
        changed = time.monotonic()
        while True:
            statuses = {gw.request(APP, "GET", "/x")[0] for _ in range(10)}
            if statuses == {404}:
                break
            assert time.monotonic() - changed < 1.0, statuses
            await asyncio.sleep(0.02)
    finally:
        await root.b.close()
        redis.stop()


def _named_app(name: str) -> Any:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


class _Loopback(aiohttp.abc.AbstractResolver):
    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass
