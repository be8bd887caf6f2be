"""Zero-config local certificate authority.

On first start wsgate creates its own CA under ``<state_dir>/ca`` and issues a
leaf for ``domain``, ``*.domain`` and ``*.ws.domain``.  The operator trusts the
CA once (``wsgate certs ca`` prints it); the leaf is then re-issued silently
whenever needed, while the CA itself is never replaced behind their back since
that would break every browser that trusts it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._fs import locked, private_dir, write_atomic
from ._pem import dns_names, parse_chain, parse_key, read_file, spki
from .errors import CertificateError

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=90)
LEAF_RENEW_BEFORE = timedelta(days=30)
# Tolerates client clocks that run a little behind ours.
BACKDATE = timedelta(hours=1)


@dataclass(frozen=True)
class LocalCA:
    """Paths of the local CA and of the leaf it issued (leaf_cert holds leaf + CA)."""

    ca_cert: Path
    ca_key: Path
    leaf_cert: Path
    leaf_key: Path


def ensure_local_ca(state_dir: Path, domain: str, *, now: datetime | None = None) -> LocalCA:
    """Create the local CA on first use and make sure a valid leaf exists for ``domain``.

    Safe to call on every start-up; concurrent callers are serialised with a lock
    file so two processes can never mint two different CAs.
    """
    domain = normalize_domain(domain)
    now = _utc(now)
    ca_dir = state_dir / "ca"
    paths = LocalCA(
        ca_cert=ca_dir / "ca.pem",
        ca_key=ca_dir / "ca.key",
        leaf_cert=ca_dir / "leaf.pem",
        leaf_key=ca_dir / "leaf.key",
    )
    private_dir(ca_dir)
    with locked(ca_dir / ".lock"):
        ca_cert, ca_key = _load_or_create_ca(paths, now)
        if not _leaf_ok(paths, ca_cert, domain, now):
            _write_leaf(paths, ca_cert, ca_key, domain, now)
    return paths


def ca_pem(state_dir: Path) -> tuple[Path, str]:
    """Return the CA certificate path and PEM text, for ``wsgate certs ca``."""
    path = state_dir / "ca" / "ca.pem"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{path}: no local CA exists yet; run `wsgate serve` once to create it") from None
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read CA certificate: {exc.strerror}") from None
    _parse_cert(path, data)
    return path, data.decode("ascii")


def normalize_domain(domain: str) -> str:
    """Lower-case, strip the root dot and convert to the IDNA A-label form used in SANs."""
    name = domain.strip().rstrip(".").lower()
    if not name or "*" in name or any(not label for label in name.split(".")):
        raise ValueError(f"invalid domain for the local CA: {domain!r}")
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"invalid domain for the local CA: {domain!r}: {exc}") from None


def leaf_names(domain: str) -> list[str]:
    """DNS names the local leaf must cover for ``domain``."""
    return [domain, f"*.{domain}", f"*.ws.{domain}"]


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    # A naive datetime is taken as UTC rather than local time: certificates are UTC.
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _parse_cert(path: Path, data: bytes) -> x509.Certificate:
    return parse_chain(path, data)[0]


def _load_or_create_ca(paths: LocalCA, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_exists = paths.ca_cert.exists()
    key_exists = paths.ca_key.exists()
    if not cert_exists and not key_exists:
        return _create_ca(paths, now)
    # A half-present CA is never "repaired" by minting a new one: browsers may
    # trust the old certificate, and a new CA would silently break them.
    if not cert_exists:
        raise CertificateError(
            f"{paths.ca_cert}: local CA certificate is missing but {paths.ca_key} exists; "
            f"restore it, or delete {paths.ca_key} to create a new CA (clients must re-trust it)"
        )
    if not key_exists:
        raise CertificateError(
            f"{paths.ca_key}: local CA private key is missing but {paths.ca_cert} exists; "
            f"restore it, or delete {paths.ca_cert} to create a new CA (clients must re-trust it)"
        )
    cert = _parse_cert(paths.ca_cert, read_file(paths.ca_cert, "CA certificate"))
    key = parse_key(paths.ca_key, read_file(paths.ca_key, "CA key"))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{paths.ca_key}: local CA key is not an EC key")
    if spki(key.public_key()) != spki(cert.public_key()):
        raise CertificateError(f"{paths.ca_key}: private key does not match certificate {paths.ca_cert}")
    if now >= cert.not_valid_after_utc:
        raise CertificateError(
            f"{paths.ca_cert}: local CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            f"delete {paths.ca_cert.parent} to create a new one (clients must re-trust it)"
        )
    return cert, key


def _create_ca(paths: LocalCA, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # The random suffix keeps two installs' CAs distinguishable in trust stores.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wsgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"wsgate local CA {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a crash in between leaves "key without cert", which is
    # reported instead of silently replaced (see _load_or_create_ca).
    write_atomic(paths.ca_key, _key_pem(key), 0o600, overwrite=False)
    write_atomic(
        paths.ca_cert,
        cert.public_bytes(serialization.Encoding.PEM),
        0o644,
        overwrite=False,
    )
    return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _leaf_ok(paths: LocalCA, ca_cert: x509.Certificate, domain: str, now: datetime) -> bool:
    """Whether the existing leaf can be kept; any doubt means re-issue (it is cheap)."""
    try:
        chain = x509.load_pem_x509_certificates(paths.leaf_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.leaf_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if len(chain) != 2 or chain[1] != ca_cert:
        return False
    leaf = chain[0]
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (
        InvalidSignature,
        ValueError,
        TypeError,
    ):  # all mean "not issued by this CA"
        return False
    if spki(key.public_key()) != spki(leaf.public_key()):
        return False
    if now < leaf.not_valid_before_utc or leaf.not_valid_after_utc - now < LEAF_RENEW_BEFORE:
        return False
    return set(dns_names(leaf)) == set(leaf_names(domain))


def _write_leaf(
    paths: LocalCA,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    domain: str,
    now: datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in leaf_names(domain)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    # Key first: if we crash in between, the next start sees a key/cert
    # mismatch and simply re-issues.
    write_atomic(paths.leaf_key, _key_pem(key), 0o600)
    write_atomic(paths.leaf_cert, pem, 0o644)
