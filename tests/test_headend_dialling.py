"""A head-end's client library says why it cannot reach the gateway, while it keeps dialling."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from structlog.testing import capture_logs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from zope.interface import implementer

from adapters.wire.headend import HeadEndClient


@implementer(IStreamClientEndpoint)
class Refusing:
    """An endpoint whose every dial is refused, as a closed port refuses it."""

    def __init__(self) -> None:
        self.dials = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.dials += 1
        return fail(ConnectionRefusedError("127.0.0.1:8444"))


def dial_warnings(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["log_level"], e["why"]) for e in logs if e["event"] == "headend.dial_failed"]


def test_a_refused_dial_is_said_once_then_retried_quietly() -> None:
    """Dials refused again and again log one warning with the reason, then debug lines."""
    clock, endpoint = Clock(), Refusing()
    client = HeadEndClient(endpoint, object(), clock, max_retry_delay_s=1.0)
    with capture_logs() as logs:
        client.start()
        for _ in range(20):
            clock.advance(1.0)
        client.stop()
    said = dial_warnings(logs)
    assert endpoint.dials > 3 and len(said) == endpoint.dials
    assert [level for level, _ in said] == ["warning"] + ["debug"] * (len(said) - 1)
    assert "Connection was refused" in said[0][1]


class Hangs(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()  # not a gateway: it says nothing and hangs up


@pytest_twisted.ensureDeferred
async def test_a_peer_that_closes_before_any_welcome_is_named_as_the_wrong_port() -> None:
    """Dialling something that is not the gateway's adapter port (it hangs up without a
    welcome or a goodbye) warns that the address may be the wrong port."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Hangs)
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    client = HeadEndClient(endpoint, object(), reactor, max_retry_delay_s=0.2)
    try:
        with capture_logs() as logs:
            client.start()
            for _ in range(50):
                if dial_warnings(logs):
                    break
                await deferLater(reactor, 0.05, lambda: None)
            await client.stop()
    finally:
        await port.stopListening()
    [(level, why), *_] = dial_warnings(logs)
    assert level == "warning"
    assert "before the gateway welcomed this head-end" in why and "adapter port" in why
