"""The gateway's end of a workspace init's control socket.

The init answers each b"S" with one fresh, unconnected TCP socket created in
the workspace's network namespace (SCM_RIGHTS); the gateway connects it to the
workspace port itself, so proxied bytes go through a plain kernel socket.  The
init's end closes when the workspace ends, which is how the launcher learns it.
Whatever arrives is checked: workspace code could take over the init and send
something else.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import os
import socket
from collections.abc import Callable

from .base import NotRunning

_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)
MAX_WAITING = 1024


class Control:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, on_close: Callable[[], None]) -> None:
        self.loop = loop
        self.on_close = on_close
        self.waiting: collections.deque[asyncio.Future[socket.socket]] = collections.deque()
        self.closed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    async def new_socket(self) -> socket.socket:
        if self.closed:
            raise NotRunning("the workspace is not running")
        if len(self.waiting) >= MAX_WAITING:
            raise NotRunning("the workspace's init is not answering")
        fut: asyncio.Future[socket.socket] = self.loop.create_future()
        self.waiting.append(fut)
        try:
            self.sock.send(b"S")
        except BlockingIOError:
            await self.loop.sock_sendall(self.sock, b"S")
        except OSError:
            self.close()
        return await fut

    def ping(self) -> bool:
        return not self.closed

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(1, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not data:
                self.close()
                return
            fds: list[int] = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            sock = self._check(data, fds)
            if not self.waiting:
                if sock is not None:
                    sock.close()
                continue
            fut = self.waiting.popleft()
            if fut.done():
                if sock is not None:
                    sock.close()
            elif sock is None:
                fut.set_exception(NotRunning("the workspace could not open a connection"))
            else:
                fut.set_result(sock)

    @staticmethod
    def _check(data: bytes, fds: list[int]) -> socket.socket | None:
        sock: socket.socket | None = None
        for fd in fds:
            try:
                candidate = socket.socket(fileno=fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.close(fd)
                continue
            # Exactly one plain, unconnected IPv4 TCP socket, or nothing.
            plain = candidate.family == socket.AF_INET and candidate.type == socket.SOCK_STREAM
            ok = len(fds) == 1 and data == b"S" and plain
            if ok:
                try:
                    candidate.getpeername()
                    ok = False
                except OSError:
                    pass
            if ok:
                sock = candidate
            else:
                candidate.close()
        return sock

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(NotRunning("the workspace stopped"))
        self.on_close()

    def detach(self) -> None:
        """Close without reporting the workspace as ended (the gateway is shutting down)."""
        self.on_close = lambda: None
        self.close()
