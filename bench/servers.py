"""Starting and stopping the servers under test: upstreams, nginx as the reference proxy, and wsgate.

Every process is started in its own session (process group), registered, and killed with its
whole group on stop, at exit, or when the run is interrupted.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "wsgate.localhost"
WORKSPACE = "bench"
# Workspace ports that select the upstream, for both proxies.
HTTP_PORT, WS_PORT, SINK_PORT, SESSION_PORT = 8080, 8081, 8082, 8083
HTTP_HOST = f"{HTTP_PORT}-{WORKSPACE}.ws.{DOMAIN}"
# The same upstream as HTTP_HOST behind a port private to its owner: every request through it has
# its session checked by wsgate, as a signed-in browser's would (nginx checks nothing).
SESSION_HOST = f"{SESSION_PORT}-{WORKSPACE}.ws.{DOMAIN}"
OWNER = "dev:alice"
HOST_COOKIE = "__Host-wsgate-host"
WS_HOST = f"{WS_PORT}-{WORKSPACE}.ws.{DOMAIN}"
SINK_HOST = f"{SINK_PORT}-{WORKSPACE}.ws.{DOMAIN}"
SMALL_BODY = b"hello"
BIG_FILE = "64k.bin"
BIG_SIZE = 64 * 1024
REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class BenchError(Exception):
    """A benchmark could not produce a valid figure (a server failed, errors were seen...)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """Environment for our own Python processes (helpers and wsgate): `bench`, `gateway` and the
    other packages imported from this repository, ahead of whatever tree the virtualenv installed
    (an editable install of another checkout would otherwise be what gets measured)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


_LIVE: list[Proc] = []


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv, stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
        self.pid = self.popen.pid
        _LIVE.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode
            why = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            if code <= 0:
                # The benchmark only stops its servers at the end: this came from elsewhere on the machine
                # (a broad `pkill -f ...` by someone else, the OOM killer) or from a crash.
                why += " while the benchmark still needed it (not stopped by the benchmark)"
            raise BenchError(f"{self.name} (pid {self.pid}) {why}; last output:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # Whatever is left of the group (workers of a master that died first, say) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(2)
        self._logf.close()
        if self in _LIVE:
            _LIVE.remove(self)


def stop_all() -> None:
    for proc in reversed(list(_LIVE)):
        proc.stop(grace=2.0)


atexit.register(stop_all)


def wait_port(port: int, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{proc.name}: nothing listening on port {port} after {timeout:.0f}s; output:\n{proc.tail()}")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str | None = None
    cipher: str | None = None
    peer_cert: bytes = b""


def client_context(ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(ca))
    return ctx


def https_request(port: int, host: str, path: str = "/", *, ca: Path | None = None, method: str = "GET",
                  body: bytes = b"", timeout: float = 10.0, headers: tuple[str, ...] = ()) -> Response:
    """One HTTPS request with SNI = Host = ``host`` (verified against ``ca`` when given); reads to EOF."""
    ctx = client_context(ca)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        extra = "".join(h + "\r\n" for h in headers)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        version, cipher = s.version(), (s.cipher() or ("",))[0]
        peer_cert = s.getpeercert(binary_form=True) or b""
        s.sendall(head + body)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    raw_resp = b"".join(chunks)
    head_bytes, _, rest = raw_resp.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise BenchError(f"not an HTTP response from port {port}: {raw_resp[:200]!r}") from None
    got = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        got[name.strip().lower()] = value.strip()
    if got.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif "content-length" in got:
        rest = rest[: int(got["content-length"])]
    return Response(status, got, rest, version, cipher, peer_cert)


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)


async def sign_in(port: int, ca: Path) -> str:
    """Signs in to wsgate as the owner through its dev sign-in and opens SESSION_HOST, like a browser;
    returns the Cookie header that browser then sends to SESSION_HOST."""
    # The test suite's browser (appended to the path: tests/ has directories named like the packages).
    if str(REPO / "tests") not in sys.path:
        sys.path.append(str(REPO / "tests"))
    from signin_client import Browser, dev_sign_in

    url = f"https://{SESSION_HOST}:{port}/"
    async with Browser(str(ca)) as b:
        visit = await dev_sign_in(b, url, OWNER.split(":", 1)[1])
        if visit.status != 200 or visit.url != url or visit.last.body != SMALL_BODY:
            raise BenchError(f"wsgate dev sign-in for {SESSION_HOST} ended with {visit.status} at {visit.url}: "
                             f"{visit.last.body[:200]!r}")
        value = b.cookie(HOST_COOKIE)
    if not value:
        raise BenchError(f"wsgate dev sign-in set no {HOST_COOKIE} cookie")
    return f"Cookie: {HOST_COOKIE}={value}"


# --- the stack ----------------------------------------------------------------------------------


def gateway_toml_head(state_dir: Path, port: int, workers: int, redis_url: str = "") -> str:
    """The part of a benchmark gateway's config every benchmark shares: loopback, no access log."""
    return textwrap.dedent(f"""\
        state_dir = "{state_dir}"
        workers = {workers}
        redis_url = "{redis_url}"

        [listen]
        address = "127.0.0.1"
        port = {port}

        [limits]
        shutdown_grace = 1.0

        [metrics]
        port = 0

        [log]
        access_log = false

    """)


def workspace_entry(workspace: str, port: int, upstream_port: int, *, owner: str = "") -> str:
    """A static workspace port: public, or private to `owner`."""
    access = f'owner = "{owner}"' if owner else "public = true"
    return f'[[workspaces]]\nid = "{workspace}"\nport = {port}\nupstream = "127.0.0.1:{upstream_port}"\n{access}\n\n'


@dataclass
class Stack:
    """Upstreams plus both proxies, each on free loopback ports, in one work directory."""

    workdir: Path
    state_dir: Path  # wsgate's state (the local CA); shared by the stacks of one run
    workers: int = 1
    ws_echo: bool = False
    sink: bool = False
    ws_echo_procs: int = 2
    big_file_mib: int = 0  # a sparse file of this size under /files/ on the HTTP upstream

    upstream_port: int = 0
    ws_port: int = 0
    sink_port: int = 0
    redis_port: int = 0  # with several workers, sessions live in this Redis (wsgate requires it)
    ports: dict[str, int] = field(default_factory=dict)  # proxy name -> port
    # "Cookie: ..." of a browser signed in to wsgate (dev sign-in) with SESSION_HOST opened.
    session_header: str = ""
    procs: dict[str, Proc] = field(default_factory=dict)
    _extra: list[Proc] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.state_dir / "ca" / "ca.pem"

    @property
    def leaf(self) -> tuple[Path, Path]:
        return self.state_dir / "ca" / "leaf.pem", self.state_dir / "ca" / "leaf.key"

    @property
    def docroot(self) -> Path:
        return self.workdir / "docroot"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.upstream_port = free_port()
        self.ws_port = free_port()
        self.sink_port = free_port()
        self._start_upstream_nginx()
        if self.workers > 1:
            self._start_redis()
        if self.ws_echo:
            for i in range(self.ws_echo_procs):
                self._start_helper(f"wsecho{i}", "wsecho", self.ws_port)
        if self.sink:
            self._start_helper("sink", "sink", self.sink_port)
        # wsgate first: on a fresh state dir it creates the CA and leaf that nginx then uses too.
        self._start_wsgate()
        self._start_proxy_nginx()
        self.session_header = asyncio.run(sign_in(self.ports["wsgate"], self.ca))
        for proc in self._extra:
            proc.check_alive()

    def stop(self) -> None:
        for proc in [*self.procs.values(), *self._extra][::-1]:
            proc.stop()
        self.procs.clear()
        self._extra.clear()

    def check_alive(self) -> None:
        for proc in [*self.procs.values(), *self._extra]:
            proc.check_alive()

    def root_pid(self, name: str) -> int:
        return self.procs[name].pid

    # --- upstreams ---
    def _start_helper(self, name: str, kind: str, port: int) -> None:
        log = self.workdir / f"{name}.log"
        proc = Proc(name, [sys.executable, "-m", "bench.upstreams", kind, "--port", str(port)], log,
                    env=child_env(), cwd=REPO)
        self._extra.append(proc)
        wait_port(port, proc)

    def _start_upstream_nginx(self) -> None:
        prefix = self.workdir / "upstream-nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        root = self.docroot
        (root / "files").mkdir(parents=True, exist_ok=True)
        # Random bytes: the 64 KiB body is compared byte for byte through each proxy.
        (root / "files" / BIG_FILE).write_bytes(os.urandom(BIG_SIZE))
        if self.big_file_mib:
            with open(root / "files" / "big.bin", "wb") as f:
                f.truncate(self.big_file_mib << 20)
        conf = prefix / "nginx.conf"
        conf.write_text(textwrap.dedent(f"""\
            worker_processes 1;
            worker_rlimit_nofile 20000;
            pid {prefix}/nginx.pid;
            error_log {prefix}/error.log warn;
            events {{ worker_connections 16000; }}
            http {{
                access_log off;
                sendfile on;
                keepalive_requests 1000000;
                keepalive_timeout 300s;
                client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
                fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
                server {{
                    listen 127.0.0.1:{self.upstream_port} backlog=4096;
                    root {root};
                    location = / {{ default_type text/plain; return 200 "{SMALL_BODY.decode()}"; }}
                    location /files/ {{ default_type application/octet-stream; }}
                }}
            }}
        """))
        proc = Proc("upstream-nginx", [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                    self.workdir / "upstream-nginx.log")
        self._extra.insert(0, proc)
        wait_port(self.upstream_port, proc)

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        # No persistence: the run's sessions need not outlive it.
        proc = Proc("redis", [REDIS, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(self.workdir)], self.workdir / "redis.log")
        self._extra.append(proc)
        wait_port(self.redis_port, proc)

    # --- proxies ---
    def _start_wsgate(self) -> None:
        port = free_port()
        d = self.workdir / "wsgate"
        d.mkdir(exist_ok=True)
        conf = d / "wsgate.toml"
        routes = "".join(
            workspace_entry(WORKSPACE, wport, uport)
            for wport, uport in ((HTTP_PORT, self.upstream_port), (WS_PORT, self.ws_port), (SINK_PORT, self.sink_port))
        ) + workspace_entry(WORKSPACE, SESSION_PORT, self.upstream_port, owner=OWNER)
        redis = f"redis://127.0.0.1:{self.redis_port}/0" if self.redis_port else ""
        head = gateway_toml_head(self.state_dir, port, self.workers, redis)
        conf.write_text(head + "[auth]\ndev_login = true\n\n" + routes)
        script = Path(sys.executable).with_name("wsgate")
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
        proc = Proc("wsgate", [*argv, "serve", "--config", str(conf)], d / "wsgate.log", env=child_env(), cwd=d)
        self.procs["wsgate"] = proc
        self.ports["wsgate"] = port
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            proc.check_alive()
            try:
                resp = https_request(port, DOMAIN, "/readyz", timeout=2)
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
            except (OSError, ValueError, BenchError) as e:
                last = str(e)
            time.sleep(0.1)
        raise BenchError(f"wsgate not ready after 30s ({last}); output:\n{proc.tail()}")

    def _start_proxy_nginx(self) -> None:
        port = free_port()
        prefix = self.workdir / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        cert, key = self.leaf
        conf = prefix / "nginx.conf"

        def server(host: str, upstream: str, extra: str = "") -> str:
            default = " default_server" if host == HTTP_HOST else ""
            return (f"    server {{\n        listen 127.0.0.1:{port} ssl{default};\n        server_name {host};\n"
                    f"{extra}        location / {{ proxy_pass http://{upstream}; }}\n    }}\n")

        conf.write_text(textwrap.dedent(f"""\
            worker_processes {self.workers};
            worker_rlimit_nofile 20000;
            pid {prefix}/nginx.pid;
            error_log {prefix}/error.log warn;
            events {{ worker_connections 19000; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                keepalive_timeout 75s;
                client_max_body_size 0;
                client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
                fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;

                ssl_certificate {cert};
                ssl_certificate_key {key};
                ssl_protocols TLSv1.2 TLSv1.3;
                ssl_session_cache shared:SSL:10m;
                ssl_session_tickets on;

                # Empty Connection for plain requests (upstream keep-alive), "upgrade" for WebSockets.
                map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
                proxy_http_version 1.1;
                proxy_set_header Host $host;
                proxy_set_header Connection $connection_upgrade;
                proxy_set_header Upgrade $http_upgrade;
                proxy_read_timeout 3600s;
                proxy_send_timeout 3600s;

                upstream http_up {{ server 127.0.0.1:{self.upstream_port}; keepalive 64; keepalive_requests 1000000; }}
                upstream ws_up {{ server 127.0.0.1:{self.ws_port}; keepalive 64; }}
                upstream sink_up {{ server 127.0.0.1:{self.sink_port}; keepalive 64; }}

        """) + server(HTTP_HOST, "http_up") + server(SESSION_HOST, "http_up") + server(WS_HOST, "ws_up")
            # Streamed like wsgate does, instead of spooled to a temp file first (nginx's default).
            + server(SINK_HOST, "sink_up", "        proxy_request_buffering off;\n") + "}\n")
        proc = Proc("nginx", [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], prefix / "nginx.log")
        self.procs["nginx"] = proc
        self.ports["nginx"] = port
        wait_port(port, proc)
