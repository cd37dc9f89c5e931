"""Fan-outs through the simulated head-ends: acknowledged, applied once, answered in batches."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import sep1
from adapters.commands import (
    TO_ALL,
    DeliveryState,
    DeliveryStatus,
    FanOutFrame,
    FanOutTarget,
    InboundFrame,
    ProvisionDevice,
    ProvisioningReport,
)
from adapters.interfaces import IAdapterEvents
from sep1.messages import DeviceClass, LoadControlEvent
from simulators.fleet import generated_esiid, generated_mac
from simulators.headend import SimulatedHeadEndClient
from simulators.inprocess import SimulatedHeadEnd, SimulatorConfig

TDSP = "1039940674000"
T0 = 1_790_000_000.0
ACK = 0.2
ANSWER = 0.05
RETRY = 1.0
EVENT = LoadControlEvent(
    issuer_event_id=1, device_class=DeviceClass.HVAC_COMPRESSOR_OR_FURNACE, duration_in_minutes=30
)

_case = SynchronousTestCase()
succeeded = _case.successResultOf
no_result = _case.assertNoResult


@implementer(IAdapterEvents)
class BatchEvents:
    """The gateway's side: records every call with the clock's time; fails the first
    ``failures`` batch calls; refuses the items of the ESI IDs in ``refuse``."""

    def __init__(self, clock: Clock, failures: int = 0) -> None:
        self.clock = clock
        self.failures = failures
        self.refuse: set[str] = set()
        #: ("statuses" | "frames", time, items) for each batch call, failed ones included.
        self.batches: list[tuple[str, float, list[Any]]] = []
        self.singles: list[Any] = []

    def _single(self, event: Any) -> Deferred[None]:
        self.singles.append(event)
        return succeed(None)

    provisioning_report = delivery_status = inbound_frame = meter_event = _single

    def _batch(self, kind: str, items: list[Any]) -> Deferred[list[str | None]]:
        self.batches.append((kind, self.clock.seconds(), list(items)))
        if self.failures:
            self.failures -= 1
            return fail(RuntimeError("store unavailable"))
        return succeed(
            [f"ESI ID {i.esiid} is not served" if i.esiid in self.refuse else None for i in items]
        )

    def delivery_statuses(
        self, statuses: list[DeliveryStatus], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._batch("statuses", statuses)

    def inbound_frames(
        self, frames: list[InboundFrame], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._batch("frames", frames)

    def kinds(self) -> list[tuple[str, int]]:
        return [(kind, len(items)) for kind, _, items in self.batches]


def simulator(clock: Clock, **options: Any) -> SimulatedHeadEnd:
    config = {
        "meters": 10,
        "devices_per_meter": 5,
        "ack_delay_s": ACK,
        "answer_delay_s": ANSWER,
        "report_retry_delay_s": RETRY,
        **options,
    }
    return SimulatedHeadEnd(SimulatorConfig(tdsp_duns=TDSP, **config), clock)


def running(
    clock: Clock, failures: int = 0, **options: Any
) -> tuple[SimulatedHeadEnd, BatchEvents]:
    clock.advance(T0 - clock.seconds())
    headend = simulator(clock, **options)
    events = BatchEvents(clock, failures)
    headend.start(events)
    return headend, events


def fan_out(command_id: str = "fan-1", meters: range = range(3)) -> FanOutFrame:
    return FanOutFrame(
        command_id,
        TO_ALL,
        EVENT.CLUSTER_ID,
        sep1.encode(EVENT, 1),
        tuple(FanOutTarget(generated_esiid(i), f"{command_id}-d{i}") for i in meters),
    )


def answered(clock: Clock) -> None:
    """Run the clock past the acknowledgement and the devices' first answers."""
    clock.advance(ACK)
    clock.advance(ANSWER)
    clock.advance(0)


def test_fan_out_is_acknowledged_and_answered_in_one_batch_of_each_kind() -> None:
    """A fan-out is acknowledged, then answered in one delivery_statuses and one inbound_frames."""
    clock = Clock()
    headend, events = running(clock)
    assert verifyObject(IAdapterEvents, events)
    command = fan_out()
    acknowledged = headend.send(command)
    no_result(acknowledged)
    clock.advance(ACK)
    assert succeeded(acknowledged) is None
    assert headend.received == [command]
    clock.advance(ANSWER)
    clock.advance(0)
    assert events.kinds() == [("statuses", 3), ("frames", 12)]
    (_, _, statuses), (_, _, frames) = events.batches
    assert [(s.delivery_id, s.state) for s in statuses] == [
        (f"fan-1-d{i}", DeliveryState.DELIVERED) for i in range(3)
    ]
    thermostats = [generated_mac(i, slot) for i in range(3) for slot in (1, 3)]
    assert sorted(f.source for f in frames) == sorted(thermostats * 2)  # received, started
    assert events.singles == []


def test_fan_out_sent_again_is_acknowledged_and_applied_once() -> None:
    """The same fan-out command id sent twice is acknowledged twice and delivered once."""
    clock = Clock()
    headend, events = running(clock)
    first, again = headend.send(fan_out()), headend.send(fan_out())
    clock.advance(ACK)
    assert succeeded(first) is None and succeeded(again) is None
    clock.advance(ANSWER)
    clock.advance(0)
    assert headend.applied_count("fan-1") == 1
    assert headend.send_count("fan-1") == 2
    assert events.kinds() == [("statuses", 3), ("frames", 12)]


def test_what_the_fleet_emits_in_one_turn_goes_in_one_batch() -> None:
    """Pending statuses of two fan-outs acknowledged at the same moment leave in one call."""
    clock = Clock()
    headend, events = running(clock, offline_rate=1.0)
    headend.send(fan_out("fan-1"))
    headend.send(fan_out("fan-2", range(3, 6)))
    clock.advance(ACK)
    assert events.kinds() == [("statuses", 6)]
    assert {s.state for _, _, items in events.batches for s in items} == {DeliveryState.PENDING}


def test_a_batch_not_recorded_is_sent_again() -> None:
    """A batch whose Deferred fails is sent again, whole, after the report retry delay."""
    clock = Clock()
    headend, events = running(clock, failures=1)
    headend.send(fan_out())
    answered(clock)
    assert events.kinds() == [("statuses", 3), ("frames", 12)]
    clock.advance(RETRY)
    assert events.kinds() == [("statuses", 3), ("frames", 12), ("statuses", 3)]
    assert events.batches[2][2] == events.batches[0][2]
    assert events.batches[2][1] - events.batches[0][1] == pytest.approx(RETRY)


def test_batches_made_while_one_waits_to_be_sent_again_go_after_it_in_order() -> None:
    """Statuses made while an earlier batch waits for its resend follow it, one batch at a time,
    so the gateway never gets a later status before an earlier one."""
    clock = Clock()
    headend, events = running(clock, failures=1)
    headend.send(fan_out("fan-1"))
    answered(clock)  # fan-1's statuses fail once
    headend.send(fan_out("fan-2", range(3, 6)))
    answered(clock)  # fan-2's wait behind them
    headend.send(fan_out("fan-3", range(6, 9)))
    answered(clock)
    statuses = [items for kind, _, items in events.batches if kind == "statuses"]
    assert len(statuses) == 1
    clock.advance(RETRY)
    statuses = [items for kind, _, items in events.batches if kind == "statuses"]
    assert [{s.delivery_id.split("-d")[0] for s in items} for items in statuses] == [
        {"fan-1"},
        {"fan-1"},
        {"fan-2"},
        {"fan-3"},
    ]
    headend.send(fan_out("fan-4", range(9, 10)))
    answered(clock)  # the line is clear again: sent at once
    assert [kind for kind, _, _ in events.batches].count("statuses") == 5


def test_a_batch_never_recorded_is_dropped_after_the_retries() -> None:
    """After report_max_retries more attempts a batch is dropped with a warning."""
    clock = Clock()
    headend, events = running(clock, failures=100, report_max_retries=2)
    with capture_logs() as logs:
        headend.send(fan_out(meters=range(1)))
        answered(clock)
        for _ in range(5):
            clock.advance(RETRY)
    assert events.kinds() == [("statuses", 1), ("frames", 4)] * 3
    dropped = [e for e in logs if e["event"] == "simulator.events_dropped"]
    assert [(e["kind"], e["count"]) for e in dropped] == [
        ("delivery_statuses", 1),
        ("inbound_frames", 4),
    ]
    assert clock.getDelayedCalls() != []  # the event's start and end are still to come
    headend.stop()
    assert clock.getDelayedCalls() == []


def test_refused_items_are_logged_at_debug_level() -> None:
    """Items the gateway refused in a recorded batch are logged at debug, one by one."""
    clock = Clock()
    headend, events = running(clock)
    events.refuse.add(generated_esiid(1))
    with capture_logs() as logs:
        headend.send(fan_out())
        answered(clock)
    refused = [e for e in logs if e["event"] == "simulator.event_refused"]
    assert [(e["log_level"], e["esiid"]) for e in refused] == [
        ("debug", generated_esiid(1))
    ] * 5  # its delivery, and received and started from its two thermostats
    assert all("not served" in e["why"] for e in refused)
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


def test_batches_hold_at_most_event_batch_max_items() -> None:
    """Longer lists are cut into calls of at most event_batch_max items, in order."""
    clock = Clock()
    headend, events = running(clock)
    headend.event_batch_max = 2
    headend.send(fan_out())
    answered(clock)
    assert events.kinds() == [("statuses", 2), ("statuses", 1)] + [("frames", 2)] * 6
    delivered = [s.delivery_id for kind, _, items in events.batches[:2] for s in items]
    assert delivered == [f"fan-1-d{i}" for i in range(3)]


def test_stop_drops_collected_events_and_cancels_resends() -> None:
    """Once stopped, no batch is sent again and nothing is left on the clock."""
    clock = Clock()
    headend, events = running(clock, failures=1)
    headend.send(fan_out())
    answered(clock)
    headend.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert events.kinds() == [("statuses", 3), ("frames", 12)]


def test_an_event_sink_without_batch_methods_gets_each_event() -> None:
    """A sink with only the single-event methods gets every status and frame one by one."""

    class Singles:
        def __init__(self) -> None:
            self.events: list[Any] = []

        def _one(self, event: Any) -> Deferred[None]:
            self.events.append(event)
            return succeed(None)

        provisioning_report = delivery_status = inbound_frame = meter_event = _one

    clock = Clock()
    clock.advance(T0)
    headend = simulator(clock)
    sink = Singles()
    headend.start(sink)  # type: ignore[arg-type]
    headend.send(fan_out())
    answered(clock)
    assert sum(isinstance(e, DeliveryStatus) for e in sink.events) == 3
    assert sum(isinstance(e, InboundFrame) for e in sink.events) == 12


class _RecordingClient(SimulatedHeadEndClient):
    """hangw-sim's client, recording the batches the head-end model hands it."""

    batches: list[tuple[str, int]]

    def delivery_statuses(self, statuses: Any, batch_id: str = "") -> Deferred[list[str | None]]:
        self.batches.append(("statuses", len(statuses)))
        return super().delivery_statuses(statuses)

    def inbound_frames(self, frames: Any, batch_id: str = "") -> Deferred[list[str | None]]:
        self.batches.append(("frames", len(frames)))
        return super().inbound_frames(frames)


def test_hangw_sim_carries_fan_out_commands_and_reports_in_batches() -> None:
    """hangw-sim accepts a fan_out command and hands the answers to its client's batch methods."""
    clock = Clock()
    clock.advance(T0)
    headend = simulator(clock)
    client = _RecordingClient(object(), headend, clock)
    client.batches = []
    headend.start(client)
    acknowledged = client.application.command(fan_out())
    clock.advance(ACK)
    assert succeeded(acknowledged) is None
    clock.advance(ANSWER)
    clock.advance(0)
    assert client.batches == [("statuses", 3), ("frames", 12)]
    assert client.unacknowledged == 2
    headend.stop()


def test_provisioning_reports_still_go_one_by_one() -> None:
    """Provisioning reports keep using the single-event method alongside batches."""
    clock = Clock()
    headend, events = running(clock)
    headend.send(
        ProvisionDevice(
            "add-1", generated_esiid(1), "dev-1", "00124B0001ABCD01", bytes(18), bytes(16), 600
        )
    )
    for _ in range(10):
        clock.advance(1)
    assert [type(e) for e in events.singles] == [ProvisioningReport] * 4
    assert events.batches == []


def test_a_fan_out_cut_short_by_a_stop_is_delivered_when_sent_again(tmp_path: Any) -> None:
    """A fan-out accepted but not yet acknowledged when the head-end stopped is delivered when
    the gateway sends it again after the restart; one delivered before a stop is not again."""
    journal = str(tmp_path / "journal.sqlite")
    clock = Clock()
    before, _ = running(clock, journal_path=journal)
    cut_short = before.send(fan_out("fan-1"))
    delivered = before.send(fan_out("fan-2", range(3, 5)))
    clock.advance(ACK)  # both acknowledged and delivered ...
    assert succeeded(delivered) is None
    cut_short_again = before.send(fan_out("fan-3", range(5, 7)))
    clock.advance(ACK / 2)
    before.stop()  # ... but fan-3 was still waiting for its acknowledgement
    _case.failureResultOf(cut_short_again)
    assert succeeded(cut_short) is None
    after_clock = Clock()
    after, events = running(after_clock, journal_path=journal)
    resent = after.send(fan_out("fan-3", range(5, 7)))
    repeated = after.send(fan_out("fan-2", range(3, 5)))
    answered(after_clock)
    assert succeeded(resent) is None and succeeded(repeated) is None
    statuses = [
        s.delivery_id for kind, _, items in events.batches if kind == "statuses" for s in items
    ]
    assert sorted(statuses) == ["fan-3-d5", "fan-3-d6"]
