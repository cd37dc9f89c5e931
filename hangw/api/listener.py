"""The mutual-TLS listener of the API: only clients whose certificate is registered get in.

Trust is pinned to the registered certificates themselves (the SHA-256 fingerprint of the client's
leaf certificate), not to a CA: a party registered with ``hangw party add`` may bring a certificate
from any CA, and a certificate from the development CA that is not registered is refused. The
handshake fails for a client that sends no certificate, an unregistered one, or an expired one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

X509_V_ERR_CERT_NOT_YET_VALID = 9
X509_V_ERR_CERT_HAS_EXPIRED = 10


class ServerCertificateError(ValueError):
    """The server certificate or its key cannot be used; the message names both files."""


def _reason(error: SSL.Error) -> str:
    """OpenSSL's reasons (``key values mismatch``), without its library and function names."""
    reasons = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return "; ".join(str(r[-1]) for r in reasons if r) or str(error) or "unusable"


@implementer(IOpenSSLContextFactory)
class PinnedClientContextFactory:
    """Server-side TLS context: our certificate, TLS 1.2 or later, registered client certs only."""

    def __init__(
        self, cert_path: Path, key_path: Path, is_registered: Callable[[str], bool]
    ) -> None:
        """ServerCertificateError when the certificate or key cannot be read or do not match."""
        self._is_registered = is_registered
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        try:
            context.use_certificate_chain_file(str(cert_path))
            context.use_privatekey_file(str(key_path))
            context.check_privatekey()
        except SSL.Error as error:
            raise ServerCertificateError(
                f"the server certificate {cert_path} and its key {key_path} cannot be used "
                f"({_reason(error)})"
            ) from None
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        # session ids are per-context; tickets would let a client resume without being re-checked
        context.set_options(SSL.OP_NO_TICKET)
        context.set_session_id(b"hangw-api")
        self._context = context

    def _verify(
        self, _connection: SSL.Connection, x509: crypto.X509, errno: int, depth: int, _ok: int
    ) -> bool:
        if depth > 0:
            return True  # the leaf is pinned; its issuers need not be known here
        if errno in (X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED):
            return False
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, x509)
        return self._is_registered(hashlib.sha256(der).hexdigest())

    def getContext(self) -> SSL.Context:
        return self._context
