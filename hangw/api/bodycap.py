"""A cap on request bodies as they arrive: no body larger than any path takes is read.

Twisted's ``Request`` keeps a body of 100,000 bytes or more, or of unknown length (chunked), in a
temporary file with no limit, and a resource sees it only once it has all arrived, so the limit
of a path (``Api._body``) comes after the disk and the time were spent, on every path, GETs too.
``BodyCappedRequest`` refuses a body over its Site's ``max_body_bytes`` (the largest any path
takes) as it comes: a declared Content-Length when the headers end, a chunked body once its bytes
pass the cap. The answer is 413 problem+json with ``Connection: close``; what follows of the body
is dropped unread and the connection is closed (aborted if the client keeps it open).
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from hangw.api.app import PROBLEM_JSON, request_id_of
from hangw.problems import PayloadTooLarge

log = structlog.get_logger(__name__)


class BodyCappedRequest(Request):
    """A Request that refuses a body over ``channel.site.max_body_bytes`` before reading it."""

    _refused = False
    _received = 0
    _abort: IDelayedCall | None = None

    def _most(self) -> int:
        site: Any = self.channel.site  # type: ignore[attr-defined]
        most: int = site.max_body_bytes
        return most

    def gotLength(self, length: int | None) -> None:
        most = self._most()
        if length is not None and length > most:
            self._refuse(f"the body is {length} bytes; no path takes more than {most}")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused body, arriving before the connection closed
        self._received += len(data)
        most = self._most()
        if self._received > most:
            self._refuse(f"the body is over {most} bytes; no path takes more")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:  # a refused request was answered; it is not handled
            super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)

    def _refuse(self, detail: str) -> None:
        """Answer 413 now, before the body, and close the connection."""
        self._refused = True
        # the 100 Continue the channel sends after the headers would ask for the body refused here
        self.requestHeaders.removeHeader(b"expect")
        request_id = request_id_of(self)
        body = json.dumps(PayloadTooLarge(detail).to_json()).encode()
        headers = Headers(
            {
                b"content-type": [PROBLEM_JSON],
                b"content-length": [str(len(body)).encode()],
                b"connection": [b"close"],
                b"x-request-id": [request_id.encode()],
            }
        )
        log.info("api.refused", status=413, problem=PayloadTooLarge.slug, request_id=request_id)
        channel: Any = self.channel
        channel.writeHeaders(b"HTTP/1.1", b"413", b"Content Too Large", headers)
        channel.write(body)
        transport = channel.transport
        channel.loseConnection()  # TLS waits for the client's close_notify: not for ever
        self._abort = channel.callLater(channel.abortTimeout, transport.abortConnection)
