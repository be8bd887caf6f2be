"""The forwarding hot path: asyncio protocols with the llhttp parser (httptools).

A textbook aiohttp proxy spends most of each request building request and
response objects; here a client connection is one protocol object that parses
with llhttp, picks the route, and writes a rebuilt head and the streamed body
straight into a pooled upstream connection. Back-pressure is wired both ways
with pause_reading/resume_reading, so a slow side never makes the gateway
buffer without bound. After a WebSocket 101 both sides become a byte tunnel.

Writes wait for the end of the event loop's pass (`Cork`): each connection's
pieces go out as one TLS record and one syscall, and the peers the gateway
wakes (clients, upstreams) are woken in one burst after all the work that
pass found, instead of in the middle of it. Measured on 2 cores with the
small-GET benchmark, that cut the CPU per proxied request by about a third.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from auth.policy import PUBLIC
from auth.principal import Principal
from gateway import http1
from gateway.guard import COOKIE_PREFIX_BYTES, NOT_FOUND_MESSAGE, TOKEN_PREFIX_BYTES, Answer, Guard, Pass
from gateway.http1 import BadRequest, Headers
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.wsframes import GOING_AWAY, FrameCursor, close_frame
from launcher.base import NotRunning
from routing.paths import PathError, canonical_target
from routing.table import BY_PATH, INTERNAL, MAIN, NOWHERE, Route, RouteTable, Upstream

if TYPE_CHECKING:
    from gateway.worker import Gateway

log = logging.getLogger("wsgate.proxy")

# Reasons the client side stops reading (bit flags, resumed only when all clear).
_PAUSE_UPSTREAM: Final = 1  # upstream's write buffer is full
_PAUSE_PIPELINE: Final = 2  # a further request arrived before this response ended
_PAUSE_CONNECT: Final = 4  # waiting for an upstream connection
_PAUSE_WRITE: Final = 8  # the client is not reading what it is sent

# Methods that may be sent again when a reused upstream connection turns out to be closed.
_RETRYABLE: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})

# Requests a client may pipeline behind the one being answered.
_MAX_PIPELINE: Final = 64

_WRITE_HIGH: Final = 256 * 1024
_WRITE_LOW: Final = 64 * 1024

_MAX_RESPONSE_HEAD: Final = 64 * 1024

# Seconds a closed client connection reads on for the client to close its end (see ClientConnection._close).
_LINGER: Final = 5.0

# Bytes a connection may hold back for the end of the loop's pass (see Corked).
_FLUSH_AT: Final = 64 * 1024

# The request headers `_read_head` reads by name, as a mask of their lengths (http1.length_mask).
_HEAD_LENGTHS: Final = http1.length_mask(
    {b"host", b"accept", b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"cookie", b"authorization"}
)


class _Spent:
    """The protocol of the inert parsers that closed connections take (see below)."""


# A parser holds its protocol's bound callbacks, and so does a client's transport (its bound
# data_received), after connection_lost too: connection -> parser -> connection and
# connection -> transport -> connection are cycles that only the cyclic garbage collector
# frees, with everything the connection still holds (transport, TLS state, buffers: about 30
# objects). A closed connection lets go of its transport and takes one of these inert
# parsers, so plain reference counting frees it; the collector's runs (tens of microseconds
# per new TLS connection) mostly go away.
_SPENT_REQUEST_PARSER: Final = httptools.HttpRequestParser(_Spent())
_SPENT_RESPONSE_PARSER: Final = httptools.HttpResponseParser(_Spent())


class Cork:
    """The connections with writes waiting for the end of this pass of the event loop.

    Waking a peer that sleeps in epoll (an IPI to another CPU; on a VM, an exit) costs more
    than the write itself. Sending everything once the pass's events are handled wakes each
    peer once, back to back, and the gateway is not preempted by the peers it woke halfway
    through its batch. A pass is short: a flush follows before the loop polls again.
    """

    __slots__ = ("dirty", "flush_soon", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Corked] = []
        # Bound once: scheduled on every pass that writes, a fresh bound method each time costs.
        self.flush_soon: Callable[[], None] = self.flush

    def add(self, conn: Corked) -> None:
        if not self.dirty:
            self.loop.call_soon(self.flush_soon)
        self.dirty.append(conn)

    def flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:  # one broken transport must not hold back everyone else's bytes
                log.exception("write failed")
                if conn.transport is not None:
                    conn.transport.abort()


# What client connections decrypt into (see ClientConnection): one per process, which has one loop.
_READ_SIZE: Final = 256 * 1024
_READ_VIEW: Final = memoryview(bytearray(_READ_SIZE))


class HotState:
    """What the proxy reads on nearly every request, in one compiled object.

    The Gateway is a plain Python object: each of its attributes read here would cost a
    dictionary lookup, about forty of them per request. The Gateway owns this and writes
    it (the clock, draining, the limits and the guard on a config reload); connections keep
    a reference.
    """

    def __init__(
        self,
        metrics: Metrics,
        pool: UpstreamPool,
        *,
        guard: Guard,
        router: RouteTable,
        access_log: AccessLog,
        request_prefix: bytes,
    ) -> None:
        self.metrics = metrics
        self.pool = pool
        self.guard = guard  # replaced on a config reload
        self.router = router
        self.access_log = access_log
        # The sweeper's coarse clock (loop time), and whether the gateway is shutting down.
        self.now = 0.0
        self.draining = False
        self.request_prefix = request_prefix
        self.request_counter = 0
        # Limits and timeouts from the config (Gateway._settings).
        self.max_connections = 0
        self.header_timeout = 0.0
        self.keepalive_timeout = 0.0
        self.max_header_bytes = 0
        self.max_url_length = 0
        self.max_headers = 0
        self.max_body_bytes = 0
        self.idle_timeout = 0.0
        self.response_timeout = 0.0


class Corked(asyncio.BaseProtocol):
    """A connection whose writes are collected until its `Cork` flushes (or it closes).

    More than `_FLUSH_AT` waiting goes to the transport at once: its buffer limits (and the
    pause_writing that stops the other side) must see a pass that produces a lot, such as a
    client pipelining thousands of requests the gateway answers itself.
    """

    __slots__ = ("cork", "out", "out_size", "transport")

    def __init__(self, cork: Cork) -> None:
        self.cork = cork
        self.transport: asyncio.Transport | None = None
        # The pieces waiting for the flush, in order; None when nothing waits.
        self.out: list[bytes] | None = None
        self.out_size = 0

    def eof_received(self) -> bool | None:
        return None  # as asyncio.Protocol's default: the transport closes itself

    def send(self, data: bytes) -> None:
        out = self.out
        if out is None:
            if self.transport is None:
                return
            self.out = [data]
            self.out_size = len(data)
            self.cork.add(self)
        else:
            out.append(data)
            self.out_size += len(data)
        if self.out_size >= _FLUSH_AT:
            self.flush()

    def send_many(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.send(piece)

    def flush(self) -> None:
        out = self.out
        if out is None:
            return
        self.out = None
        t = self.transport
        if t is None or t.is_closing():
            return  # the peer is gone: nobody can read it
        self.emit(t, out)

    def emit(self, t: asyncio.Transport, out: list[bytes]) -> None:
        """Writes what waited for the flush (`out_size` bytes in all)."""
        if len(out) == 1:
            t.write(out[0])
        elif self.out_size <= _FLUSH_AT:
            # One record and one syscall instead of one per piece.
            t.write(b"".join(out))
        else:
            t.writelines(out)


class Exchange:
    """One request and its response."""

    __slots__ = (
        "accept",
        "body",
        "body_bytes",
        "client_close",
        "content_length",
        "expect_continue",
        "head_size",
        "headers",
        "host",
        "keep_alive",
        "method",
        "minor",
        "pending",
        "req_done",
        "request_id",
        "resp_bytes",
        "resp_done",
        "resp_framing",
        "resp_status",
        "retried",
        "route",
        "scrub",
        "start",
        "target",
        "te",
        "upgrade",
        "upstream",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: Headers = []
        self.host = b""
        self.minor = 1
        self.keep_alive = True
        # The client said this is its last request (Connection: close, or HTTP/1.0 without keep-alive).
        self.client_close = False
        self.upgrade: bytes | None = None
        self.request_id = b""
        self.start = 0.0
        self.route: Route | None = None
        self.body = "none"
        self.content_length = -1
        self.body_bytes = 0
        self.req_done = False
        self.pending: list[bytes] | None = None
        self.upstream: UpstreamConnection | None = None
        self.resp_status = 0
        self.resp_framing = ""
        self.resp_bytes = 0
        self.resp_done = False
        self.accept: bytes | None = None
        self.expect_continue = False
        self.head_size = 0
        self.retried = False
        self.te: bytes | None = None
        # Carries a header the gateway removes before forwarding (its cookies, tokens, identity).
        self.scrub = False


class ClientConnection(Corked):
    """One connection from a browser or IDE client, over TLS that it does itself (see `_decrypt`).

    What it reads goes to OpenSSL's input as it comes; what that decrypts to goes into one
    buffer shared by every connection of the loop, and `_on_data` gets an exact-size copy
    made before anything else runs.
    """

    __slots__ = (
        "advancing",
        "closing",
        "current",
        "cursor",
        "deadline",
        "early",
        "failed",
        "fwd_block",
        "fwd_host",
        "gw",
        "handshaking",
        "head_bytes",
        "header_error",
        "hot",
        "idle_for",
        "in_body",
        "line_version",
        "lingering",
        "open_path",
        "open_route",
        "parser",
        "paused",
        "peer",
        "principal",
        "queue",
        "reading",
        "tls",
        "tls_in",
        "tls_out",
        "trusted",
        "tunnel",
        "url_parts",
        "write_paused",
    )

    def __init__(self, gw: Gateway) -> None:
        hot = gw.hot
        super().__init__(hot.pool.cork)
        self.gw = gw
        self.hot = hot
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.trusted = False
        self.reading: Exchange | None = None  # the request the parser is filling
        self.current: Exchange | None = None  # the request being answered
        self.queue: deque[Exchange] = deque()
        self.url_parts: list[bytes] = []
        self.head_bytes = 0
        self.paused = 0
        self.closing = False
        self.deadline = 0.0
        self.tunnel: UpstreamConnection | None = None
        self.cursor: FrameCursor | None = None  # frames client -> upstream, once tunnelled
        self.early = b""
        self.write_paused = False
        self.header_error: BadRequest | None = None
        self.in_body = False
        self.line_version = b""
        # The forwarding headers for the last Host seen on this connection.
        self.fwd_host = b""
        # A malformed request that arrived while an earlier one was still being answered.
        self.failed: BadRequest | None = None
        self.advancing = False
        self.fwd_block = b""
        # The route of the last request admitted: a port made private closes what came in while public.
        self.open_route: Route | None = None
        # The canonical path of that request, and who it was admitted for (rules re-check WebSockets).
        self.open_path = ""
        self.principal: Principal | None = None
        self.idle_for = self.hot.idle_timeout
        # TLS (see `_decrypt`): the OpenSSL connection and its two memory BIOs. There is no
        # plaintext path: whatever arrives goes through the handshake first.
        self.tls_in = ssl.MemoryBIO()
        self.tls_out = ssl.MemoryBIO()
        self.tls: Any = cast(Any, gw.tls_context)._wrap_bio(self.tls_in, self.tls_out, True, None)
        self.handshaking = True
        self.lingering = False

    # --- asyncio protocol ------------------------------------------------------------
    # Reads come as bytes the loop made, not into a buffer of ours (get_buffer): that costs one
    # call, a slice and a buffer export per read more, and the bytes go on to OpenSSL's input
    # at once either way.
    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            self.tls_in.write(data)
            self._decrypt()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        gw = self.gw
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "unknown"
        self.trusted = self.peer in gw.trusted
        gw.connections.add(self)
        self.hot.metrics.open_connections += 1
        if len(gw.connections) > self.hot.max_connections or self.hot.draining:
            transport.abort()
            return
        transport.set_write_buffer_limits(_WRITE_HIGH, _WRITE_LOW)
        # The header timeout covers the TLS handshake too: a client that stalls in it is dropped.
        self.deadline = self.hot.now + self.hot.header_timeout

    # --- TLS -------------------------------------------------------------------------
    # The connection does its own TLS over the loop's plain TCP transport, with OpenSSL's
    # memory BIOs, instead of the loop's TLS transport: a full handshake cost about a tenth less
    # CPU and a keep-alive request a few microseconds less, the difference being the loop's
    # general machinery (a second transport object per connection, futures and a timer for the
    # handshake, an exception at the end of every read). A read stops when neither OpenSSL nor
    # its input BIO holds anything more, so no exception is raised to find that out.
    def _decrypt(self) -> None:
        tls = self.tls
        if self.handshaking:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._send_tls()
                return
            except (ssl.SSLError, ValueError) as e:
                self._tls_failed(e)
                return
            self.handshaking = False
            self.hot.metrics.tls_handshakes["resumed" if tls.session_reused else "full"] += 1
            if not self.tls_in.pending:
                # Nothing came after the client's Finished (OpenSSL takes its input a record at a
                # time, so anything more is still there): a read would only raise SSLWantReadError
                # (an exception object with a formatted message).
                self._send_tls()
                return
        tls_in = self.tls_in
        while not self.closing:
            try:
                n = tls.read(0, _READ_VIEW)  # 0: as much as the buffer holds (no int object made per read)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                # The client's close_notify: it sends nothing more.
                self._close()
                return
            except (ssl.SSLError, ValueError) as e:
                self._tls_failed(e)
                return
            data = _READ_VIEW[:n].tobytes()
            # What OpenSSL holds back is the rest of a record that did not fit; a read this size
            # takes any record whole (at most 16 KiB), so only more input or a full read means
            # more to read (SSL_pending would release and retake the GIL to say so).
            more = tls_in.pending or n == _READ_SIZE
            self._on_data(data)
            if not more:
                break
        self._send_tls()  # a handshake's last flight, or OpenSSL's answer to a key update

    def _send_tls(self) -> None:
        tls_out = self.tls_out
        t = self.transport
        if tls_out.pending and t is not None and not t.is_closing():
            t.write(tls_out.read())

    def _tls_failed(self, e: Exception) -> None:
        # OpenSSL has written its alert (a client offering only old protocols learns why).
        log.debug("TLS failed with %s: %s", self.peer, e)
        self._send_tls()
        self.closing = True
        self.out = None
        if self.transport is not None:
            self.transport.close()  # after the alert

    def emit(self, t: asyncio.Transport, out: list[bytes]) -> None:
        if self.handshaking:
            return  # nothing may go out before the handshake: it would be plaintext
        tls = self.tls
        try:
            if len(out) == 1:
                if out[0]:
                    tls.write(out[0])
            elif self.out_size <= _FLUSH_AT:
                # One record and one syscall instead of one per piece.
                tls.write(b"".join(out))
            else:
                for piece in out:
                    if piece:
                        tls.write(piece)
        except (ssl.SSLError, ValueError) as e:
            self._tls_failed(e)
            return
        self._send_tls()

    def connection_lost(self, exc: Exception | None) -> None:
        gw = self.gw
        if self in gw.connections:
            gw.connections.discard(self)
            self.hot.metrics.open_connections -= 1
        self.closing = True
        up = self.tunnel
        if up is not None:
            self.tunnel = None
            self.hot.metrics.open_websockets -= 1
            up.close()
        ex = self.current
        if ex is not None and ex.upstream is not None:
            # The response is unfinished; that upstream connection is not reusable.
            ex.upstream.close()
        self.current = None
        self.queue.clear()
        self.parser = _SPENT_REQUEST_PARSER
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.tunnel or (self.current.upstream if self.current else None)
        if up is not None and up.transport is not None:
            up.transport.pause_reading()
        if self.tunnel is None:
            # A client that does not read its answers gets no more of its requests read either.
            self._pause(_PAUSE_WRITE)

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.tunnel or (self.current.upstream if self.current else None)
        if up is not None and up.transport is not None:
            up.transport.resume_reading()
        if self.tunnel is None:
            self._resume(_PAUSE_WRITE)
            if self.current is None and (self.queue or self.failed is not None) and not self.advancing:
                self._advance()

    def _on_data(self, data: bytes) -> None:
        """What the client sent, decrypted."""
        if self.tunnel is not None:
            up = self.tunnel
            self.cursor.feed(data)  # type: ignore[union-attr]
            self.deadline = self.hot.now + self.idle_for
            up.send(data)
            return
        if self.closing:
            return
        if not self.in_body:
            if self.reading is None and self.head_bytes == 0:
                # A request line starts here: one space between its three parts, as llhttp does not insist.
                end = data.find(b"\r\n", 0, self.hot.max_url_length + 64)
                if end > 0 and data.find(b"  ", 0, end) != -1:
                    self.reading = Exchange()
                    self._fail_request(400, "malformed request line")
                    return
                # The version, read off the line the parser is about to take (on_headers_complete).
                self.line_version = data[end - 9 : end] if end >= 9 else b""
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgrade_data(data[e.args[0] :])
        except httptools.HttpParserCallbackError as e:
            err = self.header_error
            if err is None:
                log.error("request handling failed", exc_info=e.__context__)
                err = BadRequest(500, "The gateway could not handle this request.")
            self._fail_request(err.status, err.message)
        except httptools.HttpParserError as e:
            err = self.header_error or BadRequest(400, f"malformed request: {e}")
            self._fail_request(err.status, err.message)
        else:
            if self.head_bytes > self.hot.max_header_bytes and self.reading is not None and not self.in_body:
                self._fail_request(431, "request header too large")

    # --- llhttp callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        ex = Exchange()
        ex.start = time.monotonic()
        self.reading = ex
        self.url_parts = []
        if self.current is None:
            self.deadline = self.hot.now + self.hot.header_timeout

    def on_url(self, url: bytes) -> None:
        parts = self.url_parts
        parts.append(url)
        size = len(url) if len(parts) == 1 else sum(map(len, parts))
        if size > self.hot.max_url_length:
            self.header_error = BadRequest(414, "request URL too long")
            raise self.header_error
        self.reading.head_size = size  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.reading
        assert ex is not None
        if self.in_body:
            # A chunked body's trailer fields: never forwarded (the body is re-chunked without
            # them) and never read as headers, or they would dodge every check made on the head.
            ex.head_size += len(name) + len(value) + 4
            if ex.head_size > self.hot.max_header_bytes:
                self.header_error = BadRequest(431, "request trailer too large")
                raise self.header_error
            return
        ex.headers.append((name, value))
        ex.head_size += len(name) + len(value) + 4
        if len(ex.headers) > self.hot.max_headers or ex.head_size > self.hot.max_header_bytes:
            self.header_error = BadRequest(431, "request header too large")
            raise self.header_error

    def on_headers_complete(self) -> None:
        ex = self.reading
        assert ex is not None
        p = self.parser
        ex.method = p.get_method()
        ex.target = b"".join(self.url_parts)
        # A request line that began a read ends in its version (the parser checked the line); for
        # the others (pipelined, or split across reads) the parser says, in a string it formats.
        line, self.line_version = self.line_version, b""
        if line == b" HTTP/1.1":
            ex.minor = 1
        elif line == b" HTTP/1.0":
            ex.minor = 0
        else:
            version = p.get_http_version()
            if version not in ("1.1", "1.0"):
                self.header_error = BadRequest(400, "unsupported HTTP version")
                raise self.header_error
            ex.minor = 0 if version == "1.0" else 1
        ex.keep_alive = p.should_keep_alive()
        ex.client_close = not ex.keep_alive
        self.head_bytes = 0
        self.in_body = True
        try:
            self._read_head(ex, p.should_upgrade())
        except BadRequest as e:
            self.header_error = e
            raise
        if self.current is None and not self.write_paused and not self.queue:
            self._dispatch(ex)
        else:
            if len(self.queue) >= _MAX_PIPELINE:
                self.header_error = BadRequest(400, "too many pipelined requests")
                raise self.header_error
            self.queue.append(ex)
            ex.pending = []
            self._pause(_PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.reading
        assert ex is not None
        ex.body_bytes += len(body)
        self.deadline = self.hot.now + self.idle_for
        limit = self.hot.max_body_bytes
        if limit and ex.body_bytes > limit:
            self.header_error = BadRequest(413, "request body too large")
            raise self.header_error
        if ex.body == "chunked":
            self._send_body(ex, http1.chunk(body))
        else:
            self._send_body(ex, [body])

    def on_message_complete(self) -> None:
        ex = self.reading
        assert ex is not None
        self.reading = None
        self.in_body = False
        ex.req_done = True
        if ex.upgrade is not None:
            return
        if ex is self.current and not ex.resp_status:
            self.deadline = self.hot.now + self.hot.response_timeout
        if ex.body == "chunked":
            self._send_body(ex, [http1.LAST_CHUNK])
        # A request pipelined behind this one pauses reading once its head is complete
        # (on_headers_complete), so nothing needs pausing here on the common path.
        if ex.resp_done and ex is self.current:
            self._finish(ex)

    # --- request handling --------------------------------------------------------------
    def _read_head(self, ex: Exchange, upgrade: bool) -> None:
        """Picks out the headers the proxy acts on and applies the request rules."""
        host = None
        for name, value in ex.headers:
            n = len(name)
            # Lowered once, and only when the length is one of the names below.
            low = name.lower() if n < 64 and (_HEAD_LENGTHS >> n) & 1 else b""
            if low == b"host":
                if host is not None:
                    raise BadRequest(400, "more than one Host header")
                host = value
            elif low == b"accept":
                ex.accept = value
            elif low == b"content-length":
                ex.content_length = int(value)
            elif low == b"transfer-encoding":
                http1.check_transfer_encoding(value, ex.minor)
                ex.te = value
            elif low == b"expect":
                if value.strip().lower() != b"100-continue":
                    raise BadRequest(400, "unsupported Expect")
                ex.expect_continue = True
            elif low == b"upgrade":
                ex.upgrade = value.strip()
            elif (
                low == b"cookie"
                or low == b"authorization"
                or (n > 6 and http1.is_identity_header(name))
            ):
                ex.scrub = True
        if host is None:
            raise BadRequest(400, "missing Host header")
        ex.host = host
        http1.check_target(ex.target, ex.method)
        if ex.method == b"CONNECT":
            raise BadRequest(405, "CONNECT is not supported")
        if ex.te is not None:
            ex.body = "chunked"
        elif ex.content_length > 0:
            ex.body = "length"
            limit = self.hot.max_body_bytes
            if limit and ex.content_length > limit:
                raise BadRequest(413, "request body too large")
        elif ex.content_length == 0:
            ex.body = "length"
        if upgrade:
            if ex.upgrade is None or ex.upgrade.lower() != b"websocket":
                raise BadRequest(400, "only WebSocket upgrades are supported")
            if ex.body != "none" and ex.content_length != 0:
                raise BadRequest(400, "an upgrade request cannot carry a body")
        else:
            ex.upgrade = None

    def _dispatch(self, ex: Exchange) -> None:
        gw = self.gw
        self.current = ex
        self.idle_for = self.hot.idle_timeout
        self.deadline = self.hot.now + self.hot.idle_timeout
        if ex.request_id == b"":
            ex.request_id = self._request_id(ex)
        router = self.hot.router
        route = router.cache.get(ex.host)
        if route is None:
            route = router.match(ex.host)
        if isinstance(route, int):
            msg = {
                404: NOT_FOUND_MESSAGE,
                421: "This server does not serve that host name.",
                400: "The Host header is not a valid host name.",
            }[route]
            self._respond_error(ex, route, msg)
            return
        if route.upstream is BY_PATH and not ex.target.startswith(b"/.wsgate/"):
            # (/.wsgate/ is the gateway's own sign-in handoff on every host; the guard answers it.)
            found = self._rule_route(ex, route.host)
            if found is None:
                return
            route = found
        ex.route = route
        self.open_route = route
        if route.kind != MAIN:
            if self.hot.draining:
                self._respond_error(ex, 503, "The gateway is restarting; try again in a moment.")
                return
            if route.access.level != PUBLIC or ex.target.startswith(b"/.wsgate/"):
                verdict = self.hot.guard.quick(ex, route)
                self.hot.metrics.auth_checks["store" if verdict is None else "cache"] += 1
                if verdict is None:
                    if ex.pending is None:
                        ex.pending = []
                    self._pause(_PAUSE_CONNECT)
                    gw.spawn(self._guarded(ex, route))
                else:
                    self._admit(ex, route, verdict)
                return
        self._forward(ex, route, None)

    def _rule_route(self, ex: Exchange, host: str) -> Route | None:
        """The admin rule for this request's path; the path matched is the one forwarded, byte for byte."""
        try:
            path, query = canonical_target(ex.target)
        except PathError as e:
            self._respond_error(ex, 400, f"The request path is ambiguous or malformed: {e}", close=True)
            return None
        route = self.hot.router.match_rule(host, path)
        if route is None or route.rule is None:
            self._respond_error(ex, 404, NOT_FOUND_MESSAGE)
            return None
        rule = route.rule
        if ex.upgrade is not None and not rule.websocket:
            self._respond_error(ex, 403, "WebSockets are not allowed on this address.")
            return None
        if rule.strip_prefix and rule.path_prefix != "/":
            path = path[len(rule.path_prefix):]
            if not path.startswith("/"):
                path = "/" + path
        ex.target = (path + query).encode()
        self.open_path = path
        self.idle_for = rule.idle_timeout
        self.deadline = self.hot.now + rule.idle_timeout
        return route

    async def _guarded(self, ex: Exchange, route: Route) -> None:
        try:
            verdict = await self.hot.guard.check(ex, route)
        except Exception:
            log.exception("auth check failed")
            verdict = Answer(500, "The gateway could not check this request.", [])
        if self.current is not ex or self.closing:
            return
        self._resume(_PAUSE_CONNECT)
        self._admit(ex, route, verdict)

    def _admit(self, ex: Exchange, route: Route, verdict: Answer | Pass) -> None:
        if isinstance(verdict, Answer):
            ex.pending = None
            self._respond_error(ex, verdict.status, verdict.message, headers=verdict.headers)
            return
        self.principal = verdict.principal
        self._forward(ex, route, verdict.headers)

    def _forward(self, ex: Exchange, route: Route, extra: list[tuple[bytes, bytes]] | None) -> None:
        gw = self.gw
        if route.upstream is NOWHERE:
            self._respond_error(ex, 404, NOT_FOUND_MESSAGE)
            return
        if ex.scrub:
            ex.headers = http1.scrub(
                ex.headers, COOKIE_PREFIX_BYTES, TOKEN_PREFIX_BYTES, keep_credentials=route.kind == MAIN
            )
        rule = route.rule
        if rule is not None and rule.request_headers:
            names = {n.lower().encode() for n in rule.request_headers}
            ex.headers = [h for h in ex.headers if h[0].lower() not in names]
            ex.headers.extend((n.encode(), v.encode()) for n, v in rule.request_headers.items())
        if extra:
            ex.headers.extend(extra)
        up = self.hot.pool.take(route.upstream)
        if up is not None:
            self._attach(ex, up)
        else:
            if ex.pending is None:
                ex.pending = []
            self._pause(_PAUSE_CONNECT)
            gw.spawn(self._connect(ex, route.upstream, rule.connect_timeout if rule is not None else None))

    def _request_id(self, ex: Exchange) -> bytes:
        if self.trusted:
            for name, value in ex.headers:
                if len(name) == 12 and name.lower() == http1.REQUEST_ID and http1.is_valid_request_id(value):
                    return value
        self.hot.request_counter += 1
        return b"%s-%x" % (self.hot.request_prefix, self.hot.request_counter)

    async def _connect(self, ex: Exchange, target: Upstream, timeout: float | None = None) -> None:
        try:
            up = await self.hot.pool.connect(target, timeout)
        except TimeoutError:
            self.hot.metrics.upstream_errors["connect_timeout"] += 1
            self.upstream_failed(ex, 504, "The workspace did not accept the connection in time.")
            return
        except NotRunning:
            self.hot.metrics.upstream_errors["workspace_not_running"] += 1
            self.upstream_failed(ex, 503, NOT_RUNNING_MESSAGE)
            return
        except OSError as e:
            kind = "connect_refused" if e.errno == errno.ECONNREFUSED else "connect_error"
            self.hot.metrics.upstream_errors[kind] += 1
            self.upstream_failed(ex, 502, _refused_message(ex))
            return
        if self.current is not ex or self.closing:
            self.hot.pool.release(up)
            return
        self._resume(_PAUSE_CONNECT)
        self._attach(ex, up)

    def _attach(self, ex: Exchange, up: UpstreamConnection) -> None:
        ex.upstream = up
        up.bind(self, ex)
        route = ex.route
        assert route is not None
        target = ex.target
        if route.upstream.base_path:
            target = route.upstream.base_path.encode() + target
        if route.kind != "rule" or (route.rule is not None and route.rule.preserve_host):
            host = ex.host
        else:
            host = route.upstream.authority.encode()
        if not self.trusted and ex.host != self.fwd_host:
            self.fwd_host = ex.host
            self.fwd_block = http1.forwarded_block(self.peer, ex.host)
        head = http1.request_head(
            ex.method,
            target,
            ex.headers,
            host=host,
            client_host=ex.host,
            client_ip=self.peer,
            trusted=self.trusted,
            request_id=ex.request_id,
            body=ex.body,
            upgrade=ex.upgrade,
            forwarded=None if self.trusted else self.fwd_block,
        )
        up.send(head)
        if ex.expect_continue and not ex.req_done and ex.minor == 1:
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if ex.pending:
            for piece in ex.pending:
                up.send(piece)
        ex.pending = None
        if self.write_paused and up.transport is not None:
            up.transport.pause_reading()

    def _send_body(self, ex: Exchange, pieces: list[bytes]) -> None:
        up = ex.upstream
        if up is None or ex.pending is not None:
            if ex.pending is None:
                ex.pending = []
            ex.pending.extend(pieces)
            return
        up.send_many(pieces)

    def _upgrade_data(self, rest: bytes) -> None:
        # Bytes a client sends after its upgrade request wait for the 101 (bounded).
        self.early += rest
        self._pause(_PAUSE_CONNECT)
        if len(self.early) > _WRITE_HIGH:
            self._abort()

    # --- responses --------------------------------------------------------------------
    def response_done(self, ex: Exchange, reusable: bool) -> None:
        """The upstream finished its response; the connection goes back or closes."""
        up = ex.upstream
        ex.upstream = None
        ex.resp_done = True
        if up is not None:
            up.unbind()
            if reusable and ex.req_done:
                self.hot.pool.release(up)
            else:
                up.close()
        if ex.req_done:
            self._finish(ex)
        else:
            # The upstream answered before the body finished: the rest cannot be framed.
            self._log(ex)
            self._close()

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        ex.upstream = None
        ex.resp_done = True
        self._log(ex)
        self.current = None
        self.tunnel = up
        self.cursor = FrameCursor()
        up.tunnel_to(self)
        self.hot.metrics.open_websockets += 1
        self.hot.metrics.websockets_total += 1
        self.deadline = self.hot.now + self.idle_for
        if rest:
            up.cursor.feed(rest)  # type: ignore[union-attr]
            self.send(rest)
        if self.early:
            self.cursor.feed(self.early)
            up.send(self.early)
            self.early = b""
        self.paused = 0
        if self.transport is not None:
            self.transport.resume_reading()

    def _finish(self, ex: Exchange) -> None:
        self._log(ex)
        self.current = None
        if not ex.keep_alive or self.closing or self.hot.draining or ex.upgrade is not None:
            self._close(linger=not self._said_last(ex))
            return
        self.deadline = self.hot.now + self.hot.keepalive_timeout
        if not self.advancing:
            self._advance()

    def _advance(self) -> None:
        """Answers queued pipelined requests in order, in a loop rather than by recursion."""
        self.advancing = True
        try:
            while self.current is None and not self.closing:
                if self.write_paused:
                    return  # the client is not reading; resume_writing carries on
                if self.queue:
                    self._dispatch(self.queue.popleft())
                elif self.failed is not None:
                    err, self.failed = self.failed, None
                    bad = Exchange()
                    bad.start = time.monotonic()
                    self.current = bad
                    self._respond_error(bad, err.status, err.message, close=True)
                else:
                    if self.paused & _PAUSE_PIPELINE:
                        self._resume(_PAUSE_PIPELINE)
                    return
        finally:
            self.advancing = False

    def _log(self, ex: Exchange) -> None:
        hot = self.hot
        kind = ex.route.kind if ex.route is not None else "none"
        duration = time.monotonic() - ex.start
        hot.metrics.observe(kind, ex.resp_status, duration)
        if hot.access_log.enabled:
            hot.access_log.record(
                ex.request_id.decode("ascii", "replace"),
                self.peer,
                ex.method.decode("ascii", "replace"),
                ex.host.decode("ascii", "replace"),
                ex.target.decode("ascii", "replace")[:2048],
                ex.resp_status,
                ex.body_bytes,
                ex.resp_bytes,
                duration,
                kind,
            )

    def _respond_error(
        self,
        ex: Exchange,
        status: int,
        message: str,
        *,
        close: bool | None = None,
        headers: list[tuple[bytes, bytes]] | tuple[()] = (),
    ) -> None:
        """Answers from the gateway itself; the connection closes unless the request is complete."""
        if close is None:
            close = not ex.keep_alive or not (ex.req_done or ex.body == "none")
        ex.resp_status = status
        data = http1.error_response(
            status,
            message,
            request_id=ex.request_id or self._request_id(ex),
            accept=ex.accept,
            close=close,
            head_only=ex.method == b"HEAD",
            headers=headers,
        )
        ex.resp_bytes = len(data)
        ex.resp_done = True
        self.send(data)
        if close:
            self._log(ex)
            self.current = None
            self._close()
        else:
            self._finish(ex)

    def upstream_failed(self, ex: Exchange, status: int, message: str) -> None:
        if self.current is not ex or self.closing:
            return
        self._resume(_PAUSE_CONNECT)
        ex.pending = None
        if ex.resp_status:
            # Part of the response is already out: the only honest signal left is to cut it.
            self._log(ex)
            self._abort()
            return
        self._respond_error(ex, status, message)

    def upstream_lost(self, ex: Exchange, reused: bool) -> None:
        """The upstream closed before finishing; retry once on a fresh connection if safe."""
        ex.upstream = None
        if (
            reused
            and not ex.resp_status
            and not ex.retried
            and ex.body == "none"
            and ex.method in _RETRYABLE
            and ex.upgrade is None
            and self.current is ex
            and ex.route is not None
        ):
            ex.retried = True
            ex.pending = []
            self._pause(_PAUSE_CONNECT)
            self.gw.spawn(self._connect(ex, ex.route.upstream))
            return
        self.hot.metrics.upstream_errors["upstream_closed"] += 1
        self.upstream_failed(ex, 502, "The workspace closed the connection before answering.")

    def _fail_request(self, status: int, message: str) -> None:
        """A request that cannot be parsed or accepted: answer if possible, then close."""
        self.header_error = None
        ex = self.reading or Exchange()
        self.reading = None
        if self.current is not None and self.current is not ex:
            # A response is in flight: the requests before this one are answered first,
            # then this one gets its error and the connection closes.
            if ex in self.queue:
                self.queue.remove(ex)
            self.failed = BadRequest(status, message)
            self._pause(_PAUSE_PIPELINE)
            return
        if ex.start == 0.0:
            ex.start = time.monotonic()
        self.current = ex
        if ex.upstream is not None:
            ex.upstream.close()
            ex.upstream = None
        if ex.resp_status:
            self._log(ex)
            self._abort()
            return
        self._respond_error(ex, status, message, close=True)

    # --- flow control and closing --------------------------------------------------------
    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def upstream_pause(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def upstream_resume(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    def _said_last(self, ex: Exchange) -> bool:
        """Whether the client sent its last request whole, and nothing after it: then nothing more is
        coming (RFC 9112 section 9.6) and there is no unread input to turn the close into a reset.
        While reading is paused, what the client sent since may wait unread in the kernel."""
        return (
            ex.client_close
            and ex.req_done
            and self.reading is None
            and not self.queue
            and self.failed is None
            and not self.paused
            and not self.tls_in.pending
        )

    def _close(self, linger: bool = True) -> None:
        """Ends the connection after what was sent; lingers (see below) unless `linger` is False."""
        self.closing = True
        self.flush()
        t = self.transport
        if t is None or t.is_closing() or self.lingering:
            return
        if not self.handshaking:
            # close_notify: what was sent is complete, and a response that ends with the
            # connection cannot be cut short unnoticed.
            try:  # noqa: SIM105 - a plain try costs nothing here, contextlib.suppress a call per connection
                self.tls.shutdown()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError is the usual answer: the client's alert has not come
            self._send_tls()
        if not linger or not t.can_write_eof():
            t.close()
            return
        # Half-close and read on, discarding: a socket closed with unread input resets the
        # connection, and the reset makes the client's kernel drop the answer it has not read yet
        # (a 431 or 413 sent while the client was still sending). The client closes when it sees
        # the end; one that does not is cut off after _LINGER seconds.
        t.write_eof()
        self.lingering = True
        self.deadline = self.hot.now + _LINGER

    def _abort(self) -> None:
        self.closing = True
        self.out = None  # cut off: what waits is not sent either
        if self.transport is not None:
            self.transport.abort()

    def expire(self, now: float) -> None:
        """Called by the sweeper when `deadline` has passed."""
        if self.lingering:
            self._abort()
            return
        ex = self.current
        if self.tunnel is not None:
            self.close_websocket(GOING_AWAY, "idle timeout")
            return
        if ex is not None and ex.req_done and not ex.resp_status and ex.upstream is not None and ex.upstream.waiting:
            self.hot.metrics.upstream_errors["response_timeout"] += 1
            up = ex.upstream
            ex.upstream = None
            up.close()
            self._respond_error(ex, 504, "The workspace did not answer in time.", close=True)
            return
        if ex is None and self.reading is not None:
            self._fail_request(408, "request header timeout")
            return
        self._abort() if ex is not None else self._close()

    def close_websocket(self, code: int, reason: str) -> None:
        """Ends a tunnelled WebSocket with a close frame to each side where a frame boundary allows."""
        up = self.tunnel
        if up is None:
            self._close()
            return
        if up.cursor is not None and up.cursor.at_boundary:
            self.send(close_frame(code, reason, masked=False))
        if self.cursor is not None and self.cursor.at_boundary:
            up.send(close_frame(code, reason, masked=True))
        self.gw.loop.call_later(1.0, self._abort)
        # Stop relaying: nothing may follow a close frame.
        self.tunnel = None
        self.hot.metrics.open_websockets -= 1
        up.close()
        self._close()

    def drain(self) -> None:
        """Shutdown: idle connections close now, busy ones after their response."""
        if self.tunnel is not None:
            self.close_websocket(GOING_AWAY, "gateway shutting down")
        elif self.current is None:
            self._close()


NOT_RUNNING_MESSAGE: Final = "This workspace is not running. Start it again from the dashboard."


def _refused_message(ex: Exchange) -> str:
    route = ex.route
    if route is not None and route.port:
        return f"Nothing is listening on port {route.port} of this workspace."
    return "The upstream refused the connection."


class UpstreamConnection(Corked):
    """One pooled HTTP/1.1 connection to an upstream."""

    __slots__ = (
        "chunked_out",
        "client",
        "closed",
        "cursor",
        "ex",
        "head_bytes",
        "head_only",
        "headers",
        "idle_since",
        "key",
        "parser",
        "pool",
        "pool_key",
        "raw_head",
        "reason",
        "reused",
        "tunnel",
        "waiting",
    )

    def __init__(self, pool: UpstreamPool, key: Upstream) -> None:
        super().__init__(pool.cork)
        self.pool = pool
        self.key = key
        self.pool_key = key.pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.ex: Exchange | None = None
        self.headers: Headers = []
        self.reason = b""
        self.waiting = False
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        self.tunnel: ClientConnection | None = None
        self.cursor: FrameCursor | None = None
        self.chunked_out = False
        self.head_only = False
        self.head_bytes = 0
        self.raw_head = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(_WRITE_HIGH, _WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self.parser = _SPENT_RESPONSE_PARSER
        if self.tunnel is not None:
            peer = self.tunnel
            self.tunnel = None
            if peer.tunnel is self:
                peer.tunnel = None
                peer.hot.metrics.open_websockets -= 1
                peer._close()
            return
        client, ex = self.client, self.ex
        self.client = self.ex = None
        if client is None or ex is None:
            return
        if ex.resp_status and ex.resp_framing == "close":
            # A close-delimited body ends here, cleanly.
            if self.chunked_out:
                client.send(http1.LAST_CHUNK)
            client.response_done(ex, reusable=False)
            return
        client.upstream_lost(ex, self.reused)

    def pause_writing(self) -> None:
        peer = self.tunnel or self.client
        if peer is not None:
            peer.upstream_pause()

    def resume_writing(self) -> None:
        peer = self.tunnel or self.client
        if peer is not None:
            peer.upstream_resume()

    def bind(self, client: ClientConnection, ex: Exchange) -> None:
        self.client = client
        self.ex = ex
        self.headers = []
        self.reason = b""
        self.waiting = True
        self.head_bytes = self.raw_head = 0
        self.head_only = ex.method == b"HEAD"
        client.deadline = client.hot.now + (client.hot.response_timeout if ex.req_done else client.hot.idle_timeout)

    def unbind(self) -> None:
        self.client = None
        self.ex = None

    def close(self) -> None:
        self.client = None
        self.ex = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.flush()
            self.transport.close()
        self.pool.forget(self)

    def tunnel_to(self, client: ClientConnection) -> None:
        self.tunnel = client
        self.cursor = FrameCursor()
        self.client = None
        self.ex = None

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.cursor.feed(data)  # type: ignore[union-attr]
            tunnel.deadline = tunnel.hot.now + tunnel.hot.idle_timeout
            tunnel.send(data)
            return
        client = self.client
        if client is None:
            # Bytes nobody asked for: this connection cannot be trusted for the next request.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0] :])
        except httptools.HttpParserError:
            self._bad_response()
        else:
            if self.waiting:
                # An upstream may not make the gateway hold an unbounded, unfinished response head.
                self.raw_head += len(data)
                if self.raw_head > _MAX_RESPONSE_HEAD:
                    self._bad_response()

    # --- llhttp callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.client is None:
            # Bytes after the response that was asked for: never reuse this connection.
            raise ValueError("unsolicited response")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        if len(self.headers) > 200 or self.head_bytes > _MAX_RESPONSE_HEAD:
            raise ValueError("response head too large")

    def on_headers_complete(self) -> None:
        client, ex = self.client, self.ex
        if client is None or ex is None:
            return
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # Interim responses (100, 103) are not relayed; the gateway answered Expect itself.
            # They never have a body: one that claims a body is not a response we can frame.
            for name, _ in self.headers:
                if name.lower() in (b"content-length", b"transfer-encoding"):
                    raise ValueError("interim response with a body")
            self.headers = []
            self.reason = b""
            return
        if status == 101:
            if ex.upgrade is None:
                raise ValueError("101 for a request that did not ask to upgrade")
            return  # the tunnel starts in _upgraded
        self.waiting = False
        ex.resp_status = status
        close = not ex.keep_alive or client.hot.draining or ex.upgrade is not None
        head, framing, out_framing, close = http1.response_head(
            status,
            self.reason,
            self.headers,
            no_body=self.head_only,
            client_minor=ex.minor,
            close=close,
            # The gateway's own app is the one upstream that sets gateway cookies.
            drop_cookie=None if self.key is INTERNAL else COOKIE_PREFIX_BYTES,
        )
        ex.resp_framing = framing
        self.chunked_out = out_framing == "chunked"
        if close:
            ex.keep_alive = False
        ex.resp_bytes += len(head)
        client.send(head)
        client.deadline = client.hot.now + client.hot.idle_timeout
        if self.head_only:
            # llhttp cannot be told that a HEAD response has no body, so this connection ends here.
            client.response_done(ex, reusable=False)

    def on_body(self, body: bytes) -> None:
        client, ex = self.client, self.ex
        if client is None or ex is None:
            return
        if not ex.resp_status:
            raise ValueError("body before a final response")
        ex.resp_bytes += len(body)
        client.deadline = client.hot.now + client.hot.idle_timeout
        if self.chunked_out:
            client.send_many(http1.chunk(body))
        else:
            client.send(body)

    def on_message_complete(self) -> None:
        client, ex = self.client, self.ex
        if client is None or ex is None or not ex.resp_status:
            return
        if self.chunked_out:
            client.send(http1.LAST_CHUNK)
        keep = self.parser.should_keep_alive() and not self.closed
        client.response_done(ex, reusable=keep)

    # --- failures and upgrades -------------------------------------------------------
    def _upgraded(self, rest: bytes) -> None:
        client, ex = self.client, self.ex
        if client is None or ex is None:
            self.close()
            return
        if self.parser.get_status_code() != 101:
            # The upstream announced an upgrade without switching; treat as a bad answer.
            self._bad_response()
            return
        head = http1.upgrade_head(self.reason, self.headers, drop_cookie=COOKIE_PREFIX_BYTES)
        ex.resp_status = 101
        ex.resp_bytes += len(head)
        self.waiting = False
        client.send(head)
        self.tunnel = client
        self.cursor = FrameCursor()
        self.client = None
        self.ex = None
        client.start_tunnel(ex, self, rest)

    def _bad_response(self) -> None:
        client, ex = self.client, self.ex
        self.close()
        if client is not None and ex is not None:
            client.hot.metrics.upstream_errors["bad_response"] += 1
            client.upstream_failed(ex, 502, "The workspace sent a response the gateway cannot pass on.")


class UpstreamPool:
    """Idle keep-alive connections per upstream, and new ones when none is idle."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        connect_timeout: float,
        size: int,
        idle_timeout: float,
        internal: Callable[[], Any] | None = None,
        workspaces: Callable[[str, int], Awaitable[socket.socket]] | None = None,
    ) -> None:
        self.loop = loop
        # Opens a connection into a workspace (the launcher's connect).
        self.workspaces = workspaces
        self.connect_timeout = connect_timeout
        self.size = size
        self.idle_timeout = idle_timeout
        self.internal = internal
        # Idle connections by `Upstream.pool`.
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self.cork = Cork(loop)
        self._tls = ssl.create_default_context()
        self._tls.set_alpn_protocols(["http/1.1"])

    def take(self, key: Upstream) -> UpstreamConnection | None:
        idle = self._idle.get(key.pool)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or self.size == 0:
            conn.close()
            return
        idle = self._idle.setdefault(conn.pool_key, [])
        if len(idle) >= self.size:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.pool_key)
        if idle and conn in idle:
            idle.remove(conn)

    async def connect(self, key: Upstream, timeout: float | None = None) -> UpstreamConnection:
        loop = self.loop

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, key)

        if key.scheme == "workspace":
            assert self.workspaces is not None
            sock = await self.workspaces(key.host, key.port)
            _, proto = await loop.create_connection(factory, sock=sock)
            return proto
        if key.scheme == "internal":
            assert self.internal is not None
            a, b = socket.socketpair()
            await loop.connect_accepted_socket(self.internal, a)
            _, proto = await loop.create_unix_connection(factory, sock=b)
            return proto
        tls = self._tls if key.scheme == "https" else None
        async with asyncio.timeout(timeout or self.connect_timeout):
            _, proto = await loop.create_connection(
                factory, key.host, key.port, ssl=tls, server_hostname=key.host if tls else None
            )
        return proto

    def sweep(self, now: float) -> None:
        for idle in self._idle.values():
            stale = [c for c in idle if now - c.idle_since > self.idle_timeout]
            for conn in stale:
                conn.close()

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
