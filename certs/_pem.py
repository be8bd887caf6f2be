"""PEM parsing with operator-friendly errors (every message starts with the path)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

from .errors import CertificateError


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def parse_chain(path: Path, data: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM file, in file order (leaf first for a chain)."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"{path}: no PEM certificate found in file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{path}: invalid PEM certificate: {exc}") from None


def parse_key(path: Path, data: bytes) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"{path}: no PEM private key found in file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography signals "encrypted, but no password given" with TypeError.
        raise CertificateError(f"{path}: private key is encrypted; wsgate needs an unencrypted key") from None
    except ValueError as exc:
        raise CertificateError(f"{path}: invalid PEM private key: {exc}") from None


def spki(public_key: PublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo: a type-independent way to compare public keys."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def dns_names(cert: x509.Certificate) -> list[str]:
    """Lower-cased DNS SANs; the subject CN is deliberately ignored, as browsers do."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]
