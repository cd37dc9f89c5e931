"""What the API learns from the TLS connection a request came on: the client's certificate."""

from __future__ import annotations

import hashlib

from OpenSSL import crypto
from twisted.web.iweb import IRequest


def peer_fingerprint(request: IRequest) -> str | None:
    """SHA-256 (lowercase hex) of the client's leaf certificate, or None without TLS or a cert."""
    transport = getattr(request, "channel", None)
    transport = getattr(transport, "transport", None)
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return None
    certificate = get_peer_certificate()
    if certificate is None:
        return None
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
    return hashlib.sha256(der).hexdigest()
