"""TLS certificates, the zero-config local CA and encrypted envelopes."""

from .envelope import Keyring
from .errors import CertificateError, EnvelopeError
from .localca import LocalCA, ca_pem, ensure_local_ca
from .tls import CertPair, TLSManager, local_ca_manager, new_server_context

__all__ = [
    "CertPair",
    "CertificateError",
    "EnvelopeError",
    "Keyring",
    "LocalCA",
    "TLSManager",
    "ca_pem",
    "ensure_local_ca",
    "local_ca_manager",
    "new_server_context",
]
