"""The simulated meters and devices: SE 1.0 answers, faults, and the meter file they agree on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

import sep1
from adapters.commands import (
    TO_ALL,
    DeliveryState,
    DeliveryStatus,
    HeadEndStatus,
    InboundFrame,
    OutboundFrame,
    PingDevice,
    PingEsi,
    ProvisionDevice,
    ProvisioningReport,
    QueryFailed,
    ReadMeter,
)
from hangw.meters import parse_meter_csv
from sep1 import utctime
from sep1.messages import (
    CancelAllLoadControlEvents,
    CancelLoadControlEvent,
    DeviceClass,
    DisplayMessage,
    EventStatus,
    LoadControlEvent,
)
from simulators.fleet import (
    HAN_INCOMPATIBLE_FIRMWARE,
    Fleet,
    FleetConfig,
    generated_esiid,
    generated_mac,
    write_meter_csv,
)
from simulators.inprocess import SimulatedHeadEnd, SimulatorConfig

HVAC = DeviceClass.HVAC_COMPRESSOR_OR_FURNACE
WATER = DeviceClass.WATER_HEATER
ESIID = generated_esiid(0)
THERMOSTAT = generated_mac(0, 1)
SWITCH = generated_mac(0, 2)
T0 = 1_790_000_000.0  # a POSIX time in 2026


class Out:
    """Everything the fleet emitted, decoded."""

    def __init__(self) -> None:
        self.events: list[DeliveryStatus | InboundFrame] = []

    def __call__(self, event: DeliveryStatus | InboundFrame) -> None:
        self.events.append(event)

    def statuses(self, mac: str | None = None) -> list[tuple[int, int]]:
        """(issuer event id, event status) of every Report Event Status, in order."""
        out = []
        for e in self.events:
            if isinstance(e, InboundFrame) and (mac is None or e.source == mac):
                message = sep1.decode(e.cluster, e.zcl)
                out.append((message.issuer_event_id, message.event_status))
        return out

    def deliveries(self) -> list[tuple[str, DeliveryState]]:
        return [(e.delivery_id, e.state) for e in self.events if isinstance(e, DeliveryStatus)]


def fleet(**options: Any) -> tuple[Fleet, Clock, Out]:
    clock = Clock()
    clock.advance(T0)
    out = Out()
    config = {"meters": 10, "devices_per_meter": 5, "answer_delay_s": 0.1, **options}
    return Fleet(FleetConfig(**config), clock, out), clock, out


def lce(event_id: int, *, device_class: int = HVAC, start: float = 0, minutes: int = 30) -> Any:
    return LoadControlEvent(
        issuer_event_id=event_id,
        device_class=device_class,
        start_time=utctime.from_unix(start) if start else 0,
        duration_in_minutes=minutes,
    )


def send(f: Fleet, message: Any, destination: str = THERMOSTAT, delivery: str = "d") -> None:
    f.deliver(
        ESIID, OutboundFrame(delivery, destination, message.CLUSTER_ID, sep1.encode(message, 1))
    )


def test_event_runs_received_started_completed() -> None:
    """A thermostat reports command received at once, started at the start, completed at the end."""
    f, clock, out = fleet()
    send(f, lce(1, start=T0 + 600, minutes=30))
    clock.advance(1)
    assert out.statuses() == [(1, EventStatus.COMMAND_RECEIVED)]
    assert out.deliveries() == [("d", DeliveryState.DELIVERED)]
    clock.advance(600)
    assert out.statuses()[-1] == (1, EventStatus.EVENT_STARTED)
    clock.advance(30 * 60)
    assert out.statuses()[-1] == (1, EventStatus.EVENT_COMPLETED)
    assert clock.getDelayedCalls() == []


def test_a_user_who_opts_out_is_reported() -> None:
    """A user who opts out is reported opted out at the start, no participation at the end."""
    f, clock, out = fleet(opt_out_rate=1.0)
    send(f, lce(2, minutes=10))
    clock.advance(11 * 60)
    assert out.statuses() == [
        (2, EventStatus.COMMAND_RECEIVED),
        (2, EventStatus.USER_OPTED_OUT),
        (2, EventStatus.COMPLETED_NO_USER_PARTICIPATION),
    ]


def test_only_devices_of_the_event_class_answer() -> None:
    """An event for water heaters sent to all devices is answered by the two switches only."""
    f, clock, out = fleet()
    send(f, lce(3, device_class=WATER, start=T0 + 60), destination=TO_ALL)
    clock.advance(1)
    sources = {e.source for e in out.events if isinstance(e, InboundFrame)}
    assert sources == {generated_mac(0, 2), generated_mac(0, 4)}


def test_a_newer_overlapping_event_supersedes_the_older() -> None:
    """A second overlapping event for the same class supersedes the first, which never starts."""
    f, clock, out = fleet()
    send(f, lce(10, start=T0 + 600, minutes=60))
    clock.advance(1)
    send(f, lce(11, start=T0 + 900, minutes=60))
    clock.advance(2 * 3600)
    mine = out.statuses(THERMOSTAT)
    assert (10, EventStatus.EVENT_SUPERSEDED) in mine
    assert (10, EventStatus.EVENT_STARTED) not in mine
    assert mine[-2:] == [(11, EventStatus.EVENT_STARTED), (11, EventStatus.EVENT_COMPLETED)]


def test_events_that_do_not_overlap_both_run() -> None:
    """Two events one after the other both start and complete."""
    f, clock, out = fleet()
    send(f, lce(20, start=T0 + 60, minutes=10))
    send(f, lce(21, start=T0 + 60 + 11 * 60, minutes=10))
    clock.advance(3600)
    statuses = out.statuses()
    for event_id in (20, 21):
        assert (event_id, EventStatus.EVENT_COMPLETED) in statuses


def test_cancel_before_start_in_progress_and_unknown() -> None:
    """Cancel before the start and while running answer cancelled; an unknown event 0xFD."""
    f, clock, out = fleet()
    send(f, lce(30, start=T0 + 600))
    send(f, lce(31, device_class=WATER), destination=SWITCH)
    clock.advance(60)
    send(f, CancelLoadControlEvent(issuer_event_id=30, device_class=HVAC))
    send(f, CancelLoadControlEvent(issuer_event_id=31, device_class=WATER), destination=SWITCH)
    send(f, CancelLoadControlEvent(issuer_event_id=99, device_class=HVAC))
    clock.advance(3 * 3600)
    thermostat, switch = out.statuses(THERMOSTAT), out.statuses(SWITCH)
    assert thermostat == [
        (30, EventStatus.COMMAND_RECEIVED),
        (30, EventStatus.EVENT_CANCELLED),
        (99, EventStatus.REJECTED_INVALID_CANCEL_UNDEFINED_EVENT),
    ]
    assert switch == [
        (31, EventStatus.COMMAND_RECEIVED),
        (31, EventStatus.EVENT_STARTED),
        (31, EventStatus.EVENT_CANCELLED),
    ]


def test_cancel_all_cancels_every_live_event() -> None:
    """Cancel All answers cancelled for each event still to run or running."""
    f, clock, out = fleet()
    send(f, lce(40, start=T0 + 600, minutes=5))
    send(f, lce(41, start=T0 + 1200, minutes=5))
    clock.advance(1)
    send(f, CancelAllLoadControlEvents())
    clock.advance(3600)
    cancelled = {e for e, s in out.statuses() if s == EventStatus.EVENT_CANCELLED}
    assert cancelled == {40, 41}


def test_an_expired_event_is_rejected() -> None:
    """An event whose end is already past is rejected with 0xFB and never runs."""
    f, clock, out = fleet()
    send(f, lce(50, start=T0 - 3600, minutes=30))
    clock.advance(3600)
    assert out.statuses() == [(50, EventStatus.REJECTED_EVENT_EXPIRED)]


def test_the_same_event_twice_runs_once() -> None:
    """A repeated event is acknowledged again but started and completed once."""
    f, clock, out = fleet()
    send(f, lce(60, minutes=5))
    send(f, lce(60, minutes=5))
    clock.advance(3600)
    statuses = out.statuses()
    assert statuses.count((60, EventStatus.EVENT_STARTED)) == 1
    assert statuses.count((60, EventStatus.EVENT_COMPLETED)) == 1


def test_offline_meter_leaves_deliveries_pending_then_failed() -> None:
    """A frame for an offline meter is pending at once and failed after the give-up time."""
    f, clock, out = fleet(offline_rate=1.0, offline_give_up_s=120)
    send(f, lce(70))
    assert out.deliveries() == [("d", DeliveryState.PENDING)]
    clock.advance(121)
    assert out.deliveries()[-1] == ("d", DeliveryState.FAILED)
    assert out.statuses() == []
    assert not f.query(PingEsi(ESIID)).reachable
    with pytest.raises(QueryFailed, match="offline"):
        f.query(ReadMeter(ESIID, (0,)))


def test_silent_devices_take_frames_and_never_answer() -> None:
    """A device that never answers gets its frame delivered, sends nothing, and fails a ping."""
    f, clock, out = fleet(silent_rate=1.0)
    send(f, lce(80))
    clock.advance(3600)
    assert out.deliveries() == [("d", DeliveryState.DELIVERED)]
    assert out.statuses() == []
    assert not f.query(PingDevice(ESIID, THERMOSTAT)).reachable


def test_meter_register_only_goes_up() -> None:
    """Two reads an hour apart give a larger summation, 1.2 kWh more."""
    f, clock, _ = fleet()
    first = sep1.decode(0x0702, f.query(ReadMeter(ESIID, (0,))).zcl).values()
    clock.advance(3600)
    second = sep1.decode(0x0702, f.query(ReadMeter(ESIID, (0,))).zcl).values()
    delta = second["current_summation_delivered"] - first["current_summation_delivered"]
    assert delta == 1200


def test_generated_fleet_is_the_same_every_run() -> None:
    """Two fleets with the same seed make the same meters; another seed makes others."""
    rates = {"offline_rate": 0.3, "incompatible_rate": 0.3}
    a, _, _ = fleet(seed=1, **rates)
    b, _, _ = fleet(seed=1, **rates)
    c, _, _ = fleet(seed=2, **rates)

    def shape(f: Fleet) -> list[tuple[bool, bool]]:
        meters = [f.meter(generated_esiid(i)) for i in range(10)]
        return [(m.offline, m.han_capable) for m in meters if m is not None]

    assert shape(a) == shape(b)
    assert shape(a) != shape(c)
    assert a.meter(generated_esiid(10)) is None  # only ten meters are served


def test_meter_file_matches_the_fleet(tmp_path: Path) -> None:
    """The generated meter CSV loads into the registry and names the same firmware as the fleet."""
    path = tmp_path / "meters.csv"
    write_meter_csv(
        path, 50, tdsp_duns="1039940674000", ror_duns="123456789", seed=3, incompatible_rate=0.4
    )
    registry = parse_meter_csv(path.read_text().splitlines(), str(path))
    f, _, _ = fleet(meters=50, seed=3, incompatible_rate=0.4)
    assert len(registry) == 50
    for meter in registry:
        simulated = f.meter(meter.esiid)
        assert simulated is not None
        assert (meter.firmware_version, meter.han_capable) == (
            simulated.firmware_version,
            simulated.han_capable,
        )
    assert any(m.firmware_version == HAN_INCOMPATIBLE_FIRMWARE for m in registry)


def test_provisioning_onto_meters_that_cannot_take_it() -> None:
    """A meter whose firmware cannot run a HAN rejects an add; an offline meter fails it."""
    clock = Clock()
    reports: list[ProvisioningReport] = []

    class Events:
        def provisioning_report(self, report: ProvisioningReport) -> Any:
            reports.append(report)

    for options, expected in (
        ({"incompatible_rate": 1.0}, HeadEndStatus.ADD_REJECTED),
        ({"offline_rate": 1.0}, HeadEndStatus.ADD_FAILED),
    ):
        reports.clear()
        simulator = SimulatedHeadEnd(
            SimulatorConfig(tdsp_duns="1039940674000", meters=5, **options), clock
        )
        simulator.start(Events())  # type: ignore[arg-type]
        simulator.send(
            ProvisionDevice(
                "c1", generated_esiid(1), "d1", "00124B0001ABCD01", bytes(18), bytes(16), 600
            )
        )
        for _ in range(60):
            clock.advance(1)
        assert reports[-1].status is expected
        assert "meter" in reports[-1].reason
        simulator.stop()


def test_a_joined_device_answers_and_a_removed_one_stops() -> None:
    """A device provisioned through the head-end answers frames; once removed it does not."""
    f, _, out = fleet(meters=0, devices_per_meter=0)
    mac = "00124B0001ABCD01"
    f.join(ESIID, mac)
    assert f.query(PingDevice(ESIID, mac)).reachable
    f.leave(ESIID, mac)
    send(f, lce(90), destination=mac)
    assert out.deliveries() == [("d", DeliveryState.FAILED)]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_fleet_of_200000_meters_with_five_devices_each_answers() -> None:
    """200,000 generated meters with five devices each all take a text that asks for
    confirmation: every meter's delivery and every display's confirmation come back."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    meters = 200_000
    counts = {"delivered": 0, "confirmed": 0}

    def emit(event: DeliveryStatus | InboundFrame) -> None:
        if isinstance(event, DeliveryStatus) and event.state is DeliveryState.DELIVERED:
            counts["delivered"] += 1
        elif isinstance(event, InboundFrame):
            counts["confirmed"] += 1

    f = Fleet(
        FleetConfig(meters=meters, devices_per_meter=5, answer_delay_s=0.01, confirm_delay_s=0.01),
        reactor,
        emit,
    )
    text = DisplayMessage(message_id=5, message_control=0x80, message="Conserve 3-7 pm")
    zcl = sep1.encode(text, 1)
    for index in range(meters):
        f.deliver(generated_esiid(index), OutboundFrame(f"d{index}", TO_ALL, 0x0703, zcl))
        if index % 20_000 == 0:
            await deferLater(reactor, 0)  # let answers already due go out meanwhile
    deadline = time.monotonic() + 120
    displays = 3  # an in-home display and two thermostats of the five
    while counts["confirmed"] < meters * displays and time.monotonic() < deadline:
        await deferLater(reactor, 0.1)
    assert counts == {"delivered": meters, "confirmed": meters * displays}


def test_stopping_the_head_end_cancels_every_answer_still_to_come() -> None:
    """Once the simulated head-end stops, no device answer is left scheduled or sent."""
    clock = Clock()
    clock.advance(T0)
    sent: list[object] = []

    class Events:
        def delivery_status(self, status: object) -> None:
            sent.append(status)

        inbound_frame = provisioning_report = delivery_status

    simulator = SimulatedHeadEnd(
        SimulatorConfig(tdsp_duns="1039940674000", meters=3, devices_per_meter=5), clock
    )
    simulator.start(Events())  # type: ignore[arg-type]
    message = lce(1, start=T0 + 600)
    simulator.fleet.deliver(
        ESIID, OutboundFrame("d", TO_ALL, message.CLUSTER_ID, sep1.encode(message, 1))
    )
    assert clock.getDelayedCalls()
    simulator.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert sent == []
