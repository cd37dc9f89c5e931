"""The gateway side of the adapter protocol: the listener head-ends dial into, and the adapter.

One ``WireAdapter`` stands for each TDSP configured with ``kind = "wire"``; it implements
IHeadEndAdapter, so the router and the provisioning flow do not know the head-end is remote.
``HeadEndLinkFactory`` serves the adapter-protocol port: a head-end proves who it is with its
client certificate (a registered party of role ``tdsp``), says hello, and from then on carries
that TDSP's commands and reports. A newer connection from the same TDSP replaces the older one.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog
from OpenSSL import crypto
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from adapters.commands import (
    Command,
    DeliveryStatus,
    FanOutFrame,
    InboundFrame,
    MeterEvent,
    ProvisioningReport,
    Query,
    QueryFailed,
    QueryResult,
    ReportRefused,
)
from adapters.interfaces import IAdapterEvents, IHeadEndAdapter
from adapters.wire import protocol
from adapters.wire.protocol import ProtocolError

log = structlog.get_logger(__name__)
_CLOSED = Failure(ConnectionError("connection closed"))

__all__ = ["HeadEndLink", "HeadEndLinkFactory", "HeadEndUnavailable", "WireAdapter"]


class HeadEndUnavailable(ConnectionError):
    """The head-end is not connected, lost the link, or did not acknowledge in time."""


class _AdapterConfigLike(Protocol):
    @property
    def tdsp_duns(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


_OPTIONS = {
    "ack_timeout_s": (30.0, 0.1, 3600.0),
    "heartbeat_s": (15, 1, 3600),
    "event_credit": (1000, 1, 100_000),
}


@implementer(IHeadEndAdapter)
class WireAdapter:
    """A TDSP reached over the adapter protocol (its head-end dials in)."""

    def __init__(self, config: _AdapterConfigLike, clock: IReactorTime, state_dir: Path) -> None:
        self.tdsp_duns = config.tdsp_duns
        self._clock = clock
        options = dict(config.options)
        for key in options:
            if key not in _OPTIONS:
                raise ValueError(
                    f"adapters.{self.tdsp_duns}.{key}: unknown option "
                    f"(known: {', '.join(sorted(_OPTIONS))})"
                )
        values: dict[str, float] = {}
        for key, (default, lo, hi) in _OPTIONS.items():
            value = options.get(key, default)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not lo <= value <= hi
            ):
                raise ValueError(f"adapters.{self.tdsp_duns}.{key}: {value!r} is not in {lo}..{hi}")
            values[key] = value
        self.ack_timeout_s = float(values["ack_timeout_s"])
        self.heartbeat_s = int(values["heartbeat_s"])
        self.event_credit = int(values["event_credit"])
        self._events: IAdapterEvents | None = None
        self._link: HeadEndLink | None = None
        self._credit = 0
        #: Commands waiting for credit, id -> message, in the order they are to go out (a
        #: command leaves when it is sent or times out), and what waits for each one's answer.
        self._queue: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._waiting: dict[str, tuple[list[Deferred[None]], IDelayedCall]] = {}
        #: Event ids recently answered and the answer (None: recorded; text: refused; for a
        #: batch, its refused (index, reason) pairs), so a resent event gets the same answer and
        #: is not applied again. A batch weighs one plus its refused items against the limit.
        self._seen: OrderedDict[str, _Answer] = OrderedDict()
        self._seen_weight = 0
        self._applying: dict[str, list[Deferred[_Answer]]] = {}
        #: Called with the TDSP's DUNS when its head-end has (re)connected (the router's link_up).
        self.on_connected: Callable[[str], None] | None = None
        self._seen_limit = 200_000
        #: Queries asked and not yet answered: query id -> (answer, timeout).
        self._queries: dict[str, tuple[Deferred[QueryResult], IDelayedCall, str]] = {}
        self._query_ids = itertools.count(1)
        self._query_prefix = "q-" + os.urandom(4).hex()
        self._log = log.bind(tdsp=self.tdsp_duns)

    # -- IHeadEndAdapter -----------------------------------------------------------------------

    def start(self, events: IAdapterEvents) -> Deferred[None]:
        self._events = events
        return succeed(None)

    def stop(self) -> Deferred[None]:
        link, self._link = self._link, None
        self._fail_all(HeadEndUnavailable(f"the gateway stopped the link to TDSP {self.tdsp_duns}"))
        if link is not None:
            link.close("the gateway is stopping")
        return succeed(None)

    def send(self, command: Command) -> Deferred[None]:
        """Queue a command for the head-end; fires at its acknowledgement.

        Fails with HeadEndUnavailable when no head-end is connected, when the link is lost
        first, or when no acknowledgement comes within ``ack_timeout_s`` (waiting for credit
        included): the router sends it again later and the head-end drops the duplicate.
        Fails at once with ValueError, the reason named, for a FanOutFrame the protocol cannot
        carry (no targets or more than MAX_FAN_OUT_TARGETS, a field out of its rules, a repeated
        delivery id, a message over MAX_FRAME_BYTES): sending it again would not help.
        """
        if self._link is None:
            return fail(
                HeadEndUnavailable(f"the head-end of TDSP {self.tdsp_duns} is not connected")
            )
        message = protocol.command_message(command)
        if isinstance(command, FanOutFrame):
            problem = _unsendable(message)
            if problem is not None:
                return fail(ValueError(f"command {command.command_id}: {problem}"))
        done: Deferred[None] = Deferred()
        waiting = self._waiting.get(command.command_id)
        if waiting is not None:  # the same command twice at once: one acknowledgement for both
            waiting[0].append(done)
            return done
        timeout = self._clock.callLater(self.ack_timeout_s, self._timed_out, command.command_id)
        self._waiting[command.command_id] = ([done], timeout)
        self._queue[command.command_id] = message
        self._pump()
        return done

    def query(self, query: Query) -> Deferred[QueryResult]:
        """Ask the head-end now (queries wait for no credit and are not queued or resent).

        Fails with QueryFailed when no head-end is connected, the link is lost first, the
        head-end refuses (its reason), or no answer comes within ``ack_timeout_s``.
        """
        link = self._link
        if link is None:
            return fail(QueryFailed(f"the head-end of TDSP {self.tdsp_duns} is not connected"))
        query_id = f"{self._query_prefix}-{next(self._query_ids)}"
        answer: Deferred[QueryResult] = Deferred()
        timeout = self._clock.callLater(self.ack_timeout_s, self._query_timed_out, query_id)
        message = protocol.query_message(query_id, query)
        self._queries[query_id] = (answer, timeout, protocol.QUERY_ANSWERS[message["type"]])
        link.send(message)
        return answer

    # -- the link --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a head-end of this TDSP is connected and has said hello."""
        return self._link is not None

    def attach(self, link: HeadEndLink, credit: int) -> None:
        """A head-end said hello; a link already there is replaced."""
        old, self._link = self._link, link
        if old is not None:
            self._fail_all(HeadEndUnavailable("the head-end connected again; commands are resent"))
            old.close("replaced by a newer connection of the same TDSP")
        self._credit = credit
        self._log.info("headend.connected", peer=link.peer)
        if self.on_connected is not None:
            self.on_connected(self.tdsp_duns)

    def serves(self, link: HeadEndLink) -> bool:
        """True while ``link`` is the TDSP's current link (not replaced, not stopped)."""
        return self._link is link

    def detach(self, link: HeadEndLink, why: str) -> None:
        if self._link is not link:
            return
        self._link = None
        self._credit = 0
        self._fail_all(HeadEndUnavailable(f"the link to TDSP {self.tdsp_duns} was lost: {why}"))
        self._log.warning("headend.disconnected", why=why)

    def grant(self, credit: int) -> None:
        self._credit += credit
        self._pump()

    def acknowledged(self, ref: str) -> None:
        entry = self._waiting.pop(ref, None)
        if entry is None:
            return  # late (after its timeout) or duplicate: nothing waits for it
        # the ack of an earlier copy, while this one waits for credit: it need not go out
        self._queue.pop(ref, None)
        waiting, timeout = entry
        if timeout.active():
            timeout.cancel()
        for done in waiting:
            done.callback(None)

    def answered(self, message: dict[str, Any]) -> None:
        """A query's result (``ping_result``, ``meter_read``) or the head-end's ``nack`` of it."""
        entry = self._queries.pop(message["ref"], None)
        if entry is None:
            return  # late (after its timeout), or a nack of something that was not a query
        answer, timeout, expected = entry
        if timeout.active():
            timeout.cancel()
        if message["type"] == "nack":
            reason = message.get("reason") or "no reason given"
            answer.errback(Failure(QueryFailed(f"the head-end refused: {reason}")))
        elif message["type"] != expected:
            wrong = QueryFailed(f"the head-end answered with {message['type']}, not {expected}")
            answer.errback(Failure(wrong))
        else:
            answer.callback(protocol.query_result_from_message(message))

    def _query_timed_out(self, query_id: str) -> None:
        entry = self._queries.pop(query_id, None)
        if entry is not None:
            error = QueryFailed(f"the head-end did not answer within {self.ack_timeout_s:g} s")
            entry[0].errback(Failure(error))

    def report(self, message: dict[str, Any]) -> Deferred[str | None]:
        """Apply an event (provisioning or delivery status, inbound frame, meter event) once per id.

        Fires with None when it was recorded, or with the reason it was refused (the head-end
        gets a nack); the same id again gets the same answer without being applied again. Fails
        when it could not be recorded (the store is down): then nothing is answered and the
        head-end sends it again.
        """

        def apply() -> Deferred[_Answer]:
            event = protocol.event_from_message(message, self.tdsp_duns)
            return maybeDeferred(self._apply, event).addCallbacks(_recorded, _refused)

        def single(answer: _Answer) -> str | None:
            # an id that was a batch's: it was taken, and is not applied again
            return None if isinstance(answer, tuple) else answer

        return self._once(message["id"], apply).addCallback(single)

    def report_batch(self, message: dict[str, Any]) -> Deferred[tuple[tuple[int, str], ...]]:
        """Apply a ``delivery_statuses`` or ``inbound_frames`` batch once per id.

        Fires with the ``(index, reason)`` of every item refused (empty: all were recorded); the
        same id again gets the same answer without being applied again. Fails when nothing could
        be recorded (the store is down): then nothing is answered and the head-end sends it
        again.
        """
        batch_id = message["id"]
        count = len(message[protocol.BATCH_FIELDS[message["type"]]])

        def apply() -> Deferred[_Answer]:
            assert self._events is not None
            items = protocol.batch_from_message(message, self.tdsp_duns)
            if message["type"] == "delivery_statuses":
                method = self._events.delivery_statuses
            else:
                method = self._events.inbound_frames
            applied: Deferred[Any] = maybeDeferred(method, items, batch_id=batch_id)
            return applied.addCallbacks(lambda results: _refusals(results, count), _refused)

        def batch(answer: _Answer) -> tuple[tuple[int, str], ...]:
            if isinstance(answer, tuple):
                return answer
            # an id that was a single event's: its answer stands for every item
            return () if answer is None else tuple((index, answer) for index in range(count))

        return self._once(batch_id, apply).addCallback(batch)

    def _once(self, event_id: str, apply: Callable[[], Deferred[_Answer]]) -> Deferred[_Answer]:
        """Apply an event or a batch unless its id was answered (or is being applied) already."""
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return succeed(self._seen[event_id])
        copies = self._applying.get(event_id)
        if copies is not None:  # a copy arrived while the first is being recorded
            answer: Deferred[_Answer] = Deferred()
            copies.append(answer)
            return answer
        if self._events is None:
            return fail(HeadEndUnavailable("the gateway is not ready for reports yet"))
        self._applying[event_id] = []

        def settle(result: _Answer | Failure) -> _Answer | Failure:
            copies = self._applying.pop(event_id, [])
            if not isinstance(result, Failure):
                self._remember(event_id, result)
            for copy in copies:
                if isinstance(result, Failure):
                    copy.errback(result)
                else:
                    copy.callback(result)
            return result

        return maybeDeferred(apply).addBoth(settle)

    def _remember(self, event_id: str, answer: _Answer) -> None:
        self._seen[event_id] = answer
        self._seen_weight += _weight(answer)
        while self._seen_weight > self._seen_limit and len(self._seen) > 1:
            _, forgotten = self._seen.popitem(last=False)
            self._seen_weight -= _weight(forgotten)

    def _apply(self, event: protocol.Event) -> Deferred[Any]:
        assert self._events is not None
        if isinstance(event, ProvisioningReport):
            return self._events.provisioning_report(event)
        if isinstance(event, DeliveryStatus):
            return self._events.delivery_status(event)
        if isinstance(event, InboundFrame):
            return self._events.inbound_frame(event)
        if isinstance(event, MeterEvent):
            return self._events.meter_event(event)
        raise TypeError(f"no event {type(event).__name__}")

    def _pump(self) -> None:
        link = self._link
        while link is not None and self._queue and self._credit > 0:
            _, message = self._queue.popitem(last=False)
            self._credit -= 1
            link.send(message)

    def _timed_out(self, command_id: str) -> None:
        self._queue.pop(command_id, None)  # it waited for credit all that time: not sent late
        entry = self._waiting.pop(command_id, None)
        if entry is not None:
            # The credit stays spent: the head-end grants it back when it answers.
            error = HeadEndUnavailable(f"no acknowledgement within {self.ack_timeout_s:g} s")
            for done in entry[0]:
                done.errback(Failure(error))

    def _fail_all(self, error: Exception) -> None:
        queries, self._queries = self._queries, {}
        for answer, timeout, _ in queries.values():
            if timeout.active():
                timeout.cancel()
            answer.errback(Failure(QueryFailed(str(error))))
        self._queue.clear()
        waiting, self._waiting = self._waiting, {}
        for dones, timeout in waiting.values():
            if timeout.active():
                timeout.cancel()
            for done in dones:
                done.errback(Failure(error))


#: What the gateway answered to an event id: None (recorded), the reason it was refused, or for a
#: batch the (index, reason) of each item refused.
_Answer = str | tuple[tuple[int, str], ...] | None


def _recorded(_: object) -> None:
    return None


def _refused(failure: Failure) -> str | Failure:
    if failure.check(ReportRefused):
        return failure.getErrorMessage()
    return failure  # not recorded: no answer, the head-end resends


def _refusals(results: Any, count: int) -> tuple[tuple[int, str], ...]:
    """The refused items of a batch from IAdapterEvents' per-item results."""
    if not isinstance(results, list | tuple) or len(results) != count:
        raise TypeError(f"the answer to a batch of {count} items is not a list of {count} entries")
    return tuple(
        (index, (reason if isinstance(reason, str) else str(reason)) or "refused")
        for index, reason in enumerate(results)
        if reason is not None
    )


def _weight(answer: _Answer) -> int:
    return 1 + len(answer) if isinstance(answer, tuple) else 1


def _unsendable(message: dict[str, Any]) -> str | None:
    """Why a command message cannot go to the head-end, or None."""
    try:
        protocol.check_message(message, protocol.GATEWAY_TO_HEADEND)
    except ProtocolError as error:
        return error.reason
    size = len(protocol.encode(message))
    limit = protocol.MAX_FRAME_BYTES
    if size > limit:
        return f"{message['type']} is {size} bytes, over the {limit}-byte frame limit"
    return None


class HeadEndLink(Int32StringReceiver):
    """One head-end connection: hello, then commands out and reports in."""

    MAX_LENGTH = protocol.MAX_FRAME_BYTES

    def __init__(self, factory: HeadEndLinkFactory) -> None:
        self.factory = factory
        self.adapter: WireAdapter | None = None
        self.peer = ""
        self._hello_call: IDelayedCall | None = None
        self._beat: IDelayedCall | None = None
        self._last_heard = 0.0
        self._closing = False
        self._unacked_events = 0

    @property
    def _clock(self) -> IReactorTime:
        return self.factory.clock

    @property
    def _tls(self) -> Any:
        """The TLS transport (typed loosely: Twisted declares it as a bare ITransport)."""
        return self.transport

    def connectionMade(self) -> None:
        peer = self._tls.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self._last_heard = self._clock.seconds()
        self._hello_call = self._clock.callLater(self.factory.hello_timeout_s, self._no_hello)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        for call in (self._hello_call, self._beat):
            if call is not None and call.active():
                call.cancel()
        if self.adapter is not None:
            self.adapter.detach(self, reason.getErrorMessage())

    def send(self, message: Mapping[str, Any]) -> None:
        if not self._closing:
            self.sendString(protocol.encode(message))

    def close(self, reason: str) -> None:
        """Say why (in at most MAX_REASON characters) and close the connection."""
        if self._closing:
            return
        reason = protocol.cut_reason(reason)
        self.send({"type": "goodbye", "reason": reason})
        self._closing = True
        log.warning("headend.refused", peer=self.peer, why=reason)
        self._tls.loseConnection()

    def lengthLimitExceeded(self, length: int) -> None:
        self.send({"type": "error", "reason": f"frame of {length} bytes is over the limit"})
        self.close(f"frame of {length} bytes is over the {self.MAX_LENGTH}-byte limit")

    def stringReceived(self, body: bytes) -> None:
        if self._closing:
            # refused or replaced: what comes after that, in the same read or later (a hello
            # after a refusal, credit on a link since replaced), is not acted on
            return
        self._last_heard = self._clock.seconds()
        try:
            message = protocol.decode(body, protocol.HEADEND_TO_GATEWAY)
        except ProtocolError as error:
            reason = protocol.cut_reason(error.reason)
            log.warning("headend.bad_message", peer=self.peer, why=reason)
            answer: dict[str, Any] = {"type": "error", "reason": reason}
            if error.ref:
                answer["ref"] = error.ref
            self.send(answer)
            if error.fatal or self.adapter is None:
                self.close(reason)
            elif error.had_id:
                # a refused message with an id was taken for an event, which used a unit of the
                # head-end's credit: it comes back (messages without an id use none)
                self._grant_one()
            return
        kind = message["type"]
        if self.adapter is None:
            if kind != "hello":
                self.close(f"the first message must be hello, not {kind}")
                return
            self._hello(message)
            return
        if not self.adapter.serves(self):
            return  # no longer the TDSP's link: its acks, credit and answers are not the new one's
        if kind == "ack":
            self.adapter.acknowledged(message["ref"])
        elif kind == "credit":
            self.adapter.grant(message["grant"])
        elif kind in protocol.BATCH_TYPES:
            self._batch(message)
        elif kind in protocol.EVENT_TYPES:
            self._status(message)
        elif kind in protocol.QUERY_RESULT_TYPES or kind == "nack":
            self.adapter.answered(message)
        elif kind == "hello":
            self.send({"type": "error", "reason": "hello was already said"})
        elif kind == "error":
            log.warning("headend.error", peer=self.peer, why=message.get("reason", ""))
        # heartbeat: hearing it is all it is for

    def _hello(self, message: dict[str, Any]) -> None:
        if self._hello_call is not None and self._hello_call.active():
            self._hello_call.cancel()
        party = self.factory.identify(_peer_fingerprint(self.transport))
        if party is None:
            self.close("the client certificate is not registered")
            return
        role, party_id = party
        if role != "tdsp":
            self.close(f"the certificate is a {role}'s; only a TDSP's head-end may connect")
            return
        adapter = self.factory.adapters.get(party_id)
        if adapter is None:
            self.close(f"TDSP {party_id} is not configured to reach its meters over this protocol")
            return
        common = sorted(set(message["versions"]) & set(protocol.SUPPORTED_VERSIONS))
        if not common:
            self.close(
                f"no common protocol version: the head-end speaks {_offered(message['versions'])}, "
                f"the gateway {list(protocol.SUPPORTED_VERSIONS)}"
            )
            return
        self.adapter = adapter
        self.send(
            {
                "type": "welcome",
                "version": common[-1],
                "tdsp_duns": party_id,
                "credit": adapter.event_credit,
                "heartbeat_s": adapter.heartbeat_s,
            }
        )
        adapter.attach(self, message["credit"])
        self._beat = self._clock.callLater(adapter.heartbeat_s, self._heartbeat)

    def _status(self, message: dict[str, Any]) -> None:
        assert self.adapter is not None
        event_id = message["id"]

        def answered(refusal: str | None) -> None:
            if refusal is None:
                self.send({"type": "ack", "ref": event_id})
            else:
                self.send({"type": "nack", "ref": event_id, "reason": refusal})
            self._grant_one()

        def not_applied(failure: Failure) -> None:
            # not recorded (the store is down): no answer, so the head-end sends it again
            log.error("headend.report_not_applied", why=failure.getErrorMessage())
            self._grant_one()

        self.adapter.report(message).addCallbacks(answered, not_applied)

    def _batch(self, message: dict[str, Any]) -> None:
        assert self.adapter is not None
        batch_id = message["id"]

        def answered(refused: tuple[tuple[int, str], ...]) -> None:
            self.send(protocol.batch_ack(batch_id, refused))
            self._grant_one()

        def not_applied(failure: Failure) -> None:
            # nothing recorded (the store is down): no answer, so the head-end sends it again
            log.error(
                "headend.batch_not_applied",
                kind=message["type"],
                batch=batch_id,
                why=failure.getErrorMessage(),
            )
            self._grant_one()

        self.adapter.report_batch(message).addCallbacks(answered, not_applied)

    def _grant_one(self) -> None:
        assert self.adapter is not None
        self._unacked_events += 1
        batch = max(1, self.adapter.event_credit // 4)
        if self._unacked_events >= batch:
            self.send({"type": "credit", "grant": self._unacked_events})
            self._unacked_events = 0
        elif self._unacked_events == 1:
            self._clock.callLater(0.05, self._flush_grants)

    def _flush_grants(self) -> None:
        if self._unacked_events and self.adapter is not None:
            self.send({"type": "credit", "grant": self._unacked_events})
            self._unacked_events = 0

    def _heartbeat(self) -> None:
        assert self.adapter is not None
        interval = self.adapter.heartbeat_s
        if self._clock.seconds() - self._last_heard > 3 * interval:
            log.warning("headend.dead", peer=self.peer, silent_s=3 * interval)
            self._tls.abortConnection()
            return
        self.send({"type": "heartbeat"})
        self._beat = self._clock.callLater(interval, self._heartbeat)

    def _no_hello(self) -> None:
        self.close(f"no hello within {self.factory.hello_timeout_s:g} s")


def _offered(versions: list[int]) -> str:
    """The versions a ``hello`` offered, as a ``goodbye`` names them: a list written in more
    than 100 characters is cut there, and says how many versions it had."""
    written = str(versions[:50])  # 50 take over 100 characters: the rest need not be written
    if len(written) <= 100:
        return written
    return f"{written[:99]}… ({len(versions)} in all)"


def _peer_fingerprint(transport: Any) -> str | None:
    get = getattr(transport, "getPeerCertificate", None)
    certificate = get() if get is not None else None
    if certificate is None:
        return None
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)).hexdigest()


class HeadEndLinkFactory(Factory):
    """Serves the adapter-protocol port for every TDSP with a WireAdapter."""

    def __init__(
        self,
        adapters: Mapping[str, WireAdapter],
        identify: Callable[[str | None], tuple[str, str] | None],
        clock: IReactorTime,
        *,
        hello_timeout_s: float = 10.0,
    ) -> None:
        self.adapters = dict(adapters)
        self.identify = identify
        self.clock = clock
        self.hello_timeout_s = hello_timeout_s

    def buildProtocol(self, addr: Any) -> HeadEndLink:
        return HeadEndLink(self)
