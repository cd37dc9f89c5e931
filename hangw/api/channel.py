"""The API's HTTP channel: a request Twisted cannot parse is refused with a problem too.

Twisted's ``HTTPChannel`` answers a request it cannot parse (a malformed request line or header
line, a bad Content-Length (one of more than 18 digits too, which Twisted
itself fails on) or Transfer-Encoding, a NUL in a header value, more than 500 headers
or 16 KB of them) with a bare ``400 Bad Request`` and no body, before any resource sees it.
``ProblemHTTPChannel`` answers the same 400 as a problem+json saying what kind of thing was
wrong, so every error of the API reads alike. Twisted offers no public hook for that answer;
tests/test_api_provisioning.py proves this one is still the one it calls.

The API speaks HTTP/1.1 only (its TLS context offers no ALPN), so the Site builds this channel
directly instead of Twisted's HTTP/1.1-or-HTTP/2 wrapper.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from twisted.web.http import HTTPChannel

from hangw.api.app import PROBLEM_JSON
from hangw.problems import BadRequest

log = structlog.get_logger(__name__)

MALFORMED = (
    "the request is not well-formed HTTP/1.1: its request line, a header line "
    "(a NUL, CR or LF in a value; no colon), its Content-Length or Transfer-Encoding, "
    "or more than {headers} headers or {size} bytes of them; nothing was done"
)


class ProblemHTTPChannel(HTTPChannel):
    """An HTTPChannel whose answer to an unparsable request is a 400 problem+json."""

    def headerReceived(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length" and len(value.strip()) > 18:
            # Twisted's int() of thousands of digits raises past its own checks (Python's
            # limit on the digits of an integer); no body this API takes needs 19 of them
            self._respondToBadRequestAndDisconnect()
            return False
        return bool(super().headerReceived(line))

    def _respondToBadRequestAndDisconnect(self) -> None:
        detail = MALFORMED.format(headers=self.maxHeaders, size=self.totalHeadersSize)
        body = json.dumps(BadRequest(detail).to_json()).encode()
        log.info("api.refused", status=400, problem=BadRequest.slug, why="malformed HTTP")
        transport: Any = self.transport
        transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: " + PROBLEM_JSON + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self.loseConnection()
