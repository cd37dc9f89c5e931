"""CSV answers: whether a request asks for one, and writing it piece by piece with backpressure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from hangw.problems import InvalidField


def wants_csv(request: Any, args: dict[str, str]) -> bool:
    """``?format=csv``, or an Accept header that takes text/csv and not JSON; ``format`` other
    than csv or json is refused."""
    if args.get("format", "json") not in ("csv", "json"):
        raise InvalidField("format", "format must be csv or json")
    accept = (request.getHeader(b"accept") or b"").lower()
    return args.get("format") == "csv" or (
        b"text/csv" in accept and b"application/json" not in accept
    )


@implementer(IPushProducer)
class Paced:
    """Pauses the writer of a long answer while the client's connection is full."""

    def __init__(self) -> None:
        self._resumed: Deferred[None] | None = None
        self.stopped = False

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def room(self) -> None:
        if self._resumed is not None:
            await self._resumed


async def write_csv(request: Any, filename: str, pieces: AsyncIterator[bytes]) -> bytes:
    """Answer ``request`` with a CSV download of ``pieces``, written one at a time.

    Writing waits while the client's connection is full and stops when the client goes away;
    returns the (empty) rest of the body for the route to return.
    """
    request.setHeader(b"content-type", b"text/csv; charset=utf-8")
    request.setHeader(b"content-disposition", f'attachment; filename="{filename}"'.encode())
    paced = Paced()
    request.registerProducer(paced, True)
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))
    try:
        async for piece in pieces:
            if gone or paced.stopped:
                break
            request.write(piece)
            await paced.room()
    finally:
        request.unregisterProducer()
    return b""
