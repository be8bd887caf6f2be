"""Workspaces another gateway process on this machine launched, reached through their control sockets.

Replicas share workspace records (owner, ports, where it runs); the record of
a workspace on this machine names its run directory, whose control socket
hands out sockets inside the workspace's network namespace to any process of
the same user, exactly as it does for the launcher that started it. A
workspace on another machine is not reachable this way (see the README:
route it through the replica that runs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from .base import NotRunning
from .control import Control


class SameMachine:
    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self._controls: dict[str, Control] = {}

    def _control(self, run_dir: str) -> Control:
        control = self._controls.get(run_dir)
        if control is not None and not control.closed:
            return control
        if not os.path.isabs(run_dir):
            raise NotRunning("the workspace record names no run directory")
        try:
            # Through a directory descriptor: the path may be longer than a unix socket path allows.
            fd = os.open(run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise NotRunning("the workspace is not running") from None
        try:
            control = Control(self.loop, f"/proc/self/fd/{fd}/ctl.sock", lambda: self._forget(run_dir))
        except OSError:
            raise NotRunning("the workspace is not running") from None
        finally:
            os.close(fd)
        self._controls[run_dir] = control
        return control

    def _forget(self, run_dir: str) -> None:
        self._controls.pop(run_dir, None)

    async def connect(self, run_dir: str, port: int) -> socket.socket:
        sock = await self._control(run_dir).new_socket()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        for control in list(self._controls.values()):
            with contextlib.suppress(Exception):
                control.close()
        self._controls.clear()
