"""Signed identity assertions for the services behind the gateway, and their JWKS.

A service behind an admin rule cannot see the gateway's session, so the proxy
adds ``X-Wsgate-Assertion: <JWT>`` naming the user; the service verifies it
with the public keys at ``/.well-known/jwks.json`` and checks ``iss`` and
``aud`` (its own rule), which is what stops a token minted for one service
from being replayed to another.

Keys are ES256 (P-256), one PEM file each under the key directory
(``es256-<created unix time>-<random>.pem``, 0600, in a 0700 directory), so
every worker process of a machine signs with and publishes the same keys.  The
newest key signs; when it is older than ``rotate_after`` a new one is made
and the previous one stays published, so tokens signed just before the
rotation still verify; older keys are deleted.  Each worker re-reads the
directory at least once a minute, and ``jwks()`` also whenever the directory
changed, so a key another worker rotated in is published everywhere.

Signing is on the hot path, so a token is reused for the same claims and
audience for up to a quarter of its lifetime: repeated requests of one user
to one service then cost a dict lookup.  Consequently ``jti`` names a token,
not a request; it repeats within that window and must not be used to detect
replays.  Verifiers should allow a few seconds of clock leeway (``nbf`` is
``iat``).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs._fs import locked, private_dir, write_atomic
from certs._pem import parse_key
from certs.errors import CertificateError

__all__ = ["ASSERTION_HEADER", "AssertionSigner", "thumbprint"]

log = logging.getLogger("wsgate.assertions")

ASSERTION_HEADER: Final = "X-Wsgate-Assertion"
ALGORITHM: Final = "ES256"
_KEY_FILE = re.compile(r"es256-(\d{1,12})-([0-9a-f]{8})\.pem\Z")
_LOCK_FILE = ".lock"
_KEEP = 2  # the current key and the one before it
_CHECK_EVERY = 60.0  # seconds between looks at the key directory
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class _Key:
    created: int
    file: str
    kid: str
    private: ec.EllipticCurvePrivateKey
    jwk: dict[str, str]  # the public JWK, with kid


class AssertionSigner:
    """Signs short-lived identity JWTs and serves the public keys that verify them.

    One instance per process; ``load_or_create`` is safe to call from several
    processes on one directory at once.
    """

    def __init__(
        self,
        directory: Path,
        *,
        issuer: str,
        lifetime: float,
        rotate_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("issuer: required")
        if lifetime < 1:
            raise ValueError("lifetime: at least 1 second")
        if rotate_after <= lifetime:
            # The previous key is kept one rotation period; tokens must expire before it goes.
            raise ValueError("rotate_after: must be longer than the token lifetime")
        self.directory = directory
        self.issuer = issuer
        self.lifetime = lifetime
        self.rotate_after = rotate_after
        self._clock = clock
        self._keys: tuple[_Key, ...] = ()
        self._loaded: dict[str, _Key] = {}
        self._next_check = 0.0
        self._dir_mtime = -1
        self._jwks_json = b""
        self._reuse_for = lifetime / 4
        self._tokens: dict[tuple[Any, ...], tuple[str, float]] = {}

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        issuer: str,
        lifetime: float = 300.0,
        rotate_after: float = 30 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> AssertionSigner:
        """Load the signing keys from ``directory``, creating or rotating the current one as due.

        Blocking (file I/O, perhaps a key generation): call it at start-up.
        Raises CertificateError, naming the file, for a key file that is
        unreadable, not an ES256 key, or accessible by group or others.
        """
        signer = cls(directory, issuer=issuer, lifetime=lifetime, rotate_after=rotate_after, clock=clock)
        private_dir(directory)
        signer._sync(clock())
        return signer

    @property
    def kid(self) -> str:
        """The key id of the key that signs now."""
        return self._keys[0].kid

    def sign(
        self,
        *,
        audience: str,
        subject: str,
        email: str,
        name: str,
        login: str,
        groups: Collection[str],
        teams: Collection[str],
    ) -> str:
        """A compact JWS asserting who the user is to ``audience``; reused while fresh (see module doc).

        ``groups`` and ``teams`` are sets to the verifier: they are sent sorted
        and without duplicates, whatever collection they came in.
        """
        now = self._clock()
        if now >= self._next_check:
            self._resync(now)
        if isinstance(groups, str) or isinstance(teams, str):
            raise TypeError("groups and teams: a collection of names, not one string")
        group_list, team_list = sorted(set(groups)), sorted(set(teams))
        key = (audience, subject, email, name, login, *group_list, None, *team_list)
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        if not audience or not subject:
            raise ValueError("audience and subject: required")
        iat = int(now)
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "email": email,
            "name": name,
            "preferred_username": login,
            "groups": group_list,
            "teams": team_list,
            "iat": iat,
            "nbf": iat,
            "exp": iat + int(self.lifetime),
            "jti": secrets.token_urlsafe(16),
        }
        current = self._keys[0]
        token = jwt.encode(claims, current.private, algorithm=ALGORITHM, headers={"kid": current.kid, "typ": "JWT"})
        if len(self._tokens) >= _CACHE_MAX:
            self._prune(now)
        self._tokens[key] = (token, iat + self._reuse_for)
        return token

    def jwks(self) -> dict[str, Any]:
        """The JWK Set of the public keys, current first; never any private part."""
        self._refresh_for_jwks()
        return {"keys": [dict(k.jwk) for k in self._keys]}

    def jwks_json(self) -> bytes:
        """``jwks()`` serialised, rebuilt only when the keys change (for /.well-known/jwks.json)."""
        self._refresh_for_jwks()
        return self._jwks_json

    def _refresh_for_jwks(self) -> None:
        # A rotation by another worker must be published by every worker at once, or a
        # verifier fetching the JWKS from this one could miss the key that signs now.
        now = self._clock()
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            mtime = self._dir_mtime
        if now >= self._next_check or mtime != self._dir_mtime:
            self._resync(now)

    def _resync(self, now: float) -> None:
        # At run time a broken key directory must not fail every request: keep the
        # keys we have, say why, and look again a minute later.
        try:
            self._sync(now)
        except (OSError, CertificateError) as e:
            log.error("event=assertion_keys_unreadable directory=%s error=%r", self.directory, str(e))
            self._next_check = now + _CHECK_EVERY
            with contextlib.suppress(OSError):
                self._dir_mtime = os.stat(self.directory).st_mtime_ns

    def _prune(self, now: float) -> None:
        self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
        while len(self._tokens) >= _CACHE_MAX:  # all fresh: drop the oldest entries
            del self._tokens[next(iter(self._tokens))]

    def _sync(self, now: float) -> None:
        """Re-read the key directory under its lock, rotating when the newest key is due."""
        with locked(self.directory / _LOCK_FILE):
            keys = self._read_keys()
            if not keys or now - keys[0].created >= self.rotate_after:
                keys.insert(0, self._create_key(now))
            for old in keys[_KEEP:]:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / old.file).unlink()
            self._dir_mtime = os.stat(self.directory).st_mtime_ns
        kept = tuple(keys[:_KEEP])
        if [k.kid for k in kept] != [k.kid for k in self._keys]:
            self._keys = kept
            self._loaded = {k.file: k for k in kept}
            self._tokens.clear()  # sign with the new current key from now on
            self._jwks_json = json.dumps(
                {"keys": [k.jwk for k in kept]}, separators=(",", ":"), sort_keys=True
            ).encode()
        self._next_check = now + _CHECK_EVERY

    def _read_keys(self) -> list[_Key]:
        keys: list[_Key] = []
        seen: set[str] = set()
        for entry in os.scandir(self.directory):
            m = _KEY_FILE.match(entry.name)
            if not m:
                continue
            key = self._loaded.get(entry.name) or _load_key(self.directory / entry.name, int(m[1]))
            if key.kid not in seen:  # a copied file must not list one key twice
                seen.add(key.kid)
                keys.append(key)
        keys.sort(key=lambda k: (k.created, k.file), reverse=True)
        return keys

    def _create_key(self, now: float) -> _Key:
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        created = int(now)
        name = f"es256-{created}-{secrets.token_hex(4)}.pem"
        write_atomic(self.directory / name, pem, 0o600, overwrite=False)
        return _key(created, name, private)


def _load_key(path: Path, created: int) -> _Key:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise CertificateError(f"{path}: cannot read the assertion signing key: {reason}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise CertificateError(
                f"{path}: key file is accessible by group/others (mode {mode:04o}); fix it with `chmod 600 {path}`"
            )
        data = f.read()
    private = parse_key(path, data)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise CertificateError(f"{path}: not a P-256 (ES256) private key; move it out of the key directory")
    return _key(created, path.name, private)


def _key(created: int, file: str, private: ec.EllipticCurvePrivateKey) -> _Key:
    numbers = private.public_key().public_numbers()
    # RFC 7518 6.2.1.2: coordinates are the full 32 bytes, leading zeros kept.
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    kid = thumbprint(members)
    jwk = {**members, "kid": kid, "use": "sig", "alg": ALGORITHM}
    return _Key(created, file, kid, private, jwk)


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC public key: its stable ``kid``."""
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return _b64(hashlib.sha256(canonical).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
