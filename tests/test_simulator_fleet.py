"""The simulated meters and devices: SE 1.0 answers, faults, and the meter file they agree on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

import sep1
from adapters.commands import (
    TO_ALL,
    TO_ESI,
    DeliveryState,
    DeliveryStatus,
    FanOutFrame,
    FanOutTarget,
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
    MessageConfirmation,
    PublishPrice,
)
from simulators import usage
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
EVERY_LOAD = HVAC | WATER | DeviceClass.POOL_PUMP_SPA_JACUZZI
ESIID = generated_esiid(0)
THERMOSTAT = generated_mac(0, 1)
SWITCH = generated_mac(0, 2)
T0 = 1_790_000_000.0  # a POSIX time in 2026


class Out:
    """Everything the fleet emitted, decoded."""

    def __init__(self) -> None:
        self.events: list[DeliveryStatus | InboundFrame] = []
        self.batches = 0

    def __call__(self, events: list[DeliveryStatus | InboundFrame]) -> None:
        assert isinstance(events, list) and events
        self.batches += 1
        self.events.extend(events)

    def statuses(self, mac: str | None = None) -> list[tuple[int, int]]:
        """(issuer event id, event status) of every Report Event Status, in order."""
        out = []
        for e in self.events:
            if isinstance(e, InboundFrame) and (mac is None or e.source == mac):
                message = sep1.decode(e.cluster, e.zcl)
                out.append((message.issuer_event_id, message.event_status))
        return out

    def frames(self) -> list[InboundFrame]:
        return [e for e in self.events if isinstance(e, InboundFrame)]

    def deliveries(self) -> list[tuple[str, DeliveryState]]:
        return [(e.delivery_id, e.state) for e in self.events if isinstance(e, DeliveryStatus)]

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, DeliveryStatus)]


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


#: The meters a fan-out in these tests goes to (of the ten a test fleet has).
FANNED = range(3)


def fan_out(
    f: Fleet,
    message: Any,
    *,
    destination: str = TO_ALL,
    meters: range = FANNED,
    zcl: bytes | None = None,
) -> None:
    f.deliver_many(
        FanOutFrame(
            "c1",
            destination,
            message.CLUSTER_ID,
            sep1.encode(message, 1) if zcl is None else zcl,
            tuple(FanOutTarget(generated_esiid(i), f"d{i}") for i in meters),
        )
    )


def thermostats(meters: range = FANNED) -> list[str]:
    return [generated_mac(i, slot) for i in meters for slot in (1, 3)]


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
    """Two reads an hour apart give a larger summation: the hour's four intervals of the profile."""
    f, clock, _ = fleet()
    first = sep1.decode(0x0702, f.query(ReadMeter(ESIID, (0,))).zcl).values()
    clock.advance(3600)
    second = sep1.decode(0x0702, f.query(ReadMeter(ESIID, (0,))).zcl).values()
    delta = second["current_summation_delivered"] - first["current_summation_delivered"]
    k = int(T0 // 900)
    assert delta == sum(usage.interval_wh(ESIID, q) for q in range(k, k + 4)) > 0


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


def test_fan_out_event_is_answered_in_bulk_by_matching_devices_only() -> None:
    """A fan-out HVAC event is answered by the targets' thermostats only, one list per moment."""
    f, clock, out = fleet()
    fan_out(f, lce(1, start=T0 + 600, minutes=30))
    assert len(clock.getDelayedCalls()) == 2  # the answers now, the start: not one per device
    clock.advance(1)
    assert out.batches == 1
    assert out.deliveries() == [(f"d{i}", DeliveryState.DELIVERED) for i in FANNED]
    received = out.frames()
    assert sorted(e.source for e in received) == sorted(thermostats())
    assert {e.esiid for e in received} == {generated_esiid(i) for i in FANNED}
    assert len({id(e.zcl) for e in received}) == 1
    assert set(out.statuses()) == {(1, EventStatus.COMMAND_RECEIVED)}
    clock.advance(600)
    assert out.batches == 2
    assert out.statuses()[len(received) :] == [(1, EventStatus.EVENT_STARTED)] * len(received)
    clock.advance(30 * 60)
    assert out.batches == 3
    assert out.statuses()[-len(received) :] == [(1, EventStatus.EVENT_COMPLETED)] * len(received)
    assert clock.getDelayedCalls() == []


def test_fan_out_event_starting_now_is_received_then_started_by_each_device() -> None:
    """An event that starts now gives each device command received then started, in order."""
    f, clock, out = fleet()
    fan_out(f, lce(2, device_class=EVERY_LOAD, minutes=10))
    clock.advance(1)
    for i in FANNED:
        for slot in (1, 2, 3, 4):
            assert out.statuses(generated_mac(i, slot)) == [
                (2, EventStatus.COMMAND_RECEIVED),
                (2, EventStatus.EVENT_STARTED),
            ]
        assert out.statuses(generated_mac(i, 0)) == []  # the display takes no load control


def test_fan_out_users_who_opt_out_are_reported() -> None:
    """Through a fan-out, users who opt out are reported opted out, then no participation."""
    f, clock, out = fleet(opt_out_rate=1.0)
    fan_out(f, lce(3, minutes=10))
    clock.advance(11 * 60)
    for mac in thermostats():
        assert out.statuses(mac) == [
            (3, EventStatus.COMMAND_RECEIVED),
            (3, EventStatus.USER_OPTED_OUT),
            (3, EventStatus.COMPLETED_NO_USER_PARTICIPATION),
        ]


def test_fan_out_to_silent_devices_is_delivered_and_never_answered() -> None:
    """Silent devices get a fan-out's frame delivered and send nothing back."""
    f, clock, out = fleet(silent_rate=1.0)
    fan_out(f, lce(4, minutes=10))
    clock.advance(3600)
    assert out.deliveries() == [(f"d{i}", DeliveryState.DELIVERED) for i in FANNED]
    assert out.frames() == []


def test_fan_out_to_offline_meters_is_pending_then_failed() -> None:
    """Offline targets are pending at once, all in one list, and failed after the give-up time."""
    f, clock, out = fleet(offline_rate=1.0, offline_give_up_s=120)
    fan_out(f, lce(5))
    assert out.batches == 1
    assert out.deliveries() == [(f"d{i}", DeliveryState.PENDING) for i in FANNED]
    clock.advance(119)
    assert out.batches == 1
    clock.advance(2)
    assert out.batches == 2
    assert out.deliveries()[3:] == [(f"d{i}", DeliveryState.FAILED) for i in FANNED]
    assert all("offline" in reason for reason in out.reasons())
    assert out.frames() == []


def test_fan_out_newer_overlapping_event_supersedes_the_older() -> None:
    """A second overlapping fan-out event supersedes the first on every device; it never starts."""
    f, clock, out = fleet()
    fan_out(f, lce(10, start=T0 + 600, minutes=60))
    clock.advance(1)
    fan_out(f, lce(11, start=T0 + 900, minutes=60))
    clock.advance(2 * 3600)
    for mac in thermostats():
        assert out.statuses(mac) == [
            (10, EventStatus.COMMAND_RECEIVED),
            (10, EventStatus.EVENT_SUPERSEDED),
            (11, EventStatus.COMMAND_RECEIVED),
            (11, EventStatus.EVENT_STARTED),
            (11, EventStatus.EVENT_COMPLETED),
        ]


def test_fan_out_cancel_answers_cancelled_or_undefined() -> None:
    """A fan-out cancel answers cancelled (0x06) for a known event, 0xFD for an unknown one."""
    f, clock, out = fleet()
    fan_out(f, lce(30, start=T0 + 600))
    clock.advance(60)
    fan_out(f, CancelLoadControlEvent(issuer_event_id=30, device_class=HVAC))
    fan_out(f, CancelLoadControlEvent(issuer_event_id=99, device_class=HVAC))
    clock.advance(3 * 3600)
    for mac in thermostats():
        assert out.statuses(mac) == [
            (30, EventStatus.COMMAND_RECEIVED),
            (30, EventStatus.EVENT_CANCELLED),
            (99, EventStatus.REJECTED_INVALID_CANCEL_UNDEFINED_EVENT),
        ]


def test_fan_out_cancel_within_the_answer_delay_stops_command_received() -> None:
    """An event cancelled before its command received went out answers only cancelled."""
    f, clock, out = fleet()
    fan_out(f, lce(31, start=T0 + 600))
    fan_out(f, CancelLoadControlEvent(issuer_event_id=31, device_class=HVAC))
    clock.advance(3600)
    for mac in thermostats():
        assert out.statuses(mac) == [(31, EventStatus.EVENT_CANCELLED)]


def test_fan_out_cancel_all_cancels_every_live_event() -> None:
    """Cancel All through a fan-out cancels each event still to run or running, on every device."""
    f, clock, out = fleet()
    fan_out(f, lce(40, start=T0 + 600, minutes=5))
    fan_out(f, lce(41, device_class=WATER, minutes=30))
    clock.advance(60)
    fan_out(f, CancelAllLoadControlEvents())
    clock.advance(3600)
    cancelled = Counter(e for e, s in out.statuses() if s == EventStatus.EVENT_CANCELLED)
    assert cancelled == {40: 2 * len(FANNED), 41: 2 * len(FANNED)}
    assert (40, EventStatus.EVENT_STARTED) not in out.statuses()
    assert (41, EventStatus.EVENT_COMPLETED) not in out.statuses()


def test_fan_out_expired_event_is_rejected() -> None:
    """A fan-out event already over is rejected with 0xFB by every matching device."""
    f, clock, out = fleet()
    fan_out(f, lce(50, start=T0 - 3600, minutes=30))
    clock.advance(3600)
    assert out.statuses() == [(50, EventStatus.REJECTED_EVENT_EXPIRED)] * len(thermostats())


def test_fan_out_text_is_confirmed_by_every_display() -> None:
    """A fan-out text asking for confirmation is confirmed by each display, with one encoding."""
    f, clock, out = fleet(confirm_delay_s=5)
    text = DisplayMessage(message_id=8, message_control=0x80, message="Conserve 3-7 pm")
    fan_out(f, text)
    clock.advance(1)
    assert out.frames() == []
    clock.advance(5)
    confirmations = out.frames()
    displays = [generated_mac(i, slot) for i in FANNED for slot in (0, 1, 3)]
    assert sorted(e.source for e in confirmations) == sorted(displays)
    assert len({e.zcl for e in confirmations}) == 1
    message = sep1.decode(confirmations[0].cluster, confirmations[0].zcl)
    assert isinstance(message, MessageConfirmation) and message.message_id == 8
    assert utctime.to_unix(message.confirmation_time) == T0 + 5


def test_fan_out_undecodable_frame_fails_every_delivery() -> None:
    """A frame the devices cannot decode fails each target's delivery with the reason."""
    f, clock, out = fleet()
    fan_out(f, lce(60), zcl=b"\x01\x02")
    assert out.deliveries() == [(f"d{i}", DeliveryState.FAILED) for i in FANNED]
    assert all("could not decode" in reason for reason in out.reasons())
    clock.advance(3600)
    assert out.frames() == []


def test_fan_out_to_the_esi_takes_prices_only() -> None:
    """To the ESI, a fan-out price is acknowledged at every meter; an event is refused."""
    f, clock, out = fleet()
    price = PublishPrice(
        provider_id=1,
        rate_label=b"TOU",
        issuer_event_id=70,
        current_time=utctime.from_unix(T0),
        duration_in_minutes=60,
        price=1234,
    )
    fan_out(f, price, destination=TO_ESI)
    fan_out(f, lce(71), destination=TO_ESI)
    clock.advance(3600)
    assert out.deliveries() == [(f"d{i}", DeliveryState.DELIVERED) for i in FANNED] + [
        (f"d{i}", DeliveryState.FAILED) for i in FANNED
    ]
    assert out.frames() == []


def test_fan_out_to_meters_not_served_fails_them_only() -> None:
    """Targets this head-end does not serve fail; the others are delivered."""
    f, clock, out = fleet(meters=2)
    fan_out(f, lce(80), meters=range(3))
    clock.advance(1)
    assert sorted(out.deliveries()) == [
        ("d0", DeliveryState.DELIVERED),
        ("d1", DeliveryState.DELIVERED),
        ("d2", DeliveryState.FAILED),
    ]


def test_stop_cancels_a_fan_out_still_to_come() -> None:
    """Stopping the fleet cancels every answer a fan-out still had to give."""
    f, clock, out = fleet()
    fan_out(f, lce(90, start=T0 + 600))
    assert clock.getDelayedCalls()
    f.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert out.events == []


def test_a_removed_device_stops_answering_a_fan_out_event() -> None:
    """A device removed from the HAN after taking an event sends nothing more about it."""
    f, clock, out = fleet()
    fan_out(f, lce(91, start=T0 + 600), meters=range(1))
    clock.advance(1)
    f.leave(ESIID, THERMOSTAT)
    clock.advance(3600)
    assert out.statuses(THERMOSTAT) == [(91, EventStatus.COMMAND_RECEIVED)]
    other = generated_mac(0, 3)
    assert out.statuses(other)[-1] == (91, EventStatus.EVENT_COMPLETED)


@pytest.mark.slow
def test_a_fan_out_to_200000_meters_with_five_devices_each_is_answered_by_every_device() -> None:
    """Fan-outs of an event and a text to 200,000 meters get answers from all 1,000,000 devices."""
    meters = 200_000
    clock = Clock()
    clock.advance(T0)
    counts: Counter[Any] = Counter()
    answered: set[str] = set()
    kinds: dict[bytes, Any] = {}

    def emit(events: list[DeliveryStatus | InboundFrame]) -> None:
        counts["lists"] += 1
        for event in events:
            if isinstance(event, DeliveryStatus):
                counts[event.state] += 1
                continue
            kind = kinds.get(event.zcl)
            if kind is None:
                message = sep1.decode(event.cluster, event.zcl)
                kind = kinds[event.zcl] = getattr(message, "event_status", "confirmed")
            counts[kind] += 1
            answered.add(event.source)

    f = Fleet(
        FleetConfig(meters=meters, devices_per_meter=5, answer_delay_s=0.05, confirm_delay_s=1),
        clock,
        emit,
    )
    targets = tuple(FanOutTarget(generated_esiid(i), f"d{i}") for i in range(meters))
    event = lce(7, device_class=EVERY_LOAD, minutes=60)
    text = DisplayMessage(message_id=5, message_control=0x80, message="Conserve 3-7 pm")
    for message in (event, text):
        zcl = sep1.encode(message, 1)
        f.deliver_many(FanOutFrame("c", TO_ALL, message.CLUSTER_ID, zcl, targets))
    assert len(clock.getDelayedCalls()) <= 3
    clock.advance(2)
    assert counts == {
        "lists": 2,
        DeliveryState.DELIVERED: 2 * meters,
        EventStatus.COMMAND_RECEIVED: 4 * meters,  # the thermostats and the switches
        EventStatus.EVENT_STARTED: 4 * meters,
        "confirmed": 3 * meters,  # the display and the thermostats
    }
    assert len(answered) == 5 * meters


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
