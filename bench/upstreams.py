"""Upstream servers written for the benchmarks, run as separate processes.

``python -m bench.upstreams wsecho --port P``: a WebSocket echo server (raw asyncio protocol on
uvloop; start several processes on one port, it binds with SO_REUSEPORT).

``python -m bench.upstreams sink --port P``: an HTTP/1.1 server that reads request bodies
(Content-Length or chunked), discards them and answers 200 with the byte count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import resource
import signal
import socket
from typing import cast

import uvloop

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
MAX_HEAD = 32768


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(first: int, payload: bytes) -> bytes:
    """A server frame (never masked)."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


class WsEcho(asyncio.Protocol):
    """Answers the upgrade, then echoes every text/binary frame; answers pings and closes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._plain(400, b"head too large")
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            self._handshake(head)
            if not self.open:
                return
        self._frames()

    def _plain(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
        self.transport.close()

    def _handshake(self, head: bytes) -> None:
        assert self.transport is not None
        try:
            _method, _target, headers = parse_head(head)
        except ValueError:
            self._plain(400, b"bad request")
            return
        key = headers.get(b"sec-websocket-key")
        if headers.get(b"upgrade", b"").lower() != b"websocket" or not key:
            self._plain(200, b"websocket echo")
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
        )
        self.open = True

    def _frames(self) -> None:
        assert self.transport is not None
        buf = self.buf
        i = 0
        out: list[bytes] = []
        closing = False
        while len(buf) - i >= 2:
            b0 = buf[i]
            b1 = buf[i + 1]
            n = b1 & 0x7F
            pos = i + 2
            if n == 126:
                if len(buf) - pos < 2:
                    break
                n = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
            elif n == 127:
                if len(buf) - pos < 8:
                    break
                n = int.from_bytes(buf[pos : pos + 8], "big")
                pos += 8
            mask = b""
            if b1 & 0x80:
                if len(buf) - pos < 4:
                    break
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            if len(buf) - pos < n:
                break
            payload = bytes(buf[pos : pos + n])
            if mask:
                payload = unmask(payload, mask)
            i = pos + n
            opcode = b0 & 0x0F
            if opcode == 0x8:
                out.append(frame(0x88, payload[:2]))
                closing = True
                break
            if opcode == 0x9:
                out.append(frame(0x8A, payload))
            elif opcode != 0xA:
                out.append(frame(b0, payload))
        del buf[:i]
        if out:
            self.transport.write(b"".join(out))
        if closing:
            self.transport.close()


class Sink(asyncio.Protocol):
    """HTTP/1.1 keep-alive server that counts and discards request bodies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = "head"  # head | length | chunk-size | chunk-data | chunk-crlf | trailer
        self.left = 0
        self.count = 0
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # Body bytes are only counted: the common case (a long Content-Length body) never copies.
        if self.state == "length" and not self.buf:
            take = min(self.left, len(data))
            self.left -= take
            self.count += take
            if self.left:
                return
            self._respond()
            data = data[take:]
            if not data:
                return
        self.buf += data
        self._run()

    def _run(self) -> None:
        buf = self.buf
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._fail()
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._start(head)
            elif self.state == "length":
                take = min(self.left, len(buf))
                self.left -= take
                self.count += take
                del buf[:take]
                if self.left:
                    return
                self._respond()
            elif self.state == "chunk-size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end]).split(b";")[0].strip()
                del buf[: end + 2]
                try:
                    self.left = int(line, 16)
                except ValueError:
                    self._fail()
                    return
                self.state = "chunk-data" if self.left else "trailer"
            elif self.state == "chunk-data":
                take = min(self.left, len(buf))
                self.left -= take
                self.count += take
                del buf[:take]
                if self.left:
                    return
                self.state = "chunk-crlf"
            elif self.state == "chunk-crlf":
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = "chunk-size"
            elif self.state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._respond()
            if self.transport is None or self.transport.is_closing():
                return

    def _start(self, head: bytes) -> None:
        assert self.transport is not None
        try:
            _method, _target, headers = parse_head(head)
        except ValueError:
            self._fail()
            return
        self.count = 0
        self.keep_alive = headers.get(b"connection", b"").lower() != b"close"
        if headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state = "chunk-size"
            return
        self.left = int(headers.get(b"content-length", b"0"))
        self.state = "length"
        if not self.left:
            self._respond()

    def _respond(self) -> None:
        assert self.transport is not None
        body = b"%d" % self.count
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), b"" if self.keep_alive else b"Connection: close\r\n", body)
        )
        self.state = "head"
        if not self.keep_alive:
            self.transport.close()

    def _fail(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.close()


async def serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    factory = WsEcho if kind == "wsecho" else Sink
    server = await loop.create_server(factory, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstreams")
    parser.add_argument("kind", choices=("wsecho", "sink"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(serve(args.kind, args.port))


if __name__ == "__main__":
    main()
