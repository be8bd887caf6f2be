"""Identity assertions: tokens verify with the published JWKS, and the keys live and rotate safely."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from auth.assertions import ASSERTION_HEADER, AssertionSigner, thumbprint
from certs.errors import CertificateError

ISSUER = "https://wsgate.example.test/"
AUDIENCE = "https://grafana.example.test/"
USER: dict[str, Any] = {
    "subject": "github:583231",
    "email": "alice@example.test",
    "name": "Alice",
    "login": "alice",
    "groups": ["github:acme", "github:acme/backend"],
    "teams": ["backend"],
}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def verify(token: str, jwks: dict[str, Any], *, audience: str = AUDIENCE, now: float | None = None) -> dict[str, Any]:
    """What a service behind the gateway does: pick the key by kid from the JWKS, check iss and aud."""
    kid = jwt.get_unverified_header(token)["kid"]
    matching = [k for k in jwks["keys"] if k["kid"] == kid]
    assert len(matching) == 1, f"kid {kid} not published exactly once"
    key = jwt.PyJWK(matching[0])
    options: Any = {"require": ["iss", "aud", "sub", "exp", "iat", "nbf", "jti"]}
    if now is not None:  # a frozen test clock: check exp against it, not against the wall clock
        options["verify_exp"] = False
        options["verify_nbf"] = False
        options["verify_iat"] = False
    claims: dict[str, Any] = jwt.decode(
        token, key=key, algorithms=["ES256"], audience=audience, issuer=ISSUER, options=options
    )
    if now is not None:
        assert claims["nbf"] <= now < claims["exp"], "expired or not yet valid"
    return claims


def test_header_name() -> None:
    assert ASSERTION_HEADER == "X-Wsgate-Assertion"


def test_token_verifies_with_the_published_key(tmp_path: Path) -> None:
    signer = AssertionSigner.load_or_create(tmp_path / "keys", issuer=ISSUER)
    before = int(time.time())
    token = signer.sign(audience=AUDIENCE, **USER)
    claims = verify(token, signer.jwks())
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": signer.kid}
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == "github:583231"
    assert claims["email"] == "alice@example.test"
    assert claims["name"] == "Alice"
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["github:acme", "github:acme/backend"]
    assert claims["teams"] == ["backend"]
    assert before <= claims["iat"] == claims["nbf"] <= time.time()
    assert claims["exp"] == claims["iat"] + 300
    assert len(jwt.utils.base64url_decode(claims["jti"])) == 16


def test_wrong_audience_and_foreign_key_fail(tmp_path: Path) -> None:
    signer = AssertionSigner.load_or_create(tmp_path / "keys", issuer=ISSUER)
    token = signer.sign(audience=AUDIENCE, **USER)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, signer.jwks(), audience="https://other.example.test/")

    other = AssertionSigner.load_or_create(tmp_path / "other", issuer=ISSUER)
    forged = other.sign(audience=AUDIENCE, **USER)
    with pytest.raises(AssertionError, match="not published"):
        verify(forged, signer.jwks())
    # Even with our kid in its header, a token signed by another key does not verify with ours.
    forged_kid = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "github:1", "iat": 0, "nbf": 0, "exp": 2**40, "jti": "x"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": signer.kid},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify(forged_kid, signer.jwks())


def test_key_files_are_private_and_jwks_is_public_only(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    signer = AssertionSigner.load_or_create(directory, issuer=ISSUER)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    pems = sorted(directory.glob("*.pem"))
    assert len(pems) == 1
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in pems[0].read_bytes()

    jwks = signer.jwks()
    (key,) = jwks["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert "d" not in key
    assert key["kid"] == thumbprint(key)
    assert json.loads(signer.jwks_json()) == jwks
    assert signer.jwks_json() is signer.jwks_json()  # served from the cache
    assert b"PRIVATE" not in signer.jwks_json()
    assert b'"d"' not in signer.jwks_json()


def test_thumbprint_matches_rfc7638_example() -> None:
    # RFC 7638 section 3.1 uses an RSA key; RFC 8037 has no EC one, so check the canonical form directly.
    jwk = {"kty": "EC", "crv": "P-256", "x": "abc", "y": "def", "kid": "ignored", "use": "sig"}
    import base64
    import hashlib

    canonical = b'{"crv":"P-256","kty":"EC","x":"abc","y":"def"}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert thumbprint(jwk) == expected


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    AssertionSigner.load_or_create(directory, issuer=ISSUER)
    (pem,) = directory.glob("*.pem")
    pem.chmod(0o644)
    with pytest.raises(CertificateError, match="chmod 600"):
        AssertionSigner.load_or_create(directory, issuer=ISSUER)


def test_a_broken_key_file_at_run_time_keeps_the_current_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "keys"
    clock = Clock()
    signer = AssertionSigner.load_or_create(directory, issuer=ISSUER, clock=clock)
    garbage = directory / f"es256-{int(clock.now) + 1}-deadbeef.pem"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    clock.now += 61
    token = signer.sign(audience=AUDIENCE, **{**USER, "subject": "github:2"})
    verify(token, signer.jwks(), now=clock.now)
    assert "assertion_keys_unreadable" in caplog.text


def test_two_loads_share_the_key(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    a = AssertionSigner.load_or_create(directory, issuer=ISSUER)
    b = AssertionSigner.load_or_create(directory, issuer=ISSUER)
    assert a.kid == b.kid
    assert a.jwks() == b.jwks()
    verify(a.sign(audience=AUDIENCE, **USER), b.jwks())


def _load_kid(directory: str) -> str:
    return AssertionSigner.load_or_create(Path(directory), issuer=ISSUER).kid


def test_concurrent_processes_create_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        kids = pool.map(_load_kid, [str(directory)] * 12)
    assert len(set(kids)) == 1
    assert len(list(directory.glob("*.pem"))) == 1


def test_rotation_keeps_the_previous_key_published(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    clock = Clock()
    day = 86400.0
    signer = AssertionSigner.load_or_create(directory, issuer=ISSUER, rotate_after=30 * day, clock=clock)
    first = signer.kid
    clock.now += 30 * day - 10
    old_token = signer.sign(audience=AUDIENCE, **USER)  # just before the rotation is due

    clock.now += 61  # due, and past the once-a-minute look at the key directory
    rotated = signer.sign(audience=AUDIENCE, **USER)
    assert signer.kid != first
    assert jwt.get_unverified_header(rotated)["kid"] == signer.kid
    jwks = signer.jwks()
    kids = [k["kid"] for k in jwks["keys"]]
    assert kids == [signer.kid, first]
    assert len(kids) == len(set(kids))
    # A token signed just before the rotation, still within its lifetime, still verifies.
    assert jwt.get_unverified_header(old_token)["kid"] == first
    verify(old_token, jwks, now=clock.now)
    verify(rotated, jwks, now=clock.now)

    # Another worker on the same directory publishes the new key too, not only its own.
    other = AssertionSigner.load_or_create(directory, issuer=ISSUER, rotate_after=30 * day, clock=clock)
    assert other.jwks() == jwks

    # At most two keys: the one before the previous is gone, from the JWKS and from disk.
    clock.now += 30 * day + 1
    signer.sign(audience=AUDIENCE, **USER)
    kids = [k["kid"] for k in signer.jwks()["keys"]]
    assert len(kids) == 2 and first not in kids
    assert len(list(directory.glob("*.pem"))) == 2
    # The idle worker notices the rotation when asked for the JWKS (the directory changed).
    assert other.jwks() == signer.jwks()


def test_tokens_are_reused_briefly_per_user_and_audience(tmp_path: Path) -> None:
    clock = Clock()
    signer = AssertionSigner.load_or_create(tmp_path / "keys", issuer=ISSUER, lifetime=300, clock=clock)
    token = signer.sign(audience=AUDIENCE, **USER)
    assert signer.sign(audience=AUDIENCE, **USER) == token
    # Same claims in another order or as a set: the same assertion.
    assert signer.sign(audience=AUDIENCE, **{**USER, "groups": frozenset(reversed(USER["groups"]))}) == token
    assert signer.sign(audience="https://other.example.test/", **USER) != token
    assert signer.sign(audience=AUDIENCE, **{**USER, "teams": []}) != token
    clock.now += 74
    assert signer.sign(audience=AUDIENCE, **USER) == token
    clock.now += 2  # past a quarter of the lifetime: a fresh token with most of its lifetime left
    fresh = signer.sign(audience=AUDIENCE, **USER)
    assert fresh != token
    assert verify(fresh, signer.jwks(), now=clock.now)["exp"] >= clock.now + 299


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotate_after"):
        AssertionSigner.load_or_create(tmp_path / "k", issuer=ISSUER, lifetime=600, rotate_after=600)
    with pytest.raises(ValueError, match="issuer"):
        AssertionSigner.load_or_create(tmp_path / "k", issuer="")
    signer = AssertionSigner.load_or_create(tmp_path / "k", issuer=ISSUER)
    with pytest.raises(TypeError):
        signer.sign(audience=AUDIENCE, **{**USER, "groups": "admins"})
    with pytest.raises(ValueError, match="audience"):
        signer.sign(audience="", **USER)


def test_sign_cost(tmp_path: Path) -> None:
    """Not a benchmark gate: prints what one request to a rule pays, with and without the cache."""
    signer = AssertionSigner.load_or_create(tmp_path / "keys", issuer=ISSUER)
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        signer.sign(audience=AUDIENCE, **{**USER, "subject": f"github:{i}"})
    fresh = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        signer.sign(audience=AUDIENCE, **USER)
    cached = (time.perf_counter() - t0) / n
    print(f"\nassertion sign: {fresh * 1e6:.1f} us fresh, {cached * 1e6:.2f} us cached (pid {os.getpid()})")
    assert cached < fresh
