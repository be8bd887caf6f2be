"""End to end through real TLS: routing by Host, streaming, SSE, errors, WebSockets."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsgate_testing import DOMAIN, AiohttpUpstream, Gateway, refused_port, ws_host

pytestmark = pytest.mark.slow


def ws_toml(upstream_port: int, port: int = 8080, workspace: str = "abc", ide: bool = True) -> str:
    return f"""
[[workspaces]]
id = "{workspace}"
port = {port}
upstream = "127.0.0.1:{upstream_port}"
ide = {"true" if ide else "false"}
public = true
"""


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream) -> Iterator[Gateway]:
    with refused_port() as dead:
        yield gateway_factory(
            ws_toml(echo_upstream.port)
            + ws_toml(dead, port=9999, ide=False)
            + f"""
[[routes]]
host = "app.wsgate.localhost"
upstream = "http://127.0.0.1:{echo_upstream.port}/base"
access = "public"
"""
        )


def test_workspace_port_and_ide_host_reach_the_upstream(gw: Gateway) -> None:
    for host in (ws_host(8080), f"abc.ws.{DOMAIN}", f"8080-ABC.WS.{DOMAIN.upper()}", f"{ws_host(8080)}."):
        status, _, body = gw.request(ws_host(8080), "GET", "/some/path?q=1", headers={"Host": host})
        assert status == 200, host
        echoed = json.loads(body)
        assert echoed["path"] == "/some/path?q=1"
        sent_host = dict((k.lower(), v) for k, v in echoed["headers"])["host"]
        assert sent_host.lower().startswith(host.lower().rstrip("."))


def test_host_with_explicit_port_is_matched(gw: Gateway) -> None:
    status, _, _ = gw.request(ws_host(8080), "GET", "/", headers={"Host": f"{ws_host(8080)}:{gw.port}"})
    assert status == 200


def test_unknown_hosts_never_get_another_tenants_content(gw: Gateway) -> None:
    # A workspace that does not exist, a port that is not declared, a foreign host, a nested label.
    for host, expected in (
        (ws_host(8080, "nope"), 404),
        (ws_host(7000), 404),
        ("evil.example.org", 421),
        (f"x.8080-abc.ws.{DOMAIN}", 404),
        (f"{DOMAIN}.evil.com", 421),
    ):
        status, _, body = gw.request(ws_host(8080), "GET", "/", headers={"Host": host})
        assert status == expected, host
        assert b"path" not in body


def test_overlong_and_padded_hosts_get_400(gw: Gateway) -> None:
    # A valid workspace host padded past the longest possible name, or a made-up 2 KB name:
    # a 400, nothing forwarded, and the gateway still answers the real host afterwards.
    for host in (ws_host(8080) + ":443" + "0" * 300, "a" * 2000 + "." + DOMAIN):
        status, _, body = gw.request(ws_host(8080), "GET", "/", headers={"Host": host})
        assert status == 400, host[:40]
        assert b"path" not in body
    assert gw.request(ws_host(8080), "GET", "/")[0] == 200


def test_admin_style_route_forwards_with_base_path_and_upstream_host(
    gw: Gateway, echo_upstream: AiohttpUpstream
) -> None:
    status, _, body = gw.request("app.wsgate.localhost", "GET", "/x?y=1", headers={"Host": "app.wsgate.localhost"})
    assert status == 200
    echoed = json.loads(body)
    assert echoed["path"] == "/base/x?y=1"
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert headers["host"] == f"127.0.0.1:{echo_upstream.port}"
    assert headers["x-forwarded-host"] == "app.wsgate.localhost"


def test_main_domain_health_endpoints(gw: Gateway) -> None:
    status, _headers, body = gw.request(DOMAIN, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = gw.request(DOMAIN, "GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"


def test_refused_port_gives_502_page_that_names_the_port(gw: Gateway) -> None:
    status, headers, body = gw.request(ws_host(9999), "GET", "/")
    assert status == 502
    assert headers["Content-Type"].startswith("text/html")
    assert b"Nothing is listening on port 9999" in body
    assert b"127.0.0.1" not in body and b"Traceback" not in body
    status, headers, body = gw.request(ws_host(9999), "GET", "/", headers={"Accept": "application/json"})
    assert status == 502 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == 502 and "9999" in doc["message"] and doc["request_id"]


def test_upload_streams_without_buffering(gw: Gateway) -> None:
    """A 256 MiB chunked upload passes while the gateway's memory stays flat."""
    proc = psutil.Process(gw.proc.pid)  # type: ignore[union-attr]
    before = proc.memory_info().rss
    peak = before
    total = 256 << 20
    conn = gw.connection(ws_host(8080), timeout=60)
    block = os.urandom(1 << 20)

    def body():  # type: ignore[no-untyped-def]
        nonlocal peak
        for _ in range(total // len(block)):
            yield block
            peak = max(peak, proc.memory_info().rss)

    conn.request("POST", "/count", body=body(), encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["received"] == total
    conn.close()
    assert peak - before < 50 << 20, f"RSS grew by {(peak - before) >> 20} MiB"


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_download_streams_without_buffering(gw: Gateway, chunked: str) -> None:
    proc = psutil.Process(gw.proc.pid)  # type: ignore[union-attr]
    before = proc.memory_info().rss
    peak = before
    total = 256 << 20
    conn = gw.connection(ws_host(8080), timeout=60)
    conn.request("GET", f"/sized?bytes={total}&chunked={chunked}")
    resp = conn.getresponse()
    assert resp.status == 200
    got = 0
    while chunk := resp.read(1 << 20):
        got += len(chunk)
        # A slow reader: the gateway must hold back rather than buffer the rest.
        if got < 8 << 20:
            time.sleep(0.01)
        peak = max(peak, proc.memory_info().rss)
    conn.close()
    assert got == total
    assert peak - before < 50 << 20, f"RSS grew by {(peak - before) >> 20} MiB"


def test_server_sent_events_arrive_as_written(gw: Gateway) -> None:
    with gw.tls_socket(ws_host(8080)) as s:
        s.sendall(f"GET /sse?n=3&gap=0.4 HTTP/1.1\r\nHost: {ws_host(8080)}\r\n\r\n".encode())
        start = time.monotonic()
        seen: list[tuple[float, bytes]] = []
        buf = b""
        while len(seen) < 3:
            data = s.recv(4096)
            assert data, "connection closed early"
            buf += data
            while b"data: event" in buf:
                i = buf.index(b"data: event")
                j = buf.index(b"\n\n", i)
                seen.append((time.monotonic() - start, buf[i:j]))
                buf = buf[j + 2 :]
    assert [e for _, e in seen] == [b"data: event 0", b"data: event 1", b"data: event 2"]
    # Each event arrives when written, not all at the end.
    assert seen[0][0] < 0.3
    assert seen[1][0] - seen[0][0] > 0.25


def test_keep_alive_reuses_one_client_connection(gw: Gateway) -> None:
    conn = gw.connection(ws_host(8080))
    for i in range(20):
        conn.request("GET", f"/n{i}")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["path"] == f"/n{i}"
    conn.close()


def test_request_id_and_access_log(gw: Gateway) -> None:
    _status, _, body = gw.request(ws_host(8080), "GET", "/logged")
    rid = {k.lower(): v for k, v in json.loads(body)["headers"]}["x-request-id"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [e for e in gw.log_events() if e.get("event") == "access" and e.get("request_id") == rid]
        if lines:
            break
        time.sleep(0.1)
    assert lines, "no access log line for the request"
    line = lines[0]
    assert line["status"] == 200 and line["path"] == "/logged" and line["client"] == "127.0.0.1"
    assert line["host"].startswith(ws_host(8080)) and line["bytes_out"] > 0 and line["duration_ms"] >= 0


def test_metrics_listener_counts_requests(gw: Gateway) -> None:
    gw.request(ws_host(8080), "GET", "/")
    gw.request(ws_host(9999), "GET", "/")
    text = gw.metrics()
    assert 'wsgate_requests_total{kind="workspace",status="200"}' in text
    assert 'wsgate_requests_total{kind="workspace",status="502"}' in text
    assert 'wsgate_upstream_errors_total{reason="connect_refused"}' in text
    assert "wsgate_request_duration_seconds_bucket" in text
    assert 'wsgate_tls_handshakes_total{session="full"}' in text
    # Loopback only by default.
    with pytest.raises(OSError):
        addrs = [a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET]
        other = next(a for a in addrs if not a.startswith("127."))
        socket.create_connection((other, gw.metrics_port), timeout=1).close()


def _gc_freed(metrics_text: str) -> int:
    return sum(int(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("python_gc_objects_collected_total{"))


def test_a_closed_connection_leaves_no_garbage_for_the_cycle_collector(gw: Gateway) -> None:
    """Each new TLS connection used to leave about 30 objects in reference cycles (its parser held
    it), freed only by the cyclic collector, whose runs cost tens of microseconds a connection."""
    assert gw.request(ws_host(8080), "GET", "/")[0] == 200
    text = gw.metrics()
    assert 'python_gc_collections_total{generation="0"}' in text
    before = _gc_freed(text)
    n = 300
    for _ in range(n):
        assert gw.request(ws_host(8080), "GET", "/")[0] == 200
    for _ in range(20):
        assert b" 400 " in gw.raw(ws_host(8080), b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                              b"Transfer-Encoding: chunked\r\n\r\n")
    freed = _gc_freed(gw.metrics()) - before
    assert freed < n, f"the cyclic collector freed {freed} objects over {n} connections"


async def test_a_closed_websocket_leaves_no_garbage_for_the_cycle_collector(gw: Gateway) -> None:
    """The same for a WebSocket: its client and upstream connections are freed when it closes."""
    before = _gc_freed(gw.metrics())
    n = 100
    for i in range(n):
        async with _ws_connect(gw, ws_host(8080)) as ws:
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
    freed = _gc_freed(gw.metrics()) - before
    assert freed < n, f"the cyclic collector freed {freed} objects over {n} WebSockets"


# --- WebSocket ---------------------------------------------------------------------


def _ws_connect(gw: Gateway, host: str, path: str = "/ws", **kw: object):  # type: ignore[no-untyped-def]
    ctx = ssl.create_default_context(cafile=str(gw.ca))
    sock = socket.create_connection(("127.0.0.1", gw.port))
    return websockets.connect(f"wss://{host}{path}", ssl=ctx, sock=sock, server_hostname=host, **kw)


async def test_websocket_relays_frames_subprotocols_and_close_codes(gw: Gateway) -> None:
    host = ws_host(8080)
    async with _ws_connect(gw, host, subprotocols=["chat.v1"], compression="deflate", max_size=None) as ws:
        assert ws.subprotocol == "chat.v1"
        # permessage-deflate negotiated end to end (the gateway does not touch frames).
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        await ws.send("hello")
        assert await ws.recv() == "hello"
        payload = os.urandom(3 << 20)
        await ws.send(payload)
        assert await ws.recv() == payload
        pong = await ws.ping(b"p1")
        await asyncio.wait_for(pong, 5)
        await ws.send("close:4321")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4321 and info.value.rcvd.reason == "bye from upstream"


async def test_many_connections_at_once_each_get_exactly_their_own_bytes(gw: Gateway) -> None:
    """Every connection decrypts into one shared buffer: bytes one connection still holds (a frame
    waiting for the flush, a paused upstream) must never be overwritten by another's next read.
    Messages larger than the buffer (256 KiB) take several reads each."""
    rng = random.Random(7)
    sizes = [rng.choice((1, 200, 70_000, 300_000, 600_000)) for _ in range(12)]

    async def one(i: int) -> None:
        async with _ws_connect(gw, ws_host(8080), max_size=None) as ws:
            for size in sizes:
                payload = i.to_bytes(2, "big") + os.urandom(size)
                await ws.send(payload)
                assert await ws.recv() == payload

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 60)


async def test_websocket_upgrade_refused_by_upstream_passes_its_answer(gw: Gateway) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with _ws_connect(gw, ws_host(8080), "/ws-refuse"):
            pass
    assert info.value.response.status_code == 403
    assert b"no websocket for you" in info.value.response.body


def test_websocket_refusal_leaves_no_tunnel(gw: Gateway) -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    req = (
        f"GET /ws-refuse HTTP/1.1\r\nHost: {ws_host(8080)}\r\nConnection: keep-alive, Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()
    with gw.tls_socket(ws_host(8080), timeout=5) as s:
        s.sendall(req)
        data = b""
        start = time.monotonic()
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 403")
    assert time.monotonic() - start < 3, "the connection stayed open after a refused upgrade"


async def test_websocket_keepalive_upgrade_connection_header_is_recognised(gw: Gateway) -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    req = (
        f"GET /ws HTTP/1.1\r\nHost: {ws_host(8080)}\r\nConnection: keep-alive, Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Protocol: chat.v2\r\n\r\n"
    ).encode()
    with gw.tls_socket(ws_host(8080), timeout=5) as s:
        s.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert b"Sec-WebSocket-Protocol: chat.v2" in head


async def test_websocket_back_pressure_bounds_gateway_memory(gw: Gateway) -> None:
    """A client that stops reading must not make the gateway buffer the upstream's output."""
    proc = psutil.Process(gw.proc.pid)  # type: ignore[union-attr]
    async with _ws_connect(gw, ws_host(8080), max_size=None, max_queue=1) as ws:
        # Let the transport stop reading by not calling recv while the upstream echoes 200 MiB.
        before = proc.memory_info().rss
        block = os.urandom(1 << 20)
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for _ in range(200):
                await ws.send(block)
                sent += 1

        task = asyncio.create_task(sender())
        await asyncio.sleep(4)
        grown = proc.memory_info().rss - before
        # The writer must be stuck: the echo path is full and nobody reads.
        assert sent < 200
        assert grown < 50 << 20, f"gateway RSS grew by {grown >> 20} MiB"
        task.cancel()
