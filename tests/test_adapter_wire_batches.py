"""Fan-out and batch events end to end between the gateway's WireAdapter and HeadEndClient, over
an in-memory connection (twisted.test.iosim) on one clock: no TLS, no store, no hangwd."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from adapters.commands import (
    DeliveryState,
    DeliveryStatus,
    FanOutFrame,
    FanOutTarget,
    InboundFrame,
    QueryFailed,
)
from adapters.interfaces import IAdapterEvents
from adapters.wire import protocol
from adapters.wire.gateway import HeadEndLink, HeadEndLinkFactory, WireAdapter
from adapters.wire.headend import HeadEndClient, IHeadEndApplication

TDSP = "1039940674000"
OWN = "10443720000000001"
OTHER = "10443720000000666"
#: A Report Event Status (cluster 0x0701, 63 bytes), as a device sends after a load control event.
REPORT_EVENT_STATUS = bytes.fromhex("0101" + "00" + "e9030000" + "01") + bytes(55)


@implementer(IAdapterEvents)
class BatchEvents:
    """The gateway's side: records every batch; ESI IDs in ``refuse`` are refused, and the next
    ``failures`` calls fail as a store that is down does. ``hold`` keeps answers until fired."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, str, list[Any]]] = []
        self.refuse: set[str] = set()
        self.failures = 0
        self.hold = False
        self.held: list[Deferred[Any]] = []

    def _batch(self, kind: str, items: list[Any], batch_id: str) -> Deferred[list[str | None]]:
        self.batches.append((kind, batch_id, list(items)))
        if self.failures:
            self.failures -= 1
            return fail(ConnectionError("store unavailable"))
        results = [
            f"ESI ID {item.esiid} is a meter of another TDSP" if item.esiid in self.refuse else None
            for item in items
        ]
        if self.hold:
            held: Deferred[Any] = Deferred()
            held.addCallback(lambda _: results)
            self.held.append(held)
            return held
        return succeed(results)

    def delivery_statuses(
        self, statuses: list[DeliveryStatus], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._batch("delivery_statuses", statuses, batch_id)

    def inbound_frames(
        self, frames: list[InboundFrame], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._batch("inbound_frames", frames, batch_id)

    def _single(self, event: Any) -> Deferred[None]:
        return succeed(None)

    provisioning_report = delivery_status = inbound_frame = meter_event = _single


@implementer(IHeadEndApplication)
class Application:
    """The head-end's side: takes every command, at once or when the test fires it."""

    def __init__(self) -> None:
        self.commands: list[Any] = []
        self.hold = False
        self.held: list[Deferred[None]] = []

    def command(self, command: Any) -> Deferred[None]:
        self.commands.append(command)
        if self.hold:
            held: Deferred[None] = Deferred()
            self.held.append(held)
            return held
        return succeed(None)

    def query(self, query: Any) -> Deferred[Any]:
        return fail(QueryFailed("no queries here"))


class RecordingLink(HeadEndLink):
    """The gateway's end of the connection, keeping every message both ways (as JSON values)."""

    def __init__(self, factory: RecordingFactory) -> None:
        super().__init__(factory)
        self.recorder = factory

    def send(self, message: Any) -> None:
        self.recorder.sent.append(json.loads(protocol.encode(message)))
        super().send(message)

    def stringReceived(self, body: bytes) -> None:
        self.recorder.bodies.append(body)
        self.recorder.received.append(json.loads(body))
        super().stringReceived(body)


class RecordingFactory(HeadEndLinkFactory):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []

    def buildProtocol(self, addr: Any) -> RecordingLink:
        return RecordingLink(self)

    def of_type(self, direction: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        return [m for m in direction if m["type"] == kind]


@implementer(IStreamClientEndpoint)
class Wire:
    """A WireAdapter and a HeadEndClient joined in memory; the client dials through ``connect``."""

    def __init__(self, tmp_path: Path, *, event_credit: int = 1000, command_credit: int = 256):
        self.clock = Clock()

        class Config:
            tdsp_duns = TDSP
            options = {"ack_timeout_s": 120, "event_credit": event_credit}

        self.adapter = WireAdapter(Config(), self.clock, tmp_path)
        self.events = BatchEvents()
        self.adapter.start(self.events)
        self.gateway = RecordingFactory(
            {TDSP: self.adapter}, lambda fingerprint: ("tdsp", TDSP), self.clock
        )
        self.application = Application()
        self.client = HeadEndClient(
            self, self.application, self.clock, command_credit=command_credit
        )
        self.pump: iosim.IOPump | None = None
        self.client.start()
        self.settle()
        assert self.adapter.connected

    def connect(self, factory: Any) -> Deferred[Any]:
        """IStreamClientEndpoint.connect: a new in-memory connection to the gateway."""
        client = factory.buildProtocol(None)
        server = self.gateway.buildProtocol(None)
        self.pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            greet=False,
            clock=self.clock,
        )
        return succeed(client)

    def settle(self, seconds: float = 0.2, step: float = 0.05) -> None:
        """Move the bytes both ways and let ``seconds`` pass, in steps."""
        elapsed = 0.0
        while True:
            assert self.pump is not None
            self.pump.flush()
            if elapsed >= seconds:
                return
            self.clock.advance(step)
            elapsed += step


def result(answer: Deferred[Any]) -> Any:
    """What a Deferred that has fired holds."""
    assert answer.called
    return answer.result


def status(n: int, esiid: str = OWN) -> DeliveryStatus:
    return DeliveryStatus(f"dlv-{n}", esiid, DeliveryState.DELIVERED)


def frame(n: int, esiid: str = OWN, zcl: bytes = REPORT_EVENT_STATUS) -> InboundFrame:
    return InboundFrame(esiid, "00124B0001ABCD01", 0x0701, zcl, 1_795_000_000.0 + n / 1000)


def test_a_fan_out_goes_out_as_one_command_and_its_ack_fires_send(tmp_path: Path) -> None:
    """A FanOutFrame reaches the head-end's application whole, and send fires on the ack."""
    wire = Wire(tmp_path)
    command = FanOutFrame(
        "fan-1",
        "all",
        0x0701,
        bytes.fromhex("0900" + "00" + "e9030000" + "ff0f"),
        tuple(FanOutTarget(f"1044372{i:010d}", f"dlv-{i}") for i in range(3000)),
    )
    sent = wire.adapter.send(command)
    wire.settle()
    assert wire.application.commands == [command]
    [message] = wire.gateway.of_type(wire.gateway.sent, "fan_out")
    assert message["targets"][2999] == ["10443720000002999", "dlv-2999"]
    assert result(sent) is None
    assert wire.gateway.of_type(wire.gateway.received, "ack") == [{"type": "ack", "ref": "fan-1"}]


def test_a_fan_out_uses_one_unit_of_command_credit(tmp_path: Path) -> None:
    """With command credit 1, a second fan_out waits until the head-end grants the first's unit."""
    wire = Wire(tmp_path, command_credit=1)
    wire.application.hold = True
    targets = (FanOutTarget(OWN, "dlv-1"),)
    first = wire.adapter.send(FanOutFrame("fan-1", "esi", 0x0700, b"\x01\x02\x03", targets))
    second = wire.adapter.send(FanOutFrame("fan-2", "esi", 0x0700, b"\x01\x02\x04", targets))
    wire.settle()
    assert [c.command_id for c in wire.application.commands] == ["fan-1"]
    wire.application.held[0].callback(None)
    wire.settle()
    assert first.called and not second.called
    assert [c.command_id for c in wire.application.commands] == ["fan-1", "fan-2"]
    wire.application.held[1].callback(None)
    wire.settle()
    assert second.called


def test_a_delivery_statuses_batch_reaches_the_gateway_and_refusals_come_back(
    tmp_path: Path,
) -> None:
    """A batch reaches delivery_statuses with its id and TDSP; refusals come back by index."""
    wire = Wire(tmp_path)
    wire.events.refuse.add(OTHER)
    statuses = [status(0), status(1, OTHER), status(2), status(3, OTHER)]
    answer = wire.client.delivery_statuses(statuses)
    wire.settle()
    [batch] = wire.gateway.of_type(wire.gateway.received, "delivery_statuses")
    [(kind, batch_id, recorded)] = wire.events.batches
    assert kind == "delivery_statuses" and batch_id == batch["id"]
    assert [s.delivery_id for s in recorded] == ["dlv-0", "dlv-1", "dlv-2", "dlv-3"]
    assert {(s.tdsp_duns, s.event_id) for s in recorded} == {(TDSP, "")}
    reason = f"ESI ID {OTHER} is a meter of another TDSP"
    [ack] = [m for m in wire.gateway.of_type(wire.gateway.sent, "ack") if m["ref"] == batch_id]
    assert ack == {"type": "ack", "ref": batch_id, "refused": [[1, reason], [3, reason]]}
    assert result(answer) == [None, reason, None, reason]
    assert wire.client.unacknowledged == 0


def test_an_inbound_frames_batch_all_recorded_gets_a_plain_ack(tmp_path: Path) -> None:
    """Frames of a batch arrive decoded from hex, with the TDSP set, and an ack without refused."""
    wire = Wire(tmp_path)
    answer = wire.client.inbound_frames([frame(0), frame(1)])
    wire.settle()
    [(kind, batch_id, recorded)] = wire.events.batches
    assert kind == "inbound_frames"
    assert recorded == [
        InboundFrame(OWN, "00124B0001ABCD01", 0x0701, REPORT_EVENT_STATUS, t, TDSP)
        for t in (1_795_000_000.0, 1_795_000_000.001)
    ]
    acks = [m for m in wire.gateway.of_type(wire.gateway.sent, "ack") if m["ref"] == batch_id]
    assert acks == [{"type": "ack", "ref": batch_id}]
    assert result(answer) == [None, None]


def test_a_batch_uses_one_unit_of_report_credit(tmp_path: Path) -> None:
    """With event credit 1, a second batch message waits for the first one's unit back."""
    wire = Wire(tmp_path, event_credit=1)
    wire.events.hold = True
    answer = wire.client.inbound_frames(
        [frame(n) for n in range(protocol.MAX_EVENTS_PER_BATCH + 1)]
    )
    wire.settle()
    assert [len(items) for _, _, items in wire.events.batches] == [protocol.MAX_EVENTS_PER_BATCH]
    wire.events.held[0].callback(None)
    wire.settle()
    assert [len(items) for _, _, items in wire.events.batches] == [
        protocol.MAX_EVENTS_PER_BATCH,
        1,
    ]
    assert not answer.called
    wire.events.held[1].callback(None)
    wire.settle()
    assert result(answer) == [None] * (protocol.MAX_EVENTS_PER_BATCH + 1)
    assert sum(m["grant"] for m in wire.gateway.of_type(wire.gateway.sent, "credit")) == 2


def test_a_batch_not_recorded_gets_no_answer_and_comes_again_with_its_id(tmp_path: Path) -> None:
    """A batch the gateway could not record gets no answer and comes again under its id."""
    wire = Wire(tmp_path)
    wire.events.failures = 1
    answer = wire.client.delivery_statuses([status(0), status(1)])
    wire.settle()
    [(_, batch_id, _)] = wire.events.batches
    assert not [m for m in wire.gateway.sent if m.get("ref") == batch_id]
    assert wire.gateway.of_type(wire.gateway.sent, "credit") == [{"type": "credit", "grant": 1}]
    assert not answer.called
    wire.settle(seconds=wire.client.resend_after_s + 10, step=1.0)
    assert [b[1] for b in wire.events.batches] == [batch_id, batch_id]
    copies = [m for m in wire.gateway.received if m.get("id") == batch_id]
    assert len(copies) == 2 and copies[0] == copies[1]
    assert result(answer) == [None, None]


def test_a_batch_sent_again_after_its_answer_gets_the_same_answer(tmp_path: Path) -> None:
    """A copy of an answered batch is answered from memory, refusals included, not applied."""
    wire = Wire(tmp_path)
    wire.events.refuse.add(OTHER)
    wire.client.delivery_statuses([status(0), status(1, OTHER)])
    wire.settle()
    [message] = wire.gateway.of_type(wire.gateway.received, "delivery_statuses")
    assert wire.client.link is not None
    wire.client.link.send(message)
    wire.settle()
    acks = [m for m in wire.gateway.sent if m.get("ref") == message["id"]]
    assert len(acks) == 2 and acks[0] == acks[1] and acks[0]["refused"][0][0] == 1
    assert len(wire.events.batches) == 1


def test_the_client_splits_a_long_list_and_maps_every_answer_back(tmp_path: Path) -> None:
    """The client splits a long list into batches and puts every answer at its item's place."""
    wire = Wire(tmp_path)
    wire.events.refuse.add(OTHER)
    count = 2 * protocol.MAX_EVENTS_PER_BATCH + 500
    refused = {0, 1999, 2001, 4000, count - 1}
    frames = [frame(n, OTHER if n in refused else OWN) for n in range(count)]
    frames[7] = InboundFrame(OWN, "not-a-mac", 0x0701, REPORT_EVENT_STATUS, 1_795_000_000.0)
    answer = wire.client.inbound_frames(frames)
    wire.settle()
    sizes = [len(items) for _, _, items in wire.events.batches]
    assert sizes == [protocol.MAX_EVENTS_PER_BATCH, protocol.MAX_EVENTS_PER_BATCH, 499]
    assert len({batch_id for _, batch_id, _ in wire.events.batches}) == 3
    sent = [item for _, _, items in wire.events.batches for item in items]
    assert sent == [replace(f, tdsp_duns=TDSP) for n, f in enumerate(frames) if n != 7]
    results = result(answer)
    assert len(results) == count
    assert {n for n, r in enumerate(results) if r is not None} == refused | {7}
    assert results[4000] == f"ESI ID {OTHER} is a meter of another TDSP"
    assert results[7] is not None and results[7].startswith(
        "not sent: inbound_frames.frames[7].source must be 'esi' or a MAC"
    )


def test_the_client_splits_a_batch_that_would_not_fit_a_frame(tmp_path: Path) -> None:
    """The client splits 2000 frames of the longest ZCL so every message fits in a frame."""
    wire = Wire(tmp_path)
    longest = b"\x01\x07\x00" + bytes(protocol.MAX_ZCL_BYTES - 3)
    answer = wire.client.inbound_frames(
        [frame(n, zcl=longest) for n in range(protocol.MAX_EVENTS_PER_BATCH)]
    )
    wire.settle()
    assert result(answer) == [None] * protocol.MAX_EVENTS_PER_BATCH
    sizes = [len(items) for _, _, items in wire.events.batches]
    assert len(sizes) > 1 and sum(sizes) == protocol.MAX_EVENTS_PER_BATCH
    assert max(len(body) for body in wire.gateway.bodies) <= protocol.MAX_FRAME_BYTES
    assert wire.adapter.connected


def test_an_empty_list_sends_nothing(tmp_path: Path) -> None:
    """A batch method given no items fires at once with no results and sends no message."""
    wire = Wire(tmp_path)
    answer = wire.client.delivery_statuses([])
    wire.settle()
    assert result(answer) == [] and wire.events.batches == []
