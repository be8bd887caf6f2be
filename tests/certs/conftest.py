"""Test helpers: a throwaway CA, certificate factory, uvloop TLS echo server, TLS client.

Helpers are exposed as fixtures (typed with stdlib/certs types) rather than
imported, so this works whatever import mode pytest runs in.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import CertPair

MakePair = Callable[..., CertPair]
Serve = Callable[[ssl.SSLContext], int]
Connect = Callable[..., ssl.SSLSocket]

_NOW = datetime.now(UTC)


class _TestCA:
    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certs test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - timedelta(days=1))
            .not_valid_after(_NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "test-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.directory = directory
        self.counter = 0

    def issue(
        self,
        names: Sequence[str],
        *,
        rsa_key: bool = False,
        not_before: timedelta = timedelta(days=-1),
        not_after: timedelta = timedelta(days=30),
        stem: str | None = None,
        key_from: CertPair | None = None,
    ) -> CertPair:
        """Write ``<stem>.pem`` (leaf + CA) and ``<stem>.key``; overwrites if stem exists."""
        self.counter += 1
        stem = stem or f"cert{self.counter}"
        key: CertificateIssuerPrivateKeyTypes
        if key_from is not None:
            loaded = serialization.load_pem_private_key(key_from.key.read_bytes(), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
            key = loaded
        elif rsa_key:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW + not_before)
            .not_valid_after(_NOW + not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pair = CertPair(self.directory / f"{stem}.pem", self.directory / f"{stem}.key")
        pair.cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return pair


@pytest.fixture
def test_ca(tmp_path: Path) -> _TestCA:
    return _TestCA(tmp_path)


@pytest.fixture
def ca_file(test_ca: _TestCA) -> Path:
    """PEM file of the CA that ``make_pair`` issues from."""
    return test_ca.path


@pytest.fixture
def make_pair(test_ca: _TestCA) -> MakePair:
    """``make_pair(names, *, rsa_key, not_before, not_after, stem, key_from) -> CertPair``."""
    return test_ca.issue


class _Echo(asyncio.Protocol):
    def __init__(self, live: set[asyncio.Transport]) -> None:
        self._live = live
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport quacks like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._live.add(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._transport is not None
        self._live.discard(self._transport)


class _ServerThread:
    """A uvloop TLS echo server on 127.0.0.1, running in its own thread."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.loop = uvloop.new_event_loop()
        self.live: set[asyncio.Transport] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(ctx), self.loop).result(5)
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _start(self, ctx: ssl.SSLContext) -> asyncio.Server:
        server = await self.loop.create_server(lambda: _Echo(self.live), "127.0.0.1", 0, ssl=ctx)
        return cast(asyncio.Server, server)

    async def _stop(self) -> None:
        self.server.close()
        for transport in list(self.live):
            transport.abort()
        await self.server.wait_closed()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(ctx) -> port``: start a uvloop TLS echo server, stopped at teardown."""
    servers: list[_ServerThread] = []

    def start(ctx: ssl.SSLContext) -> int:
        server = _ServerThread(ctx)
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        server.stop()


def _connect(
    port: int,
    ctx: ssl.SSLContext,
    server_hostname: str | None = None,
    *,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


@pytest.fixture
def connect() -> Connect:
    """``connect(port, ctx, server_hostname=None, *, session=None) -> SSLSocket``."""
    return _connect


ClientCtx = Callable[..., ssl.SSLContext]


def _client_ctx(
    cafile: Path,
    *,
    check_hostname: bool = True,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    ciphers: str | None = None,
    alpn: Sequence[str] | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = check_hostname
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@pytest.fixture
def client_ctx() -> ClientCtx:
    """``client_ctx(cafile, *, check_hostname, minimum, maximum, ciphers, alpn)``."""
    return _client_ctx
