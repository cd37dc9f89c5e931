"""The wire adapter's bookkeeping, without sockets: report and batch ids, command timeouts and
credit, and the fan-outs it will not send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from adapters.commands import (
    DeliveryStatus,
    DeprovisionDevice,
    FanOutFrame,
    FanOutTarget,
    ProvisioningReport,
    ReportRefused,
)
from adapters.interfaces import IAdapterEvents
from adapters.wire.gateway import HeadEndUnavailable, WireAdapter

TDSP = "1039940674000"


class Config:
    tdsp_duns = TDSP
    options: dict[str, Any] = {"ack_timeout_s": 5}


@implementer(IAdapterEvents)
class SlowEvents:
    """Reports wait until the test fires them; ESI IDs in ``refuse`` are refused."""

    def __init__(self) -> None:
        self.calls: list[tuple[ProvisioningReport, Deferred[None]]] = []
        self.refuse: set[str] = set()
        self.batches: list[tuple[list[Any], str, Deferred[Any]]] = []

    def provisioning_report(self, report: ProvisioningReport) -> Deferred[None]:
        if report.esiid in self.refuse:
            return fail(ReportRefused(f"ESI ID {report.esiid} is another TDSP's"))
        done: Deferred[None] = Deferred()
        self.calls.append((report, done))
        return done

    delivery_status = inbound_frame = meter_event = provisioning_report

    def delivery_statuses(self, statuses: list[Any], batch_id: str = "") -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.batches.append((statuses, batch_id, done))
        return done

    inbound_frames = delivery_statuses


def status(event_id: str, esiid: str = "10443720000000001") -> dict[str, Any]:
    return {
        "type": "provisioning_status",
        "id": event_id,
        "command_id": "c-1",
        "esiid": esiid,
        "device_id": "dev-1",
        "status": "add-pending",
    }


def adapter(tmp_path: Path) -> tuple[WireAdapter, SlowEvents, MemoryReactorClock]:
    clock = MemoryReactorClock()
    wire = WireAdapter(Config(), clock, tmp_path)
    events = SlowEvents()
    wire.start(events)
    return wire, events, clock


def test_copies_of_a_report_arriving_together_are_applied_once(tmp_path: Path) -> None:
    """A copy arriving while the first is being recorded waits for it and is not applied."""
    wire, events, _ = adapter(tmp_path)
    answers: list[Any] = []
    wire.report(status("e-1")).addCallback(answers.append)
    wire.report(status("e-1")).addCallback(answers.append)
    assert len(events.calls) == 1
    events.calls[0][1].callback(None)
    assert answers == [None, None]
    wire.report(status("e-1")).addCallback(answers.append)
    assert len(events.calls) == 1 and answers == [None, None, None]


def test_a_refused_report_gets_the_same_refusal_again(tmp_path: Path) -> None:
    """A report refused once is refused again with the same reason, never acknowledged."""
    wire, events, _ = adapter(tmp_path)
    events.refuse.add("10443720000000005")
    answers: list[Any] = []
    wire.report(status("e-2", "10443720000000005")).addCallback(answers.append)
    wire.report(status("e-2", "10443720000000005")).addCallback(answers.append)
    assert answers[0] == answers[1] and "another TDSP" in answers[0]


def test_a_report_not_recorded_is_not_remembered(tmp_path: Path) -> None:
    """When the store could not record a report, no answer is given and a resend is applied."""
    wire, events, _ = adapter(tmp_path)
    failures: list[Any] = []
    wire.report(status("e-3")).addErrback(failures.append)
    events.calls[0][1].errback(ConnectionError("store unavailable"))
    assert len(failures) == 1
    wire.report(status("e-3"))
    assert len(events.calls) == 2


def test_a_command_waiting_for_credit_times_out(tmp_path: Path) -> None:
    """A command queued behind exhausted credit fails after ack_timeout_s instead of hanging."""
    wire, _, clock = adapter(tmp_path)

    class Link:
        peer = "test"
        sent: list[dict[str, Any]] = []

        def send(self, message: dict[str, Any]) -> None:
            self.sent.append(message)

    link = Link()
    wire.attach(link, credit=1)  # type: ignore[arg-type]
    first = wire.send(DeprovisionDevice("c-1", "10443720000000001", "dev-1", "000D6F0000000001"))
    second = wire.send(DeprovisionDevice("c-2", "10443720000000001", "dev-2", "000D6F0000000002"))
    assert [m["id"] for m in link.sent] == ["c-1"]
    failed: list[Any] = []
    second.addErrback(lambda f: failed.append(f.check(HeadEndUnavailable)))
    first.addErrback(lambda f: None)
    clock.advance(5.1)
    assert failed == [HeadEndUnavailable]
    wire.grant(1)
    assert [m["id"] for m in link.sent] == ["c-1"]  # the timed-out command is not sent late


class Link:
    peer = "test"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def batch(batch_id: str, *esiids: str) -> dict[str, Any]:
    return {
        "type": "delivery_statuses",
        "id": batch_id,
        "statuses": [
            {"delivery_id": f"d-{n}", "esiid": esiid, "state": "delivered"}
            for n, esiid in enumerate(esiids)
        ],
    }


@pytest.mark.parametrize(
    ("targets", "esiid", "problem"),
    [
        (0, "10443720000000001", "fan_out.targets must be a list of 1 to 5000"),
        (5001, "10443720000000001", "fan_out.targets must be a list of 1 to 5000"),
        (5000, "\U0001f50c" * 64, "fan_out is 1"),
    ],
)
def test_a_fan_out_the_protocol_cannot_carry_fails_at_once(
    tmp_path: Path, targets: int, esiid: str, problem: str
) -> None:
    """A fan-out with no targets, too many, or over the frame limit fails and is not sent."""
    wire, _, _ = adapter(tmp_path)
    link = Link()
    wire.attach(link, credit=10)  # type: ignore[arg-type]
    fan = FanOutFrame(
        "fan-1",
        "all",
        0x0701,
        bytes(8),
        tuple(FanOutTarget(esiid, f"d-{n}") for n in range(targets)),
    )
    failures: list[Any] = []
    wire.send(fan).addErrback(failures.append)
    [failure] = failures
    assert failure.check(ValueError) and problem in failure.getErrorMessage()
    assert link.sent == []


def test_copies_of_a_batch_are_applied_once_and_answered_alike(tmp_path: Path) -> None:
    """A batch copy arriving while the first is recorded, and one after, get its refusals."""
    wire, events, _ = adapter(tmp_path)
    answers: list[Any] = []
    wire.report_batch(batch("b-1", "E1", "E2", "E3")).addCallback(answers.append)
    wire.report_batch(batch("b-1", "E1", "E2", "E3")).addCallback(answers.append)
    [(statuses, batch_id, done)] = events.batches
    assert batch_id == "b-1" and all(isinstance(s, DeliveryStatus) for s in statuses)
    done.callback([None, "E2 is another TDSP's", None])
    wire.report_batch(batch("b-1", "E1", "E2", "E3")).addCallback(answers.append)
    assert answers == [((1, "E2 is another TDSP's"),)] * 3
    assert len(events.batches) == 1


def test_a_batch_refused_as_a_whole_refuses_every_item(tmp_path: Path) -> None:
    """ReportRefused for a whole batch comes back as every item refused with its reason."""
    wire, events, _ = adapter(tmp_path)
    answers: list[Any] = []
    wire.report_batch(batch("b-2", "E1", "E2")).addCallback(answers.append)
    events.batches[0][2].errback(ReportRefused("not this TDSP's head-end"))
    assert answers == [((0, "not this TDSP's head-end"), (1, "not this TDSP's head-end"))]


@pytest.mark.parametrize("outcome", [ConnectionError("store unavailable"), [None], None], ids=str)
def test_a_batch_not_recorded_is_not_answered_nor_remembered(tmp_path: Path, outcome: Any) -> None:
    """A batch not recorded (or answered wrongly) fails, and a copy is applied again."""
    wire, events, _ = adapter(tmp_path)
    failures: list[Any] = []
    wire.report_batch(batch("b-3", "E1", "E2")).addErrback(failures.append)
    done = events.batches[0][2]
    if isinstance(outcome, Exception):
        done.errback(outcome)
    else:
        done.callback(outcome)
    assert len(failures) == 1
    wire.report_batch(batch("b-3", "E1", "E2"))
    assert len(events.batches) == 2


def test_remembered_batches_count_their_refusals_against_the_limit(tmp_path: Path) -> None:
    """A remembered batch weighs one plus its refusals against the memory limit."""
    wire, events, _ = adapter(tmp_path)
    wire._seen_limit = 10
    wire.report_batch(batch("b-4", *["E"] * 8))
    events.batches[0][2].callback(["no"] * 8)
    wire.report(status("e-1"))
    events.calls[0][1].callback(None)
    assert "b-4" in wire._seen  # 9 + 1
    wire.report(status("e-2"))
    events.calls[1][1].callback(None)
    assert list(wire._seen) == ["e-1", "e-2"]  # 9 + 2 is over: the batch is forgotten
    wire.report_batch(batch("b-4", *["E"] * 8))
    assert len(events.batches) == 2


def test_a_command_sent_again_after_timeouts_is_queued_once(tmp_path: Path) -> None:
    """A command that times out waiting for credit leaves the queue: sent again 50 times, it is
    queued once, and goes out once when credit comes."""
    wire, _, clock = adapter(tmp_path)
    link = Link()
    wire.attach(link, credit=1)  # type: ignore[arg-type]
    first = wire.send(DeprovisionDevice("c-0", "10443720000000001", "dev-0", "000D6F0000000000"))
    first.addErrback(lambda _: None)
    command = DeprovisionDevice("c-1", "10443720000000001", "dev-1", "000D6F0000000001")
    failed: list[Any] = []
    for _ in range(50):  # the router hands it again after each timeout
        wire.send(command).addErrback(failed.append)
        clock.advance(5.1)
        assert len(wire._queue) == 0
    assert len(failed) == 50
    last = wire.send(command)
    assert list(wire._queue) == ["c-1"]
    wire.grant(100)
    assert [m["id"] for m in link.sent] == ["c-0", "c-1"] and wire._credit == 99
    wire.acknowledged("c-1")
    assert last.called


def test_an_ack_of_an_earlier_copy_takes_the_queued_copy_out(tmp_path: Path) -> None:
    """A late ack for a command sent again and waiting for credit fires it and it is not sent."""
    wire, _, clock = adapter(tmp_path)
    link = Link()
    wire.attach(link, credit=1)  # type: ignore[arg-type]
    command = DeprovisionDevice("c-1", "10443720000000001", "dev-1", "000D6F0000000001")
    wire.send(command).addErrback(lambda _: None)
    clock.advance(5.1)  # no ack in time; its unit of credit stays spent
    again = wire.send(command)
    wire.acknowledged("c-1")  # the first copy's ack, late
    assert again.called and not wire._queue
    wire.grant(1)
    assert [m["id"] for m in link.sent] == ["c-1"]
