"""TLSManager over real loopback TLS: policy, SNI, resumption and hot reload."""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from certs import CertificateError, CertPair, TLSManager

MakePair = Callable[..., CertPair]
Serve = Callable[[ssl.SSLContext], int]
Connect = Callable[..., ssl.SSLSocket]
ClientCtx = Callable[..., ssl.SSLContext]

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def peer_names(sock: ssl.SSLSocket) -> list[str]:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def echo(sock: ssl.SSLSocket, data: bytes = b"ping") -> None:
    """Round trip; also lets TLS 1.3 session tickets (sent after the handshake) arrive."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        part = sock.recv(len(data) - len(got))
        assert part, "server closed the connection"
        got += part
    assert got == data


def fetch_session(
    connect: Connect, port: int, ctx: ssl.SSLContext, name: str | None
) -> tuple[ssl.SSLSession, list[str]]:
    with connect(port, ctx, name) as sock:
        echo(sock)
        assert not sock.session_reused
        session = sock.session
        assert session is not None
        return session, peer_names(sock)


def resumes(connect: Connect, port: int, ctx: ssl.SSLContext, name: str | None, session: ssl.SSLSession) -> bool:
    with connect(port, ctx, name, session=session) as sock:
        echo(sock)
        return bool(sock.session_reused)


# --- loading and validation -------------------------------------------------


def test_refuses_key_that_does_not_match(make_pair: MakePair) -> None:
    a = make_pair(["a.test"])
    b = make_pair(["b.test"])
    with pytest.raises(CertificateError) as err:
        TLSManager([CertPair(a.cert, b.key)])
    assert str(err.value) == f"{b.key}: private key does not match certificate {a.cert}"


def test_refuses_unreadable_files(make_pair: MakePair, tmp_path: Path) -> None:
    good = make_pair(["a.test"])
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertificateError, match=f"^{re.escape(str(missing))}: cannot read certificate"):
        TLSManager([CertPair(missing, good.key)])
    with pytest.raises(CertificateError, match=f"^{re.escape(str(missing))}: cannot read private key"):
        TLSManager([CertPair(good.cert, missing)])
    with pytest.raises(CertificateError, match=f"^{re.escape(str(tmp_path))}: cannot read certificate"):
        TLSManager([CertPair(tmp_path, good.key)])
    if os.geteuid() != 0:  # root reads anything
        good.key.chmod(0)
        with pytest.raises(CertificateError, match=f"^{re.escape(str(good.key))}: cannot read private key"):
            TLSManager([good])


def test_refuses_garbage_pem(make_pair: MakePair, tmp_path: Path) -> None:
    good = make_pair(["a.test"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello, not a certificate\n")
    with pytest.raises(CertificateError, match=f"^{re.escape(str(garbage))}: no PEM certificate found"):
        TLSManager([CertPair(garbage, good.key)])
    with pytest.raises(CertificateError, match=f"^{re.escape(str(garbage))}: no PEM private key found"):
        TLSManager([CertPair(good.cert, garbage)])
    armored = tmp_path / "armored.pem"
    armored.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match=f"^{re.escape(str(armored))}: invalid PEM certificate"):
        TLSManager([CertPair(armored, good.key)])
    # A key file holding a certificate: the classic swapped-arguments mistake.
    with pytest.raises(CertificateError, match=f"^{re.escape(str(good.cert))}: no PEM private key"):
        TLSManager([CertPair(good.cert, good.cert)])


def test_refuses_expired_and_not_yet_valid(make_pair: MakePair) -> None:
    expired = make_pair(["a.test"], not_before=timedelta(days=-10), not_after=timedelta(days=-1))
    with pytest.raises(CertificateError, match=f"^{re.escape(str(expired.cert))}: certificate expired on"):
        TLSManager([expired])
    future = make_pair(["a.test"], not_before=timedelta(days=1))
    with pytest.raises(CertificateError, match=f"^{re.escape(str(future.cert))}: certificate is not valid before"):
        TLSManager([future])
    valid = make_pair(["a.test"])
    later = datetime.now(UTC) + timedelta(days=31)
    with pytest.raises(CertificateError, match="expired"):
        TLSManager([valid], now=lambda: later)
    # A naive clock is read as UTC instead of failing on the comparison.
    TLSManager([valid], now=lambda: datetime.now(UTC).replace(tzinfo=None))


def test_refuses_empty_pair_list() -> None:
    with pytest.raises(ValueError):
        TLSManager([])


def test_not_after_and_describe(make_pair: MakePair) -> None:
    a = make_pair(["a.test", "*.a.test"], not_after=timedelta(days=20))
    b = make_pair(["b.test"], not_after=timedelta(days=10))
    manager = TLSManager([a, b])
    assert manager.not_after() == min(
        x509.load_pem_x509_certificate(p.cert.read_bytes()).not_valid_after_utc for p in (a, b)
    )
    lines = manager.describe()
    assert len(lines) == 2
    assert lines[0].startswith(f"{a.cert}: a.test, *.a.test (expires ")
    assert lines[0].endswith("[default]")
    assert lines[1].startswith(f"{b.cert}: b.test")


def test_context_policy(make_pair: MakePair) -> None:
    pair = make_pair(["a.test"])
    ctx = TLSManager([pair]).context
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    assert ctx.minimum_version == TLS12
    assert ctx.maximum_version == TLS13
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert ctx.options & flag
    assert not ctx.options & ssl.OP_NO_TICKET
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(n.startswith("ECDHE-") for n in tls12)
    assert all("GCM" in n or "CHACHA20" in n for n in tls12)
    off = TLSManager([pair], session_tickets=False).context
    assert off.options & ssl.OP_NO_TICKET
    assert off.num_tickets == 0


def test_context_is_stable_across_reload(make_pair: MakePair) -> None:
    pair = make_pair(["a.test"])
    manager = TLSManager([pair])
    ctx = manager.context
    make_pair(["a.test"], stem=pair.cert.stem)
    manager.reload()
    assert manager.context is ctx


# --- handshakes ---------------------------------------------------------------


@pytest.fixture
def two_certs(make_pair: MakePair) -> tuple[CertPair, CertPair]:
    default = make_pair(["example.test", "www.example.test"], stem="default")
    other = make_pair(["*.ws.example.test", "api.test"], stem="other")
    return default, other


def test_sni_selects_certificate(
    two_certs: tuple[CertPair, CertPair],
    serve: Serve,
    connect: Connect,
    client_ctx: ClientCtx,
    ca_file: Path,
) -> None:
    manager = TLSManager(list(two_certs))
    port = serve(manager.context)
    strict = client_ctx(ca_file)
    lax = client_ctx(ca_file, check_hostname=False)
    default_names = ["example.test", "www.example.test"]
    other_names = ["*.ws.example.test", "api.test"]
    for name, expected in [
        ("example.test", default_names),
        ("WWW.Example.Test", default_names),
        ("api.test", other_names),
        ("8080-abc.ws.example.test", other_names),
    ]:
        with connect(port, strict, name) as sock:
            assert peer_names(sock) == expected, name
            echo(sock)
    # Unknown names, names a single-label wildcard must not cover, and no SNI
    # at all: the default certificate, never a handshake failure.
    for fallback in ["unknown.test", "a.b.ws.example.test", "ws.example.test", None]:
        with connect(port, lax, fallback) as sock:
            assert peer_names(sock) == default_names, fallback
            echo(sock)


def test_covers(two_certs: tuple[CertPair, CertPair]) -> None:
    manager = TLSManager(list(two_certs))
    assert manager.covers("example.test")
    assert manager.covers("EXAMPLE.test.")
    assert manager.covers("a.ws.example.test")
    assert manager.covers("api.test")
    assert not manager.covers("a.b.ws.example.test")
    assert not manager.covers("ws.example.test")
    assert not manager.covers("other.example.test")
    assert not manager.covers("")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_protocols_and_non_fs_ciphers_refused(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    # RSA so that static-RSA key exchange would be possible if the server allowed it.
    pair = make_pair(["rsa.test"], rsa_key=True)
    port = serve(TLSManager([pair]).context)
    # Control server accepting anything: proves each client below does work
    # against a permissive server, so the refusals come from our policy.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(pair.cert, pair.key)
    control = serve(permissive)

    ok = client_ctx(ca_file, maximum=TLS12, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    with connect(port, ok, "rsa.test") as sock:
        assert sock.version() == "TLSv1.2"
        echo(sock)

    bad_clients = [
        client_ctx(ca_file, maximum=TLS12, ciphers=c + ":@SECLEVEL=0")
        for c in ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "AES256-SHA"]
    ]
    bad_clients.append(
        client_ctx(
            ca_file,
            minimum=ssl.TLSVersion.TLSv1,
            maximum=ssl.TLSVersion.TLSv1_1,
            ciphers="DEFAULT:@SECLEVEL=0",
        )
    )
    for bad in bad_clients:
        with connect(control, bad, "rsa.test") as sock:
            echo(sock)
        # uvloop closes the socket on a failed handshake without always
        # flushing the alert, so the client may see an EOF instead of it.
        with pytest.raises(ssl.SSLError):
            connect(port, bad, "rsa.test")


def test_alpn_negotiates_http11(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    port = serve(TLSManager([make_pair(["a.test"])]).context)
    with connect(port, client_ctx(ca_file, alpn=["h2", "http/1.1"]), "a.test") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
    # A client without ALPN still gets in (health checks, curl --no-alpn).
    with connect(port, client_ctx(ca_file), "a.test") as sock:
        assert sock.selected_alpn_protocol() is None
        echo(sock)


# --- resumption -----------------------------------------------------------------


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize("name", ["example.test", "x.ws.example.test"])
def test_resumption(
    version: ssl.TLSVersion,
    name: str,
    two_certs: tuple[CertPair, CertPair],
    serve: Serve,
    connect: Connect,
    client_ctx: ClientCtx,
    ca_file: Path,
) -> None:
    """Resumption works on the default certificate and after an SNI switch."""
    port = serve(TLSManager(list(two_certs)).context)
    ctx = client_ctx(ca_file, maximum=version)
    session, _ = fetch_session(connect, port, ctx, name)
    assert resumes(connect, port, ctx, name, session)


def test_no_resumption_across_unrelated_managers(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    """Sanity check for the tests above: ticket keys really are per base context."""
    pair = make_pair(["a.test"])
    port_a = serve(TLSManager([pair]).context)
    port_b = serve(TLSManager([pair]).context)
    ctx = client_ctx(ca_file)
    session, _ = fetch_session(connect, port_a, ctx, "a.test")
    assert not resumes(connect, port_b, ctx, "a.test", session)
    assert resumes(connect, port_a, ctx, "a.test", session)


def test_session_tickets_can_be_disabled(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    port = serve(TLSManager([make_pair(["a.test"])], session_tickets=False).context)
    ctx = client_ctx(ca_file, maximum=TLS13)
    session, _ = fetch_session(connect, port, ctx, "a.test")
    assert not session.has_ticket
    assert not resumes(connect, port, ctx, "a.test", session)


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_resumption_across_reload(
    version: ssl.TLSVersion,
    make_pair: MakePair,
    serve: Serve,
    connect: Connect,
    client_ctx: ClientCtx,
    ca_file: Path,
) -> None:
    default = make_pair(["example.test"], stem="default")
    other = make_pair(["*.ws.example.test"], stem="other")
    manager = TLSManager([default, other])
    port = serve(manager.context)
    ctx = client_ctx(ca_file, maximum=version)
    new_names = {"example.test": "new.example.test", "a.ws.example.test": "new.ws.example.test"}
    sessions = {name: fetch_session(connect, port, ctx, name)[0] for name in new_names}
    make_pair(["example.test", "new.example.test"], stem="default")
    make_pair(["*.ws.example.test", "new.ws.example.test"], stem="other")
    manager.reload()
    for name, session in sessions.items():
        assert resumes(connect, port, ctx, name, session), name
        # Full handshakes already use the reloaded certificates.
        assert new_names[name] in fetch_session(connect, port, ctx, name)[1]


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_resumption_across_forked_workers(
    version: ssl.TLSVersion,
    two_certs: tuple[CertPair, CertPair],
    connect: Connect,
    client_ctx: ClientCtx,
    ca_file: Path,
) -> None:
    """Workers forked after the manager exists accept each other's tickets."""
    manager = TLSManager(list(two_certs))
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    pids = []
    for listener in listeners:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child process
            code = 1
            try:
                listener.settimeout(10)
                conn, _ = listener.accept()
                conn.settimeout(10)
                with manager.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(100))
                    tls.recv(100)  # wait for the client to close
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    try:
        ports = [listener.getsockname()[1] for listener in listeners]
        ctx = client_ctx(ca_file, maximum=version)
        name = "x.ws.example.test"
        session, _ = fetch_session(connect, ports[0], ctx, name)
        assert resumes(connect, ports[1], ctx, name, session)
    finally:
        for listener in listeners:
            listener.close()
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0


# --- reload ---------------------------------------------------------------------


def test_reload_swaps_certificate_and_keeps_open_connections(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    pair = make_pair(["example.test", "old.example.test"], stem="site")
    manager = TLSManager([pair])
    port = serve(manager.context)
    ctx = client_ctx(ca_file)
    assert not manager.files_changed()
    with connect(port, ctx, "example.test") as before:
        echo(before)
        assert "old.example.test" in peer_names(before)

        make_pair(["example.test", "new.example.test"], stem="site")
        assert manager.files_changed()
        manager.reload()
        assert not manager.files_changed()

        with connect(port, ctx, "example.test") as after:
            assert "new.example.test" in peer_names(after)
            echo(after)
        # The connection made before the reload is untouched.
        echo(before, b"still here")
        echo(before, b"x" * 100_000)


def test_reload_changes_default_for_clients_without_sni(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    """The base context is never mutated; the SNI callback (which OpenSSL also
    calls when the client sends no SNI) is what serves the new default."""
    pair = make_pair(["old.test"], stem="site")
    manager = TLSManager([pair])
    port = serve(manager.context)
    lax = client_ctx(ca_file, check_hostname=False)
    for name in [None, "unknown.test"]:
        with connect(port, lax, name) as sock:
            assert peer_names(sock) == ["old.test"]
    make_pair(["new.test"], stem="site")
    manager.reload()
    for name in [None, "unknown.test"]:
        with connect(port, lax, name) as sock:
            assert peer_names(sock) == ["new.test"], name
            echo(sock)


def test_failed_reload_keeps_old_certificates(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    site = make_pair(["site.test"], stem="site")
    extra = make_pair(["extra.test"], stem="extra")
    manager = TLSManager([site, extra])
    port = serve(manager.context)
    ctx = client_ctx(ca_file)

    # A new certificate for the first pair but an unrelated key for the second:
    # nothing may change, not even the valid first pair (all or nothing).
    make_pair(["site.test", "new.site.test"], stem="site")
    make_pair(["unrelated.test"], stem="unrelated")
    extra.key.write_bytes((extra.key.parent / "unrelated.key").read_bytes())
    assert manager.files_changed()
    with pytest.raises(CertificateError) as err:
        manager.reload()
    assert str(err.value) == f"{extra.key}: private key does not match certificate {extra.cert}"
    # Reported once, not on every poll, until the files change again.
    assert not manager.files_changed()

    with connect(port, ctx, "site.test") as sock:
        assert peer_names(sock) == ["site.test"]
    with connect(port, ctx, "extra.test") as sock:
        assert peer_names(sock) == ["extra.test"]
        echo(sock)

    make_pair(["extra.test", "new.extra.test"], stem="extra")
    assert manager.files_changed()
    manager.reload()
    with connect(port, ctx, "site.test") as sock:
        assert "new.site.test" in peer_names(sock)
    with connect(port, ctx, "extra.test") as sock:
        assert "new.extra.test" in peer_names(sock)


def test_reload_with_missing_file_keeps_serving(
    make_pair: MakePair, serve: Serve, connect: Connect, client_ctx: ClientCtx, ca_file: Path
) -> None:
    site = make_pair(["site.test"], stem="site")
    manager = TLSManager([site])
    port = serve(manager.context)
    site.key.unlink()
    assert manager.files_changed()
    with pytest.raises(CertificateError, match=f"^{re.escape(str(site.key))}: cannot read private key"):
        manager.reload()
    with connect(port, client_ctx(ca_file), "site.test") as sock:
        echo(sock)
