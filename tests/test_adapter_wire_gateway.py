"""The adapter protocol inside hangwd: provisioning end to end over it, and every protocol fault
refused with a reason while the connection is handled and the store left alone."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver

from adapters.commands import PingEsi, QueryFailed
from simulators.headend import SimulatedHeadEndClient, tls_endpoint
from simulators.inprocess import SimulatedHeadEnd, SimulatorConfig
from tests.adapter_harness import FAST, eventually
from tests.conftest import start_gateway
from tests.gateway_harness import E_OTHER_TDSP, E_OWN, TDSP, Harness
from tests.test_api_provisioning import add_body, wait_for_status


@pytest_twisted.async_yield_fixture
async def wired(tmp_path: Path) -> AsyncIterator[Harness]:
    running = await start_gateway(
        tmp_path / "state", adapter={"kind": "wire", "ack_timeout_s": 5, "heartbeat_s": 1}
    )
    yield running
    running.close()
    await running.gateway.stopService()


class RawHeadEnd(Int32StringReceiver):
    """A head-end written by hand, to send what a good client never would."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.closed: Deferred[None] = Deferred()

    def stringReceived(self, body: bytes) -> None:
        self.received.append(json.loads(body))

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def say(self, message: dict[str, Any]) -> None:
        self.sendString(json.dumps(message).encode())

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == kind]


async def dial(harness: Harness, party: str = "demo-tdsp") -> RawHeadEnd:
    endpoint = tls_endpoint(
        reactor, "127.0.0.1", harness.adapter_port, harness.config.cert_dir, party
    )  # type: ignore[attr-defined]
    link: RawHeadEnd = await endpoint.connect(Factory.forProtocol(RawHeadEnd))
    return link


def hello(**extra: Any) -> dict[str, Any]:
    return {"type": "hello", "versions": [1], "credit": 10, **extra}


def store_rows(harness: Harness) -> tuple[int, int]:
    engine = sa.create_engine(harness.config.store_url)
    with engine.connect() as conn:
        counts = (
            conn.execute(sa.text("SELECT count(*) FROM han_devices")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM device_history")).scalar_one(),
        )
    engine.dispose()
    return counts


@pytest_twisted.ensureDeferred
async def test_provisioning_flow_runs_unchanged_over_the_wire(wired: Harness) -> None:
    """A device goes from Add Acknowledged to Device Added to Device Removed through hangw-sim."""
    headend = SimulatedHeadEnd(SimulatorConfig(tdsp_duns=TDSP, **FAST), reactor)
    endpoint = tls_endpoint(
        reactor, "127.0.0.1", wired.adapter_port, wired.config.cert_dir, "demo-tdsp"
    )  # type: ignore[attr-defined]
    client = SimulatedHeadEndClient(endpoint, headend, reactor)
    client.start()
    try:
        await client.when_connected()
        rep = wired.caller("demo-rep-a")
        status, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
        assert status == 202, device
        added = await wait_for_status(rep, device["id"], "Device Added")
        assert [h["actor"] for h in added["history"]][1:] == [TDSP] * 4
        status, _ = await rep.call("DELETE", f"/v1/han-devices/{device['id']}")
        assert status == 202
        await wait_for_status(rep, device["id"], "Device Removed")
        assert client.unacknowledged == 0
    finally:
        await client.stop()


#: Bodies that are no standard JSON Python's json can read, and the fault the gateway names.
MALFORMED = {
    "not-json": (b"{not json", "not UTF-8 JSON"),
    "nested-too-deep": (b"[" * 200_000 + b"]" * 200_000, "nested too deep"),
    "long-integer": (b'{"type":"heartbeat","n":' + b"1" * 5000 + b"}", "over 4300 digits"),
    "nan": (b'{"type":"heartbeat","n":NaN}', "NaN is not a JSON number"),
}


@pytest.mark.parametrize(("body", "fault"), MALFORMED.values(), ids=MALFORMED)
@pytest_twisted.ensureDeferred
async def test_malformed_frame_is_refused_and_the_connection_closed(
    wired: Harness, body: bytes, fault: str
) -> None:
    """A frame that is not JSON gets an error and a goodbye naming the fault, then a close."""
    before = store_rows(wired)
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.sendString(body)
    await link.closed
    assert "malformed frame: " in link.of_type("error")[0]["reason"]
    assert fault in link.of_type("goodbye")[0]["reason"]
    assert store_rows(wired) == before


@pytest_twisted.ensureDeferred
async def test_unknown_message_type_is_refused_and_the_link_kept(wired: Harness) -> None:
    """An unknown message type is answered with an error carrying its id; the link stays up."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.say({"type": "teleport", "id": "x-1"})
    await eventually(lambda: link.of_type("error"), what="the error")
    error = link.of_type("error")[0]
    assert error["ref"] == "x-1" and "unknown message type" in error["reason"]
    link.say({"type": "heartbeat"})
    assert link.transport.connected  # type: ignore[union-attr]
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_wrong_version_is_refused(wired: Harness) -> None:
    """A hello with no version the gateway speaks is refused with both sides' versions."""
    link = await dial(wired)
    link.say(hello(versions=[7, 8]))
    await link.closed
    reason = link.of_type("goodbye")[0]["reason"]
    assert "no common protocol version" in reason and "[7, 8]" in reason
    assert not link.of_type("welcome")


@pytest_twisted.ensureDeferred
async def test_certificate_of_another_role_is_refused(wired: Harness) -> None:
    """A REP's registered certificate cannot act as a head-end."""
    link = await dial(wired, party="demo-rep-a")
    link.say(hello())
    await link.closed
    assert "only a TDSP's head-end" in link.of_type("goodbye")[0]["reason"]


@pytest_twisted.ensureDeferred
async def test_anything_before_hello_is_refused(wired: Harness) -> None:
    """A head-end that does not start with hello is told so and disconnected."""
    link = await dial(wired)
    link.say({"type": "heartbeat"})
    await link.closed
    assert "first message must be hello" in link.of_type("goodbye")[0]["reason"]


@pytest_twisted.ensureDeferred
async def test_oversized_frame_is_refused(wired: Harness) -> None:
    """A length prefix over the limit ends the connection with the reason."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.transport.write(struct.pack("!I", 50_000_000))  # type: ignore[union-attr]
    await link.closed
    assert "over the" in link.of_type("goodbye")[0]["reason"]


@pytest_twisted.ensureDeferred
async def test_report_about_another_tdsps_meter_is_refused(wired: Harness) -> None:
    """A status for a device on another TDSP's meter is refused with a reason, nothing changed."""
    rep = wired.caller("demo-rep-a")
    status, device = await rep.call("POST", f"/v1/esiids/{E_OTHER_TDSP}/han-devices", add_body())
    assert status == 202, device
    before = store_rows(wired)
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.say(
        {
            "type": "provisioning_status",
            "id": "ev-1",
            "command_id": "whatever",
            "esiid": E_OTHER_TDSP,
            "device_id": device["id"],
            "status": "device-joined",
        }
    )
    await eventually(lambda: link.of_type("nack"), what="the refusal")
    nack = link.of_type("nack")[0]
    assert nack["ref"] == "ev-1" and "another TDSP" in nack["reason"]
    assert store_rows(wired) == before
    _, unchanged = await rep.call("GET", f"/v1/han-devices/{device['id']}")
    assert unchanged["status"] == "Add Acknowledged"
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_silent_head_end_is_dropped(wired: Harness) -> None:
    """A head-end that says nothing for three heartbeat intervals is disconnected."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    assert link.of_type("welcome")[0]["heartbeat_s"] == 1
    await eventually(lambda: link.closed.called, timeout=8, what="the dead-peer drop")
    assert link.of_type("heartbeat")  # the gateway kept beating until it gave up


@pytest_twisted.ensureDeferred
async def test_ack_without_ref_is_refused_not_fatal(wired: Harness) -> None:
    """An ack that names no command gets an error; the connection survives it."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.say({"type": "ack"})
    await eventually(lambda: link.of_type("error"), what="the error")
    assert "missing field 'ref'" in link.of_type("error")[0]["reason"]
    assert link.transport.connected  # type: ignore[union-attr]
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


def meter_row(harness: Harness, esiid: str) -> tuple[Any, ...]:
    engine = sa.create_engine(harness.config.store_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT meter_serial, firmware_version, han_capable, active FROM meters"
                " WHERE esiid = :esiid"
            ),
            {"esiid": esiid},
        ).one()
    engine.dispose()
    return tuple(row)


@pytest_twisted.ensureDeferred
async def test_meter_events_update_the_registry_and_refuse_other_meters(wired: Harness) -> None:
    """A firmware change and a meter removal from the head-end change the meter registry, and a
    REP can then no longer add a device there; an event about another TDSP's meter is refused."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    other_before = meter_row(wired, E_OTHER_TDSP)
    link.say(
        {
            "type": "meter_event",
            "id": "me-1",
            "esiid": E_OWN,
            "event": "firmware_changed",
            "firmware_version": "4.0.9",
            "han_capable": False,
        }
    )
    link.say({"type": "meter_event", "id": "me-2", "esiid": E_OTHER_TDSP, "event": "meter_removed"})
    await eventually(
        lambda: len(link.of_type("ack")) + len(link.of_type("nack")) == 2, what="answers"
    )
    assert [m["ref"] for m in link.of_type("ack")] == ["me-1"]
    [nack] = link.of_type("nack")
    assert nack["ref"] == "me-2" and "another TDSP" in nack["reason"]
    assert meter_row(wired, E_OWN)[1:3] == ("4.0.9", False)
    assert meter_row(wired, E_OTHER_TDSP) == other_before
    rep = wired.caller("demo-rep-a")
    status, problem = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    assert status == 409 and "firmware" in problem["detail"], problem
    link.say({"type": "meter_event", "id": "me-3", "esiid": E_OWN, "event": "meter_removed"})
    await eventually(lambda: len(link.of_type("ack")) == 2, what="the removal's ack")
    assert not meter_row(wired, E_OWN)[3]
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_inbound_frames_are_decoded_and_garbage_is_refused(wired: Harness) -> None:
    """A Message Confirmation from a device is taken; a frame that is not SE 1.0 is refused with
    the decoder's reason, and the link stays up."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    frame = {
        "type": "inbound_frame",
        "esiid": E_OWN,
        "source": "00124B0001ABCD01",
        "cluster": 0x0703,
        "received_at": 1_790_000_000,
    }
    # Message Confirmation by hand from sep1-wire.md: frame control 0x01 (cluster command, client
    # to server), sequence 7, command 0x01, message id 42 and time 0x12345678, little-endian
    link.say({**frame, "id": "in-1", "zcl": "010701" + "2a000000" + "78563412"})
    link.say({**frame, "id": "in-2", "zcl": "010701ff"})
    await eventually(lambda: link.of_type("ack") and link.of_type("nack"), what="answers")
    assert [m["ref"] for m in link.of_type("ack")] == ["in-1"]
    [nack] = link.of_type("nack")
    assert nack["ref"] == "in-2" and "MessageConfirmation" in nack["reason"]
    assert link.transport.connected  # type: ignore[union-attr]
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_events_about_another_tdsps_meter_are_refused(wired: Harness) -> None:
    """A delivery status or a device frame for a meter of another TDSP, or for an ESI ID not in
    the registry, is refused with the reason."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.say(
        {
            "type": "delivery_status",
            "id": "ds-1",
            "delivery_id": "d-1",
            "esiid": E_OTHER_TDSP,
            "state": "delivered",
        }
    )
    link.say(
        {
            "type": "inbound_frame",
            "id": "in-9",
            "esiid": "99999999999999999",
            "source": "esi",
            "cluster": 0x0703,
            "zcl": "010701" + "2a000000" + "78563412",
            "received_at": 1_790_000_000,
        }
    )
    await eventually(lambda: len(link.of_type("nack")) == 2, what="two refusals")
    reasons = {m["ref"]: m["reason"] for m in link.of_type("nack")}
    assert "another TDSP" in reasons["ds-1"]
    assert "not in the meter registry" in reasons["in-9"]
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_queries_use_no_credit_and_take_only_their_own_answer(wired: Harness) -> None:
    """A ping goes out even with no command credit left; a head-end nack fails it with the
    head-end's reason, and an answer of the wrong kind fails it instead of passing for one."""
    adapter = wired.gateway.adapters[TDSP]
    link = await dial(wired)
    link.say({"type": "hello", "versions": [1], "credit": 1})
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    first = adapter.query(PingEsi(E_OWN))
    second = adapter.query(PingEsi(E_OWN))
    await eventually(lambda: len(link.of_type("ping_esi")) == 2, what="both pings")
    one, two = (m["id"] for m in link.of_type("ping_esi"))
    link.say({"type": "nack", "ref": one, "reason": "meter not answering"})
    link.say({"type": "meter_read", "ref": two, "zcl": "180101", "read_at": 1_790_000_000})
    with pytest.raises(QueryFailed, match="meter not answering"):
        await first
    with pytest.raises(QueryFailed, match="answered with meter_read, not ping_result"):
        await second
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_a_refused_message_returns_credit_only_if_it_used_some(wired: Harness) -> None:
    """An event refused with an error gives its unit of credit back; a bad ack, which used no
    credit, gives none."""
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.say({"type": "ack"})
    await eventually(lambda: link.of_type("error"), what="the error")
    await deferLater(reactor, 0.3)
    assert link.of_type("credit") == []
    link.say({"type": "delivery_status", "id": "ds-2", "esiid": E_OWN, "state": "lost"})
    await eventually(lambda: link.of_type("credit"), what="the credit")
    assert [m["grant"] for m in link.of_type("credit")] == [1]
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_is_refused_before_the_store(wired: Harness) -> None:
    """An event whose id holds a lone surrogate gets an error naming the field, without a ref
    UTF-8 could not carry; its credit comes back and the next event on the link is taken."""
    before = store_rows(wired)
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    event = {
        "type": "provisioning_status",
        "command_id": "c-1",
        "esiid": E_OWN,
        "device_id": "no-such-device",
        "status": "device-joined",
    }
    link.say({**event, "id": "ev-\ud800"})  # json.dumps escapes it: "ev-\ud800"
    await eventually(lambda: link.of_type("credit"), what="the credit")
    [error] = link.of_type("error")
    assert error == {"type": "error", "reason": error["reason"]}
    assert error["reason"].startswith("provisioning_status.id must be text UTF-8 can carry")
    assert [m["grant"] for m in link.of_type("credit")] == [1]
    link.say({**event, "id": "ev-2"})
    await eventually(lambda: link.of_type("ack"), what="the next event's ack")
    assert link.of_type("ack") == [{"type": "ack", "ref": "ev-2"}]
    assert store_rows(wired) == before
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed


@pytest_twisted.ensureDeferred
async def test_a_nul_character_is_refused_with_an_answer(wired: Harness) -> None:
    """An event or a batch item holding NUL gets an error naming the field, never silence."""
    before = store_rows(wired)
    link = await dial(wired)
    link.say(hello())
    await eventually(lambda: link.of_type("welcome"), what="welcome")
    link.say(
        {
            "type": "provisioning_status",
            "id": "ev-1",
            "command_id": "c-1",
            "esiid": E_OWN,
            "device_id": "dev\x00",
            "status": "device-joined",
        }
    )
    frame = {"esiid": E_OWN, "source": "esi", "cluster": 0x0703, "zcl": "010701", "received_at": 1}
    link.say(
        {"type": "inbound_frames", "id": "b-1", "frames": [frame, {**frame, "esiid": "1\x00"}]}
    )
    link.say({"type": "meter_event", "id": "ev-\x00", "esiid": E_OWN, "event": "meter_removed"})
    await eventually(lambda: len(link.of_type("error")) == 3, what="three errors")
    no_control = "must hold no control character (U+0000 to U+001F)"
    assert link.of_type("error") == [
        {"type": "error", "ref": "ev-1", "reason": f"provisioning_status.device_id {no_control}"},
        {"type": "error", "ref": "b-1", "reason": f"inbound_frames.frames[1].esiid {no_control}"},
        {"type": "error", "reason": f"meter_event.id {no_control}"},
    ]
    await eventually(
        lambda: sum(m["grant"] for m in link.of_type("credit")) == 3, what="three units back"
    )
    assert link.of_type("ack") == link.of_type("nack") == []
    assert store_rows(wired) == before
    link.transport.loseConnection()  # type: ignore[union-attr]
    await link.closed
