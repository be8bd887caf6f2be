"""Which headers cross the gateway, in which direction, and byte for byte.

Requests go out as raw bytes over TLS; upstreams are either the aiohttp echo app
(which reports the raw headers it got) or a recording TCP upstream whose received
bytes are inspected directly.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from wsgate_testing import AiohttpUpstream, Gateway, RecordingUpstream, Talk, read_until, ws_host

pytestmark = pytest.mark.slow

HOST = ws_host(8080)
HB = HOST.encode()
CLIENT_IP = "127.0.0.1"
HOP_BY_HOP = ("connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "transfer-encoding")


# --- upstream that records raw bytes ------------------------------------------------------


def head_complete(buf: bytes) -> bool:
    return b"\r\n\r\n" in buf


def answer_with(response: bytes) -> Callable[[bytes], bytes | None]:
    return lambda buf: response if head_complete(buf) else None


def request_heads(data: bytes) -> list[list[tuple[bytes, bytes]]]:
    """The header lists of the (bodiless) requests in `data`, split exactly as sent."""
    heads = []
    for head in data.split(b"\r\n\r\n")[:-1]:
        lines = head.split(b"\r\n")
        assert re.fullmatch(rb"[A-Z]+ \S+ HTTP/1\.1", lines[0]), lines[0]
        fields = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep and name and b" " not in name, line
            fields.append((name, value.strip(b" \t")))
        heads.append(fields)
    return heads


def values(fields: list[tuple[bytes, bytes]] | list[list[str]], name: str) -> list[bytes]:
    low = name.lower()
    out = []
    for k, v in fields:
        kk = k.decode("latin-1") if isinstance(k, bytes) else k
        if kk.lower() == low:
            out.append(v if isinstance(v, bytes) else v.encode("latin-1"))
    return out


# --- raw TLS client ----------------------------------------------------------------------


class _Stream(io.BytesIO):
    def close(self) -> None:
        pass  # shared by consecutive responses; http.client closes its file after each body


class _BytesSocket:
    def __init__(self, stream: io.BytesIO) -> None:
        self._stream = stream

    def makefile(self, mode: str) -> io.BytesIO:
        return self._stream


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    chunked: bool


def parse_replies(data: bytes, *, closed: bool, methods: tuple[str, ...] = ()) -> list[Reply]:
    stream = _Stream(data)
    out: list[Reply] = []
    while stream.tell() < len(data):
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        resp = http.client.HTTPResponse(_BytesSocket(stream), method=method)  # type: ignore[arg-type]
        try:
            resp.begin()  # skips interim 100 responses
            if not closed and resp.length is None and not resp.chunked and method != "HEAD" and resp.will_close:
                break
            body = resp.read()
        except (http.client.HTTPException, ValueError):
            break
        out.append(Reply(resp.status, resp.headers, body, bool(resp.chunked)))
    return out


def exchange(
    gw: Gateway, data: bytes, *, want: int = 1, methods: tuple[str, ...] = (), timeout: float = 6.0
) -> tuple[list[Reply], Talk]:
    with gw.tls_socket(HOST, timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        talk = read_until(s, timeout, lambda b: len(parse_replies(b, closed=False, methods=methods)) >= want)
    return parse_replies(talk.data, closed=talk.closed, methods=methods), talk


def get(path: str, *headers: str | bytes, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = b"".join((h.encode("latin-1") if isinstance(h, str) else h) + b"\r\n" for h in headers)
    return f"{method} {path} {version}\r\nHost: {HOST}\r\n".encode() + lines + b"\r\n"


def workspace(upstream: int, extra: str = "") -> str:
    return extra + f'\n[[workspaces]]\nid = "abc"\nport = 8080\nupstream = "127.0.0.1:{upstream}"\npublic = true\n'


def echoed(reply: Reply) -> dict[str, object]:
    assert reply.status == 200, (reply.status, reply.body[:500])
    doc: dict[str, object] = json.loads(reply.body)
    return doc


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def echo_gw(gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream) -> Gateway:
    return gateway_factory(workspace(echo_upstream.port))


@pytest.fixture
def trusted_gw(gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream) -> Gateway:
    return gateway_factory(workspace(echo_upstream.port, '[proxy]\ntrusted_proxies = ["127.0.0.1/32"]\n'))


@pytest.fixture
def recorder() -> Iterator[RecordingUpstream]:
    up = RecordingUpstream(answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    yield up
    up.close()


@pytest.fixture
def raw_gw(gateway_factory: Callable[..., Gateway], recorder: RecordingUpstream) -> Gateway:
    return gateway_factory(workspace(recorder.port))


# --- request headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param(["Connection: keep-alive, X-Foo, X-Bar"], id="one-header"),
        pytest.param(["Connection: X-Foo", "Connection: keep-alive , x-bar"], id="two-headers-odd-case"),
    ],
)
def test_hop_by_hop_request_headers_not_forwarded(
    raw_gw: Gateway, recorder: RecordingUpstream, connection: list[str]
) -> None:
    data = get(
        "/hop",
        *connection,
        "Keep-Alive: timeout=5, max=100",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: websocket",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==",
        "X-Foo: named-in-connection",
        "X-Bar: also-named",
        "X-Keep: stays",
    )
    replies, talk = exchange(raw_gw, data)
    assert replies and replies[0].status == 200, talk
    (fields,) = request_heads(recorder.all_bytes)
    names = [k.decode().lower() for k, _ in fields]
    for gone in ("keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authorization", "x-foo", "x-bar"):
        assert gone not in names, f"{gone} was forwarded: {fields}"
    assert values(fields, "X-Keep") == [b"stays"]
    assert b"c2VjcmV0OnNlY3JldA" not in recorder.all_bytes
    assert b"named-in-connection" not in recorder.all_bytes and b"also-named" not in recorder.all_bytes
    # Only the gateway's own Connection header, naming nothing the client listed.
    conn = values(fields, "Connection")
    assert len(conn) == 1 and b"x-foo" not in conn[0].lower() and b"x-bar" not in conn[0].lower(), conn


def test_forwarding_headers_replaced_for_untrusted_client(echo_gw: Gateway) -> None:
    data = get(
        "/fwd",
        "X-Forwarded-For: 203.0.113.7, 10.0.0.1",
        "x-forwarded-for: 198.51.100.9",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Port: 1",
        "X-Real-IP: 203.0.113.7",
        'Forwarded: for=203.0.113.7;proto=http;host="evil.example"',
        "X-Request-Id: attacker-chosen-id",
    )
    replies, talk = exchange(echo_gw, data)
    assert replies, talk
    headers = echoed(replies[0])["headers"]
    assert isinstance(headers, list)
    assert values(headers, "X-Forwarded-For") == [CLIENT_IP.encode()]
    assert values(headers, "X-Forwarded-Proto") == [b"https"]
    assert values(headers, "X-Forwarded-Host") == [HB]
    assert values(headers, "X-Forwarded-Port") == []
    assert values(headers, "X-Real-IP") == []
    (fwd,) = values(headers, "Forwarded")
    assert fwd.startswith(b"for=127.0.0.1;proto=https;"), fwd
    assert b"203.0.113.7" not in fwd and b"evil" not in fwd
    (rid,) = values(headers, "X-Request-Id")
    assert rid != b"attacker-chosen-id" and re.fullmatch(rb"[!-~]{1,128}", rid), rid
    body = json.dumps(headers).encode()
    assert b"203.0.113.7" not in body and b"198.51.100.9" not in body and b"evil.example" not in body


def test_forwarding_headers_kept_from_trusted_proxy(trusted_gw: Gateway) -> None:
    data = get(
        "/fwd",
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: public.example",
        'Forwarded: for=203.0.113.7;proto=http;host="public.example"',
        "X-Request-Id: upstream-lb-42",
    )
    replies, talk = exchange(trusted_gw, data)
    assert replies, talk
    headers = echoed(replies[0])["headers"]
    assert isinstance(headers, list)
    assert values(headers, "X-Forwarded-For") == [b"203.0.113.7, 10.0.0.1, 127.0.0.1"]
    assert values(headers, "X-Forwarded-Proto") == [b"http"]
    assert values(headers, "X-Forwarded-Host") == [b"public.example"]
    (fwd,) = values(headers, "Forwarded")
    assert fwd.startswith(b'for=203.0.113.7;proto=http;host="public.example", for=127.0.0.1;proto=https'), fwd
    assert values(headers, "X-Request-Id") == [b"upstream-lb-42"]


def test_trusted_proxy_invalid_request_id_is_replaced(trusted_gw: Gateway) -> None:
    replies, talk = exchange(trusted_gw, get("/rid", "X-Request-Id: has spaces in it"))
    assert replies, talk
    headers = echoed(replies[0])["headers"]
    assert isinstance(headers, list)
    (rid,) = values(headers, "X-Request-Id")
    assert rid != b"has spaces in it"


def test_request_header_bytes_and_name_case_preserved(raw_gw: Gateway, recorder: RecordingUpstream) -> None:
    cookie = b'a=b; c="d e"; f=%00x; g=\x80\xfe\xff; h=!#$&\'()*+-./:<=>?@[]^_`{|}~; i=\tj'
    odd = b"value  with   inner   spaces,\tand\ttabs;\x7e\x80"
    replies, talk = exchange(raw_gw, get("/bytes", b"Cookie: " + cookie, b"X-CamelCase-Name: " + odd))
    assert replies and replies[0].status == 200, talk
    got = recorder.all_bytes
    assert b"\r\nCookie: " + cookie + b"\r\n" in got, got
    assert b"\r\nX-CamelCase-Name: " + odd + b"\r\n" in got, got


def test_request_id_matches_upstream_and_access_log(echo_gw: Gateway) -> None:
    replies, talk = exchange(echo_gw, get("/logged?x=1"))
    assert replies, talk
    headers = echoed(replies[0])["headers"]
    assert isinstance(headers, list)
    (rid,) = values(headers, "X-Request-Id")
    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [e for e in echo_gw.log_events() if e.get("event") == "access" and e.get("request_id") == rid.decode()]
        if lines:
            break
        time.sleep(0.1)
    assert len(lines) == 1, f"no single access line for {rid!r}"
    assert lines[0]["status"] == 200 and lines[0]["path"] == "/logged?x=1" and lines[0]["host"] == HOST


# --- response headers -------------------------------------------------------------------------


def test_response_hop_by_hop_removed_and_duplicates_kept(
    gateway_factory: Callable[..., Gateway], recorder: RecordingUpstream
) -> None:
    body = b"hello"
    recorder.reply = answer_with(
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: keep-alive, X-Upstream-Hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Upstream-Hop: secret\r\n"
        b"Proxy-Authenticate: Basic realm=x\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"X-Multi: one\r\n"
        b"Set-Cookie: b=2; Path=/; HttpOnly\r\n"
        b"X-Multi: two\r\n"
        b"X-Odd: \x80 spaced  out\t!\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\n" + body
    )
    gw = gateway_factory(workspace(recorder.port))
    replies, talk = exchange(gw, get("/resp"))
    assert replies and replies[0].status == 200, talk
    r = replies[0]
    assert r.body == body
    names = [k.lower() for k in r.headers]
    for gone in ("keep-alive", "x-upstream-hop", "proxy-authenticate", "proxy-connection", "trailer", "upgrade"):
        assert gone not in names, f"{gone} reached the client: {talk.data[:800]!r}"
    assert r.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert r.headers.get_all("X-Multi") == ["one", "two"]
    assert b"\r\nX-Odd: \x80 spaced  out\t!\r\n" in talk.data
    assert b"x-upstream-hop" not in (r.headers.get("Connection") or "").lower().encode()


def test_gateway_cookie_from_upstream_dropped(echo_gw: Gateway) -> None:
    replies, talk = exchange(echo_gw, get("/cookies"))
    assert replies and replies[0].status == 200, talk
    assert replies[0].headers.get_all("Set-Cookie") == ["app=1; Path=/"]
    assert b"wsgate-session" not in talk.data.lower()


@pytest.mark.parametrize(
    "line",
    [
        b"Set-Cookie: __Host-wsgate-session=evil; Path=/; Secure",
        b"set-cookie: __Host-wsgate-session=evil; Path=/; Secure",
        b"SET-COOKIE:__Host-wsgate-session=evil",
        b"Set-Cookie: __host-wsgate-session=evil; Path=/; Secure",
        b"Set-Cookie:  \t__Host-wsgate-session=; Max-Age=0; Path=/; Secure",
        b"Set-Cookie: __Host-wsgate-csrf=evil; Path=/; Secure",
    ],
)
def test_gateway_cookie_variants_dropped(
    gateway_factory: Callable[..., Gateway], recorder: RecordingUpstream, line: bytes
) -> None:
    recorder.reply = answer_with(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: app=1; Path=/\r\n" + line + b"\r\nContent-Length: 2\r\n\r\nok"
    )
    gw = gateway_factory(workspace(recorder.port))
    replies, talk = exchange(gw, get("/c"))
    assert replies and replies[0].status == 200, talk
    assert replies[0].headers.get_all("Set-Cookie") == ["app=1; Path=/"], talk.data
    assert b"wsgate-" not in talk.data.lower()


# --- framing of special responses -----------------------------------------------------------


@pytest.mark.parametrize(
    "writes",
    [
        # Pipelined behind an HTTP/1.1 request in the same write.
        [b"GET /a HTTP/1.1\r\nHost: %(host)s\r\n\r\nGET %(path)s HTTP/1.0\r\nHost: %(host)s\r\n\r\n"],
        # The request line split across writes, and the head split after the line.
        [b"GET /a HTTP/1.1\r\nHost: %(host)s\r\n\r\n", b"GET %(path)s HTT", b"P/1.0\r\nHost: %(host)s\r\n\r\n"],
        [b"GET /a HTTP/1.1\r\nHost: %(host)s\r\n\r\n", b"GET %(path)s HTTP/1.0\r\nHo", b"st: %(host)s\r\n\r\n"],
    ],
    ids=["pipelined", "line-split", "head-split"],
)
def test_each_request_is_answered_for_its_own_http_version(echo_gw: Gateway, writes: list[bytes]) -> None:
    # The upstream answers /sized in chunks: only an HTTP/1.0 request gets it close-delimited instead.
    values = {b"host": HOST.encode(), b"path": b"/sized?bytes=10&chunked=1"}
    with echo_gw.tls_socket(HOST) as s:
        for data in writes:
            s.sendall(data % values)
            time.sleep(0.2)
        talk = read_until(s, 8, lambda b: False)
    assert talk.closed, f"the HTTP/1.0 response was not ended by a close: {talk.data[-300:]!r}"
    responses = re.split(rb"(?=HTTP/1\.[01] \d{3} )", talk.data)[1:]
    assert len(responses) == 2 and all(r.startswith(b"HTTP/1.1 200 ") for r in responses), talk.data
    head, _, body = responses[1].partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and body == b"x" * 10, responses[1]
    assert b"transfer-encoding: chunked" in responses[0].lower() or b"content-length" in responses[0].lower()


@pytest.mark.parametrize("chunked", [True, False], ids=["upstream-chunked", "upstream-length"])
def test_http10_client_gets_readable_response_and_close(echo_gw: Gateway, chunked: bool) -> None:
    size = 100_000
    path = f"/sized?bytes={size}" + ("&chunked=1" if chunked else "")
    with echo_gw.tls_socket(HOST) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        talk = read_until(s, 8, lambda b: False)
    assert talk.closed, f"HTTP/1.0 response not ended by close; {talk.data[:300]!r}"
    head, _, body = talk.data.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 200 ", head), head
    assert b"transfer-encoding" not in head.lower(), f"an HTTP/1.0 client got Transfer-Encoding: {head!r}"
    assert body == b"x" * size, f"body is {len(body)} bytes, starts {body[:20]!r}"
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert m is None or int(m[1]) == size


def test_head_has_headers_but_no_body(echo_gw: Gateway) -> None:
    data = get("/sized?bytes=1000", method="HEAD") + get("/after")
    replies, talk = exchange(echo_gw, data, want=2, methods=("HEAD", "GET"))
    assert len(replies) == 2, talk
    assert replies[0].status == 200 and replies[0].headers.get("Content-Length") == "1000"
    assert replies[0].body == b""
    # The next response starts right after the HEAD response's head: no stray body bytes between.
    first_head_end = talk.data.index(b"\r\n\r\n") + 4
    assert talk.data[first_head_end:].startswith(b"HTTP/1.1 200 "), talk.data[:600]
    assert echoed(replies[1])["path"] == "/after"


def test_head_body_sent_by_upstream_anyway_not_passed(
    gateway_factory: Callable[..., Gateway], recorder: RecordingUpstream
) -> None:
    recorder.reply = answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nSTRAY-BYTES")
    gw = gateway_factory(workspace(recorder.port))
    data = get("/h", method="HEAD") + get("/after")
    replies, talk = exchange(gw, data, want=2, methods=("HEAD", "GET"))
    assert len(replies) == 2 and [r.status for r in replies] == [200, 200], talk
    first_head_end = talk.data.index(b"\r\n\r\n") + 4
    assert talk.data[first_head_end:].startswith(b"HTTP/1.1 200 "), talk.data[:600]
    assert replies[0].headers.get("Content-Length") == "11"
    assert talk.data.count(b"STRAY-BYTES") == 1, "the HEAD response carried body bytes"
    assert replies[1].body == b"STRAY-BYTES"


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", id="204"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", id="304"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
                     id="304-with-length"),
    ],
)
def test_204_and_304_pass_without_body(
    gateway_factory: Callable[..., Gateway], recorder: RecordingUpstream, response: bytes
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"

    def reply(buf: bytes) -> bytes | None:
        if not head_complete(buf):
            return None
        return ok if b"GET /next " in buf else response

    recorder.reply = reply
    gw = gateway_factory(workspace(recorder.port))
    replies, talk = exchange(gw, get("/empty") + get("/next"), want=2)
    assert [r.status for r in replies] == [int(response[9:12]), 200], talk
    head_end = talk.data.index(b"\r\n\r\n") + 4
    head = talk.data[:head_end].lower()
    assert b"transfer-encoding" not in head, head
    assert talk.data[head_end:].startswith(b"HTTP/1.1 200 "), f"bytes after a bodiless response: {talk.data!r}"
    assert replies[0].body == b"" and replies[1].body == b"next"


def test_expect_100_continue(echo_gw: Gateway) -> None:
    head = f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
    with echo_gw.tls_socket(HOST) as s:
        s.sendall(head)
        interim = read_until(s, 5, lambda b: b"\r\n\r\n" in b)
        assert interim.data.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        assert interim.data.endswith(b"\r\n\r\n"), f"the final response came before the body was sent: {interim}"
        s.sendall(b"hello")
        final = read_until(s, 5, lambda b: len(parse_replies(b, closed=False)) >= 1, interim.data)
    replies = parse_replies(final.data, closed=final.closed)
    assert len(replies) == 1, final
    doc = echoed(replies[0])
    assert doc["body"] == "hello" and doc["body_len"] == 5
    headers = doc["headers"]
    assert isinstance(headers, list) and values(headers, "Expect") == []
