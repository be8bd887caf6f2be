"""The gateway's own TLS on client connections (gateway/proxy.py, ClientConnection._decrypt).

Handshakes that fail get OpenSSL's alert, stalled handshakes are dropped, a connection the
gateway ends gets close_notify; a half-close and lingering follow only while the client may
still be sending, and only so long.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
from wsgate_testing import Gateway, RecordingUpstream, ws_host

pytestmark = pytest.mark.slow

HOST = ws_host(8080)
BODY = b"the whole answer"


def answer(buf: bytes) -> bytes | None:
    if b"\r\n\r\n" not in buf:
        return None
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    up = RecordingUpstream(answer)
    yield up
    up.close()


def workspace(port: int) -> str:
    return f'\n[[workspaces]]\nid = "abc"\nport = 8080\nupstream = "127.0.0.1:{port}"\npublic = true\n'


def client_hello() -> bytes:
    """A real ClientHello, as the first flight of a TLS client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    out = ssl.MemoryBIO()
    client = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=HOST)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return out.read()


def wait_closed(sock: socket.socket, deadline: float) -> bytes:
    """What arrives until the gateway closes the connection (EOF or reset)."""
    got = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return got
        if not piece:
            return got
        got += piece
    raise AssertionError(f"the gateway kept the connection open (got {got[:80]!r})")


def open_connections(gw: Gateway) -> int:
    m = re.search(r"^wsgate_open_connections (\d+)$", gw.metrics(), re.M)
    assert m, "no wsgate_open_connections in the metrics"
    return int(m.group(1))


@pytest.mark.parametrize("sent", ["nothing", "half a ClientHello"])
def test_a_client_that_stalls_in_the_handshake_is_dropped(gateway_factory: Callable[..., Gateway], sent: str) -> None:
    gw = gateway_factory("[limits]\nheader_timeout = 1.5\n")
    hello = client_hello()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        if sent != "nothing":
            raw.sendall(hello[: len(hello) // 2])
        got = wait_closed(raw, start + 6)
    elapsed = time.monotonic() - start
    assert got == b"", "a stalled handshake was answered"
    assert 1.0 < elapsed < 2.5, f"dropped after {elapsed:.2f}s, header_timeout is 1.5s"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # the old client is the point
def test_a_failed_handshake_gets_the_alert_and_the_gateway_serves_on(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream
) -> None:
    gw = gateway_factory(workspace(upstream.port))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as e:
        gw.tls_socket(HOST, ctx=old).close()
    # The client learns why: the gateway's alert arrived before the connection closed.
    assert e.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", e.value
    # Plain HTTP on the TLS port: no HTTP answer, a closed connection.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        raw.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        got = wait_closed(raw, time.monotonic() + 3)
    assert b"HTTP/" not in got and b"hello" not in got, got
    # Garbage after a complete ClientHello.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        raw.sendall(client_hello() + b"\x17\x03\x03\x00\x05junk!" * 3)
        wait_closed(raw, time.monotonic() + 3)
    status, _, _ = gw.request(HOST, "GET", "/after")
    assert status == 200
    assert b"GET /after " in upstream.all_bytes


def read_to_close_notify(s: ssl.SSLSocket) -> bytes:
    """Everything until the gateway's close_notify (with suppress_ragged_eofs=False, an end
    without it raises instead of reading as b"")."""
    got = b""
    while piece := s.recv(65536):
        got += piece
    return got


def wait_for_connections(gw: Gateway, n: int, within: float) -> int:
    start = time.monotonic()
    while (open_now := open_connections(gw)) != n and time.monotonic() - start < within:
        time.sleep(0.05)
    return open_now


def test_a_client_that_said_close_gets_the_answer_close_notify_and_eof_at_once(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream
) -> None:
    """Its last request came whole and nothing after it: nothing more is coming (RFC 9112 9.6), so
    the gateway closes at once instead of lingering, after the answer and close_notify."""
    gw = gateway_factory(workspace(upstream.port))
    assert wait_for_connections(gw, 0, 3) == 0  # the readiness probe's connection goes
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with gw.ssl_context().wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False) as s:
        s.sendall(f"GET /bye HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        got = read_to_close_notify(s)
        assert got.startswith(b"HTTP/1.1 200 "), got
        assert got.endswith(b"\r\n\r\n" + BODY), got
        # Under the TLS layer, the end of the stream (not a reset).
        with socket.socket(fileno=os.dup(s.fileno())) as under:
            under.settimeout(3)
            assert under.recv(100) == b"", "no EOF after close_notify"
        # Gone on the gateway's side while this client still holds its end open.
        assert wait_for_connections(gw, 0, 2) == 0, "the gateway lingered on a connection the client ended"


def test_input_after_the_last_request_makes_the_gateway_linger_and_the_answer_arrives_whole(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream
) -> None:
    """A client that sends on after its `Connection: close` request breaks the protocol, but a close
    with that input unread would reset the connection and could destroy the answer in its kernel."""
    gw = gateway_factory(workspace(upstream.port))
    assert wait_for_connections(gw, 0, 3) == 0
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with gw.ssl_context().wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False) as s:
        s.sendall(
            f"GET /last HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            f"GET /after HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        )
        got = read_to_close_notify(s)
        assert got.startswith(b"HTTP/1.1 200 "), got
        assert got.endswith(b"\r\n\r\n" + BODY), got
        assert got.count(b"HTTP/1.1 ") == 1, got
        time.sleep(0.5)
        assert open_connections(gw) == 1, "the gateway closed with the client's input unread"
    assert b"/after" not in upstream.all_bytes


def test_a_client_that_never_closes_is_let_go_after_lingering(
    gateway_factory: Callable[..., Gateway], upstream: RecordingUpstream
) -> None:
    """The gateway ends an idle keep-alive connection; the client keeps its end open and even sends on."""
    gw = gateway_factory("[limits]\nkeepalive_timeout = 1.0\n" + workspace(upstream.port))
    assert wait_for_connections(gw, 0, 3) == 0
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with gw.ssl_context().wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False) as s:
        s.sendall(f"GET /stay HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        got = read_to_close_notify(s)  # the answer, then close_notify once the connection idled 1 s
        assert got.startswith(b"HTTP/1.1 200 "), got
        assert got.endswith(b"\r\n\r\n" + BODY), got
        # The gateway reads and discards what still comes.
        s.sendall(b"more bytes after the end " * 100)
        assert open_connections(gw) == 1
        start = time.monotonic()
        left = wait_for_connections(gw, 0, 10)
        waited = time.monotonic() - start
    assert left == 0, "the lingering connection was never let go"
    assert waited < 7.0, f"let go after {waited:.1f}s"
    assert b"more bytes" not in upstream.all_bytes
