"""The zero-config local CA: creation, reuse, leaf re-issue, and real TLS clients trusting it."""

from __future__ import annotations

import re
import ssl
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import CertificateError, LocalCA, ca_pem, ensure_local_ca, local_ca_manager

Serve = Callable[[ssl.SSLContext], int]
Connect = Callable[..., ssl.SSLSocket]
ClientCtx = Callable[..., ssl.SSLContext]

DOMAIN = "wsgate.test"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(ca: LocalCA) -> dict[str, bytes]:
    return {name: getattr(ca, name).read_bytes() for name in ("ca_cert", "ca_key", "leaf_cert", "leaf_key")}


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName))


def test_creates_ca_and_leaf_with_private_permissions(tmp_path: Path) -> None:
    ca = ensure_local_ca(tmp_path / "state", DOMAIN, now=T0)
    ca_dir = tmp_path / "state" / "ca"
    assert ca == LocalCA(ca_dir / "ca.pem", ca_dir / "ca.key", ca_dir / "leaf.pem", ca_dir / "leaf.key")
    assert mode(ca_dir) == 0o700
    assert mode(ca.ca_key) == 0o600
    assert mode(ca.leaf_key) == 0o600
    assert not [p.name for p in ca_dir.iterdir() if p.name.endswith(".tmp")]

    (root,) = load_chain(ca.ca_cert)
    common_name = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(common_name, str) and common_name.startswith("wsgate local CA ")
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3650)

    leaf, chained_root = load_chain(ca.leaf_cert)
    assert chained_root == root
    leaf.verify_directly_issued_by(root)
    assert sans(leaf) == {DOMAIN, f"*.{DOMAIN}", f"*.ws.{DOMAIN}"}
    assert leaf.not_valid_before_utc == T0 - timedelta(hours=1)
    assert leaf.not_valid_after_utc == T0 + timedelta(days=90)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    leaf_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert leaf_usage.digital_signature and not leaf_usage.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


def test_existing_state_dir_is_tightened(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir(mode=0o755)
    ca_dir.chmod(0o755)
    ensure_local_ca(tmp_path, DOMAIN)
    assert mode(ca_dir) == 0o700


def test_two_installs_have_distinct_cas(tmp_path: Path) -> None:
    a = load_chain(ensure_local_ca(tmp_path / "a", DOMAIN).ca_cert)[0]
    b = load_chain(ensure_local_ca(tmp_path / "b", DOMAIN).ca_cert)[0]
    assert a.subject != b.subject


def test_second_call_reuses_everything(tmp_path: Path) -> None:
    first = snapshot(ensure_local_ca(tmp_path, DOMAIN, now=T0))
    assert snapshot(ensure_local_ca(tmp_path, DOMAIN, now=T0 + timedelta(days=59))) == first
    # The same domain spelled differently is the same domain.
    assert snapshot(ensure_local_ca(tmp_path, "WSGate.Test.", now=T0)) == first


def test_leaf_reissued_when_near_expiry(tmp_path: Path) -> None:
    before = snapshot(ensure_local_ca(tmp_path, DOMAIN, now=T0))
    later = T0 + timedelta(days=61)  # 29 days left
    ca = ensure_local_ca(tmp_path, DOMAIN, now=later)
    after = snapshot(ca)
    assert after["ca_cert"] == before["ca_cert"] and after["ca_key"] == before["ca_key"]
    assert after["leaf_cert"] != before["leaf_cert"] and after["leaf_key"] != before["leaf_key"]
    leaf, root = load_chain(ca.leaf_cert)
    leaf.verify_directly_issued_by(root)
    assert leaf.not_valid_after_utc == later + timedelta(days=90)
    assert mode(ca.leaf_key) == 0o600


def test_leaf_reissued_when_domain_changes(tmp_path: Path) -> None:
    before = snapshot(ensure_local_ca(tmp_path, DOMAIN, now=T0))
    ca = ensure_local_ca(tmp_path, "other.test", now=T0)
    after = snapshot(ca)
    assert after["ca_cert"] == before["ca_cert"]
    assert after["leaf_cert"] != before["leaf_cert"]
    assert sans(load_chain(ca.leaf_cert)[0]) == {"other.test", "*.other.test", "*.ws.other.test"}


def test_leaf_reissued_when_not_from_current_ca_or_broken(tmp_path: Path) -> None:
    ca = ensure_local_ca(tmp_path / "mine", DOMAIN, now=T0)
    foreign = ensure_local_ca(tmp_path / "foreign", DOMAIN, now=T0)
    root = load_chain(ca.ca_cert)[0]

    ca.leaf_cert.write_bytes(foreign.leaf_cert.read_bytes())
    ca.leaf_key.write_bytes(foreign.leaf_key.read_bytes())
    ensure_local_ca(tmp_path / "mine", DOMAIN, now=T0)
    load_chain(ca.leaf_cert)[0].verify_directly_issued_by(root)

    ca.leaf_cert.write_bytes(b"garbage")
    ensure_local_ca(tmp_path / "mine", DOMAIN, now=T0)
    load_chain(ca.leaf_cert)[0].verify_directly_issued_by(root)

    # A key left over from an interrupted re-issue no longer matches: re-issue.
    ca.leaf_key.write_bytes(foreign.leaf_key.read_bytes())
    before = ca.leaf_cert.read_bytes()
    ensure_local_ca(tmp_path / "mine", DOMAIN, now=T0)
    assert ca.leaf_cert.read_bytes() != before

    ca.leaf_key.unlink()
    ensure_local_ca(tmp_path / "mine", DOMAIN, now=T0)
    assert ca.leaf_key.exists()


@pytest.mark.parametrize("victim", ["ca_cert", "ca_key"])
def test_corrupt_ca_is_an_error_and_never_replaced(tmp_path: Path, victim: str) -> None:
    ca = ensure_local_ca(tmp_path, DOMAIN)
    path: Path = getattr(ca, victim)
    garbage = b"-----BEGIN CERTIFICATE-----\nnope\n" if victim == "ca_cert" else b"nope"
    path.write_bytes(garbage)
    with pytest.raises(CertificateError, match=f"^{re.escape(str(path))}: "):
        ensure_local_ca(tmp_path, DOMAIN)
    assert path.read_bytes() == garbage


@pytest.mark.parametrize("victim", ["ca_cert", "ca_key"])
def test_half_missing_ca_is_an_error(tmp_path: Path, victim: str) -> None:
    ca = ensure_local_ca(tmp_path, DOMAIN)
    path: Path = getattr(ca, victim)
    path.unlink()
    with pytest.raises(CertificateError, match=f"^{re.escape(str(path))}: local CA .* is missing"):
        ensure_local_ca(tmp_path, DOMAIN)
    assert not path.exists()


def test_ca_key_from_another_ca_is_an_error(tmp_path: Path) -> None:
    ca = ensure_local_ca(tmp_path / "a", DOMAIN)
    other = ensure_local_ca(tmp_path / "b", DOMAIN)
    ca.ca_key.write_bytes(other.ca_key.read_bytes())
    with pytest.raises(CertificateError) as err:
        ensure_local_ca(tmp_path / "a", DOMAIN)
    assert str(err.value) == f"{ca.ca_key}: private key does not match certificate {ca.ca_cert}"


def test_expired_ca_is_an_error(tmp_path: Path) -> None:
    ensure_local_ca(tmp_path, DOMAIN, now=T0)
    with pytest.raises(CertificateError, match="local CA expired"):
        ensure_local_ca(tmp_path, DOMAIN, now=T0 + timedelta(days=3651))


def test_invalid_domain(tmp_path: Path) -> None:
    for bad in ["", ".", "*.x.test", "a..test"]:
        with pytest.raises(ValueError):
            ensure_local_ca(tmp_path, bad)


def test_ca_pem(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"run `wsgate serve` once"):
        ca_pem(tmp_path)
    ca = ensure_local_ca(tmp_path, DOMAIN)
    path, text = ca_pem(tmp_path)
    assert path == ca.ca_cert
    assert text == ca.ca_cert.read_text()
    assert text.startswith("-----BEGIN CERTIFICATE-----")


def test_real_clients_trust_the_leaf(tmp_path: Path, serve: Serve, connect: Connect, client_ctx: ClientCtx) -> None:
    manager = local_ca_manager(tmp_path, DOMAIN)
    port = serve(manager.context)
    ctx = client_ctx(tmp_path / "ca" / "ca.pem")
    for name in [DOMAIN, f"x.{DOMAIN}", f"8080-abc.ws.{DOMAIN}"]:
        with connect(port, ctx, name) as sock:
            sock.sendall(b"hi")
            assert sock.recv(2) == b"hi"
    for name in [f"a.b.{DOMAIN}", "other.test"]:
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(port, ctx, name)
    assert manager.covers(f"8080-abc.ws.{DOMAIN}")
    # The system trust store does not know the local CA.
    default = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(port, default, DOMAIN)
