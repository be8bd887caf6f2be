"""Limits and timeouts from `[limits]` and `[proxy]`, end to end through a real gateway.

Each test starts a gateway with small limits, speaks raw HTTP/1.1 over TLS and
asserts what the client got (status, body, whether and when the connection
closed) and what a recording upstream received.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import wsgate_testing
from wsgate_testing import Gateway, RecordingUpstream, refused_port, ws_host

pytestmark = pytest.mark.slow

HOST = ws_host(8080)
HB = HOST.encode()


# --- a recording upstream ------------------------------------------------------------


def _complete_head(buf: bytes) -> bool:
    return b"\r\n\r\n" in buf


def ok_when_head_complete(buf: bytes) -> bytes | None:
    """Answers a bodiless request once its head is in."""
    if not _complete_head(buf):
        return None
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def never(buf: bytes) -> bytes | None:
    return None


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class _Stream(io.BytesIO):
    """Shared by consecutive responses: http.client closes its file after each body."""

    def close(self) -> None:
        pass


class _BytesSocket:
    def __init__(self, stream: io.BytesIO) -> None:
        self._stream = stream

    def makefile(self, mode: str) -> io.BytesIO:
        return self._stream


def parse_replies(data: bytes, *, closed: bool) -> list[Reply]:
    """The complete responses in `data` (http.client does the framing)."""
    stream = _Stream(data)
    out: list[Reply] = []
    while stream.tell() < len(data):
        resp = http.client.HTTPResponse(_BytesSocket(stream))  # type: ignore[arg-type]
        try:
            resp.begin()
            if resp.will_close and not closed and resp.length is None and not resp.chunked:
                break  # a close-delimited body is only complete once the connection closed
            body = resp.read()
        except (http.client.HTTPException, ValueError):
            break
        out.append(Reply(resp.status, resp.headers, body))
    return out


class Talk(wsgate_testing.Talk):
    def replies(self) -> list[Reply]:
        return parse_replies(self.data, closed=self.closed)

    def first(self) -> Reply:
        got = self.replies()
        assert got, f"no complete response; {self}"
        return got[0]


def read_until(sock: ssl.SSLSocket, deadline: float, start: float, want: int | None = None, buf: bytes = b"") -> Talk:
    def done(b: bytes) -> bool:
        return want is not None and len(parse_replies(b, closed=False)) >= want

    got = wsgate_testing.read_until(sock, deadline - time.monotonic(), done, buf, start=start)
    return Talk(got.data, got.closed, got.elapsed)


def talk(gw: Gateway, data: bytes, *, host: str = HOST, want: int | None = None, timeout: float = 6.0) -> Talk:
    """One write of `data`, then read until closed, `want` responses, or `timeout`."""
    start = time.monotonic()
    with gw.tls_socket(host, timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        return read_until(s, start + timeout, start, want)


def get(path: str = "/", *headers: str) -> bytes:
    lines = "".join(h + "\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{lines}\r\n".encode()


def workspace(port: int, upstream: int) -> str:
    return f'\n[[workspaces]]\nid = "abc"\nport = {port}\nupstream = "127.0.0.1:{upstream}"\npublic = true\n'


def assert_clean_error(reply: Reply, status: int, upstream_port: int) -> None:
    assert reply.status == status, reply
    assert b"Traceback" not in reply.body
    assert b"127.0.0.1:%d" % upstream_port not in reply.body
    assert b"127.0.0.1" not in reply.body


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    up = RecordingUpstream(ok_when_head_complete)
    yield up
    up.close()


# --- size limits ---------------------------------------------------------------------------

SIZES = """
[limits]
max_header_bytes = 2048
max_headers = 20
max_url_length = 512
max_body_bytes = 1000
"""


@pytest.fixture
def sized(gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream) -> Gateway:
    return gateway_factory(SIZES + workspace(8080, upstream.port))


def test_limits_allow_requests_just_under_them(sized: Gateway, upstream: RecordingUpstream) -> None:
    """Control: every limit below is reachable; right under it the request goes through."""
    headers = [f"X-H{i}: v" for i in range(15)]
    t = talk(sized, get("/" + "u" * 400, *headers), want=1)
    assert t.first().status == 200, t
    body = b"b" * 1000
    req = f"POST /post HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n".encode() + body
    upstream.reply = lambda buf: ok_when_head_complete(buf) if buf.endswith(body) else None
    t = talk(sized, req, want=1)
    assert t.first().status == 200, t
    assert upstream.all_bytes.endswith(body)


@pytest.mark.parametrize("writes", [1, 40], ids=["one-write", "many-writes"])
def test_header_bytes_over_limit_431(sized: Gateway, upstream: RecordingUpstream, writes: int) -> None:
    data = get("/", "X-Big: " + "h" * 3000)
    start = time.monotonic()
    with sized.tls_socket(HOST) as s:
        step = -(-len(data) // writes)
        for i in range(0, len(data), step):
            with contextlib.suppress(OSError):
                s.sendall(data[i : i + step])
            if writes > 1:
                time.sleep(0.01)
        t = read_until(s, start + 6, start)
    assert t.first().status == 431, t
    assert t.closed, t
    assert b"Traceback" not in t.data
    time.sleep(0.2)
    assert b"X-Big" not in upstream.all_bytes, "the oversized head reached the upstream"


def test_too_many_headers_431(sized: Gateway, upstream: RecordingUpstream) -> None:
    t = talk(sized, get("/", *[f"X-H{i}: v" for i in range(30)]))
    assert t.first().status == 431, t
    assert t.closed and t.elapsed < 3, t
    time.sleep(0.2)
    assert upstream.all_bytes == b""


def test_url_too_long_414(sized: Gateway, upstream: RecordingUpstream) -> None:
    t = talk(sized, get("/" + "u" * 600))
    assert t.first().status == 414, t
    assert t.closed and t.elapsed < 3, t
    assert b"Traceback" not in t.data
    time.sleep(0.2)
    assert upstream.all_bytes == b""


def test_body_over_limit_with_content_length_413(sized: Gateway, upstream: RecordingUpstream) -> None:
    body = b"x" * 1500
    req = f"POST /post HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1500\r\n\r\n".encode() + body
    t = talk(sized, req)
    assert t.first().status == 413, t
    assert t.closed and t.elapsed < 3, t
    time.sleep(0.2)
    assert b"x" * 100 not in upstream.all_bytes, "body bytes of a refused request reached the upstream"


def test_body_over_limit_chunked_413_or_cut(sized: Gateway, upstream: RecordingUpstream) -> None:
    upstream.reply = never
    chunks = b"".join(b"100\r\n" + bytes([0x61 + i]) * 256 + b"\r\n" for i in range(8)) + b"0\r\n\r\n"
    req = f"POST /post HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunks
    t = talk(sized, req)
    assert t.closed and t.elapsed < 3, t
    replies = t.replies()
    # Either a 413, or (if the head was already answered) just a closed connection; never a success.
    if replies:
        assert replies[0].status == 413, t
    else:
        assert t.data == b"", t
    time.sleep(0.3)
    got = upstream.all_bytes
    # The 2048-byte body was cut at the limit: the upstream never got the last chunks nor the terminator.
    assert b"h" * 256 not in got and b"g" * 256 not in got, "the upstream got the whole oversized body"
    assert not got.endswith(b"0\r\n\r\n")
    assert all(c.eof for c in upstream.conns if c.data), "the upstream connection with the cut body was left open"


# --- time limits ---------------------------------------------------------------------------


def test_slowloris_dropped_after_header_timeout(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream
) -> None:
    gw = gateway_factory("[limits]\nheader_timeout = 1.5\n" + workspace(8080, upstream.port))
    start = time.monotonic()
    closed_at: float | None = None
    received = b""
    with gw.tls_socket(HOST) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        i = 0
        while time.monotonic() - start < 6:
            try:
                s.sendall(b"X-Slow-%d: a\r\n" % i)
            except OSError:
                closed_at = time.monotonic()
                break
            i += 1
            s.settimeout(0.5)
            try:
                piece = s.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError):
                closed_at = time.monotonic()
                break
            if not piece:
                closed_at = time.monotonic()
                break
            received += piece
    assert closed_at is not None, f"a client trickling headers was never dropped (sent {i} lines)"
    assert closed_at - start < 1.5 + 1.0, f"dropped only after {closed_at - start:.2f}s"
    if received:
        assert received.startswith(b"HTTP/1.1 408 "), received
    assert upstream.all_bytes == b""


def test_silent_client_dropped_after_header_timeout(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory("[limits]\nheader_timeout = 1.5\n")
    start = time.monotonic()
    with gw.tls_socket(HOST) as s:
        t = read_until(s, start + 6, start)
    assert t.closed, t
    assert 1.0 < t.elapsed < 2.5, t
    assert t.data == b"" or t.data.startswith(b"HTTP/1.1 408 "), t


def test_idle_keepalive_connection_closed_after_keepalive_timeout(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream
) -> None:
    gw = gateway_factory("[limits]\nheader_timeout = 10\nkeepalive_timeout = 1.5\n" + workspace(8080, upstream.port))
    with gw.tls_socket(HOST) as s:
        start = time.monotonic()
        s.sendall(get("/one"))
        first = read_until(s, start + 5, start, want=1)
        assert first.first().status == 200 and not first.closed, first
        # Still open for a request within the timeout: keep-alive really is kept.
        time.sleep(0.5)
        start = time.monotonic()
        s.sendall(get("/two"))
        second = read_until(s, start + 5, start, want=1)
        assert second.first().status == 200 and not second.closed, second
        idle_from = time.monotonic()
        rest = read_until(s, idle_from + 6, idle_from)
    assert rest.closed, f"idle keep-alive connection still open after {rest.elapsed:.2f}s"
    assert rest.data == b"", rest
    assert 1.0 < rest.elapsed < 1.5 + 1.0, f"closed after {rest.elapsed:.2f}s, keepalive_timeout is 1.5s"


def test_max_connections(gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream) -> None:
    gw = gateway_factory("[limits]\nmax_connections = 5\n" + workspace(8080, upstream.port))
    time.sleep(0.3)  # let the readiness probe's connection go
    socks = []
    try:
        for i in range(5):
            s = gw.tls_socket(HOST)
            socks.append(s)
            start = time.monotonic()
            s.sendall(get(f"/keep{i}"))
            t = read_until(s, start + 5, start, want=1)
            assert t.first().status == 200 and not t.closed, (i, t)
        # The sixth is refused while the five are open.
        start = time.monotonic()
        try:
            sixth = gw.tls_socket(HOST, timeout=5)
        except (OSError, ssl.SSLError):
            pass  # refused during the handshake: also a refusal
        else:
            with sixth:
                with contextlib.suppress(OSError):
                    sixth.sendall(get("/sixth"))
                t = read_until(sixth, start + 5, start)
            assert t.closed and t.elapsed < 3, f"a sixth connection was not closed; {t}"
            assert not t.replies() or t.first().status == 503, f"a sixth connection was served; {t}"
        assert b"/sixth" not in upstream.all_bytes
        # The five still work.
        for i, s in enumerate(socks):
            start = time.monotonic()
            s.sendall(get(f"/again{i}"))
            t = read_until(s, start + 5, start, want=1)
            assert t.first().status == 200, (i, t)
        # One closes; a new connection is accepted again.
        socks.pop().close()
        time.sleep(0.3)
        t = talk(gw, get("/after"), want=1)
        assert t.first().status == 200, t
    finally:
        for s in socks:
            s.close()


# --- upstream failures ---------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/json", "text/html", None])
def test_upstream_never_answers_504(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream, accept: str | None
) -> None:
    upstream.reply = never
    gw = gateway_factory("[proxy]\nresponse_timeout = 1.5\n" + workspace(8080, upstream.port))
    headers = [f"Accept: {accept}"] if accept else []
    t = talk(gw, get("/hang", *headers), want=1, timeout=8)
    reply = t.first()
    assert_clean_error(reply, 504, upstream.port)
    assert 1.2 < t.elapsed < 1.5 + 1.5, f"504 after {t.elapsed:.2f}s, response_timeout is 1.5s"
    assert b"/hang" in upstream.all_bytes, "the request never reached the upstream"
    ctype = reply.headers.get("Content-Type", "")
    if accept == "application/json":
        assert ctype.startswith("application/json"), ctype
        doc = json.loads(reply.body)
        assert doc["status"] == 504 and doc["request_id"]
    else:
        assert ctype.startswith("text/html"), ctype
        assert b"504" in reply.body and b"<html" in reply.body


@pytest.mark.parametrize("accept", ["application/json", None])
def test_refused_upstream_port_502(gateway_factory: Callable[..., Gateway], accept: str | None) -> None:
    with refused_port() as dead:
        gw = gateway_factory(workspace(8080, dead))
        headers = [f"Accept: {accept}"] if accept else []
        t = talk(gw, get("/", *headers), want=1)
        reply = t.first()
    assert_clean_error(reply, 502, dead)
    assert str(dead).encode() not in reply.body
    text = json.loads(reply.body)["message"] if accept else reply.body.decode()
    assert "8080" in text and "listening" in text.lower(), text
