"""Writes wait for the end of the event loop's pass, and nothing is lost, reordered or held back.

Real transports on socket pairs: the far end reads what the gateway's protocol objects
actually handed to the kernel.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.proxy import _FLUSH_AT, UpstreamConnection, UpstreamPool
from routing.table import Upstream


@dataclass
class Pair:
    conn: UpstreamConnection
    far: socket.socket  # the peer's end, non-blocking


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    pool = UpstreamPool(loop, connect_timeout=5, size=4, idle_timeout=30)
    near, far = socket.socketpair()
    far.setblocking(False)
    _, conn = await loop.connect_accepted_socket(
        lambda: UpstreamConnection(pool, Upstream("http", "127.0.0.1", 9)), near
    )
    yield Pair(conn, far)
    conn.close()
    far.close()


def read_now(s: socket.socket) -> bytes:
    """What the kernel holds for the far end right now, without waiting."""
    out = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


async def next_pass() -> None:
    # One pass for the flush the first write scheduled, one for uvloop's queued writes.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_pass_leave_together_and_in_order(pair: Pair) -> None:
    pair.conn.send(b"GET / HTTP/1.1\r\n")
    pair.conn.send_many([b"Host: a\r\n", b"\r\n"])
    assert read_now(pair.far) == b"", "a write left before the pass ended"
    await next_pass()
    assert read_now(pair.far) == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    # A later pass starts a new batch.
    pair.conn.send(b"second")
    await next_pass()
    assert read_now(pair.far) == b"second"


async def test_a_pass_that_produces_a_lot_goes_to_the_transport_at_once(pair: Pair) -> None:
    # The transport's buffer limits (and the pause that stops the other side) must see it.
    big = b"x" * _FLUSH_AT
    pair.conn.send(b"head")
    pair.conn.send(big)
    pair.conn.send(b"tail")
    got = read_now(pair.far)
    assert got.startswith(b"head" + big[:100]) and len(got) >= _FLUSH_AT, len(got)
    assert b"tail" not in got
    await next_pass()
    got += read_now(pair.far)
    assert got == b"head" + big + b"tail"


async def test_close_sends_what_waits_before_the_end_of_stream(pair: Pair) -> None:
    pair.conn.send(b"last words")
    pair.conn.close()
    await next_pass()
    await asyncio.sleep(0.05)
    assert pair.far.recv(100) == b"last words"
    assert pair.far.recv(100) == b"", "the connection should have ended after the data"


async def test_a_connection_the_peer_dropped_is_skipped_without_error(pair: Pair) -> None:
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    pair.conn.send(b"for nobody")
    pair.far.close()
    assert pair.conn.transport is not None
    pair.conn.transport.abort()
    await next_pass()
    await asyncio.sleep(0.05)
    assert pair.conn.out is None, "the flush did not run"
    assert errors == []


class BrokenTransport(asyncio.Transport):
    """A transport whose write fails in a way the event loop's transports never should."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("broken")

    def is_closing(self) -> bool:
        return self.aborted

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


async def test_one_failing_write_does_not_hold_back_the_others(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    broken = UpstreamConnection(pair.conn.pool, Upstream("http", "127.0.0.1", 9))
    transport = BrokenTransport()
    broken.connection_made(transport)
    broken.send(b"lost")  # registered first: its failure comes before the good write
    pair.conn.send(b"delivered")
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    await next_pass()
    assert read_now(pair.far) == b"delivered"
    assert transport.aborted, "the connection whose write failed should be cut"
    assert errors == [] and "write failed" in caplog.text
