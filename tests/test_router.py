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
from tests.gateway_harness import E_OWN, INSTALL_CODE, REP_A, TDSP
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


def pending_kinds(service: DeviceService, device_id: str) -> list[str]:
    """The kinds of the device's commands still waiting in the outbox, oldest first."""
    pending = service.store.transaction(service.pending_commands_thd, TDSP, 100, frozenset())
    return [type(c).__name__ for c in pending if c.device_id == device_id]


def timed_out_add(tmp_path: Path, *, away: bool) -> tuple[DeviceService, HeldAdapter, str]:
    """An add handed to the adapter (held, or refused when ``away``) until its timeout ran out."""
    service, clock = make_service(tmp_path / "s.sqlite", command_timeout_s=30)
    adapter = HeldAdapter()
    adapter.away = away
    router = Router(service, {TDSP: adapter}, clock)
    service._on_outbox = router.wake
    service.handed_out = router.handed_out  # as the gateway wires it
    router.startService()
    request = AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
    device = resolve(service.add_device(REP, E_OWN, request))
    turn(clock)
    assert len(adapter.sent) == 1
    clock.advance(31)
    (moved,) = resolve(service.fire_timers())
    assert moved.status.value == "Add Failed"
    router.stopService()
    return service, adapter, device.device_id


def test_an_add_in_flight_when_it_timed_out_is_taken_back(tmp_path: Path) -> None:
    """A provision handed out but not yet acknowledged at its timeout is followed by a
    de-provision: the head-end may still add the device after the gateway freed its slot."""
    service, adapter, device_id = timed_out_add(tmp_path, away=False)
    adapter.acknowledge(1)  # the head-end took it after all
    assert pending_kinds(service, device_id) == ["DeprovisionDevice"]


def test_an_add_whose_sending_failed_is_taken_back_after_its_timeout(tmp_path: Path) -> None:
    """A provision whose send failed (its acknowledgement may be what was lost) is taken back."""
    service, _, device_id = timed_out_add(tmp_path, away=True)
    assert pending_kinds(service, device_id) == ["DeprovisionDevice"]


def test_an_add_queued_before_a_restart_is_taken_back_after_its_timeout(tmp_path: Path) -> None:
    """A provision queued in an earlier run may have gone out then: its timeout takes it back."""
    earlier, clock = make_service(tmp_path / "s.sqlite", command_timeout_s=30)
    request = AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
    device = resolve(earlier.add_device(REP, E_OWN, request))
    clock.advance(31)
    restarted = DeviceService(
        earlier.store,
        earlier._box,
        clock,
        earlier._config,  # a new run, started later
    )
    (moved,) = resolve(restarted.fire_timers())
    assert moved.status.value == "Add Failed"
    assert pending_kinds(restarted, device.device_id) == ["DeprovisionDevice"]


def test_an_add_never_handed_out_is_dropped_at_its_timeout(tmp_path: Path) -> None:
    """A provision this run never handed out, queued in this run, is abandoned: nothing goes."""
    service, clock = make_service(tmp_path / "s.sqlite", command_timeout_s=30)
    router = Router(service, {TDSP: HeldAdapter()}, clock)
    service.handed_out = router.handed_out
    request = AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
    device = resolve(service.add_device(REP, E_OWN, request))
    clock.advance(31)
    (moved,) = resolve(service.fire_timers())
    assert moved.status.value == "Add Failed"
    assert pending_kinds(service, device.device_id) == []


def test_a_wake_during_the_last_drain_starts_no_drain_after_stop(tmp_path: Path) -> None:
    """A command queued while the router's last drain runs is left for the next start: no drain
    reads the outbox after stopService (the store stops right after it)."""
    service, clock = make_service(tmp_path / "s.sqlite")
    real_run = service.store.run

    def slow_run(thd: Any, *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        clock.callLater(0.5, lambda: real_run(thd, *args).chainDeferred(done))
        return done

    service.store.run = slow_run  # type: ignore[method-assign]
    router = Router(service, {TDSP: HeldAdapter()}, clock)
    router.startService()
    clock.advance(0)  # the first drain is reading the outbox
    router.wake()  # a command was queued meanwhile
    stopped = router.stopService()
    assert stopped is not None
    reads: list[object] = []
    read = service.pending_after_thd
    service.pending_after_thd = lambda *a: (reads.append(a), read(*a))[1]  # type: ignore[method-assign]
    for _ in range(4):
        clock.advance(0.5)
    assert reads == []
