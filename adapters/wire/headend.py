"""The head-end side of the adapter protocol: a client library for a TDSP's head-end system.

A head-end gives ``HeadEndClient`` an application (IHeadEndApplication) that carries out the
gateway's commands, and reports back through ``report`` (which fires once the gateway has
recorded the report), or with many delivery statuses or inbound frames at once through
``delivery_statuses`` and ``inbound_frames``. The client dials the gateway over TLS with the
TDSP's certificate and keeps dialling with backoff (``twisted.application.internet.ClientService``);
reports not yet acknowledged are sent again after a reconnect, under the same id, so the gateway
applies each once. Commands are acknowledged only after the application accepted them; a command
that arrives again (after a lost link) is handed to the application again, which must drop it by
id.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
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


@implementer(IStreamClientEndpoint)
class _SaysWhyDialsFail:
    """The gateway's endpoint, telling the client why a connection attempt failed (refused,
    no route, TLS): ClientService retries in silence."""

    def __init__(self, endpoint: IStreamClientEndpoint, client: HeadEndClient) -> None:
        self._endpoint = endpoint
        self._client = client

    def connect(self, factory: Any) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            self._client.dial_failed(failure.getErrorMessage())
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


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
            self.client._settled(message["ref"], None, message.get("refused", ()))
        elif kind == "nack":
            self.client._settled(message["ref"], message.get("reason", "refused"))
        elif kind == "credit":
            self.client._grant(message["grant"])
        elif kind == "error":
            reason = message.get("reason") or "refused with an error"
            log.warning("gateway.error", why=reason, ref=message.get("ref"))
            if "ref" in message:
                # an event or a batch that broke the protocol's rules: the same again would be
                # refused again
                self.client._settled(message["ref"], reason)

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


class _Sent:
    """An event or a batch in the outbox, and what waits for the gateway's answer to it."""

    __slots__ = ("count", "done", "message")

    def __init__(self, message: dict[str, Any], done: Deferred[Any], count: int | None) -> None:
        self.message = message
        #: For an event: fires with None, or fails with ReportRefusedByGateway. For a batch:
        #: fires with the (index, reason) of each item refused.
        self.done = done
        #: None for an event; the number of items of a batch.
        self.count = count


#: The id the size of a batch is measured with: as long as an id may be.
_LONGEST_ID = "x" * 100


@implementer(IAdapterEvents)
class HeadEndClient:
    """A head-end's connection to the gateway, kept up with backoff.

    ``report`` (and the IAdapterEvents methods, so a head-end model written against
    IAdapterEvents can report through it) sends an event and returns a Deferred that fires when
    the gateway has recorded it, or fails with ReportRefusedByGateway (with ReportRefused, and
    nothing sent, when it breaks the protocol's rules). ``delivery_statuses`` and
    ``inbound_frames`` send many at once, in batch messages, and fire with each one's answer.
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
            _SaysWhyDialsFail(endpoint, self),
            _LinkFactory(self),
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=max_retry_delay_s),
            clock=clock,
        )
        self.link: _Link | None = None
        #: Why the last dial failed (said once until a welcome), None since a welcome.
        self._dial_trouble: str | None = None
        self.welcome: dict[str, Any] | None = None
        self.refused_reason: str | None = None
        self._credit = 0
        self._ids = itertools.count(1)
        self._prefix = os.urandom(6).hex()
        #: Reports and batches not yet acknowledged, in the order they were made.
        self._outbox: OrderedDict[str, _Sent] = OrderedDict()
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
        """Send an event; fires once the gateway recorded it (fails if the gateway refused it).

        An event that breaks the protocol's rules is not sent: it fails at once with
        ReportRefused (``not sent: `` and the reason the gateway's ``error`` would give).
        """
        event_id = self._next_id()
        message = protocol.event_message(event_id, event)
        try:
            protocol.check_message(message, protocol.HEADEND_TO_GATEWAY)
        except ProtocolError as error:
            return fail(ReportRefused(f"not sent: {error.reason}"))
        done: Deferred[None] = Deferred()
        self._outbox[event_id] = _Sent(message, done, None)
        self._pump()
        return done

    provisioning_report = report
    delivery_status = report
    inbound_frame = report
    meter_event = report

    def delivery_statuses(
        self, statuses: Sequence[DeliveryStatus], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        """Send many delivery statuses at once; fires with one entry per status, in order: None
        when the gateway recorded it, or the reason it was refused.

        They go in ``delivery_statuses`` messages of at most MAX_EVENTS_PER_BATCH statuses (and
        MAX_FRAME_BYTES), each with an id of its own, sent and resent like single events; the
        Deferred fires when every one has been answered. A status that breaks the protocol's
        rules is not sent: its entry is the reason (``not sent: ...``). ``batch_id`` is not
        used: the client names every message it sends.
        """
        items = [protocol.delivery_status_item(status) for status in statuses]
        return self._send_batch("delivery_statuses", items)

    def inbound_frames(
        self, frames: Sequence[InboundFrame], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        """Send many inbound frames at once, in ``inbound_frames`` messages; answered as
        ``delivery_statuses`` is."""
        items = [protocol.inbound_frame_item(frame) for frame in frames]
        return self._send_batch("inbound_frames", items)

    def _send_batch(self, kind: str, items: list[dict[str, Any]]) -> Deferred[list[str | None]]:
        results: list[str | None] = [None] * len(items)
        positions: Sequence[int] = range(len(items))
        problems = protocol.batch_item_problems(kind, items)
        if problems:
            for index, reason in problems.items():
                results[index] = f"not sent: {reason}"
            positions = [index for index in positions if index not in problems]
            items = [items[index] for index in positions]
        answers = []
        for start, end in _chunks(kind, items):
            event_id = self._next_id()
            done: Deferred[list[tuple[int, str]]] = Deferred()
            message = protocol.batch_message(kind, event_id, items[start:end])
            self._outbox[event_id] = _Sent(message, done, end - start)
            answers.append(done.addCallback(_place, results, positions[start:end]))
        self._pump()
        return gatherResults(answers).addCallback(lambda _: results)

    def _next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    @property
    def unacknowledged(self) -> int:
        """Reports and batches sent or waiting that the gateway has not acknowledged yet."""
        return len(self._outbox)

    def _pump(self) -> None:
        link = self.link
        if link is None or not link.welcomed:
            return
        for event_id, sent in self._outbox.items():
            if self._credit <= 0:
                break
            if event_id in self._in_flight:
                continue
            self._in_flight[event_id] = self.clock.seconds()
            self._credit -= 1
            self._transmit(link, sent.message)

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
        self._dial_trouble = None
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
        elif not link.welcomed and self.refused_reason is None:
            # closed before any welcome or goodbye: not a gateway's adapter port, most likely
            self.dial_failed(
                f"the connection closed before the gateway welcomed this head-end ({why}); "
                "is the address the gateway's adapter port (api.adapter_port)?"
            )

    def dial_failed(self, why: str) -> None:
        """Say why a dial came to nothing: a warning the first time for each reason, then
        debug while the dialling goes on (it is retried with back-off)."""
        if not self.service.running:
            return  # stopping: the attempt was called off, not failed
        if why == self._dial_trouble:
            log.debug("headend.dial_failed", why=why)
            return
        self._dial_trouble = why
        log.warning("headend.dial_failed", why=why, retrying=True)

    def _settled(self, ref: str, refusal: str | None, refused: Sequence[Any] = ()) -> None:
        """The gateway's ``ack`` (``refusal`` None, a batch's ``refused`` pairs), or its ``nack``
        or ``error`` (``refusal`` its reason)."""
        entry = self._outbox.pop(ref, None)
        self._in_flight.pop(ref, None)
        if entry is None:
            return  # acknowledged twice (a resend crossed the first acknowledgement)
        done, count = entry.done, entry.count
        if count is None:
            if refusal is None:
                done.callback(None)
            else:
                done.errback(ReportRefusedByGateway(refusal))
        elif refusal is not None:  # a whole batch refused
            done.callback([(index, refusal) for index in range(count)])
        else:
            done.callback([(index, reason) for index, reason in refused if index < count])

    def _grant(self, grant: int) -> None:
        self._credit += grant
        self._pump()


def _place(
    refused: list[tuple[int, str]], results: list[str | None], positions: Sequence[int]
) -> None:
    """Put a batch message's refusals at the positions its items had in the caller's list."""
    for index, reason in refused:
        results[positions[index]] = reason


def _status_bound(item: dict[str, Any]) -> int:
    """No fewer than the bytes a checked ``delivery_statuses`` item takes in JSON, comma included
    (6 bytes a character at most, for a control character escaped; keys, state and
    punctuation under 80)."""
    return 6 * (len(item["delivery_id"]) + len(item["esiid"]) + len(item.get("reason", ""))) + 80


def _frame_bound(item: dict[str, Any]) -> int:
    """As _status_bound, for a checked ``inbound_frames`` item (the ZCL is hex already; keys,
    cluster, time and punctuation take under 100)."""
    return len(item["zcl"]) + 6 * (len(item["esiid"]) + len(item["source"])) + 100


_BOUNDS = {"delivery_statuses": _status_bound, "inbound_frames": _frame_bound}


def _chunks(kind: str, items: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Checked ``items`` cut into ranges that each make a batch message the gateway takes: at
    most MAX_EVENTS_PER_BATCH items and MAX_FRAME_BYTES long."""
    ranges: list[tuple[int, int]] = []
    step = protocol.MAX_EVENTS_PER_BATCH
    bound = _BOUNDS[kind]
    room = protocol.MAX_FRAME_BYTES - 200  # the type, the id and the braces
    pending = [(start, min(start + step, len(items))) for start in range(0, len(items), step)]
    pending.reverse()
    while pending:
        start, end = pending.pop()
        chunk = items[start:end]
        if end - start > 1 and sum(map(bound, chunk)) > room:
            body = protocol.encode(protocol.batch_message(kind, _LONGEST_ID, chunk))
            if len(body) > protocol.MAX_FRAME_BYTES:
                middle = (start + end) // 2
                pending += [(middle, end), (start, middle)]
                continue
        ranges.append((start, end))
    return ranges
