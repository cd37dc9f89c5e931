"""The router's flow from the outbox to an adapter: a bounded window of commands in flight, and
one quiet back-off (not a re-send of the whole backlog) while the head-end is away."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from zope.interface import implementer

from adapters.commands import Command
from adapters.interfaces import IHeadEndAdapter
from hangw.devices import AddDeviceRequest, DeviceService
from hangw.domain import Meter, Party, Role
from hangw.meters import upsert_meters_thd
from hangw.router import Router
from tests.gateway_harness import INSTALL_CODE, REP_A, TDSP
from tests.service_harness import make_service, resolve

REP = Party(REP_A, Role.REP, "demo-rep-a", "f" * 64)


@implementer(IHeadEndAdapter)
class HeldAdapter:
    """Keeps every send waiting until the test acknowledges it; or refuses all (``away``)."""

    tdsp_duns = TDSP

    def __init__(self) -> None:
        self.waiting: dict[str, Deferred[None]] = {}
        self.sent: list[str] = []
        self.away = False

    def start(self, events: object) -> Deferred[None]:
        return Deferred()

    def stop(self) -> Deferred[None]:
        return Deferred()

    def query(self, query: object) -> Deferred[object]:
        return Deferred()

    def send(self, command: Command) -> Deferred[None]:
        self.sent.append(command.command_id)
        if self.away:
            return fail(ConnectionError("the head-end is not connected"))
        done: Deferred[None] = Deferred()
        self.waiting[command.command_id] = done
        return done

    def acknowledge(self, count: int) -> None:
        for command_id in list(self.waiting)[:count]:
            self.waiting.pop(command_id).callback(None)


class CountingOutbox:
    """An outbox with nothing in it that counts how often the router reads it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads = 0

    def pending_after_thd(
        self, conn: Any, tdsp_duns: str, limit: int, skip: frozenset[str], after: int
    ) -> tuple[list[Command], int]:
        self.reads += 1
        return [], after

    def retire_many_thd(self, conn: Any, command_ids: list[str], now: float) -> None:
        raise AssertionError("nothing was sent from this outbox")


def backlog(tmp_path: Path, devices: int) -> tuple[DeviceService, Clock]:
    service, clock = make_service(tmp_path / "s.sqlite")
    meters = [
        Meter(f"1077{i:013d}", f"R{i}", TDSP, REP_A, None, "GE-I210+c", "5.2.1", True, True)
        for i in range(devices // 5 + 1)
    ]
    service.store.transaction(upsert_meters_thd, meters)
    for n in range(devices):
        mac = f"000D6F77{n:08X}"
        resolve(
            service.add_device(
                REP, meters[n // 5].esiid, AddDeviceRequest(mac, INSTALL_CODE, "thermostat")
            )
        )
    return service, clock


def turn(clock: Clock, times: int = 20) -> None:
    for _ in range(times):
        clock.advance(0)


def test_no_more_than_the_window_is_in_flight(tmp_path: Path) -> None:
    """With 250 commands waiting and a window of 100, the adapter holds at most 100 at a time;
    as acknowledgements come the rest follow, each sent once."""
    service, clock = backlog(tmp_path, 250)
    adapter = HeldAdapter()
    router = Router(service, {TDSP: adapter}, clock, batch=40, window=100)
    router.startService()
    turn(clock)
    assert len(adapter.waiting) == 100
    adapter.acknowledge(60)
    turn(clock)
    assert len(adapter.waiting) == 100
    while adapter.waiting:
        adapter.acknowledge(len(adapter.waiting))
        turn(clock)
    assert len(adapter.sent) == len(set(adapter.sent)) == 250
    router.stopService()


def test_an_absent_head_end_costs_one_batch_and_one_warning(tmp_path: Path) -> None:
    """While the head-end is away the router stops at the first refused batch, logs the outage
    once, and sends again only after the back-off."""
    service, clock = backlog(tmp_path, 250)
    adapter = HeldAdapter()
    adapter.away = True
    router = Router(service, {TDSP: adapter}, clock, batch=40, window=1000)
    with capture_logs() as logs:
        router.startService()
        turn(clock)
    assert len(adapter.sent) == 40
    warnings = [line for line in logs if line["log_level"] == "warning"]
    assert [line["event"] for line in warnings] == ["router.send_failed"]
    adapter.away = False
    clock.advance(1.0)  # past the first back-off; the poll reads the outbox again
    turn(clock)
    clock.advance(2.0)
    turn(clock)
    assert len(set(adapter.sent)) == 250
    router.stopService()


def test_a_drain_reads_only_the_outbox_a_command_was_queued_in(tmp_path: Path) -> None:
    """A drain reads the outbox it was woken for (and every one on the poll), not idle ones."""
    service, clock = backlog(tmp_path, 5)
    other = CountingOutbox(service.store)
    adapter = HeldAdapter()
    router = Router(service, {TDSP: adapter}, clock, sources=[other], poll_interval_s=60)
    service._on_outbox = functools.partial(router.wake, source=service)  # as the gateway wires it
    router.startService()  # the first poll reads every outbox
    turn(clock)
    assert (len(adapter.sent), other.reads) == (5, 1)
    for n in range(3):  # on the second meter, which backlog() left empty
        request = AddDeviceRequest(f"000D6F88{n:08X}", INSTALL_CODE, "thermostat")
        resolve(service.add_device(REP, f"1077{1:013d}", request))
        turn(clock)
    assert (len(adapter.sent), other.reads) == (8, 1)
    router.wake(source=other)
    turn(clock)
    assert other.reads == 2
    clock.advance(60)
    turn(clock)
    assert other.reads == 3
    router.stopService()
