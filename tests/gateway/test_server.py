"""Process life cycle: drain on SIGTERM, reload on SIGHUP and on renewed files, workers."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from wsgate_testing import DOMAIN, REPO, AiohttpUpstream, Gateway, free_port, refuses, ws_host

pytestmark = pytest.mark.slow


def ws_toml(port: int) -> str:
    return f'\n[[workspaces]]\nid = "abc"\nport = 8080\nupstream = "127.0.0.1:{port}"\npublic = true\n'


def test_sigterm_lets_requests_finish_and_closes_websockets_with_1001(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    gw = gateway_factory(ws_toml(echo_upstream.port) + "[limits]\nshutdown_grace = 10\n")
    result: dict[str, object] = {}

    def slow() -> None:
        result["slow"] = gw.request(ws_host(8080), "GET", "/slow?s=1.5", timeout=10)

    async def websocket() -> None:
        ctx = ssl.create_default_context(cafile=str(gw.ca))
        sock = socket.create_connection(("127.0.0.1", gw.port))
        host = ws_host(8080)
        async with websockets.connect(f"wss://{host}/ws", ssl=ctx, sock=sock, server_hostname=host) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            result["ws_open"] = True
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as e:
                result["ws_close"] = e.rcvd.code if e.rcvd else None

    t_slow = threading.Thread(target=slow)
    t_ws = threading.Thread(target=lambda: asyncio.run(websocket()))
    t_ws.start()
    deadline = time.monotonic() + 5
    while "ws_open" not in result and time.monotonic() < deadline:
        time.sleep(0.02)
    t_slow.start()
    time.sleep(0.4)  # the slow request is in flight
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert refuses(gw.port)  # no longer accepting
    t_slow.join(10)
    t_ws.join(10)
    assert gw.proc is not None
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    status, _, body = result["slow"]  # type: ignore[misc]
    assert status == 200 and body == b"slow done"
    assert result.get("ws_close") == 1001


def test_sighup_reloads_routes_without_dropping_connections(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    gw = gateway_factory(ws_toml(echo_upstream.port))
    conn = gw.connection(ws_host(8080))
    conn.request("GET", "/before")
    assert conn.getresponse().read()
    assert gw.request(ws_host(8081), "GET", "/")[0] == 404
    gw.config.write_text(
        gw.config.read_text()
        + f'\n[[workspaces]]\nid = "abc"\nport = 8081\nupstream = "127.0.0.1:{echo_upstream.port}"\npublic = true\n'
    )
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while gw.request(ws_host(8081), "GET", "/")[0] != 200:
        assert time.monotonic() < deadline, "new route not served after SIGHUP"
        time.sleep(0.1)
    # The connection opened before the reload still works.
    conn.request("GET", "/after")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["path"] == "/after"


def test_sighup_with_a_broken_config_keeps_serving(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    gw = gateway_factory(ws_toml(echo_upstream.port))
    gw.config.write_text(gw.config.read_text() + "\n[limits]\nmax_headers = 'lots'\n")
    gw.signal(signal.SIGHUP)
    time.sleep(1)
    assert gw.request(ws_host(8080), "GET", "/")[0] == 200
    errors = [e for e in gw.log_events() if e.get("level") == "error"]
    assert any("limits.max_headers" in e.get("error", "") for e in errors)


# --- configured certificates ---------------------------------------------------------


def make_cert(
    directory: Path, names: list[str], *, days: int = 30, expired: bool = False, tag: str = ""
) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
        if expired
        else (
            now - dt.timedelta(hours=1),
            now + dt.timedelta(days=days),
        )
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] + tag)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] + tag)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{names[0]}{tag}.pem", directory / f"{names[0]}{tag}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, cert


def peer_cert(gw: Gateway, host: str, cafile: Path) -> x509.Certificate:
    # Only reads which certificate is served; trust is checked by the requests in the test.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with gw.tls_socket(host, ctx=ctx) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_configured_certificate_is_reloaded_when_renewed(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key, first = make_cert(certs, ["example.test", "*.example.test", "*.ws.example.test"])
    gw = gateway_factory(
        f"""
domain = "example.test"
[tls]
reload_interval = 0.5
[[tls.certificates]]
cert = "{cert}"
key = "{key}"
"""
        + ws_toml(echo_upstream.port),
        start=False,
    )
    # Readiness probe uses the gateway's own CA path: point it at the configured cert instead.
    gw.ca = cert
    orig_request = gw.request

    def request(host: str, *a: object, **kw: object):  # type: ignore[no-untyped-def]
        return orig_request("example.test" if host == DOMAIN else host, *a, **kw)  # type: ignore[arg-type]

    gw.request = request  # type: ignore[method-assign]
    gw.start()
    host = "8080-abc.ws.example.test"
    assert peer_cert(gw, host, cert).serial_number == first.serial_number
    conn = gw.connection(host)
    conn.request("GET", "/a")
    assert conn.getresponse().read()
    # Renewal: certbot writes new files in place.
    new_cert, new_key, second = make_cert(certs, ["example.test", "*.example.test", "*.ws.example.test"], tag="-2")
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    deadline = time.monotonic() + 10
    while peer_cert(gw, host, cert).serial_number != second.serial_number:
        assert time.monotonic() < deadline, "renewed certificate not picked up"
        time.sleep(0.2)
    conn.request("GET", "/b")  # the old connection survives the reload
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["path"] == "/b"


@pytest.mark.parametrize("problem", ["mismatched key", "expired", "unreadable"])
def test_bad_certificates_stop_the_start_with_a_clear_message(tmp_path: Path, problem: str) -> None:
    cert, key, _ = make_cert(tmp_path, ["example.test"], expired=problem == "expired")
    if problem == "mismatched key":
        _, key, _ = make_cert(tmp_path, ["other.test"])
    if problem == "unreadable":
        cert = tmp_path / "missing.pem"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'domain = "example.test"\nstate_dir = "{tmp_path}/st"\n[listen]\nport = {free_port()}\n'
        f'[metrics]\nport = 0\n[[tls.certificates]]\ncert = "{cert}"\nkey = "{key}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert str(cert if problem != "mismatched key" else key) in out.stderr
    word = {"mismatched key": "match", "expired": "expire", "unreadable": ""}[problem]
    assert word in out.stderr.lower()


def test_route_host_without_certificate_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path}/st"\n[listen]\nport = {free_port()}\n[metrics]\nport = 0\n'
        '[[routes]]\nhost = "grafana.example.com"\nupstream = "http://127.0.0.1:3000"\naccess = "public"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "routes[0].host" in out.stderr and "grafana.example.com" in out.stderr


# --- workers ------------------------------------------------------------------------


def two_workers(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> tuple[Gateway, psutil.Process]:
    """A gateway with two workers, once both are running; and its supervisor process."""
    gw = gateway_factory(ws_toml(echo_upstream.port), workers=2)
    assert gw.proc is not None
    proc = psutil.Process(gw.proc.pid)
    deadline = time.monotonic() + 5
    while len(proc.children()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return gw, proc


def test_workers_share_tickets_metrics_and_are_restarted(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    gw, proc = two_workers(gateway_factory, echo_upstream)
    workers = {c.pid for c in proc.children()}
    # Resumption must work whichever worker accepts the next connection.
    ctx = gw.ssl_context()
    with gw.tls_socket(ws_host(8080), ctx=ctx) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {ws_host(8080)}\r\nConnection: close\r\n\r\n".encode())
        while s.recv(65536):
            pass
        session = s.session
    resumed = 0
    for _ in range(20):
        raw = socket.create_connection(("127.0.0.1", gw.port))
        with ctx.wrap_socket(raw, server_hostname=ws_host(8080), session=session) as s:
            resumed += s.session_reused
            s.sendall(f"GET / HTTP/1.1\r\nHost: {ws_host(8080)}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
    assert resumed == 20
    # Metrics are the sum over workers.
    for _ in range(10):
        gw.request(ws_host(8080), "GET", "/")
    # Workers report once a second; on a loaded machine a report can come late, so wait for it.
    prefix = 'wsgate_requests_total{kind="workspace",status="200"}'
    total, deadline = 0, time.monotonic() + 10
    while total < 31 and time.monotonic() < deadline:
        time.sleep(0.5)
        lines = [x for x in gw.metrics().splitlines() if x.startswith(prefix)]
        total = int(lines[0].split()[-1]) if lines else 0
    assert total >= 31
    # A worker that dies is replaced and the gateway keeps serving.
    # (Chosen now: on a loaded machine a slow worker may have been replaced since the start.)
    current = {c.pid for c in proc.children()}
    victim = next(iter(current & workers or current))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        kids = {c.pid for c in proc.children()}
        if len(kids) == 2 and victim not in kids:
            break
        assert time.monotonic() < deadline, "worker was not replaced"
        time.sleep(0.1)
    for _ in range(10):
        assert gw.request(ws_host(8080), "GET", "/")[0] == 200
    assert gw.stop() == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in kids)


def test_new_connections_are_spread_over_the_workers(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    # With one shared socket, the worker that wakes first takes a whole burst of new
    # connections while the other idles; each worker's own socket lets the kernel spread them.
    gw, proc = two_workers(gateway_factory, echo_upstream)
    ctx = gw.ssl_context()
    n = 100
    # A burst: every connection is queued before any TLS handshake begins.
    raws = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(n)]
    held = [ctx.wrap_socket(raw, server_hostname=ws_host(8080), do_handshake_on_connect=False) for raw in raws]
    try:
        for s in held:
            s.do_handshake()
            s.sendall(f"GET / HTTP/1.1\r\nHost: {ws_host(8080)}\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        per_worker = [
            sum(1 for k in c.net_connections("tcp") if k.laddr and k.laddr.port == gw.port and k.raddr)
            for c in proc.children()
        ]
        assert sum(per_worker) == n, per_worker
        # A fair spread gives either worker more than 80 of 100 with odds below one in a million.
        assert max(per_worker) <= 80, per_worker
    finally:
        for s in held:
            s.close()


def join_port(port: int, *, uid: int | None = None) -> str:
    """Tries to listen on `port` with SO_REUSEPORT, as `uid` (a forked child): "joined" or the error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only reports
        answer = b"joined"
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            socket.create_server(("127.0.0.1", port), reuse_port=True).close()
        except OSError as e:
            answer = (errno.errorcode.get(e.errno or 0) or str(e)).encode()
        os.write(write_fd, answer)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    return got


def test_another_user_cannot_join_the_workers_port(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    # Workers listen with SO_REUSEPORT: a process that joined the port would be handed a share
    # of new connections. The kernel admits only sockets of the same user.
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("missing in CI: root, to try the port as another user")
        pytest.skip("needs root to try the port as another user")
    gw, _ = two_workers(gateway_factory, echo_upstream)
    assert join_port(gw.port, uid=65534) == "EADDRINUSE", "another user's socket was admitted to the port"
    # The same user is admitted: the barrier is the user, not the option alone.
    assert join_port(gw.port) == "joined"
    assert gw.request(ws_host(8080), "GET", "/")[0] == 200


def test_plain_http_port_redirects_to_https(gateway_factory: Callable[..., Gateway]) -> None:
    port = free_port()
    gw = gateway_factory(start=False)
    # [listen] is already in the base config: add the key under it.
    gw.config.write_text(gw.config.read_text().replace("[listen]\n", f"[listen]\nhttp_redirect_port = {port}\n", 1))
    gw.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/x?y=1", headers={"Host": ws_host(8080)})
    resp = conn.getresponse()
    assert resp.status == 308
    assert resp.headers["Location"] == f"https://{ws_host(8080)}:{gw.port}/x?y=1"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Host": "evil.example.org"})
    resp = conn.getresponse()
    assert resp.status == 308 and resp.headers["Location"].startswith(f"https://{DOMAIN}:{gw.port}/")


def test_local_ca_leaf_is_renewed_before_it_expires(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory("[tls]\nreload_interval = 0.3\n")
    ca_dir = gw.ca.parent
    ca_cert = x509.load_pem_x509_certificate(gw.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    # A leaf from the same CA with only 10 days left, as if the gateway had run for 80 days.
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names = [DOMAIN, f"*.{DOMAIN}", f"*.ws.{DOMAIN}"]
    short = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=80))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = short.public_bytes(serialization.Encoding.PEM) + gw.ca.read_bytes()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (ca_dir / "leaf.key.new").write_bytes(key_pem)
    (ca_dir / "leaf.pem.new").write_bytes(pem)
    os.replace(ca_dir / "leaf.key.new", ca_dir / "leaf.key")
    os.replace(ca_dir / "leaf.pem.new", ca_dir / "leaf.pem")
    deadline = time.monotonic() + 10
    while peer_cert(gw, DOMAIN, gw.ca).serial_number != short.serial_number:
        assert time.monotonic() < deadline, "short leaf not loaded"
        time.sleep(0.1)
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        served = peer_cert(gw, DOMAIN, gw.ca)
        if served.not_valid_after_utc - now > dt.timedelta(days=80):
            break
        assert time.monotonic() < deadline, "leaf was not renewed"
        time.sleep(0.1)
    # Still the same CA: browsers that trust it keep working.
    assert served.issuer == ca_cert.subject
    assert gw.request(DOMAIN, "GET", "/healthz")[0] == 200


def test_workers_exit_when_the_supervisor_is_killed(
    gateway_factory: Callable[..., Gateway], echo_upstream: AiohttpUpstream
) -> None:
    gw, proc = two_workers(gateway_factory, echo_upstream)
    workers = [c.pid for c in proc.children()]
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(5)
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)
    assert refuses(gw.port)
