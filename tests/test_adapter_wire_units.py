"""The wire adapter's bookkeeping, without sockets: report ids, command timeouts and credit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from adapters.commands import DeprovisionDevice, ProvisioningReport, ReportRefused
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

    def provisioning_report(self, report: ProvisioningReport) -> Deferred[None]:
        if report.esiid in self.refuse:
            return fail(ReportRefused(f"ESI ID {report.esiid} is another TDSP's"))
        done: Deferred[None] = Deferred()
        self.calls.append((report, done))
        return done

    delivery_status = inbound_frame = meter_event = provisioning_report


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
