"""Attacks found in a security review, each reproduced against a real gateway process.

Every test asserts the safe behaviour, so it fails while the weakness exists. Clients
speak raw bytes over TLS; upstreams are scripted TCP servers that misbehave on purpose
(the trust model treats workspace upstreams as hostile) and record every byte they get.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from wsgate_testing import Gateway, Talk, ThreadedServer, read_until, ws_host

pytestmark = pytest.mark.slow

HOST = ws_host(8080)
H = b"Host: " + HOST.encode() + b"\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
EVIL_COOKIE = b"Set-Cookie: __Host-wsgate-session=evil; Path=/; Secure"


# --- a scripted upstream ----------------------------------------------------------------


@dataclass
class UpConn:
    index: int
    sock: socket.socket
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False

    def read_until(self, marker: bytes, count: int = 1, timeout: float = 5.0) -> bool:
        """Reads until `marker` has been seen `count` times in all bytes so far (False on EOF/timeout)."""
        deadline = time.monotonic() + timeout
        while self.data.count(marker) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return False
            if not chunk:
                self.eof = True
                return False
            self.data += chunk
        return True

    def drain(self, seconds: float) -> None:
        """Keeps recording whatever arrives for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.eof:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                self.eof = True
                return
            self.data += chunk

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)


class ScriptedUpstream(ThreadedServer):
    """TCP upstream: `script(conn)` runs in a thread for each accepted connection."""

    def __init__(self, script: Callable[[UpConn], None]) -> None:
        self.script = script
        self.conns: list[UpConn] = []
        super().__init__()

    def accepted(self, sock: socket.socket) -> Callable[[], None]:
        with self._lock:
            conn = UpConn(len(self.conns), sock)
            self.conns.append(conn)
        return lambda: self._run(conn)

    def _run(self, conn: UpConn) -> None:
        with conn.sock:
            with contextlib.suppress(OSError):
                self.script(conn)
            # Hold the connection open briefly so the gateway decides, not the upstream's close.
            conn.drain(0.5)

    @property
    def all_bytes(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.data) for c in self.conns)


def workspace(port: int, extra: str = "") -> str:
    return extra + f'\n[[workspaces]]\nid = "abc"\nport = 8080\nupstream = "127.0.0.1:{port}"\npublic = true\n'


# --- client helpers -------------------------------------------------------------------------


def send_and_read(gw: Gateway, data: bytes, timeout: float = 3.0, done: Callable[[bytes], bool] | None = None) -> Talk:
    with gw.tls_socket(HOST) as s:
        s.sendall(data)
        return read_until(s, timeout, done or (lambda b: False))


@pytest.fixture
def make_gw(gateway_factory: Callable[..., Gateway]) -> Iterator[Callable[..., tuple[Gateway, ScriptedUpstream]]]:
    ups: list[ScriptedUpstream] = []

    def make(script: Callable[[UpConn], None], extra: str = "") -> tuple[Gateway, ScriptedUpstream]:
        up = ScriptedUpstream(script)
        ups.append(up)
        return gateway_factory(workspace(up.port, extra)), up

    yield make
    for up in ups:
        up.close()


# --- 1. request smuggling: Connection can name Content-Length ---------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + H + b"X-Forwarded-For: 6.6.6.6\r\n\r\n"


def answer_every_request(conn: UpConn) -> None:
    """A keep-alive upstream that answers every request head it sees (as a real server would)."""
    answered = 0
    while conn.read_until(b"\r\n\r\n", answered + 1, timeout=2.0):
        answered += 1
        conn.send(OK)


@pytest.mark.parametrize("token", [b"content-length", b"Content-Length", b"keep-alive, Content-Length"])
def test_connection_header_cannot_strip_content_length(make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
                                                       token: bytes) -> None:
    gw, up = make_gw(answer_every_request)
    body = SMUGGLED
    req = b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: %d\r\nConnection: %s\r\n\r\n" % (len(body), token) + body
    send_and_read(gw, req, timeout=2.0, done=lambda b: b.endswith(b"ok"))
    time.sleep(0.3)
    got = up.all_bytes
    head = got.split(b"\r\n\r\n", 1)[0].lower()
    # Refusing the request is fine; forwarding it is fine only with the body still framed as a body.
    if b"POST /upload" in got:
        assert b"\r\ncontent-length: %d\r\n" % len(body) in head + b"\r\n", f"body sent without its length: {got!r}"


# --- 2. upstream bytes reach the client raw through a 1xx response with a body ------------------

INJECTED = b"HTTP/1.1 200 OK\r\n" + EVIL_COOKIE + b"\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "interim",
    [
        pytest.param(b"HTTP/1.1 150 X\r\nContent-Length: %d\r\n\r\n" % len(INJECTED) + INJECTED, id="150-length"),
        pytest.param(b"HTTP/1.1 199 X\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(INJECTED) + INJECTED
                     + b"\r\n0\r\n\r\n", id="199-chunked"),
    ],
)
def test_interim_response_body_is_not_relayed_raw(make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
                                                  interim: bytes) -> None:
    def script(conn: UpConn) -> None:
        if conn.read_until(b"\r\n\r\n"):
            conn.send(interim + OK)

    gw, _ = make_gw(script)
    talk = send_and_read(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n", done=lambda b: b.endswith(b"ok"))
    assert b"__host-wsgate" not in talk.data.lower(), f"upstream set the gateway's cookie: {talk.data!r}"
    assert talk.data.count(b"HTTP/1.1 ") == 1, f"more than one response for one request: {talk.data!r}"


# --- 3. a pooled upstream connection with leftover bytes is reused ------------------------------


def stray_then_answer(conn: UpConn) -> None:
    # First request: a good answer followed by the head of a response nobody asked for.
    if not conn.read_until(b"\r\n\r\n"):
        return
    conn.send(OK + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(INJECTED))
    # Second request on the same connection (another client): the upstream answers it normally,
    # but the gateway reads these bytes as the stray response's body and relays them.
    if conn.read_until(b"\r\n\r\n", 2):
        conn.send(INJECTED + OK)


def test_connection_with_stray_bytes_after_response_is_not_reused(
    make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
) -> None:
    gw, _ = make_gw(stray_then_answer)
    first = send_and_read(gw, b"GET /alice HTTP/1.1\r\n" + H + b"\r\n", done=lambda b: b.endswith(b"ok"))
    assert first.data.startswith(b"HTTP/1.1 200 OK\r\n"), first
    time.sleep(0.2)
    second = send_and_read(gw, b"GET /bob HTTP/1.1\r\n" + H + b"\r\n", done=lambda b: b.endswith(b"ok"))
    assert b"__host-wsgate" not in second.data.lower(), f"bytes of a stray response reached bob: {second.data!r}"
    assert second.data.startswith(b"HTTP/1.1 "), f"bob's answer does not start with a status line: {second.data!r}"


# --- 4. bytes sent before the 101 reach the upstream as a second request ----------------------

WS_HEAD = (
    b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def refuse_upgrade(conn: UpConn) -> None:
    """Declines the upgrade (as any non-WebSocket path would) and keeps answering requests."""
    answered = 0
    while conn.read_until(b"\r\n\r\n", answered + 1, timeout=1.5):
        answered += 1
        time.sleep(0.2)  # let anything the gateway sends after the head arrive first
        conn.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")


@pytest.mark.parametrize("mode", ["cold", "pooled", "pooled-behind-a-get"])
def test_bytes_before_101_are_not_sent_upstream(make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
                                                 mode: str) -> None:
    gw, up = make_gw(refuse_upgrade)
    first = b""
    if mode != "cold":
        send_and_read(gw, b"GET /warm HTTP/1.1\r\n" + H + b"\r\n", done=lambda b: b.endswith(b"no"))
        time.sleep(0.1)
    if mode == "pooled-behind-a-get":
        first = b"GET /first HTTP/1.1\r\n" + H + b"\r\n"
    talk = send_and_read(gw, first + WS_HEAD + SMUGGLED, timeout=2.0)
    assert talk.data.startswith(b"HTTP/1.1 403 "), talk
    time.sleep(0.3)
    got = up.all_bytes
    assert b"/smuggled" not in got, f"bytes sent before the 101 reached the upstream as a request: {got!r}"


# --- 5. a non-idempotent request is replayed after the upstream closes ---------------------------


def close_on_delete(conn: UpConn) -> None:
    """Answers GETs; on DELETE it acts (records it) and then drops the connection without answering."""
    answered = 0
    while conn.read_until(b"\r\n\r\n", answered + 1, timeout=2.0):
        answered += 1
        last = bytes(conn.data).split(b"\r\n\r\n")[answered - 1]
        if last.startswith((b"DELETE ", b"POST ")):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.eof = True
            return
        conn.send(OK)


@pytest.mark.parametrize("method", [b"DELETE", b"POST"])
def test_non_idempotent_request_is_not_replayed(make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
                                                method: bytes) -> None:
    gw, up = make_gw(close_on_delete)
    with gw.tls_socket(HOST) as s:
        s.sendall(b"GET /warm HTTP/1.1\r\n" + H + b"\r\n")
        warm = read_until(s, 3, lambda b: b.endswith(b"ok"))
        assert warm.data.startswith(b"HTTP/1.1 200 "), warm
        time.sleep(0.1)  # the upstream connection is idle in the pool now
        s.sendall(method + b" /account/42 HTTP/1.1\r\n" + H + b"\r\n")
        answer = read_until(s, 3, lambda b: b.count(b"HTTP/1.1 ") >= 2)
    time.sleep(0.2)
    sent = up.all_bytes.count(method + b" /account/42 ")
    assert sent == 1, f"the upstream got the {method.decode()} {sent} times; client saw {answer.data[-200:]!r}"


# --- 6. gateway-written answers ignore back-pressure: one non-reading client grows memory ------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_error_answers_respect_back_pressure(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory()
    assert gw.proc is not None
    before = rss_kib(gw.proc.pid)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.connect(("127.0.0.1", gw.port))
    # 27 bytes in, ~700 bytes of 421 page out; the client never reads.
    block = b"GET / HTTP/1.1\r\nHost:a\r\n\r\n" * 2000
    sent = 0
    with gw.ssl_context().wrap_socket(raw, server_hostname=HOST) as s:
        s.settimeout(2)
        with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
            while sent < 2_000_000:
                s.sendall(block)
                sent += len(block)
        time.sleep(1.0)
        grown = rss_kib(gw.proc.pid) - before
    assert grown < 24 * 1024, f"gateway grew by {grown} KiB after {sent} bytes from a client that never reads"


# --- 7. answering a long pipelined queue recurses once per request -----------------------------


def test_long_pipeline_behind_a_proxied_request_is_answered(
    make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
) -> None:
    def slow_ok(conn: UpConn) -> None:
        if conn.read_until(b"\r\n\r\n"):
            time.sleep(0.3)  # the rest of the pipeline queues up behind this answer
            conn.send(OK)

    gw, _ = make_gw(slow_ok)
    n = 800
    data = b"GET /first HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * n
    with gw.tls_socket(HOST) as s:
        s.sendall(data)
        talk = read_until(s, 5, lambda b: b.count(b"HTTP/1.1 421 ") >= n)
    assert talk.data.startswith(b"HTTP/1.1 200 OK"), talk.data[:200]
    answered = talk.data.count(b"HTTP/1.1 421 ")
    # Answering all, or capping the pipeline and closing, are both fine; going silent is not.
    assert answered == n or talk.closed, f"only {answered} of {n} pipelined requests answered, then silence"


# --- 8. a nameless cookie whose value is the gateway's cookie --------------------------------


def test_nameless_cookie_naming_the_gateway_cookie_is_dropped(
    make_gw: Callable[..., tuple[Gateway, ScriptedUpstream]],
) -> None:
    # RFC 6265: "=a=b" sets a cookie with an empty name, sent back by browsers as "a=b".
    def script(conn: UpConn) -> None:
        if conn.read_until(b"\r\n\r\n"):
            conn.send(b"HTTP/1.1 200 OK\r\nSet-Cookie: =__Host-wsgate-session=evil; Path=/; Secure\r\n"
                      b"Content-Length: 2\r\n\r\nok")

    gw, _ = make_gw(script)
    talk = send_and_read(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n", done=lambda b: b.endswith(b"ok"))
    assert talk.data.startswith(b"HTTP/1.1 200 "), talk
    assert b"__host-wsgate" not in talk.data.lower(), f"upstream set the gateway's cookie: {talk.data!r}"
