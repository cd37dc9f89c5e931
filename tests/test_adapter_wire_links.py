"""The two ends of an adapter-protocol connection in memory (the harness of
test_adapter_wire_batches): how each side treats frames it cannot read, frames that come after it
refused or replaced a connection, and events the gateway refuses."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from adapters.commands import DeliveryState, DeliveryStatus, DeprovisionDevice, ReportRefused
from adapters.wire import protocol
from adapters.wire.headend import ReportRefusedByGateway
from tests.test_adapter_wire_batches import OWN, Wire


def test_the_client_refuses_a_frame_nested_too_deep_and_closes(tmp_path: Path) -> None:
    """A frame of deeply nested arrays from the gateway gets an error and a close from the
    client library, not an exception out of its receiver; the client then dials again."""
    wire = Wire(tmp_path)
    first = wire.client.link
    assert first is not None and wire.adapter._link is not None
    wire.adapter._link.sendString(b"[" * 200_000 + b"]" * 200_000)
    wire.settle()
    [error] = wire.gateway.of_type(wire.gateway.received, "error")
    assert error["reason"] == "malformed frame: arrays or objects nested too deep"
    assert wire.client.link is None and first.transport.disconnected  # type: ignore[union-attr]
    wire.settle(seconds=2)
    assert wire.client.link is not None and wire.client.link is not first
    assert wire.adapter.connected


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def hello(credit: int) -> dict[str, Any]:
    return {"type": "hello", "versions": [1], "credit": credit}


def test_a_hello_after_a_refusal_in_the_same_read_does_not_attach(tmp_path: Path) -> None:
    """A connection refused for not starting with hello does not take the TDSP over when its
    hello came in the same read: the working link stays and carries commands."""
    wire = Wire(tmp_path)
    working = wire.adapter._link
    late = wire.gateway.buildProtocol(None)
    late.makeConnection(StringTransport())
    late.dataReceived(frame({"type": "heartbeat"}) + frame(hello(5)))
    assert [m["type"] for m in wire.gateway.sent[-1:]] == ["goodbye"]
    assert "first message must be hello" in wire.gateway.sent[-1]["reason"]
    assert not wire.gateway.of_type(wire.gateway.sent, "welcome")[1:]
    assert wire.adapter._link is working
    command = DeprovisionDevice("c-1", OWN, "dev-1", "00124B0001ABCD01")
    sent = wire.adapter.send(command)
    wire.settle()
    assert wire.application.commands == [command] and sent.called


def test_credit_on_a_replaced_link_is_not_the_new_links(tmp_path: Path) -> None:
    """Credit granted on a connection after a newer one replaced it adds nothing to the credit
    the newer connection's hello gave."""
    wire = Wire(tmp_path)
    old = wire.adapter._link
    assert old is not None
    new = wire.gateway.buildProtocol(None)
    new.makeConnection(StringTransport())
    new.dataReceived(frame(hello(2)))
    assert wire.adapter._link is new
    old.dataReceived(frame({"type": "credit", "grant": 500}))
    for n in range(3):
        wire.adapter.send(DeprovisionDevice(f"c-{n}", OWN, f"dev-{n}", "00124B0001ABCD01"))
    sent = wire.gateway.of_type(wire.gateway.sent, "deprovision")
    assert [m["id"] for m in sent] == ["c-0", "c-1"]


def test_a_single_event_out_of_the_rules_fails_at_once_unsent(tmp_path: Path) -> None:
    """An event that breaks the protocol's rules (a reason of 1001 characters) fails at once
    with ReportRefused naming the field, and is neither sent nor kept."""
    wire = Wire(tmp_path)
    bad = DeliveryStatus("dlv-1", OWN, DeliveryState.FAILED, reason="x" * 1001)
    failures: list[Failure] = []
    wire.client.report(bad).addErrback(failures.append)
    [failure] = failures
    assert failure.check(ReportRefused) and not failure.check(ReportRefusedByGateway)
    assert failure.getErrorMessage().startswith(
        "not sent: delivery_status.reason must be a string of at most 1000 characters"
    )
    wire.settle()
    assert wire.client.unacknowledged == 0
    assert not wire.gateway.of_type(wire.gateway.received, "delivery_status")


def resend_wrong(wire: Wire, change: dict[str, Any]) -> None:
    """Make the client put its events on the wire with ``change``: what a gateway with rules the
    client does not know would refuse."""
    sent = wire.client._transmit

    def transmit(link: Any, message: dict[str, Any]) -> None:
        sent(link, {**message, **change})

    wire.client._transmit = transmit  # type: ignore[method-assign]


def test_an_event_the_gateway_refuses_with_error_is_failed_not_resent(tmp_path: Path) -> None:
    """An event the gateway answers with an error carrying its id fails with the error's reason
    and leaves the outbox: it is not sent again, on this connection or the next."""
    wire = Wire(tmp_path)
    resend_wrong(wire, {"state": "lost"})
    failures: list[Failure] = []
    wire.client.report(DeliveryStatus("dlv-1", OWN, DeliveryState.DELIVERED)).addErrback(
        failures.append
    )
    wire.settle()
    [failure] = failures
    assert failure.check(ReportRefusedByGateway)
    assert failure.getErrorMessage().startswith("delivery_status.state must be one of")
    assert wire.client.unacknowledged == 0
    wire.client.drop_connection()
    wire.settle(seconds=wire.client.resend_after_s * 2, step=1.0)
    assert len(wire.gateway.of_type(wire.gateway.received, "delivery_status")) == 1


def test_a_batch_the_gateway_refuses_with_error_refuses_every_item(tmp_path: Path) -> None:
    """A batch the gateway answers with an error carrying its id gives every item the error's
    reason, and is not sent again."""
    wire = Wire(tmp_path)
    resend_wrong(wire, {"statuses": [{"delivery_id": "d"}]})
    answer = wire.client.delivery_statuses(
        [DeliveryStatus(f"dlv-{n}", OWN, DeliveryState.DELIVERED) for n in range(2)]
    )
    wire.settle(seconds=wire.client.resend_after_s * 2, step=1.0)
    reason = "delivery_statuses.statuses[0] is missing 'esiid'"
    assert answer.called and answer.result == [reason, reason]
    assert len(wire.gateway.of_type(wire.gateway.received, "delivery_statuses")) == 1
    assert wire.client.unacknowledged == 0


@pytest.mark.parametrize(
    ("versions", "offered"),
    [
        ([0] * 500_000, "[0, 0, 0, " + "0, " * 29 + "0,… (500000 in all)"),
        ([10**4000, 2], "[1" + "0" * 97 + "… (2 in all)"),
    ],
    ids=["long-list", "long-integer"],
)
def test_a_hello_with_long_versions_gets_a_goodbye_the_client_reads(
    tmp_path: Path, versions: list[int], offered: str
) -> None:
    """A hello offering versions no one could list gets a short goodbye that names some of them."""
    wire = Wire(tmp_path)
    late = wire.gateway.buildProtocol(None)
    transport = StringTransport()
    late.makeConnection(transport)
    body = protocol.encode({"type": "hello", "versions": versions, "credit": 5})
    assert len(body) <= protocol.MAX_FRAME_BYTES
    late.dataReceived(struct.pack(">I", len(body)) + body)
    sent = transport.value()
    assert struct.unpack(">I", sent[:4])[0] == len(sent) - 4
    goodbye = protocol.decode(sent[4:], protocol.GATEWAY_TO_HEADEND)
    assert goodbye == {
        "type": "goodbye",
        "reason": f"no common protocol version: the head-end speaks {offered}, the gateway [1]",
    }


def test_an_event_id_over_100_characters_gets_an_error_without_ref(tmp_path: Path) -> None:
    """The error for an event whose id is no id leaves it out, so hangw's own client takes it."""
    wire = Wire(tmp_path)
    link = wire.client.link
    assert link is not None
    event = {"type": "meter_event", "id": "e" * 101, "esiid": OWN, "event": "meter_removed"}
    link.sendString(protocol.encode(event))
    wire.settle()
    assert wire.gateway.of_type(wire.gateway.sent, "error") == [
        {"type": "error", "reason": "meter_event.id must be at most 100 characters"}
    ]
    assert wire.gateway.of_type(wire.gateway.received, "error") == []
    assert wire.client.link is link


def test_credit_comes_back_for_a_refused_message_only_with_a_string_id(tmp_path: Path) -> None:
    """A refused message gets a unit of credit back when it had a string id, whatever its type."""
    wire = Wire(tmp_path)
    link = wire.client.link
    assert link is not None
    granted = len(wire.gateway.of_type(wire.gateway.sent, "credit"))
    for message in [
        {"type": "ack"},
        {"type": "delivery_status", "delivery_id": "1", "esiid": OWN, "state": "delivered"},
    ]:
        link.sendString(protocol.encode(message))
    wire.settle()
    assert len(wire.gateway.of_type(wire.gateway.sent, "error")) == 2
    assert wire.gateway.of_type(wire.gateway.sent, "credit")[granted:] == []
    for message in [{"type": "ack", "id": "a-1"}, {"type": "no_such_type", "id": "x-1"}]:
        link.sendString(protocol.encode(message))
    wire.settle()
    assert len(wire.gateway.of_type(wire.gateway.sent, "error")) == 4
    assert wire.gateway.of_type(wire.gateway.sent, "credit")[granted:] == [
        {"type": "credit", "grant": 2}
    ]
