"""The head-end side of the adapter protocol: a client library for a TDSP's head-end system.

A head-end gives ``HeadEndClient`` an application (IHeadEndApplication) that carries out the
gateway's commands, and reports back through ``report`` (which fires once the gateway has
recorded the report). The client dials the gateway over TLS with the TDSP's certificate and keeps
dialling with backoff (``twisted.application.internet.ClientService``); reports not yet
acknowledged are sent again after a reconnect, under the same id, so the gateway applies each
once. Commands are acknowledged only after the application accepted them; a command that
arrives again (after a lost link) is handed to the application again, which must drop it by id.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import structlog
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from adapters.commands import (
    DeliveryStatus,
    InboundFrame,
    MeterEvent,
    ProvisioningReport,
    QueryFailed,
    ReportRefused,
)
from adapters.interfaces import IAdapterEvents
from adapters.wire import protocol
from adapters.wire.protocol import ProtocolError

log = structlog.get_logger(__name__)
_CLOSED = Failure(ConnectionError("connection closed"))

__all__ = ["GatewayRefused", "HeadEndClient", "IHeadEndApplication", "ReportRefusedByGateway"]


class IHeadEndApplication(Interface):
    """What a head-end does with the gateway's commands."""

    def command(command):
        """Carry out an ``adapters.commands.Command``; a Deferred that fires once accepted.

        The client acknowledges the command to the gateway when it fires. The same
        ``command_id`` may come again (after a lost link) and must be applied once.
        """

    def query(query):
        """Answer an ``adapters.commands.Query``: a Deferred firing with its QueryResult.

        A failure (``QueryFailed`` with a reason for the person who asked) is sent as a nack.
        """


class ReportRefusedByGateway(ReportRefused):
    """The gateway refused a report (say, about a meter of another TDSP); the reason says why."""


class GatewayRefused(Exception):
    """The gateway closed the connection with a reason (bad certificate, no common version...)."""


class _Link(Int32StringReceiver):
    MAX_LENGTH = protocol.MAX_FRAME_BYTES

    def __init__(self, client: HeadEndClient) -> None:
        self.client = client
        self.welcomed = False
        self.heartbeat_s = 15
        self._beat: IDelayedCall | None = None
        self._last_heard = 0.0
        self._grants = 0

    @property
    def _tls(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        self._last_heard = self.client.clock.seconds()
        self.send(
            {
                "type": "hello",
                "versions": list(self.client.versions),
                "credit": self.client.command_credit,
                "software": self.client.software,
            }
        )

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self.client._lost(self, reason.getErrorMessage())

    def send(self, message: Mapping[str, Any]) -> None:
        self.sendString(protocol.encode(message))

    def lengthLimitExceeded(self, length: int) -> None:
        log.error("gateway.frame_too_long", length=length)
        self._tls.loseConnection()

    def stringReceived(self, body: bytes) -> None:
        self._last_heard = self.client.clock.seconds()
        try:
            message = protocol.decode(body, protocol.GATEWAY_TO_HEADEND)
        except ProtocolError as error:
            log.warning("gateway.bad_message", why=error.reason)
            answer: dict[str, Any] = {"type": "error", "reason": error.reason}
            if error.ref:
                answer["ref"] = error.ref
            self.send(answer)
            if error.fatal:
                self._tls.loseConnection()
            return
        kind = message["type"]
        if kind == "welcome":
            self.welcomed = True
            self.heartbeat_s = message["heartbeat_s"]
            self._beat = self.client.clock.callLater(self.heartbeat_s, self._heartbeat)
            self.client._welcomed(self, message)
        elif kind == "goodbye":
            self.client._goodbye(message.get("reason", ""))
        elif kind in protocol.COMMAND_TYPES:
            self._command(message)
        elif kind in protocol.QUERY_TYPES:
            self._query(message)
        elif kind == "ack":
            self.client._settled(message["ref"], None)
        elif kind == "nack":
            self.client._settled(message["ref"], message.get("reason", "refused"))
        elif kind == "credit":
            self.client._grant(message["grant"])
        elif kind == "error":
            log.warning("gateway.error", why=message.get("reason", ""), ref=message.get("ref"))

    def _command(self, message: dict[str, Any]) -> None:
        command = protocol.command_from_message(message)
        accepted = maybeDeferred(self.client.application.command, command)

        def ack(_: object) -> None:
            if self.connected:
                self.send({"type": "ack", "ref": command.command_id})
                self._grant_back()

        def not_accepted(failure: Failure) -> None:
            # no acknowledgement: the gateway times out and sends it again later
            log.warning(
                "headend.command_not_accepted",
                command=command.command_id,
                why=failure.getErrorMessage(),
            )
            self._grant_back()

        accepted.addCallbacks(ack, not_accepted)

    def _query(self, message: dict[str, Any]) -> None:
        ref = message["id"]
        answer = maybeDeferred(self.client.application.query, protocol.query_from_message(message))

        def result(value: Any) -> None:
            if self.connected:
                self.send(protocol.query_result_message(ref, value))

        def refused(failure: Failure) -> None:
            if not failure.check(QueryFailed):
                log.error("headend.query_failed", query=ref, why=failure.getErrorMessage())
            if self.connected:
                reason = failure.getErrorMessage()[:1000]
                self.send({"type": "nack", "ref": ref, "reason": reason})

        # an application answering with something that is no query result is refused too
        answer.addCallback(result).addErrback(refused)

    def _grant_back(self) -> None:
        self._grants += 1
        if self._grants >= max(1, self.client.command_credit // 4):
            self.send({"type": "credit", "grant": self._grants})
            self._grants = 0
        elif self._grants == 1:
            self.client.clock.callLater(0.05, self._flush_grants)

    def _flush_grants(self) -> None:
        if self._grants and self.connected:
            self.send({"type": "credit", "grant": self._grants})
            self._grants = 0

    def _heartbeat(self) -> None:
        if self.client.clock.seconds() - self._last_heard > 3 * self.heartbeat_s:
            log.warning("gateway.dead", silent_s=3 * self.heartbeat_s)
            self._tls.abortConnection()
            return
        self.send({"type": "heartbeat"})
        self._beat = self.client.clock.callLater(self.heartbeat_s, self._heartbeat)


class _LinkFactory(Factory):
    def __init__(self, client: HeadEndClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _Link:
        return _Link(self.client)


@implementer(IAdapterEvents)
class HeadEndClient:
    """A head-end's connection to the gateway, kept up with backoff.

    ``report`` (and the IAdapterEvents methods, so a head-end model written against
    IAdapterEvents can report through it) sends an event and returns a Deferred that fires when
    the gateway has recorded it, or fails with ReportRefusedByGateway.
    """

    versions: tuple[int, ...] = protocol.SUPPORTED_VERSIONS

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        application: Any,
        clock: IReactorTime,
        *,
        command_credit: int = 256,
        software: str = "hangw-headend",
        max_retry_delay_s: float = 10.0,
        resend_after_s: float = 30.0,
    ) -> None:
        self.application = application
        self.clock = clock
        self.command_credit = command_credit
        self.software = software
        self.service = ClientService(
            endpoint,
            _LinkFactory(self),
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=max_retry_delay_s),
            clock=clock,
        )
        self.link: _Link | None = None
        self.welcome: dict[str, Any] | None = None
        self.refused_reason: str | None = None
        self._credit = 0
        self._ids = itertools.count(1)
        self._prefix = os.urandom(6).hex()
        #: Reports not yet acknowledged, in the order they were made.
        self._outbox: OrderedDict[str, tuple[dict[str, Any], Deferred[None]]] = OrderedDict()
        #: Event id -> when it went out; answered ones leave, unanswered ones go again.
        self._in_flight: dict[str, float] = {}
        self._ready: list[Deferred[None]] = []
        self.resend_after_s = resend_after_s
        self._sweeper = LoopingCall(self._resend_unanswered)
        self._sweeper.clock = clock

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.service.startService()
        self._sweeper.start(max(self.resend_after_s / 4, 0.1), now=False)

    def stop(self) -> Deferred[None]:
        if self._sweeper.running:
            self._sweeper.stop()
        return self.service.stopService()

    def _resend_unanswered(self) -> None:
        """Reports the gateway did not answer (it could not record them) go again, same id."""
        cutoff = self.clock.seconds() - self.resend_after_s
        stale = [event_id for event_id, sent in self._in_flight.items() if sent < cutoff]
        for event_id in stale:
            del self._in_flight[event_id]
        if stale:
            self._pump()

    def when_connected(self) -> Deferred[None]:
        """Fires once the gateway has welcomed this head-end (now, if it already has)."""
        if self.link is not None and self.link.welcomed:
            return succeed(None)
        ready: Deferred[None] = Deferred()
        self._ready.append(ready)
        return ready

    def drop_connection(self) -> None:
        """Cut the current connection (it is dialled again); used to test link loss."""
        if self.link is not None:
            self.link._tls.abortConnection()

    # -- events ----------------------------------------------------------------------------------

    def report(
        self, event: ProvisioningReport | DeliveryStatus | InboundFrame | MeterEvent
    ) -> Deferred[None]:
        """Send an event; fires once the gateway recorded it (fails if the gateway refused it)."""
        event_id = f"{self._prefix}-{next(self._ids)}"
        done: Deferred[None] = Deferred()
        self._outbox[event_id] = (protocol.event_message(event_id, event), done)
        self._pump()
        return done

    provisioning_report = report
    delivery_status = report
    inbound_frame = report
    meter_event = report

    @property
    def unacknowledged(self) -> int:
        """Reports sent or waiting that the gateway has not acknowledged yet."""
        return len(self._outbox)

    def _pump(self) -> None:
        link = self.link
        if link is None or not link.welcomed:
            return
        for event_id, (message, _) in self._outbox.items():
            if self._credit <= 0:
                break
            if event_id in self._in_flight:
                continue
            self._in_flight[event_id] = self.clock.seconds()
            self._credit -= 1
            self._transmit(link, message)

    def _transmit(self, link: _Link, message: dict[str, Any]) -> None:
        """Put one report on the wire (a subclass may delay, repeat or reorder it)."""
        link.send(message)

    # -- from the link -------------------------------------------------------------------------

    def _welcomed(self, link: _Link, welcome: dict[str, Any]) -> None:
        self.link = link
        self.welcome = welcome
        self.refused_reason = None
        self._credit = welcome["credit"]
        self._in_flight.clear()  # everything unacknowledged goes again
        log.info("headend.welcomed", tdsp=welcome["tdsp_duns"], version=welcome["version"])
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(None)
        self._pump()

    def _goodbye(self, reason: str) -> None:
        self.refused_reason = reason
        log.warning("headend.goodbye", why=reason)

    def _lost(self, link: _Link, why: str) -> None:
        if self.link is link:
            self.link = None
            self._in_flight.clear()
            log.info("headend.disconnected", why=why)

    def _settled(self, ref: str, refusal: str | None) -> None:
        entry = self._outbox.pop(ref, None)
        self._in_flight.pop(ref, None)
        if entry is None:
            return  # acknowledged twice (a resend crossed the first acknowledgement)
        done = entry[1]
        if refusal is None:
            done.callback(None)
        else:
            done.errback(ReportRefusedByGateway(refusal))

    def _grant(self, grant: int) -> None:
        self._credit += grant
        self._pump()
