"""Backpressure for long answers: a route writing a CSV or log page by page waits for room."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


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
