"""The gateway's end of the init's control socket, against an init that workspace code took over."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.base import NotRunning
from launcher.control import Control

Answer = Callable[[], tuple[bytes, list[socket.socket]]]


def fake_init(path: Path, answer: Answer) -> threading.Thread:
    """Answers one request with whatever `answer` gives: the bytes and the descriptors to pass."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            assert conn.recv(1) == b"S"
            data, socks = answer()
            socket.send_fds(conn, [data], [s.fileno() for s in socks])
            for s in socks:
                s.close()
            conn.recv(1)  # hold the connection until the gateway closes it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


async def ask(path: Path) -> socket.socket:
    control = Control(asyncio.get_running_loop(), str(path), lambda: None)
    try:
        return await asyncio.wait_for(control.new_socket(), 5)
    finally:
        control.close()


def open_fds() -> set[tuple[str, str]]:
    """Each open descriptor with what it points at, so a reused number is still a new entry."""
    gc.collect()  # sockets an earlier test dropped close now, not in the middle of this one
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except FileNotFoundError:
            continue  # the descriptor listdir itself used
    return found


async def test_a_plain_unconnected_tcp_socket_is_accepted(tmp_path: Path) -> None:
    fake_init(tmp_path / "ctl.sock", lambda: (b"S", [socket.socket(socket.AF_INET, socket.SOCK_STREAM)]))
    sock = await ask(tmp_path / "ctl.sock")
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    sock.close()


_peers: list[socket.socket] = []


def connected_tcp() -> tuple[bytes, list[socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    _peers.extend([server, server.accept()[0]])  # keep the other end open: the socket stays connected
    return b"S", [client]


@pytest.mark.parametrize(
    "answer",
    [
        lambda: (b"S", [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)]),
        lambda: (b"S", [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]),
        lambda: (b"S", [socket.socket(socket.AF_INET6, socket.SOCK_STREAM)]),
        connected_tcp,
        lambda: (b"S", [socket.socket(), socket.socket()]),
        lambda: (b"E", [socket.socket()]),
        lambda: (b"S", []),
    ],
    ids=["unix", "udp", "ipv6", "already-connected", "two-fds", "error-byte-with-fd", "no-fd"],
)
async def test_anything_else_is_refused_and_closed(tmp_path: Path, answer: Answer) -> None:
    before = open_fds()
    thread = fake_init(tmp_path / "ctl.sock", answer)
    with pytest.raises(NotRunning):
        await ask(tmp_path / "ctl.sock")
    thread.join(5)
    for peer in _peers:
        peer.close()
    _peers.clear()
    # Nothing the fake init passed stays open in the gateway. Only new entries count: a
    # descriptor that something else closed meanwhile is not a leak.
    assert open_fds() - before == set()
