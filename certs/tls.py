"""Server-side TLS contexts with SNI selection and hot reload.

One base ``SSLContext`` lives as long as the manager: every client connection
starts on it and workers fork after it exists, so they all share its
session-ticket keys (OpenSSL encrypts and decrypts tickets with the keys of the
context a connection *started* on, even after the SNI callback switched it to
another certificate's context).  Certificates are swapped by replacing an
immutable lookup table that the SNI callback reads; the base context itself is
never mutated after construction, because changing a context's certificate is
not thread-safe against the event loop creating connections from it, and
reload() may well run in a worker thread.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from ._pem import dns_names, parse_chain, parse_key, read_file, spki
from .errors import CertificateError
from .localca import ensure_local_ca

__all__ = [
    "CertPair",
    "CertificateError",
    "TLSManager",
    "local_ca_manager",
    "new_server_context",
]

_log = logging.getLogger(__name__)

_CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"
_ALPN = ["http/1.1"]
# How often to retry when a certificate file changes while it is being read.
_LOAD_ATTEMPTS = 3

_FileSig = tuple[int, int, int] | None


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate chain (leaf first) and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class _Loaded:
    pair: CertPair
    context: ssl.SSLContext
    names: tuple[str, ...]
    subject: str
    not_before: datetime
    not_after: datetime
    signature: tuple[_FileSig, _FileSig]


@dataclass(frozen=True)
class _State:
    """Everything the SNI callback needs, swapped as one object on reload."""

    certs: tuple[_Loaded, ...]
    exact: Mapping[str, _Loaded] = field(default_factory=dict)
    # "*.ws.example.com" is stored under "ws.example.com".
    wildcard: Mapping[str, _Loaded] = field(default_factory=dict)

    @classmethod
    def build(cls, certs: Sequence[_Loaded]) -> _State:
        exact: dict[str, _Loaded] = {}
        wildcard: dict[str, _Loaded] = {}
        for loaded in certs:
            for name in loaded.names:
                if name.startswith("*."):
                    # setdefault: on overlap the earlier pair in the config wins.
                    wildcard.setdefault(name[2:], loaded)
                elif "*" not in name:
                    exact.setdefault(name, loaded)
        return cls(tuple(certs), exact, wildcard)

    @property
    def default(self) -> _Loaded:
        return self.certs[0]

    @property
    def signature(self) -> tuple[_FileSig, ...]:
        return tuple(s for c in self.certs for s in c.signature)

    def lookup(self, hostname: str) -> _Loaded | None:
        name = hostname.lower().rstrip(".")
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        label, dot, parent = name.partition(".")
        if dot and label and parent:
            return self.wildcard.get(parent)
        return None


def new_server_context(*, session_tickets: bool = True) -> ssl.SSLContext:
    """A server context with wsgate's protocol policy and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Forward secrecy and AEAD only; TLS 1.3 suites are all fine and unaffected.
    ctx.set_ciphers(_CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(_ALPN)
    if not session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    return ctx


class TLSManager:
    """Loads certificate pairs, serves them by SNI and reloads them atomically.

    The first pair is the default, served when SNI is absent or matches nothing.
    """

    def __init__(
        self,
        pairs: Sequence[CertPair],
        *,
        session_tickets: bool = True,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("TLSManager needs at least one certificate pair")
        self._pairs = tuple(pairs)
        self._session_tickets = session_tickets
        self._now = now or _utcnow
        self._reload_lock = threading.Lock()
        self._state = self._load_all()
        # Signature of files that last failed to load, so a broken file is
        # reported once rather than on every poll.
        self._failed: tuple[_FileSig, ...] | None = None
        # The default certificate's own context doubles as the base: it is a
        # fully configured context already and the callback may hand it out.
        self._base = self._state.default.context
        self._base.sni_callback = self._on_sni

    @property
    def context(self) -> ssl.SSLContext:
        """The server context; the same object for the manager's whole life."""
        return self._base

    @property
    def pairs(self) -> tuple[CertPair, ...]:
        return self._pairs

    def names(self) -> tuple[str, ...]:
        """Every DNS name (wildcards included) the loaded certificates are valid for."""
        return tuple(dict.fromkeys(n for c in self._state.certs for n in c.names))

    def covers(self, hostname: str) -> bool:
        """Whether a loaded certificate is valid for ``hostname`` (no fallback to default)."""
        return self._state.lookup(hostname) is not None

    def files_changed(self) -> bool:
        """Whether any certificate or key file differs from what was last loaded or tried."""
        current = tuple(_file_sig(p) for pair in self._pairs for p in (pair.cert, pair.key))
        return current != self._state.signature and current != self._failed

    def reload(self) -> None:
        """Re-read every pair; all or nothing.

        On error ``CertificateError`` is raised and the previous certificates
        keep serving.  On success only handshakes that start afterwards see the
        new certificates; established connections are not affected.
        """
        with self._reload_lock:
            before = tuple(_file_sig(p) for pair in self._pairs for p in (pair.cert, pair.key))
            try:
                state = self._load_all()
            except CertificateError:
                self._failed = before
                raise
            # A single attribute store: the SNI callback sees old or new, never a mix.
            self._state = state
            self._failed = None

    def not_after(self) -> datetime:
        """Earliest expiry among the loaded leaf certificates."""
        return min(c.not_after for c in self._state.certs)

    def describe(self) -> list[str]:
        """One human-readable line per certificate, for start-up and reload logs."""
        lines = []
        for i, c in enumerate(self._state.certs):
            names = ", ".join(c.names) or c.subject
            default = " [default]" if i == 0 else ""
            lines.append(f"{c.pair.cert}: {names} (expires {c.not_after:%Y-%m-%d %H:%M} UTC){default}")
        return lines

    def _on_sni(self, ssl_obj: Any, server_name: str | None, _base: ssl.SSLContext) -> None:
        # ssl_obj: an SSLObject or SSLSocket, or the bare OpenSSL connection of the gateway's
        # client connections (gateway/proxy.py); each has the settable `context`.
        # OpenSSL calls this for every ClientHello, with server_name None when
        # the client sent no SNI, so always switching here is what makes a
        # reloaded default certificate take effect.  Never raise: an exception
        # would abort the handshake, and the default certificate is a better answer.
        try:
            state = self._state
            hit = state.lookup(server_name) if server_name else None
            target = (hit or state.default).context
            if ssl_obj.context is not target:
                ssl_obj.context = target
        except Exception:  # a failed handshake is worse than the default certificate
            _log.exception("SNI selection failed for %r; serving the base certificate", server_name)

    def _load_all(self) -> _State:
        now = self._now()
        if now.tzinfo is None:  # certificates are in UTC; a naive clock is taken as UTC
            now = now.replace(tzinfo=UTC)
        return _State.build([self._load_pair(pair, now) for pair in self._pairs])

    def _load_pair(self, pair: CertPair, now: datetime) -> _Loaded:
        for _ in range(_LOAD_ATTEMPTS):
            # Stat before reading: if the files change after this point,
            # files_changed() will notice and a later reload picks them up.
            signature = (_file_sig(pair.cert), _file_sig(pair.key))
            cert_data = read_file(pair.cert, "certificate")
            key_data = read_file(pair.key, "private key")
            leaf = _validate(pair, cert_data, key_data, now)
            ctx = new_server_context(session_tickets=self._session_tickets)
            try:
                # The password is never needed (encrypted keys were refused
                # above) but stops OpenSSL from ever prompting on a terminal.
                ctx.load_cert_chain(pair.cert, pair.key, password=_no_password)
            except ssl.SSLError as exc:
                raise CertificateError(
                    f"{pair.cert}: OpenSSL refused this certificate with key {pair.key}: {exc.reason or exc}"
                ) from None
            except OSError as exc:
                raise CertificateError(f"{pair.cert}: cannot load: {exc.strerror or exc}") from None
            # OpenSSL read the files again; only accept if it saw what we validated.
            if read_file(pair.cert, "certificate") == cert_data and read_file(pair.key, "private key") == key_data:
                return _Loaded(
                    pair=pair,
                    context=ctx,
                    names=tuple(dns_names(leaf)),
                    subject=leaf.subject.rfc4514_string(),
                    not_before=leaf.not_valid_before_utc,
                    not_after=leaf.not_valid_after_utc,
                    signature=signature,
                )
        raise CertificateError(f"{pair.cert}: files kept changing while being loaded")


def _validate(pair: CertPair, cert_data: bytes, key_data: bytes, now: datetime) -> x509.Certificate:
    leaf = parse_chain(pair.cert, cert_data)[0]
    key = parse_key(pair.key, key_data)
    if spki(key.public_key()) != spki(leaf.public_key()):
        raise CertificateError(f"{pair.key}: private key does not match certificate {pair.cert}")
    if now < leaf.not_valid_before_utc:
        raise CertificateError(
            f"{pair.cert}: certificate is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the system clock)"
        )
    if now >= leaf.not_valid_after_utc:
        raise CertificateError(f"{pair.cert}: certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return leaf


def _file_sig(path: Path) -> _FileSig:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # The inode catches an atomic replace that kept size and mtime granularity.
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _no_password() -> bytes:
    return b""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def local_ca_manager(state_dir: Path, domain: str, *, session_tickets: bool = True) -> TLSManager:
    """A manager serving the zero-config local CA's leaf for ``domain``."""
    ca = ensure_local_ca(state_dir, domain)
    return TLSManager([CertPair(ca.leaf_cert, ca.leaf_key)], session_tickets=session_tickets)
