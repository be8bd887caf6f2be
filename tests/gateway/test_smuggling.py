"""Request smuggling and message framing, end to end through a real gateway.

Every request here is written as raw bytes over TLS, and every assertion is about
bytes someone actually received: the client's answer (parsed strictly), whether the
gateway closed the connection, and what the upstream got on each of its connections
(also parsed strictly, so an ambiguous head or body passed on by the gateway fails
the test even when the client got the answer it expected).

A smuggling attempt hides `GET /smuggled` after the body; if any reading of the
framing other than the gateway's lets those bytes through, they show up at the
upstream, which every rejection test forbids.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wsgate_testing import Gateway, ThreadedServer, read_until, ws_host

pytestmark = pytest.mark.slow

HOST = ws_host(8080)
OTHER = ws_host(8081)
HB = HOST.encode()
H = b"Host: " + HB + b"\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
# How long a client waits for the gateway; a close must come well before this.
WAIT = 5.0
CLOSED_WITHIN = 2.5


# --- a strict HTTP/1.1 message parser (RFC 9112, no leniency) -------------------------

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
VCHAR = rb"[!-~\x80-\xff]"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") (/[!-~]*|\*) HTTP/1\.1")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2}) [\t !-~\x80-\xff]*")
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[ \t]*((?:" + VCHAR + rb"(?:[ \t]*" + VCHAR + rb")*)?)[ \t]*")
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,8})((?:[ \t]*;[\t !-~\x80-\xff]*)?)")
LENGTH = re.compile(rb"[0-9]{1,15}")


class Malformed(Exception):
    """Bytes that are not one unambiguous HTTP/1.1 message."""


@dataclass
class Message:
    start: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    framing: str = "none"
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def values(self, name: str) -> list[bytes]:
        low = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == low]

    @property
    def method(self) -> bytes:
        return self.start.split(b" ")[0]

    @property
    def target(self) -> bytes:
        return self.start.split(b" ")[1]

    @property
    def status(self) -> int:
        return int(self.start.split(b" ")[1])


def parse_head(buf: bytes, pos: int, start_line: re.Pattern[bytes]) -> tuple[Message, int] | None:
    """The head at `pos` and the offset where its body starts; None if incomplete."""
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        return None
    lines = buf[pos:end].split(b"\r\n")
    if start_line.fullmatch(lines[0]) is None:
        raise Malformed(f"bad start line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        m = FIELD_LINE.fullmatch(line)
        if m is None:
            raise Malformed(f"bad field line {line[:200]!r}")
        headers.append((m[1], m[2]))
    return Message(lines[0], headers), end + 4


def parse_chunked(buf: bytes, pos: int, msg: Message) -> int | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 4096:
                raise Malformed("chunk size line too long")
            return None
        m = CHUNK_LINE.fullmatch(buf[pos:eol])
        if m is None:
            raise Malformed(f"bad chunk size line {buf[pos:eol][:100]!r}")
        size = int(m[1], 16)
        pos = eol + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise Malformed("chunk data not followed by CRLF")
        pos += size + 2
    trailers = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = buf[pos:eol]
        pos = eol + 2
        if not line:
            break
        m = FIELD_LINE.fullmatch(line)
        if m is None:
            raise Malformed(f"bad trailer line {line!r}")
        trailers.append((m[1], m[2]))
    msg.body = bytes(body)
    msg.trailers = trailers
    msg.framing = "chunked"
    return pos


def parse_message(buf: bytes, pos: int, *, request: bool, eof: bool = False, head: bool = False) -> tuple[
    Message, int
] | None:
    """One complete message at `pos` and the offset after it; None if incomplete; Malformed if not valid."""
    parsed = parse_head(buf, pos, REQUEST_LINE if request else STATUS_LINE)
    if parsed is None:
        return None
    msg, pos = parsed
    te = msg.values("transfer-encoding")
    cl = msg.values("content-length")
    if len(cl) > 1 or (cl and LENGTH.fullmatch(cl[0]) is None):
        raise Malformed(f"bad Content-Length {cl!r}")
    if te and (len(te) != 1 or te[0].lower() != b"chunked" or cl):
        raise Malformed(f"ambiguous framing: Transfer-Encoding {te!r}, Content-Length {cl!r}")
    if not request and (head or msg.status in (204, 304) or msg.status < 200):
        msg.framing = "none"
        return msg, pos
    if te:
        end = parse_chunked(buf, pos, msg)
        return None if end is None else (msg, end)
    if cl:
        n = int(cl[0])
        if len(buf) - pos < n:
            return None
        msg.body = buf[pos : pos + n]
        msg.framing = "length"
        return msg, pos + n
    if request:
        msg.framing = "none"
        return msg, pos
    if not eof:
        return None
    msg.body = buf[pos:]
    msg.framing = "close"
    return msg, len(buf)


def parse_all(buf: bytes, *, request: bool, eof: bool = False, head: bool = False) -> tuple[
    list[Message], bytes, str | None
]:
    """Complete messages, the unparsed rest, and the parse error if the rest is malformed."""
    out: list[Message] = []
    pos = 0
    while pos < len(buf):
        try:
            got = parse_message(buf, pos, request=request, eof=eof, head=head)
        except Malformed as e:
            return out, buf[pos:], str(e)
        if got is None:
            break
        msg, pos = got
        out.append(msg)
    return out, buf[pos:], None


# --- an upstream that records and checks everything ---------------------------------

Reply = Callable[[Message], tuple[bytes, bool]]


def ok_reply(req: Message) -> tuple[bytes, bool]:
    body = b"%s %s %d" % (req.method, req.target, len(req.body))
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), False


@dataclass
class UpConn:
    data: bytearray = field(default_factory=bytearray)
    requests: list[Message] = field(default_factory=list)
    parsed_to: int = 0
    error: str | None = None
    eof: bool = False  # the gateway closed this connection
    closed_by_us: bool = False


@dataclass
class Traffic:
    """What one upstream connection received since a mark."""

    data: bytes
    requests: list[Message]
    incomplete: bool
    error: str | None
    eof: bool


class StrictUpstream(ThreadedServer):
    """A TCP upstream in threads: records every byte per connection, parses it strictly, answers each request."""

    def __init__(self, reply: Reply = ok_reply) -> None:
        self.reply = reply
        self.conns: list[UpConn] = []
        super().__init__()
        self.lock = self._lock

    def accepted(self, sock: socket.socket) -> Callable[[], None]:
        st = UpConn()
        with self.lock:
            self.conns.append(st)
        return lambda: self._serve(sock, st)

    def _serve(self, conn: socket.socket, st: UpConn) -> None:
        conn.settimeout(None)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    st.eof = True
                    return
                with self.lock:
                    st.data += data
                while st.error is None:
                    try:
                        got = parse_message(bytes(st.data), st.parsed_to, request=True)
                    except Malformed as e:
                        st.error = str(e)
                        break
                    if got is None:
                        break
                    msg, end = got
                    with self.lock:
                        st.requests.append(msg)
                        st.parsed_to = end
                    out, close = self.reply(msg)
                    try:
                        conn.sendall(out)
                    except OSError:
                        return
                    if close:
                        st.closed_by_us = True
                        return

    def mark(self) -> dict[int, tuple[int, int]]:
        with self.lock:
            return {i: (len(c.data), len(c.requests)) for i, c in enumerate(self.conns)}

    def since(self, mark: dict[int, tuple[int, int]]) -> list[Traffic]:
        out = []
        with self.lock:
            for i, c in enumerate(self.conns):
                nbytes, nreq = mark.get(i, (0, 0))
                if len(c.data) == nbytes and i in mark:
                    continue
                out.append(
                    Traffic(bytes(c.data[nbytes:]), c.requests[nreq:], c.parsed_to < len(c.data), c.error, c.eof)
                )
        return out


# --- a raw TLS client -----------------------------------------------------------------


@dataclass
class Answer:
    data: bytes
    closed: bool
    elapsed: float
    responses: list[Message]
    rest: bytes
    error: str | None

    def describe(self) -> str:
        return f"closed={self.closed} after {self.elapsed:.2f}s, got {self.data[:600]!r}"


def converse(
    gw: Gateway, data: bytes, *, host: str = HOST, want: int | None = None, timeout: float = WAIT, head: bool = False
) -> Answer:
    """Sends `data` in one write; reads until the gateway closes, `want` responses arrived, or `timeout`."""
    start = time.monotonic()

    def done(b: bytes) -> bool:
        return want is not None and len(parse_all(b, request=False, head=head)[0]) >= want

    with gw.tls_socket(host, timeout) as s:
        # The gateway may close while a large request is still being written; read what it said.
        with contextlib.suppress(OSError):
            s.sendall(data)
        got = read_until(s, start + timeout - time.monotonic(), done, start=start)
    buf, closed = got.data, got.closed
    responses, rest, error = parse_all(buf, request=False, eof=closed, head=head)
    return Answer(buf, closed, got.elapsed, responses, rest, error)


# --- fixtures -----------------------------------------------------------------------


def workspaces(*ports: tuple[int, int]) -> str:
    return "".join(
        f'\n[[workspaces]]\nid = "abc"\nport = {wport}\nupstream = "127.0.0.1:{up}"\npublic = true\n'
        for wport, up in ports
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[StrictUpstream]:
    up = StrictUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: StrictUpstream) -> Iterator[Gateway]:
    gw = Gateway(Path(tmp_path_factory.mktemp("smuggling")), workspaces((8080, upstream.port)))
    gw.start()
    yield gw
    gw.stop()


def settled(upstream: StrictUpstream, mark: dict[int, tuple[int, int]], delay: float = 0.3) -> list[Traffic]:
    """Upstream traffic since `mark`, after giving anything in flight time to arrive (and to be closed)."""
    time.sleep(delay)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        traffic = upstream.since(mark)
        if all(not t.incomplete or t.eof for t in traffic):
            return traffic
        time.sleep(0.05)
    return upstream.since(mark)


def assert_upstream_safe(traffic: list[Traffic], *, allowed: int = 1) -> None:
    """Nothing smuggled: at most `allowed` complete, strictly valid requests; a cut-off request's connection closed."""
    for t in traffic:
        assert t.error is None, f"upstream got a malformed request ({t.error}): {t.data[:600]!r}"
        assert b"/smuggled" not in t.data, f"the smuggled request reached the upstream: {t.data[:600]!r}"
        if t.incomplete:
            assert t.eof, f"an unfinished request was left open on a reusable upstream connection: {t.data[:600]!r}"
    complete = [r for t in traffic for r in t.requests]
    assert len(complete) <= allowed, f"upstream got {len(complete)} requests: {[r.start for r in complete]}"


def assert_rejected(answer: Answer, statuses: tuple[int, ...] = (400,)) -> None:
    assert answer.error is None, f"gateway's answer is not valid HTTP ({answer.error}); {answer.describe()}"
    assert answer.responses, f"no response; {answer.describe()}"
    assert answer.responses[0].status in statuses, answer.describe()
    assert len(answer.responses) == 1 and not answer.rest, f"more than one answer; {answer.describe()}"
    assert answer.closed, f"gateway kept the connection open; {answer.describe()}"
    assert answer.elapsed < CLOSED_WITHIN, f"close came only after {answer.elapsed:.2f}s (a timeout, not a rejection)"
    assert b"Traceback" not in answer.data


# --- the cases --------------------------------------------------------------------------

CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
CHUNKED_TAIL = CHUNKED_HELLO + SMUGGLED


def post(*headers: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST / " + version + b"\r\n" + H + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def cl_body() -> bytes:
    return b"hello" + SMUGGLED


def te(value: bytes) -> bytes:
    return post(b"Transfer-Encoding: " + value, body=CHUNKED_HELLO + SMUGGLED)


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body + SMUGGLED)


def get_with(*lines: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\n" + H + b"".join(lines) + b"\r\n" + SMUGGLED


CL_TE_TAIL = b"0\r\n\r\n" + SMUGGLED

REJECTED: list[tuple[str, bytes, tuple[int, ...]]] = [
    # Content-Length together with Transfer-Encoding, either order.
    ("cl-then-te", post(b"Content-Length: %d" % len(CL_TE_TAIL), b"Transfer-Encoding: chunked", body=CL_TE_TAIL),
     (400,)),
    ("te-then-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 3", body=CL_TE_TAIL), (400,)),
    ("cl-and-te-gzip", post(b"Content-Length: 5", b"Transfer-Encoding: gzip, chunked", body=CL_TE_TAIL), (400,)),
    # Content-Length variants.
    ("cl-twice-different", post(b"Content-Length: 5", b"Content-Length: %d" % len(cl_body()), body=cl_body()), (400,)),
    ("cl-twice-same", post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), (400,)),
    ("cl-plus", post(b"Content-Length: +5", body=cl_body()), (400,)),
    ("cl-minus", post(b"Content-Length: -5", body=cl_body()), (400,)),
    ("cl-list", post(b"Content-Length: 5, 5", body=cl_body()), (400,)),
    ("cl-list-nospace", post(b"Content-Length: 5,5", body=cl_body()), (400,)),
    ("cl-trailing-junk", post(b"Content-Length: 5abc", body=cl_body()), (400,)),
    ("cl-leading-junk", post(b"Content-Length: abc5", body=cl_body()), (400,)),
    ("cl-hex", post(b"Content-Length: 0x5", body=cl_body()), (400,)),
    ("cl-underscore", post(b"Content-Length: 5_0", body=cl_body()), (400,)),
    ("cl-decimal", post(b"Content-Length: 5.0", body=cl_body()), (400,)),
    ("cl-vtab", post(b"Content-Length: \x0b5", body=cl_body()), (400,)),
    ("cl-empty", post(b"Content-Length: ", body=cl_body()), (400,)),
    ("cl-huge", post(b"Content-Length: 99999999999999999999999999", body=cl_body()), (400, 413)),
    # Transfer-Encoding other than a lone, final `chunked`.
    ("te-gzip", te(b"gzip"), (400,)),
    ("te-chunked-gzip", te(b"chunked, gzip"), (400,)),
    ("te-gzip-chunked", te(b"gzip, chunked"), (400,)),
    ("te-xchunked", te(b"xchunked"), (400,)),
    ("te-chunkedx", te(b"chunkedx"), (400,)),
    ("te-identity", te(b"identity"), (400,)),
    ("te-chunked-chunked", te(b"chunked, chunked"), (400,)),
    ("te-two-headers", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=CHUNKED_TAIL), (400,)),
    ("te-two-headers-gzip", post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", body=CHUNKED_TAIL), (400,)),
    ("te-vtab-chunked", te(b"\x0bchunked"), (400,)),
    ("te-formfeed-chunked", te(b"\x0cchunked"), (400,)),
    ("te-chunked-vtab", te(b"chunked\x0b"), (400,)),
    # llhttp does not frame a trailing tab as chunked, so the gateway refuses it before forwarding.
    ("te-chunked-trailing-tab", te(b"chunked\t"), (400,)),
    ("te-empty", te(b""), (400,)),
    ("te-http10", post(b"Transfer-Encoding: chunked", body=CHUNKED_HELLO + SMUGGLED, version=b"HTTP/1.0"), (400,)),
    ("te-http10-alone", post(b"Transfer-Encoding: chunked", body=CHUNKED_HELLO, version=b"HTTP/1.0"), (400,)),
    # Bad chunk framing.
    ("chunk-size-zz", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk-size-negative", chunked(b"-1\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk-size-overflow", chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk-missing-crlf", chunked(b"5\r\nhello0\r\n\r\n"), (400,)),
    ("chunk-data-too-long", chunked(b"3\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk-size-lf-only", chunked(b"5\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk-data-lf-only", chunked(b"5\r\nhello\n0\r\n\r\n"), (400,)),
    ("last-chunk-lf-only", chunked(b"5\r\nhello\r\n0\n\n"), (400,)),
    # Header syntax.
    ("obs-fold-space", get_with(b"X-Foo: a\r\n", b" b\r\n"), (400,)),
    ("obs-fold-tab", get_with(b"X-Foo: a\r\n", b"\tb\r\n"), (400,)),
    ("obs-fold-hides-te", post(b"Content-Length: 5", b"X-Foo: a\r\n Transfer-Encoding: chunked", body=cl_body()),
     (400,)),
    ("bare-cr-in-value", get_with(b"X-Foo: a\rb\r\n"), (400,)),
    ("bare-cr-terminator", post(b"X-Foo: a\rContent-Length: 5", body=cl_body()), (400,)),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: " + HB + b"\n\n" + SMUGGLED, (400,)),
    ("bare-lf-header", post(b"X-Foo: a\nTransfer-Encoding: chunked", b"Content-Length: 5", body=cl_body()), (400,)),
    ("nul-in-value", get_with(b"X-Foo: a\x00b\r\n"), (400,)),
    ("nul-in-name", get_with(b"X-F\x00oo: a\r\n"), (400,)),
    ("nul-in-url", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("space-before-colon", post(b"Content-Length : 5", body=cl_body()), (400,)),
    ("tab-before-colon", post(b"Transfer-Encoding\t: chunked", body=CHUNKED_HELLO + SMUGGLED), (400,)),
    ("name-with-at", get_with(b"X@Foo: a\r\n"), (400,)),
    ("name-with-space", get_with(b"X Foo: a\r\n"), (400,)),
    ("name-with-paren", get_with(b"X(Foo): a\r\n"), (400,)),
    ("name-with-quote", get_with(b'X"Foo: a\r\n'), (400,)),
    ("name-with-slash", get_with(b"X/Foo: a\r\n"), (400,)),
    ("name-with-del", get_with(b"X\x7fFoo: a\r\n"), (400,)),
    ("name-empty", get_with(b": a\r\n"), (400,)),
    ("line-without-colon", get_with(b"NoColonHere\r\n"), (400,)),
    ("leading-space-first-header", b"GET / HTTP/1.1\r\n " + H + b"\r\n" + SMUGGLED, (400,)),
    ("two-hosts", get_with(b"Host: other.example\r\n"), (400,)),
    ("no-host", b"GET / HTTP/1.1\r\nX-Foo: a\r\n\r\n" + SMUGGLED, (400,)),
    # Request line.
    ("two-spaces-after-method", b"GET  / HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("two-spaces-before-version", b"GET /  HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("absolute-form", b"GET http://evil/ HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("authority-form-get", b"GET evil:80 HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("missing-version", b"GET /\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("http09", b"GET /\r\n\r\n", (400,)),
    ("version-junk", b"GET / HTTP/1.1x\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("lowercase-version", b"GET / http/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("http12", b"GET / HTTP/1.2\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("http20-line", b"GET / HTTP/2.0\r\n" + H + b"\r\n" + SMUGGLED, (400,)),
    ("upgrade-h2c", b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
     b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + SMUGGLED, (400,)),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400, 405)),
    ("connect", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n" + SMUGGLED, (400, 405)),
    ("connect-workspace-host", b"CONNECT " + HB + b":443 HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED, (400, 405)),
]


@pytest.mark.parametrize(("data", "statuses"), [pytest.param(d, s, id=i) for i, d, s in REJECTED])
def test_rejected_and_closed_and_nothing_smuggled(
    gateway: Gateway, upstream: StrictUpstream, data: bytes, statuses: tuple[int, ...]
) -> None:
    mark = upstream.mark()
    answer = converse(gateway, data)
    assert_rejected(answer, statuses)
    assert_upstream_safe(settled(upstream, mark))
    assert gateway.proc is not None and gateway.proc.poll() is None, "gateway process died"


# Positive controls: the valid member of each family goes through, so the rejections above are not "reject all".
ACCEPTED: list[tuple[str, bytes, bytes, bytes]] = [
    # (id, request, method + target upstream must see, body upstream must see)
    ("content-length", post(b"Content-Length: 5", body=b"hello"), b"POST /", b"hello"),
    ("content-length-zero", post(b"Content-Length: 0"), b"POST /", b""),
    ("chunked", post(b"Transfer-Encoding: chunked", body=CHUNKED_HELLO), b"POST /", b"hello"),
    ("chunked-mixed-case", post(b"Transfer-Encoding: Chunked", body=CHUNKED_HELLO), b"POST /", b"hello"),
    ("chunked-ows", post(b"Transfer-Encoding:   chunked ", body=CHUNKED_HELLO), b"POST /", b"hello"),
    ("content-length-ows", post(b"Content-Length: \t5 ", body=b"hello"), b"POST /", b"hello"),
    ("chunked-upper-hex", post(b"Transfer-Encoding: chunked", body=b"A\r\n0123456789\r\n0\r\n\r\n"), b"POST /",
     b"0123456789"),
    ("plain-header", b"GET /p?q=1 HTTP/1.1\r\n" + H + b"X-Foo: a\tb  c\r\nX-Empty:\r\n\r\n", b"GET /p?q=1", b""),
    ("options-star", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", b"OPTIONS *", b""),
    ("http10-content-length", post(b"Content-Length: 5", body=b"hello", version=b"HTTP/1.0"), b"POST /", b"hello"),
]


@pytest.mark.parametrize(("data", "start", "body"), [pytest.param(d, s, b, id=i) for i, d, s, b in ACCEPTED])
def test_valid_framing_reaches_upstream(
    gateway: Gateway, upstream: StrictUpstream, data: bytes, start: bytes, body: bytes
) -> None:
    mark = upstream.mark()
    answer = converse(gateway, data, want=1)
    assert answer.error is None and answer.responses, answer.describe()
    assert answer.responses[0].status == 200, answer.describe()
    assert answer.responses[0].body == start + b" %d" % len(body)
    traffic = settled(upstream, mark)
    assert_upstream_safe(traffic)
    (req,) = [r for t in traffic for r in t.requests]
    assert req.start == start + b" HTTP/1.1"
    assert req.body == body


def test_chunk_extensions_and_trailers_arrive_unambiguous(gateway: Gateway, upstream: StrictUpstream) -> None:
    body = (
        b"5;name=value\r\nhello\r\n"
        b'6;foo="bar baz";x\r\n world\r\n'
        b"1a\r\n" + b"abcdefghijklmnopqrstuvwxyz" + b"\r\n"
        b"0;last=1\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    data = b"POST /ext HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Other\r\n\r\n" + body
    mark = upstream.mark()
    answer = converse(gateway, data, want=1)
    assert answer.responses and answer.responses[0].status == 200, answer.describe()
    traffic = settled(upstream, mark)
    assert_upstream_safe(traffic)
    (req,) = [r for t in traffic for r in t.requests]
    assert req.framing == "chunked", req.headers
    assert req.values("transfer-encoding") == [b"chunked"]
    assert req.values("content-length") == []
    assert req.body == b"hello worldabcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def fresh(gateway_factory: Callable[..., Gateway]) -> Iterator[tuple[Gateway, StrictUpstream]]:
    """A gateway of its own, so whether an idle upstream connection is pooled is up to the test."""
    up = StrictUpstream()
    gw = gateway_factory(workspaces((8080, up.port)))
    yield gw, up
    up.close()


def warm_up(gw: Gateway, pooled: bool) -> None:
    """With `pooled`, leaves one idle keep-alive upstream connection in the gateway's pool."""
    if pooled:
        warm = converse(gw, b"GET /warm HTTP/1.1\r\n" + H + b"\r\n", want=1)
        assert warm.responses and warm.responses[0].status == 200, warm.describe()
        time.sleep(0.1)


@pytest.mark.parametrize("pooled", [False, True], ids=["cold", "pooled"])
def test_pipelined_requests_answered_in_order(fresh: tuple[Gateway, StrictUpstream], pooled: bool) -> None:
    gw, upstream = fresh
    warm_up(gw, pooled)
    data = (
        b"GET /first HTTP/1.1\r\n" + H + b"\r\n"
        b"POST /second HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
        b"POST /third HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO
    )
    mark = upstream.mark()
    answer = converse(gw, data, want=3)
    assert answer.error is None, answer.describe()
    assert [r.status for r in answer.responses] == [200, 200, 200], answer.describe()
    assert [r.body for r in answer.responses] == [b"GET /first 0", b"POST /second 5", b"POST /third 5"]
    traffic = settled(upstream, mark)
    assert_upstream_safe(traffic, allowed=3)
    assert [r.start.split(b" ")[1] for t in traffic for r in t.requests] == [b"/first", b"/second", b"/third"]


@pytest.mark.parametrize("pooled", [False, True], ids=["cold", "pooled"])
@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(post(b"Content-Length: %d" % len(CL_TE_TAIL), b"Transfer-Encoding: chunked", body=CL_TE_TAIL),
                     id="cl-te"),
        pytest.param(te(b"chunked, gzip"), id="te-chunked-gzip"),
        pytest.param(get_with(b"X-Foo: a\r\n", b" b\r\n"), id="obs-fold"),
    ],
)
def test_valid_request_then_smuggling_in_same_write(
    fresh: tuple[Gateway, StrictUpstream], attack: bytes, pooled: bool
) -> None:
    gw, upstream = fresh
    warm_up(gw, pooled)
    data = b"GET /first HTTP/1.1\r\n" + H + b"\r\n" + attack
    mark = upstream.mark()
    answer = converse(gw, data)
    assert answer.error is None, answer.describe()
    statuses = [r.status for r in answer.responses]
    assert statuses[:1] == [200] and answer.responses[0].body == b"GET /first 0", answer.describe()
    assert statuses == [200, 400], f"expected the first answered, then a 400 for the attack; {answer.describe()}"
    assert answer.closed and answer.elapsed < CLOSED_WITHIN, answer.describe()
    traffic = settled(upstream, mark)
    assert_upstream_safe(traffic, allowed=1)
    assert [r.start for t in traffic for r in t.requests] == [b"GET /first HTTP/1.1"]


# --- upstreams that misbehave --------------------------------------------------------------

BIG_VALUE = b"a" * 70000
MANY_HEADERS = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 500) for i in range(150))

BAD_RESPONSES: list[tuple[str, bytes]] = [
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("te-and-cl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("two-content-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("bad-content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello"),
    ("status-not-a-number", b"HTTP/1.1 2x0 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("status-line-bad-protocol", b"XTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("status-line-missing-status", b"HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
    ("garbage", b"\x00\x16\x03garbage, not http at all \xff\xfe\r\n\r\nhello"),
    ("http09-style-body", b"hello there, no status line\r\n\r\n"),
    ("nul-in-header", b"HTTP/1.1 200 OK\r\nX-Foo: a\x00b\r\nContent-Length: 5\r\n\r\nhello"),
    ("obs-fold-header", b"HTTP/1.1 200 OK\r\nX-Foo: a\r\n Set-Cookie: hello=1\r\nContent-Length: 5\r\n\r\nhello"),
    ("one-huge-header", b"HTTP/1.1 200 OK\r\nX-Big: " + BIG_VALUE + b"\r\nContent-Length: 5\r\n\r\nhello"),
    ("many-headers-over-64k", b"HTTP/1.1 200 OK\r\n" + MANY_HEADERS + b"Content-Length: 5\r\n\r\nhello"),
    ("too-many-headers", b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * 300 + b"Content-Length: 5\r\n\r\nhello"),
    ("closed-before-answer", b""),
]


@pytest.fixture
def bad_pair(gateway_factory: Callable[..., Gateway]) -> Iterator[tuple[Gateway, StrictUpstream, StrictUpstream]]:
    bad = StrictUpstream()
    good = StrictUpstream()
    gw = gateway_factory(workspaces((8080, bad.port), (8081, good.port)))
    yield gw, bad, good
    bad.close()
    good.close()


def assert_still_serving(gw: Gateway, bad: StrictUpstream) -> None:
    assert gw.proc is not None and gw.proc.poll() is None, "gateway process died"
    after = converse(gw, b"GET /next HTTP/1.1\r\nHost: " + OTHER.encode() + b"\r\n\r\n", host=OTHER, want=1)
    assert after.responses and after.responses[0].status == 200, after.describe()
    assert after.responses[0].body == b"GET /next 0"
    # The misbehaving upstream, now fixed, gets a clean connection (no leftover bytes reused).
    bad.reply = ok_reply
    again = converse(gw, b"GET /again HTTP/1.1\r\n" + H + b"\r\n", want=1)
    assert again.responses and again.responses[0].status == 200, again.describe()
    assert again.responses[0].body == b"GET /again 0", again.describe()


@pytest.mark.parametrize("response", [pytest.param(r, id=i) for i, r in BAD_RESPONSES])
def test_malformed_upstream_response_gives_502(
    bad_pair: tuple[Gateway, StrictUpstream, StrictUpstream], response: bytes
) -> None:
    gw, bad, _ = bad_pair
    bad.reply = lambda req: (response, True)
    answer = converse(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n", want=1)
    assert answer.error is None, answer.describe()
    assert answer.responses and answer.responses[0].status == 502, answer.describe()
    assert len(answer.responses) == 1 and not answer.rest, answer.describe()
    for leaked in (b"hello", b"garbage", b"aaaaaaaaaa", b"X-Pad", b"X-Foo", b"X-H:"):
        assert leaked not in answer.data, f"upstream bytes {leaked!r} passed through; {answer.describe()}"
    assert b"Traceback" not in answer.data
    assert b"127.0.0.1:%d" % bad.port not in answer.data
    assert_still_serving(gw, bad)


def test_upstream_closes_mid_body_with_content_length(bad_pair: tuple[Gateway, StrictUpstream, StrictUpstream]) -> None:
    gw, bad, _ = bad_pair
    bad.reply = lambda req: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", True)
    answer = converse(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert answer.closed and answer.elapsed < CLOSED_WITHIN, answer.describe()
    # Either a 502 (nothing sent yet) or the head and fewer body bytes than announced, then a cut.
    if answer.responses:
        assert answer.responses[0].status == 502, f"a truncated body was presented as complete; {answer.describe()}"
    else:
        head, _, body = answer.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer.describe()
        assert re.search(rb"(?i)\r\ncontent-length: *100\r?\n?", head + b"\r\n"), answer.describe()
        assert len(body) < 100
    assert_still_serving(gw, bad)


def test_upstream_closes_mid_chunked_body(bad_pair: tuple[Gateway, StrictUpstream, StrictUpstream]) -> None:
    gw, bad, _ = bad_pair
    bad.reply = lambda req: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", True)
    answer = converse(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert answer.closed and answer.elapsed < CLOSED_WITHIN, answer.describe()
    if answer.responses:
        # A complete response is only acceptable if it is an error, never the cut body made to look whole.
        assert answer.responses[0].status == 502, f"a truncated body was presented as complete; {answer.describe()}"
    else:
        assert answer.data.startswith(b"HTTP/1.1 200"), answer.describe()
        assert not answer.data.endswith(b"0\r\n\r\n"), answer.describe()
    assert_still_serving(gw, bad)


def test_bad_chunk_in_upstream_response_cuts_connection(
    bad_pair: tuple[Gateway, StrictUpstream, StrictUpstream],
) -> None:
    gw, bad, _ = bad_pair
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    bad.reply = lambda req: (head + b"5\r\nhello\r\nzz\r\nevil\r\n0\r\n\r\n", False)
    answer = converse(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert answer.closed and answer.elapsed < CLOSED_WITHIN, answer.describe()
    assert b"evil" not in answer.data, answer.describe()
    if answer.responses:
        assert answer.responses[0].status == 502, f"a broken body was presented as complete; {answer.describe()}"
    else:
        assert not answer.data.endswith(b"0\r\n\r\n"), answer.describe()
    assert_still_serving(gw, bad)


def test_close_delimited_upstream_body_is_framed_for_client(
    bad_pair: tuple[Gateway, StrictUpstream, StrictUpstream],
) -> None:
    """Control for the cut cases: a body that legitimately ends at close arrives whole, re-framed."""
    gw, bad, _ = bad_pair
    bad.reply = lambda req: (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", True)
    answer = converse(gw, b"GET / HTTP/1.1\r\n" + H + b"\r\n", want=1)
    assert answer.error is None and answer.responses, answer.describe()
    assert answer.responses[0].status == 200
    assert answer.responses[0].framing == "chunked"
    assert answer.responses[0].body == b"all of it"
