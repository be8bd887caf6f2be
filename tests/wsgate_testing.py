"""Test support: a real gateway process, real TLS clients, real upstream servers.

Everything listens on free loopback ports and is stopped by the fixture that
started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAIN = "wsgate.localhost"
REPO = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free at the moment, and never one this process was given before: two
    servers of one test (a gateway and its metrics listener, say) must not be handed the same
    port, which the kernel may well offer twice in a row once the first probe lets it go."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block lasts.

    The port stays bound (never listening) instead of being let go as `free_port` does: the
    kernel then never hands it out as the source port of a connection, so a connection to it
    cannot meet itself (a simultaneous open) and succeed, however rarely.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def refuses(port: int, timeout: float = 1.0) -> bool:
    """Whether a connection to loopback `port` fails (refused, or no answer within `timeout`).

    The client's own port is chosen first and is never `port`: a connection from a port to
    that same port meets itself (a simultaneous open) and succeeds with nothing listening.
    """
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if s.getsockname()[1] != port:
            break
        s.close()
    with s:
        s.settimeout(timeout)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return True
        return False


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port}")


class Gateway:
    """A `wsgate serve` subprocess with its own state dir and config."""

    def __init__(self, tmp: Path, toml: str = "", *, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.dir = tmp
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = tmp / "wsgate.toml"
        base = f"""
            state_dir = "{tmp / 'state'}"
            workers = {workers}
            [listen]
            port = {self.port}
            [metrics]
            port = {self.metrics_port}
        """
        # Top-level keys of `toml` must come before the base config's tables.
        extra = textwrap.dedent(toml).strip("\n").splitlines()
        split = next((i for i, line in enumerate(extra) if line.lstrip().startswith("[")), len(extra))
        top, tables = "\n".join(extra[:split]), "\n".join(extra[split:])
        self.config.write_text(top + "\n" + textwrap.dedent(base) + "\n" + tables + "\n")
        self.ca = tmp / "state" / "ca" / "ca.pem"
        self.log_path = tmp / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = env or {}

    def start(self) -> Gateway:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                status, _, _ = self.request(DOMAIN, "GET", "/readyz", timeout=1)
                if status == 200:
                    return self
            except (OSError, ssl.SSLError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gateway did not become ready:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    # --- clients ----------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return ctx

    def tls_socket(self, host: str, timeout: float = 10.0, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return (ctx or self.ssl_context()).wrap_socket(raw, server_hostname=host)

    def connection(self, host: str, timeout: float = 10.0) -> http.client.HTTPSConnection:
        gw = self

        class Conn(http.client.HTTPSConnection):
            def connect(self) -> None:
                self.sock = gw.tls_socket(host, timeout)

        return Conn(host, self.port, timeout=timeout, context=self.ssl_context())

    def request(
        self,
        host: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connection(host, timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def raw(self, host: str, data: bytes, timeout: float = 5.0) -> bytes:
        """Sends raw bytes over TLS and returns everything until the server closes (or times out)."""
        with self.tls_socket(host, timeout) as s:
            s.sendall(data)
            chunks = []
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
            except (TimeoutError, ssl.SSLError, ConnectionResetError):
                pass
            return b"".join(chunks)

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.port}{path}"

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()


@dataclass
class Talk:
    """What a client read: the bytes, whether the gateway closed, and how long it took."""

    data: bytes
    closed: bool
    elapsed: float = 0.0


def read_until(
    sock: ssl.SSLSocket, timeout: float, done: Callable[[bytes], bool], buf: bytes = b"", *, start: float | None = None
) -> Talk:
    """Reads until `done(data)`, the gateway closes (EOF, reset or a TLS error), or `timeout` passes.

    `elapsed` counts from `start` (default: now), so callers can include the time spent writing.
    """
    start = time.monotonic() if start is None else start
    deadline = time.monotonic() + timeout
    closed = False
    while not done(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ssl.SSLError):
            closed = True
            break
        if not piece:
            closed = True
            break
        buf += piece
    return Talk(buf, closed, time.monotonic() - start)


def ws_host(port: int, workspace: str = "abc") -> str:
    return f"{port}-{workspace}.ws.{DOMAIN}"


# --- upstreams ----------------------------------------------------------------------


@dataclass
class Conn:
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False


class ThreadedServer:
    """A raw TCP server on a free loopback port: each accepted socket goes to `accepted` (in the
    accept thread, in order), whose returned function then serves it in a thread of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def accepted(self, sock: socket.socket) -> Callable[[], None]:
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.accepted(sock), daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


class RecordingUpstream(ThreadedServer):
    """A raw TCP upstream in threads that keeps every byte of every connection.

    `reply(unanswered)` gets the bytes received since its last answer and returns bytes to send, or None.
    """

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.conns: list[Conn] = []
        super().__init__()

    def accepted(self, sock: socket.socket) -> Callable[[], None]:
        conn = Conn()
        with self._lock:
            self.conns.append(conn)
        return lambda: self._serve(sock, conn)

    def _serve(self, sock: socket.socket, conn: Conn) -> None:
        pending = b""
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    conn.eof = True
                    return
                with self._lock:
                    conn.data += data
                pending += data
                out = self.reply(pending)
                if out is not None:
                    pending = b""
                    try:
                        sock.sendall(out)
                    except OSError:
                        return

    @property
    def all_bytes(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.data) for c in self.conns)


class AiohttpUpstream:
    """An aiohttp app in a background thread (echo, streaming, WebSocket handlers)."""

    def __init__(self, app_factory: Callable[[], Any]) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._factory = app_factory
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("upstream did not start")

    def _run(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._factory())
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
