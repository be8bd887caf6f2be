"""WebSocket load clients (raw protocol on asyncio + uvloop, TLS to the proxy).

``python -m bench.wsclient echo --port P --host H --conns N --duration D``: N connections each
loop send -> wait for the echo -> send for D seconds; prints a JSON line with the round trips.

``python -m bench.wsclient idle --port P --host H --conns N``: opens N connections, does one echo
on each, prints a JSON "ready" line, then holds them idle until SIGUSR1/SIGTERM (or ``--hold``
seconds), closes them and prints a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import ssl
import sys
import time
from typing import cast

import uvloop

from bench.upstreams import WS_GUID, raise_nofile


class Stats:
    def __init__(self) -> None:
        self.round_trips = 0
        self.running = True
        self.errors = 0
        self.first_error = ""

    def error(self, msg: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or msg


def client_frame(payload: bytes) -> bytes:
    """A masked binary frame (clients must mask; RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + masked


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload


def _reject(fut: asyncio.Future[None], exc: Exception) -> None:
    fut.set_exception(exc)
    fut.exception()  # whoever waits gets it; nobody waiting is no "never retrieved" warning


class WsConn(asyncio.Protocol):
    """One client WebSocket: upgrade, then strictly one message in flight."""

    def __init__(self, host: str, path: str, payload: bytes, stats: Stats) -> None:
        self.host = host
        self.path = path
        self.frame = client_frame(payload)
        self.expect = server_frame(payload)
        self.stats = stats
        self.key = base64.b64encode(os.urandom(16))
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.echoed: asyncio.Future[None] | None = None
        self.looping = False
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.upgraded.done():
            _reject(self.upgraded, ConnectionError(f"closed during the upgrade ({exc or 'EOF'}): {self.buf[:200]!r}"))
        if self.echoed is not None and not self.echoed.done():
            _reject(self.echoed, ConnectionError(f"closed while waiting for an echo ({exc or 'EOF'})"))
        if self.looping and self.stats.running:
            self.stats.error(f"connection lost during the run: {exc}")

    def data_received(self, data: bytes) -> None:
        if self.open:
            expect = self.expect
            if not self.buf and data == expect:
                self._echoed()
                return
            self.buf += data
            while len(self.buf) >= len(expect):
                if self.buf[: len(expect)] != expect:
                    self._fail(f"wrong echo: {self.buf[:40]!r}")
                    return
                self.buf = self.buf[len(expect) :]
                self._echoed()
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._fail("response head too large")
            return
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        lines = head.split(b"\r\n")
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if not lines[0].startswith(b"HTTP/1.1 101") or headers.get(b"sec-websocket-accept") != accept:
            self._fail(f"upgrade refused: {lines[0].decode(errors='replace')}")
            return
        self.open = True
        if not self.upgraded.done():
            self.upgraded.set_result(None)

    def _fail(self, msg: str) -> None:
        if not self.upgraded.done():
            _reject(self.upgraded, ConnectionError(msg))
        elif self.echoed is not None and not self.echoed.done():
            _reject(self.echoed, ConnectionError(msg))
        else:
            self.stats.error(msg)
        if self.transport is not None:
            self.transport.abort()

    def _echoed(self) -> None:
        if self.looping:
            self.stats.round_trips += 1
            if self.stats.running:
                assert self.transport is not None
                self.transport.write(self.frame)
            else:
                self.looping = False
        elif self.echoed is not None and not self.echoed.done():
            self.echoed.set_result(None)

    async def echo_once(self, timeout: float = 10.0) -> None:
        assert self.transport is not None
        self.echoed = asyncio.get_running_loop().create_future()
        self.transport.write(self.frame)
        await asyncio.wait_for(self.echoed, timeout)
        self.echoed = None

    def start_loop(self) -> None:
        assert self.transport is not None
        self.looping = True
        self.transport.write(self.frame)


async def open_conns(args: argparse.Namespace, stats: Stats) -> list[WsConn]:
    """Opens ``args.conns`` WebSockets (``args.parallel`` at a time), each checked with one echo."""
    loop = asyncio.get_running_loop()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sem = asyncio.Semaphore(args.parallel)
    conns: list[WsConn] = []

    async def one(i: int) -> None:
        payload = (b"%08d:" % (args.index * 1_000_000 + i)).ljust(args.size, b"x")
        async with sem:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: WsConn(args.host, args.path, payload, stats), "127.0.0.1",
                                           args.port, ssl=ctx, server_hostname=args.host),
                    30,
                )
                await asyncio.wait_for(proto.upgraded, 30)
                await proto.echo_once()
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as e:
                stats.error(f"{type(e).__name__}: {e}")
                return
            conns.append(proto)

    await asyncio.gather(*(one(i) for i in range(args.conns)))
    return conns


async def run_echo(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    conns = await open_conns(args, stats)
    if not conns:
        return {"round_trips": 0, "seconds": 0.0, "conns": 0, "errors": stats.errors, "first_error": stats.first_error}
    loop = asyncio.get_running_loop()
    if args.start_at:  # all client processes start sending together
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    for c in conns:
        c.start_loop()
    await asyncio.sleep(args.warmup)
    n0, t0, cpu0 = stats.round_trips, loop.time(), time.process_time()
    await asyncio.sleep(args.duration)
    n1, t1, cpu1 = stats.round_trips, loop.time(), time.process_time()
    stats.running = False
    deadline = loop.time() + 5
    while any(c.looping and c.open for c in conns) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.05)
    return {"round_trips": n1 - n0, "seconds": t1 - t0, "conns": len(conns), "errors": stats.errors,
            "first_error": stats.first_error, "client_cpu": cpu1 - cpu0}


async def run_idle(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    conns = await open_conns(args, stats)
    opened = time.monotonic() - t0
    print(json.dumps({"ready": len(conns), "errors": stats.errors, "first_error": stats.first_error,
                      "open_seconds": opened}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.hold)
    still_open = sum(c.open for c in conns)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.2)
    return {"closed": len(conns), "still_open_at_end": still_open, "errors": stats.errors,
            "first_error": stats.first_error}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.wsclient")
    p.add_argument("mode", choices=("echo", "idle"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--parallel", type=int, default=64, help="connections being opened at once")
    p.add_argument("--size", type=int, default=64, help="message payload bytes")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start the echo loops")
    p.add_argument("--hold", type=float, default=120.0, help="idle: longest time to hold the connections")
    p.add_argument("--index", type=int, default=0, help="this client's number (makes payloads unique)")
    args = p.parse_args()
    raise_nofile()
    result = uvloop.run(run_echo(args) if args.mode == "echo" else run_idle(args))
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
