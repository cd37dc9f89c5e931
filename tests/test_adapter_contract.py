"""One contract for every head-end adapter: the in-process simulator, and the wire adapter with
the simulated head-end dialling in over loopback TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

import sep1
from adapters.commands import (
    TO_ALL,
    TO_ESI,
    DeliveryState,
    DeprovisionDevice,
    HeadEndStatus,
    OutboundFrame,
    PingDevice,
    PingEsi,
    ProvisionDevice,
    QueryFailed,
    ReadMeter,
    SendFrames,
)
from adapters.interfaces import IHeadEndAdapter
from sep1.messages import (
    DeviceClass,
    DisplayMessage,
    LoadControlEvent,
    MessageConfirmation,
    MessageControl,
    PublishPrice,
    ReadAttributesResponse,
    ReportEventStatus,
)
from simulators.fleet import generated_esiid, generated_mac
from tests.adapter_harness import AdapterUnderTest, eventually, start_inprocess, start_wire

S = HeadEndStatus
ADD_STEPS = [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
KEY = bytes.fromhex("66B6900981E1EE3CA4206B6B861C02BB")
CODE = bytes.fromhex("83FED3407A939723A5C639B26916D505C3B5")


def add(n: int, mac: str = "00124B0001ABCD01", esiid: str = "10443720000000001") -> ProvisionDevice:
    return ProvisionDevice(f"cmd-add-{n}", esiid, f"dev-{n}", mac, CODE, KEY, 600)


def remove(
    n: int, mac: str = "00124B0001ABCD01", esiid: str = "10443720000000001"
) -> DeprovisionDevice:
    return DeprovisionDevice(f"cmd-rm-{n}", esiid, f"dev-{n}", mac)


@pytest_twisted.async_yield_fixture(params=["inprocess", "wire"])
async def under(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AdapterUnderTest]:
    options = {"faults_by_mac": {"00124B00DEADBEEF": "reject"}}
    if request.param == "wire":
        running = await start_wire(tmp_path, options=options)
    else:
        running = await start_inprocess(tmp_path, options=options)
    yield running
    await running.close()


def test_provides_the_adapter_interface(under: AdapterUnderTest) -> None:
    """The adapter provides IHeadEndAdapter and serves the configured TDSP."""
    assert verifyObject(IHeadEndAdapter, under.adapter)
    assert under.adapter.tdsp_duns == "1039940674000"


@pytest_twisted.ensureDeferred
async def test_add_is_acknowledged_then_reported_in_order(under: AdapterUnderTest) -> None:
    """A provisioning command is acknowledged, then reported pending, meter ready and joined."""
    await under.adapter.send(add(1))
    await eventually(
        lambda: S.DEVICE_JOINED in under.events.statuses_of("cmd-add-1"), what="the join"
    )
    assert under.events.statuses_of("cmd-add-1") == ADD_STEPS


@pytest_twisted.ensureDeferred
async def test_remove_is_reported_removed(under: AdapterUnderTest) -> None:
    """A de-provisioning command is acknowledged and reported pending, then removed."""
    await under.adapter.send(remove(2))
    await eventually(
        lambda: S.DEVICE_REMOVED in under.events.statuses_of("cmd-rm-2"), what="the removal"
    )
    assert under.events.statuses_of("cmd-rm-2") == [
        S.ACKNOWLEDGED,
        S.REMOVE_PENDING,
        S.DEVICE_REMOVED,
    ]


@pytest_twisted.ensureDeferred
async def test_a_command_sent_twice_is_applied_once(under: AdapterUnderTest) -> None:
    """The same command id sent again is acknowledged again and applied once."""
    await under.adapter.send(add(3))
    await under.adapter.send(add(3))
    await eventually(
        lambda: S.DEVICE_JOINED in under.events.statuses_of("cmd-add-3"), what="the join"
    )
    assert under.headend.applied_count("cmd-add-3") == 1
    assert under.events.statuses_of("cmd-add-3") == ADD_STEPS


@pytest_twisted.ensureDeferred
async def test_a_rejection_is_reported(under: AdapterUnderTest) -> None:
    """A head-end rejection comes back as an Add Rejected report with its reason."""
    await under.adapter.send(add(4, mac="00124B00DEADBEEF"))
    await eventually(
        lambda: S.ADD_REJECTED in under.events.statuses_of("cmd-add-4"), what="the rejection"
    )
    rejected = [r for r in under.events.reports if r.status is S.ADD_REJECTED]
    assert rejected[0].reason


@pytest_twisted.ensureDeferred
async def test_many_commands_flow(under: AdapterUnderTest) -> None:
    """Three hundred commands at once all complete, each applied once."""
    commands = [
        add(100 + i, mac=f"00124B0002{i:06X}", esiid=f"1044372{i:010d}") for i in range(300)
    ]
    for command in commands:
        under.adapter.send(command)
    await eventually(
        lambda: all(S.DEVICE_JOINED in under.events.statuses_of(c.command_id) for c in commands),
        timeout=30,
        what="all joins",
    )
    assert all(under.headend.applied_count(c.command_id) == 1 for c in commands)


@pytest_twisted.ensureDeferred
async def test_stopped_adapter_refuses_commands(under: AdapterUnderTest) -> None:
    """After stop, send fails with a ConnectionError instead of accepting the command."""
    await under.adapter.stop()
    with pytest.raises(ConnectionError):
        await under.adapter.send(add(5))


# -- frames, queries and events beyond provisioning --------------------------------------------

FLEET = {"meters": 4, "devices_per_meter": 5, "answer_delay_s": 0.01, "confirm_delay_s": 0.05}
ESIID = generated_esiid(0)
IHD, THERMOSTAT, SWITCH = (generated_mac(0, slot) for slot in range(3))


@pytest_twisted.async_yield_fixture(params=["inprocess", "wire"])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AdapterUnderTest]:
    if request.param == "wire":
        running = await start_wire(tmp_path, options=FLEET)
    else:
        running = await start_inprocess(tmp_path, options=FLEET)
    yield running
    await running.close()


def frames(command_id: str, *sent: tuple[str, str, sep1.Message]) -> SendFrames:
    return SendFrames(
        command_id,
        ESIID,
        tuple(
            OutboundFrame(delivery_id, destination, type(m).CLUSTER_ID, sep1.encode(m, 1))
            for delivery_id, destination, m in sent
        ),
    )


def answers(under: AdapterUnderTest, kind: type[Any]) -> list[tuple[str, Any]]:
    """The (device MAC, decoded message) of every inbound frame of one message type."""
    decoded = [(f.source, sep1.decode(f.cluster, f.zcl)) for f in under.events.frames]
    return [(source, m) for source, m in decoded if isinstance(m, kind)]


@pytest_twisted.ensureDeferred
async def test_load_control_reaches_the_devices_of_its_class(fleet: AdapterUnderTest) -> None:
    """A load control event for HVAC sent to all devices is delivered, and only the thermostats
    report it received and then started; the display and the switches stay silent."""
    event = LoadControlEvent(
        issuer_event_id=7001,
        device_class=DeviceClass.HVAC_COMPRESSOR_OR_FURNACE,
        duration_in_minutes=30,
        criticality_level=3,
    )
    await fleet.adapter.send(frames("cmd-lce-1", ("dlv-1", TO_ALL, event)))
    thermostats = {generated_mac(0, 1), generated_mac(0, 3)}
    await eventually(
        lambda: (
            {(mac, m.event_status) for mac, m in answers(fleet, ReportEventStatus)}
            >= {(mac, status) for mac in thermostats for status in (0x01, 0x02)}
        ),
        what="received and started from both thermostats",
    )
    reports = answers(fleet, ReportEventStatus)
    assert {mac for mac, _ in reports} == thermostats
    assert all(m.issuer_event_id == 7001 and m.criticality_level_applied == 3 for _, m in reports)
    assert [(d.delivery_id, d.state) for d in fleet.events.deliveries] == [
        ("dlv-1", DeliveryState.DELIVERED)
    ]


@pytest_twisted.ensureDeferred
async def test_text_with_confirmation_is_confirmed(fleet: AdapterUnderTest) -> None:
    """A text that asks for confirmation is confirmed by the display with its message id."""
    text = DisplayMessage(
        message_id=42,
        message_control=MessageControl.make(confirmation_required=True),
        message="Peak pricing 2-6 pm",
    )
    await fleet.adapter.send(frames("cmd-stm-1", ("dlv-2", IHD, text)))
    await eventually(lambda: answers(fleet, MessageConfirmation), what="the confirmation")
    [(source, confirmation)] = answers(fleet, MessageConfirmation)
    assert (source, confirmation.message_id) == (IHD, 42)


@pytest_twisted.ensureDeferred
async def test_price_is_acknowledged_by_the_esi_and_bad_frames_fail(
    fleet: AdapterUnderTest,
) -> None:
    """A price to the ESI is delivered; a frame to a device not on the meter, and a frame the
    device cannot decode, fail with their reasons."""
    price = PublishPrice(
        provider_id=1, rate_label=b"TOU", issuer_event_id=9, current_time=0, price=1234
    )
    broken = OutboundFrame("dlv-5", THERMOSTAT, 0x0701, bytes.fromhex("1901000102"))
    command = frames("cmd-prm-1", ("dlv-3", TO_ESI, price), ("dlv-4", "00124B00FFFFFFFF", price))
    await fleet.adapter.send(SendFrames(command.command_id, ESIID, (*command.frames, broken)))
    await eventually(lambda: len(fleet.events.deliveries) == 3, what="three delivery statuses")
    states = {d.delivery_id: (d.state, d.reason) for d in fleet.events.deliveries}
    assert states["dlv-3"][0] is DeliveryState.DELIVERED
    assert states["dlv-4"] == (DeliveryState.FAILED, "the device is not joined to the meter")
    assert states["dlv-5"][0] is DeliveryState.FAILED
    assert "LoadControlEvent" in states["dlv-5"][1] and "byte" in states["dlv-5"][1]


@pytest_twisted.ensureDeferred
async def test_pings_and_meter_reads_are_answered(fleet: AdapterUnderTest) -> None:
    """Ping ESI gives the firmware, ping device says whether it is joined, and a meter read
    answers a Read Attributes Response with the summation and demand asked for."""
    esi = await fleet.adapter.query(PingEsi(ESIID))
    assert esi.reachable and esi.firmware_version
    assert (await fleet.adapter.query(PingDevice(ESIID, IHD))).reachable
    missing = await fleet.adapter.query(PingDevice(ESIID, "00124B00FFFFFFFF"))
    assert not missing.reachable and "not joined" in missing.reason
    reading = await fleet.adapter.query(ReadMeter(ESIID, (0x0000, 0x0400, 0x0001)))
    response = sep1.decode(0x0702, reading.zcl)
    assert isinstance(response, ReadAttributesResponse)
    values = response.values()
    assert values["current_summation_delivered"] > 0 and values["instantaneous_demand"] > 0
    assert [r.attribute_id for r in response.records] == [0x0000, 0x0400, 0x0001]


@pytest_twisted.ensureDeferred
async def test_a_query_for_a_meter_not_served_fails_with_the_reason(
    fleet: AdapterUnderTest,
) -> None:
    """Asking about an ESI ID the head-end does not serve fails with QueryFailed saying so."""
    with pytest.raises(QueryFailed, match="not served"):
        await fleet.adapter.query(PingEsi("99999999999999999"))
