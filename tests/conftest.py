"""Shared fixtures: real gateway processes and real upstreams on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))

from wsgate_testing import AiohttpUpstream, Gateway

# The launcher builds its init once per source version; every gateway of the run shares it.
os.environ.setdefault("WSGATE_INIT_DIR", f"/tmp/wsgate-test-init-{os.getuid()}")


def require(condition: bool, what: str) -> None:
    """Skip locally when a component is missing; in CI a missing component fails the run."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"missing in CI: {what}")
    pytest.skip(f"missing: {what}")


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(toml: str = "", *, workers: int = 1, start: bool = True, name: str = "gw", **kw: object) -> Gateway:
        d = tmp_path / f"{name}{len(started)}"
        d.mkdir()
        gw = Gateway(d, toml, workers=workers, **kw)  # type: ignore[arg-type]
        started.append(gw)
        return gw.start() if start else gw

    yield make
    for gw in started:
        gw.stop()


def echo_app() -> object:
    """Upstream app: echo of what it received, streams, SSE and a WebSocket echo."""
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [[k, v] for k, v in request.raw_headers_decoded()] if hasattr(request, "raw_headers_decoded")
                else [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body_len": len(body),
                "body": body[:1000].decode("latin-1"),
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(int(request.query.get("n", "3"))):
            await resp.write(f"data: event {i}\n\n".encode())
            await asyncio.sleep(float(request.query.get("gap", "0.3")))
        return resp

    async def sized(request: web.Request) -> web.StreamResponse:
        total = int(request.query["bytes"])
        chunked = request.query.get("chunked") == "1"
        resp = web.StreamResponse()
        if not chunked:
            resp.content_length = total
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < total:
            n = min(len(block), total - sent)
            await resp.write(block[:n])
            sent += n
        await resp.write_eof()
        return resp

    async def count(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.Response(text="slow done")

    async def cookies(request: web.Request) -> web.Response:
        resp = web.Response(text="cookies")
        resp.headers.add("Set-Cookie", "app=1; Path=/")
        resp.headers.add("Set-Cookie", "__Host-wsgate-session=evil; Path=/; Secure")
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        resp = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"), autoping=False, max_msg_size=64 << 20)
        await resp.prepare(request)
        async for msg in resp:
            if msg.type == WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    code = int(msg.data.split(":")[1])
                    await resp.close(code=code, message=b"bye from upstream")
                    break
                await resp.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await resp.send_bytes(msg.data)
            elif msg.type == WSMsgType.PING:
                await resp.pong(msg.data)
        return resp

    async def refuse_ws(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websocket for you")

    app = web.Application(client_max_size=1 << 31)
    app.router.add_get("/ws", ws)
    app.router.add_get("/ws-refuse", refuse_ws)
    app.router.add_get("/sse", sse)
    app.router.add_get("/sized", sized)
    app.router.add_post("/count", count)
    app.router.add_get("/slow", slow)
    app.router.add_get("/cookies", cookies)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
def echo_upstream() -> Iterator[AiohttpUpstream]:
    up = AiohttpUpstream(echo_app)
    yield up
    up.close()


# --- a real Redis (tests/redis_server.py) ---------------------------------------------
import shutil  # noqa: E402

from redis_server import RedisServer  # noqa: E402


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty `redis-server` on a free loopback port; `stop()`/`start()` keep the port."""
    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """`redis://127.0.0.1:<port>/0` of a fresh, empty Redis."""
    return redis_server.url
