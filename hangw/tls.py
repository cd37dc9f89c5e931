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
    # A keep-alive connection carries many requests and its peer cannot change: hash it once.
    cached: str | None = getattr(transport, "_hangw_peer_fingerprint", None)
    if cached is not None:
        return cached
    certificate = get_peer_certificate()
    if certificate is None:
        return None
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        transport._hangw_peer_fingerprint = fingerprint  # type: ignore[union-attr]
    except AttributeError:  # a transport with __slots__: compute again next time
        pass
    return fingerprint
