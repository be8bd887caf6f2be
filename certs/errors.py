"""Exceptions shared by the certs package."""

from __future__ import annotations


class CertificateError(Exception):
    """A certificate, key or key file cannot be used.

    The message always starts with the offending path, so it can be shown to
    the operator verbatim.
    """


class EnvelopeError(ValueError):
    """An encrypted envelope cannot be opened (corrupt, tampered or wrong key)."""
