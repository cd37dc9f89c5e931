"""The in-process simulated head-end: timing, faults, deduplication, journal, configuration."""

from __future__ import annotations

import sqlite3
import tomllib
from contextlib import closing
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from adapters.commands import (
    DeprovisionDevice,
    HeadEndStatus,
    PingDevice,
    PingEsi,
    PingResult,
    ProvisionDevice,
    ProvisioningReport,
    QueryFailed,
)
from adapters.interfaces import IAdapterEvents, IHeadEndAdapter
from hangw.provisioning import (
    INITIAL_STATUS,
    DeviceStatus,
    Event,
    IllegalTransition,
    next_status,
)
from sep1.messages import DeviceClass
from simulators.fleet import DeviceKind, generated_esiid, generated_mac, kind_of_mac
from simulators.inprocess import (
    Fault,
    HeadEndUnreachable,
    SimulatedHeadEnd,
    SimulatorConfig,
    SimulatorConfigError,
    planned_steps,
)

TDSP = "1039940674000"
ESIID = "10443720000000001"
MAC = "000D6F0000001000"
INSTALL_CODE = bytes.fromhex("83FED3407A939723A5C639B26916D505C3B5")
LINK_KEY = bytes.fromhex("66B6900981E1EE3CA4206B6B861C02BB")

S = HeadEndStatus
#: The head-end statuses as events of the gateway's provisioning table (the test's own copy).
HEAD_END_STATUS_TO_TABLE_EVENT: dict[HeadEndStatus, Event] = {
    S.ACKNOWLEDGED: Event.TDSP_ACKNOWLEDGED,
    S.ADD_PENDING: Event.ADD_PENDING,
    S.METER_READY: Event.METER_READY,
    S.DEVICE_JOINED: Event.DEVICE_JOINED,
    S.ADD_REJECTED: Event.ADD_REJECTED,
    S.ADD_FAILED: Event.ADD_FAILED,
    S.REMOVE_PENDING: Event.REMOVE_PENDING,
    S.REMOVE_REJECTED: Event.REMOVE_REJECTED,
    S.REMOVE_FAILED: Event.REMOVE_FAILED,
    S.DEVICE_REMOVED: Event.DEVICE_REMOVED,
}


@implementer(IAdapterEvents)
class RecordingEvents:
    """Records every report with the clock's time; fails the first ``failures`` calls."""

    def __init__(self, clock: Clock, failures: int = 0) -> None:
        self.clock = clock
        self.failures = failures
        self.attempts = 0
        self.timed: list[tuple[float, ProvisioningReport]] = []
        #: Delivery statuses, inbound frames and meter events, with the clock's time.
        self.others: list[tuple[float, Any]] = []

    def provisioning_report(self, report: ProvisioningReport) -> Deferred[None]:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            return fail(RuntimeError("store unavailable"))
        self.timed.append((self.clock.seconds(), report))
        return succeed(None)

    def _other(self, event: Any) -> Deferred[None]:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            return fail(RuntimeError("store unavailable"))
        self.others.append((self.clock.seconds(), event))
        return succeed(None)

    delivery_status = inbound_frame = meter_event = _other

    def _batch(self, events: list[Any], batch_id: str = "") -> Deferred[list[str | None]]:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            return fail(RuntimeError("store unavailable"))
        now = self.clock.seconds()
        self.others.extend((now, event) for event in events)
        return succeed([None] * len(events))

    delivery_statuses = inbound_frames = _batch

    @property
    def statuses(self) -> list[HeadEndStatus]:
        return [report.status for _, report in self.timed]

    def statuses_of(self, command_id: str) -> list[HeadEndStatus]:
        return [report.status for _, report in self.timed if report.command_id == command_id]


def config(**options: Any) -> SimulatorConfig:
    return SimulatorConfig(tdsp_duns=TDSP, **options)


def running(clock: Clock, **options: Any) -> tuple[SimulatedHeadEnd, RecordingEvents]:
    simulator = SimulatedHeadEnd(config(**options), clock)
    events = RecordingEvents(clock)
    simulator.start(events)
    return simulator, events


def add(n: int = 0, mac: str = MAC, esiid: str = ESIID) -> ProvisionDevice:
    return ProvisionDevice(
        command_id=f"add-{n}",
        esiid=esiid,
        device_id=f"device-{n}",
        mac=mac,
        install_code=INSTALL_CODE,
        link_key=LINK_KEY,
        join_window_s=600,
    )


def remove(n: int = 0, mac: str = MAC, esiid: str = ESIID) -> DeprovisionDevice:
    return DeprovisionDevice(
        command_id=f"remove-{n}", esiid=esiid, device_id=f"device-{n}", mac=mac
    )


def run(clock: Clock, seconds: float = 60.0) -> None:
    """Advance the clock call by call, exactly to each due time, for at most ``seconds``."""
    end = clock.seconds() + seconds
    while calls := [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]:
        clock.advance(max(0.0, min(calls) - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


# Deferred result helpers without a reactor
_case = SynchronousTestCase()
succeeded = _case.successResultOf
failed = _case.failureResultOf
no_result = _case.assertNoResult


def test_simulator_and_fake_provide_their_interfaces() -> None:
    """SimulatedHeadEnd provides IHeadEndAdapter and the recording fake provides IAdapterEvents."""
    clock = Clock()
    simulator = SimulatedHeadEnd(config(), clock)
    assert verifyClass(IHeadEndAdapter, SimulatedHeadEnd)
    assert verifyObject(IHeadEndAdapter, simulator)
    assert verifyObject(IAdapterEvents, RecordingEvents(clock))
    assert simulator.tdsp_duns == TDSP


def test_entry_point_builds_simulator_from_gateway_adapter_config(tmp_path: Path) -> None:
    """The hangw.adapters entry point 'simulator' builds from (adapter config, clock, state_dir)."""
    (found,) = [ep for ep in entry_points(group="hangw.adapters") if ep.name == "simulator"]
    factory = found.load()
    assert factory is SimulatedHeadEnd
    adapter_config = SimpleNamespace(
        tdsp_duns=TDSP, kind="simulator", options={"join_delay_s": 3, "fault": "fail"}
    )
    simulator = factory(adapter_config, Clock(), tmp_path / "state")
    assert verifyObject(IHeadEndAdapter, simulator)
    assert simulator.config == config(join_delay_s=3.0, fault=Fault.FAIL)
    assert simulator.journal_path == tmp_path / "state" / f"simulator-{TDSP}.sqlite"


def test_gateway_adapter_config_errors_name_the_toml_key() -> None:
    """A bad option in [adapters.<duns>] is a ValueError naming adapters.<duns>.<key>."""
    adapter_config = SimpleNamespace(
        tdsp_duns=TDSP, kind="simulator", options={"join_delay_s": "x"}
    )
    with pytest.raises(ValueError, match=rf"^adapters\.{TDSP}\.join_delay_s must be a number"):
        SimulatedHeadEnd(adapter_config, Clock())


def test_add_reports_in_order_at_configured_times() -> None:
    """A provision is acknowledged at 0.2 s, then pending 0.7 s, meter ready 1.2 s, joined 2.2 s."""
    clock = Clock()
    simulator, events = running(clock)
    acknowledged = simulator.send(add())
    clock.advance(0.19)
    no_result(acknowledged)
    assert events.timed == []
    run(clock, 10)
    assert succeeded(acknowledged) is None
    assert [(round(t, 6), r.status) for t, r in events.timed] == [
        (0.2, S.ACKNOWLEDGED),
        (0.7, S.ADD_PENDING),
        (1.2, S.METER_READY),
        (2.2, S.DEVICE_JOINED),
    ]
    assert {(r.command_id, r.esiid, r.device_id, r.reason) for _, r in events.timed} == {
        ("add-0", ESIID, "device-0", "")
    }
    assert simulator.unfinished == []
    assert clock.getDelayedCalls() == []


def test_delays_are_taken_from_the_config() -> None:
    """Each step waits its own configured delay after the previous step."""
    clock = Clock()
    simulator, events = running(
        clock, ack_delay_s=1, pending_delay_s=2, meter_ready_delay_s=3, join_delay_s=4
    )
    simulator.send(add())
    clock.pump([0.5] * 40)
    assert [t for t, _ in events.timed] == [1.0, 3.0, 6.0, 10.0]


def test_remove_reports_in_order_at_configured_times() -> None:
    """A de-provision is acknowledged, then remove pending, then device removed."""
    clock = Clock()
    simulator, events = running(clock, remove_delay_s=0.3)
    acknowledged = simulator.send(remove())
    run(clock, 5)
    assert succeeded(acknowledged) is None
    assert [(round(t, 6), r.status) for t, r in events.timed] == [
        (0.2, S.ACKNOWLEDGED),
        (0.7, S.REMOVE_PENDING),
        (1.0, S.DEVICE_REMOVED),
    ]


EXPECTED_FAULT_REPORTS = {
    ("add", Fault.REJECT): [S.ACKNOWLEDGED, S.ADD_REJECTED],
    ("add", Fault.FAIL): [S.ACKNOWLEDGED, S.ADD_PENDING, S.ADD_FAILED],
    ("add", Fault.NO_ANSWER): [S.ACKNOWLEDGED],
    ("add", Fault.NEVER_JOIN): [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY],
    ("remove", Fault.REJECT): [S.ACKNOWLEDGED, S.REMOVE_REJECTED],
    ("remove", Fault.FAIL): [S.ACKNOWLEDGED, S.REMOVE_PENDING, S.REMOVE_FAILED],
    ("remove", Fault.NO_ANSWER): [S.ACKNOWLEDGED],
    ("remove", Fault.NEVER_JOIN): [S.ACKNOWLEDGED, S.REMOVE_PENDING, S.DEVICE_REMOVED],
}


@pytest.mark.parametrize(("action", "fault"), sorted(EXPECTED_FAULT_REPORTS))
@pytest.mark.parametrize("where", ["simulator", "mac", "esiid"])
def test_fault_changes_the_reports(action: str, fault: Fault, where: str) -> None:
    """Each fault, set for the simulator, a MAC or an ESI ID, gives its own report sequence."""
    by_where: dict[str, dict[str, Any]] = {
        "simulator": {"fault": fault},
        "mac": {"faults_by_mac": {"00:0d:6f:00:00:00:10:00": fault}},
        "esiid": {"faults_by_esiid": {ESIID: fault}},
    }
    options = by_where[where]
    clock = Clock()
    simulator, events = running(clock, **options)
    command = add() if action == "add" else remove()
    other = add(9, mac="000D6F00000010FF", esiid="10443720000000002")
    acknowledged = simulator.send(command)
    simulator.send(other)
    run(clock, 60)
    assert succeeded(acknowledged) is None
    assert events.statuses_of(command.command_id) == EXPECTED_FAULT_REPORTS[(action, fault)]
    reasons = [r.reason for _, r in events.timed if r.command_id == command.command_id]
    if fault in (Fault.REJECT, Fault.FAIL):
        assert reasons[-1].startswith("simulated: ")
        assert all(reason == "" for reason in reasons[:-1])
    else:
        assert set(reasons) == {""}
    expected_other = (
        EXPECTED_FAULT_REPORTS[("add", fault)]
        if where == "simulator"
        else [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
    )
    assert events.statuses_of("add-9") == expected_other
    assert clock.getDelayedCalls() == []


def test_fault_for_a_mac_overrides_esiid_and_simulator() -> None:
    """A MAC's fault wins over its ESI ID's, which wins over the simulator's ('none' included)."""
    clock = Clock()
    simulator, events = running(
        clock,
        fault="reject",
        faults_by_esiid={ESIID: "fail"},
        faults_by_mac={MAC: "none"},
    )
    simulator.send(add(1, mac=MAC))
    simulator.send(add(2, mac="000D6F0000002000"))
    simulator.send(add(3, mac="000D6F0000003000", esiid="10443720000000002"))
    run(clock, 10)
    assert events.statuses_of("add-1")[-1] is S.DEVICE_JOINED
    assert events.statuses_of("add-2")[-1] is S.ADD_FAILED
    assert events.statuses_of("add-3")[-1] is S.ADD_REJECTED


def test_unreachable_fails_the_send_deferred() -> None:
    """With the head-end unreachable, send fails with a ConnectionError and nothing is applied."""
    clock = Clock()
    simulator, events = running(clock, fault="unreachable")
    result = failed(simulator.send(add()), HeadEndUnreachable)
    assert isinstance(result.value, ConnectionError)
    run(clock, 10)
    assert events.timed == []
    assert simulator.received == []
    assert simulator.applied_count("add-0") == 0
    assert clock.getDelayedCalls() == []

    simulator.set_fault("none")  # the head-end comes back; the gateway sends the command again
    acknowledged = simulator.send(add())
    run(clock, 10)
    assert succeeded(acknowledged) is None
    assert events.statuses[-1] is S.DEVICE_JOINED
    assert simulator.applied_count("add-0") == 1


def test_unreachable_for_one_mac_only() -> None:
    """An unreachable fault set on one MAC fails only that device's commands."""
    clock = Clock()
    simulator, _ = running(clock, faults_by_mac={MAC: "unreachable"})
    failed(simulator.send(add(1)), HeadEndUnreachable)
    other = simulator.send(add(2, mac="000D6F0000002000"))
    run(clock, 1)
    assert succeeded(other) is None


def test_duplicates_are_acknowledged_again_and_applied_once() -> None:
    """A command sent again (at-least-once) is acknowledged each time but reported only once."""
    clock = Clock()
    simulator, events = running(clock)
    command = add()
    first = simulator.send(command)
    clock.advance(0.1)
    second = simulator.send(command)
    run(clock, 10)
    third = simulator.send(command)
    no_result(third)
    clock.advance(0.2)
    for acknowledged in (first, second, third):
        assert succeeded(acknowledged) is None
    assert events.statuses == [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
    assert simulator.received == [command]
    assert simulator.applied_count(command.command_id) == 1
    assert simulator.send_count(command.command_id) == 3


def test_stop_cancels_every_delayed_call() -> None:
    """stop() leaves no delayed call and fails the sends still waiting for their ack."""
    clock = Clock()
    simulator, events = running(clock)
    waiting = [simulator.send(add(n, mac=f"000D6F00000010{n:02X}")) for n in range(5)]
    clock.advance(0.2)
    duplicate = simulator.send(add(0, mac="000D6F0000001000"))
    late = simulator.send(remove(7))
    clock.advance(0.1)
    assert clock.getDelayedCalls() != []
    succeeded(simulator.stop())
    assert clock.getDelayedCalls() == []
    for acknowledged in waiting:
        assert succeeded(acknowledged) is None  # acknowledged before the stop
    failed(duplicate, HeadEndUnreachable)
    failed(late, HeadEndUnreachable)
    failed(simulator.send(add(8)), HeadEndUnreachable)
    count = len(events.timed)
    run(clock, 10)
    assert len(events.timed) == count


def test_steps_due_in_one_tick_share_one_timer() -> None:
    """Commands sent within one step tick wait on one delayed call and still report on time."""
    clock = Clock()
    simulator, events = running(clock)
    for n in range(50):
        simulator.send(add(n, mac=f"000D6F{n:010X}"))
        clock.advance(0.0001)
    assert len(clock.getDelayedCalls()) == 1
    run(clock, 10)
    assert len(events.timed) == 50 * 4
    for n in range(50):
        assert events.statuses_of(f"add-{n}") == [
            S.ACKNOWLEDGED,
            S.ADD_PENDING,
            S.METER_READY,
            S.DEVICE_JOINED,
        ]
    assert {round(t, 6) for t, _ in events.timed} == {0.2, 0.7, 1.2, 2.2}


def test_start_after_stop_resumes_in_memory() -> None:
    """Without a journal, stop then start continues unfinished commands from their step."""
    clock = Clock()
    simulator, events = running(clock)
    simulator.send(add())
    clock.pump([0.2, 0.5])  # acknowledged and pending
    simulator.stop()
    clock.advance(100)
    simulator.start(events)
    run(clock, 10)
    assert events.statuses == [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
    assert [round(t, 6) for t, _ in events.timed][2:] == [100.7, 101.7]


def test_journal_resumes_after_restart(tmp_path: Path) -> None:
    """With a journal, a new simulator on the same file finishes what the old one started."""
    journal = str(tmp_path / "journal" / "head-end.sqlite")
    clock = Clock()
    before, events = running(clock, journal_path=journal)
    before.send(add(1))
    before.send(remove(2))
    before.send(add(3, mac="000D6F0000003000"))
    clock.pump([0.2, 0.5])  # each acknowledged and pending
    assert events.statuses_of("add-1") == [S.ACKNOWLEDGED, S.ADD_PENDING]
    before.stop()
    assert clock.getDelayedCalls() == []

    clock = Clock()
    after = SimulatedHeadEnd(config(journal_path=journal), clock)
    resumed = RecordingEvents(clock)
    after.start(resumed)
    assert sorted(after.unfinished) == ["add-1", "add-3", "remove-2"]
    duplicate = after.send(add(1))  # the gateway sends again what it never saw acknowledged
    run(clock, 10)
    assert succeeded(duplicate) is None
    assert resumed.statuses_of("add-1") == [S.METER_READY, S.DEVICE_JOINED]
    assert resumed.statuses_of("add-3") == [S.METER_READY, S.DEVICE_JOINED]
    assert resumed.statuses_of("remove-2") == [S.DEVICE_REMOVED]
    assert after.applied_count("add-1") == 1
    assert after.received == []
    after.stop()

    clock = Clock()
    again = SimulatedHeadEnd(config(journal_path=journal), clock)
    again.start(RecordingEvents(clock))
    assert again.unfinished == []
    assert clock.getDelayedCalls() == []
    again.stop()
    assert INSTALL_CODE not in Path(journal).read_bytes()
    assert INSTALL_CODE.hex().encode() not in Path(journal).read_bytes().lower()


def journaled(path: str) -> dict[str, int]:
    """command id -> the next step, as committed to the journal file (read from outside)."""
    with closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT command_id, next_step FROM commands").fetchall())


def test_journal_commits_a_record_before_its_acknowledgement(tmp_path: Path) -> None:
    """An acknowledgement due before the journal's next commit commits the record first."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    simulator, _ = running(clock, journal_path=journal, ack_delay_s=0.01)
    acknowledged = simulator.send(add())
    assert journaled(journal) == {}  # still in memory, waiting for company
    clock.advance(0.01)
    assert succeeded(acknowledged) is None
    assert journaled(journal) == {"add-0": 0}
    simulator.stop()


def test_journal_commits_the_writes_of_a_busy_spell_together(tmp_path: Path) -> None:
    """Records and steps written within flush_after_s of the first share one commit after it."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    simulator, events = running(clock, journal_path=journal, ack_delay_s=0.2)
    simulator.send(add(1))
    clock.advance(0.03)
    simulator.send(add(2, mac="000D6F0000002000"))
    assert journaled(journal) == {}
    clock.advance(0.02)  # flush_after_s after the first write
    assert journaled(journal) == {"add-1": 0, "add-2": 0}
    clock.advance(0.15)  # add-1 acknowledged: its step is written, committed a little later
    assert events.statuses_of("add-1") == [S.ACKNOWLEDGED]
    assert journaled(journal)["add-1"] == 0
    clock.advance(0.05)
    assert journaled(journal)["add-1"] == 1
    simulator.stop()


def test_journal_keeps_deduplicating_finished_commands(tmp_path: Path) -> None:
    """A command finished before a restart is acknowledged but not applied again after it."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    before, _ = running(clock, journal_path=journal)
    before.send(add())
    run(clock, 10)
    before.stop()

    clock = Clock()
    after, events = running(clock, journal_path=journal)
    acknowledged = after.send(add())
    run(clock, 10)
    assert succeeded(acknowledged) is None
    assert events.timed == []
    assert after.received == []
    after.stop()


def test_journal_resumes_an_unacknowledged_command(tmp_path: Path) -> None:
    """A command accepted but not yet acknowledged when stopped is acknowledged after restart."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    before, _ = running(clock, journal_path=journal)
    failed_ack = before.send(add())
    before.stop()
    failed(failed_ack, HeadEndUnreachable)

    clock = Clock()
    after, events = running(clock, journal_path=journal)
    run(clock, 10)
    assert events.statuses == [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
    after.stop()


def pinged(simulator: SimulatedHeadEnd, clock: Clock, esiid: str, mac: str) -> bool:
    """Whether the simulator's meter answers a ping of the device (the fleet as a user sees it)."""
    answer = simulator.query(PingDevice(esiid, mac))
    clock.advance(1)
    result = succeeded(answer)
    assert isinstance(result, PingResult)
    return result.reachable


def test_journal_restart_keeps_the_devices_commands_joined_and_removed(tmp_path: Path) -> None:
    """After a restart on its journal the meters hold the devices joined, and not those removed."""
    journal = str(tmp_path / "head-end.sqlite")
    esiid = generated_esiid(0)
    joined_mac = "000D6F0000004000"
    made = generated_mac(0, 1)  # a device the meter came with, removed by a command
    options: dict[str, Any] = {"journal_path": journal, "meters": 1, "devices_per_meter": 2}
    clock = Clock()
    before, events = running(clock, **options)
    before.send(add(1, mac=joined_mac, esiid=esiid))
    before.send(remove(2, mac=made, esiid=esiid))
    run(clock, 10)
    assert events.statuses_of("add-1")[-1] is S.DEVICE_JOINED
    assert events.statuses_of("remove-2")[-1] is S.DEVICE_REMOVED
    assert pinged(before, clock, esiid, joined_mac)
    assert not pinged(before, clock, esiid, made)
    before.stop()

    clock = Clock()
    after, _ = running(clock, **options)
    assert pinged(after, clock, esiid, joined_mac)
    assert not pinged(after, clock, esiid, made)
    assert pinged(after, clock, esiid, generated_mac(0, 0))  # untouched, still there
    after.stop()


def test_a_device_behaves_as_its_type_and_keeps_it_after_a_restart(tmp_path: Path) -> None:
    """A device provisioned as a thermostat is one on the meter, though its MAC would make it a
    switch, and it still is after a restart on the journal."""
    journal = str(tmp_path / "head-end.sqlite")
    mac = "000D6F000000103E"  # by the MAC rule alone: a load control switch
    assert kind_of_mac(mac) is DeviceKind.LOAD_CONTROL_SWITCH
    command = replace(add(1, mac=mac), device_type="thermostat")
    clock = Clock()
    before, _ = running(clock, journal_path=journal)
    before.send(command)
    run(clock, 10)
    meter = before.fleet.meter(ESIID)
    assert meter is not None and meter.devices[mac].kind is DeviceKind.THERMOSTAT
    assert meter.devices[mac].device_class & DeviceClass.HVAC_COMPRESSOR_OR_FURNACE
    before.stop()

    clock = Clock()
    after, _ = running(clock, journal_path=journal)
    meter = after.fleet.meter(ESIID)
    assert meter is not None and meter.devices[mac].kind is DeviceKind.THERMOSTAT
    after.stop()


def test_a_journal_from_before_device_types_is_taken_and_resumed(tmp_path: Path) -> None:
    """A journal whose commands table has no device_type column gets one, and its unfinished
    add resumes (as a device known by its MAC)."""
    journal = tmp_path / "head-end.sqlite"
    with closing(sqlite3.connect(journal)) as db:
        db.execute(
            "CREATE TABLE commands (command_id TEXT PRIMARY KEY, action TEXT NOT NULL,"
            " esiid TEXT NOT NULL, device_id TEXT NOT NULL, mac TEXT NOT NULL,"
            " fault TEXT NOT NULL, next_step INTEGER NOT NULL, step_at REAL NOT NULL,"
            " finished INTEGER NOT NULL)"
        )
        db.execute(
            "INSERT INTO commands VALUES ('add-9', 'add', ?, 'device-9', ?, 'none', 1, 0, 0)",
            (ESIID, MAC),
        )
        db.commit()
    clock = Clock()
    simulator, events = running(clock, journal_path=str(journal))
    run(clock, 10)
    assert events.statuses_of("add-9") == [S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
    assert pinged(simulator, clock, ESIID, MAC)
    simulator.stop()


def test_a_removal_ends_the_unfinished_add_of_its_device() -> None:
    """A device removed while its add is pending never joins: the add reports nothing more."""
    clock = Clock()
    simulator, events = running(clock)
    simulator.send(add(1))
    clock.pump([0.2, 0.5])  # acknowledged and pending
    simulator.send(DeprovisionDevice("remove-1", ESIID, "device-1", MAC))
    run(clock, 30)
    assert events.statuses_of("add-1") == [S.ACKNOWLEDGED, S.ADD_PENDING]
    assert events.statuses_of("remove-1") == [S.ACKNOWLEDGED, S.REMOVE_PENDING, S.DEVICE_REMOVED]
    assert simulator.unfinished == []
    assert not pinged(simulator, clock, ESIID, MAC)
    simulator.stop()


def test_a_removal_before_the_add_is_acknowledged_still_acknowledges_it() -> None:
    """An add not yet acknowledged when its device is removed is acknowledged, then ends."""
    clock = Clock()
    simulator, events = running(clock)
    acknowledged = simulator.send(add(1))
    simulator.send(DeprovisionDevice("remove-1", ESIID, "device-1", MAC))
    run(clock, 30)
    assert succeeded(acknowledged) is None
    assert events.statuses_of("add-1") == [S.ACKNOWLEDGED]
    assert events.statuses_of("remove-1")[-1] is S.DEVICE_REMOVED
    assert simulator.unfinished == []
    assert not pinged(simulator, clock, ESIID, MAC)
    simulator.stop()


def test_an_add_ended_before_its_acknowledgement_stays_ended_after_a_restart(
    tmp_path: Path,
) -> None:
    """Add and removal accepted, then a stop before either is acknowledged: after the restart
    the add is acknowledged and goes no further, and the device ends removed."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    before, _ = running(clock, journal_path=journal)
    sent = [before.send(add(1)), before.send(DeprovisionDevice("remove-1", ESIID, "device-1", MAC))]
    before.stop()
    for unacknowledged in sent:
        failed(unacknowledged, HeadEndUnreachable)

    clock = Clock()
    after, events = running(clock, journal_path=journal)
    run(clock, 10)
    assert events.statuses_of("add-1") == [S.ACKNOWLEDGED]
    assert events.statuses_of("remove-1")[-1] is S.DEVICE_REMOVED
    assert after.unfinished == []
    assert not pinged(after, clock, ESIID, MAC)
    after.stop()


def test_a_removal_ends_the_add_in_the_journal_too(tmp_path: Path) -> None:
    """An add ended by a removal is finished in the journal: a restart does not resume it."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    before, _ = running(clock, journal_path=journal)
    before.send(add(1))
    clock.pump([0.2, 0.5])
    before.send(DeprovisionDevice("remove-1", ESIID, "device-1", MAC))
    clock.pump([0.2])  # the removal acknowledged, then stopped before it finishes
    before.stop()

    clock = Clock()
    after, events = running(clock, journal_path=journal)
    assert after.unfinished == ["remove-1"]
    run(clock, 10)
    assert events.statuses_of("add-1") == []
    assert events.statuses_of("remove-1")[-1] is S.DEVICE_REMOVED
    assert not pinged(after, clock, ESIID, MAC)
    after.stop()


def test_a_command_for_an_esiid_the_head_end_does_not_serve_is_rejected_saying_so() -> None:
    """An add or removal on a meter the fleet does not serve is rejected as not served."""
    clock = Clock()
    simulator, events = running(clock, meters=1)
    simulator.send(add(1, esiid=ESIID))  # not one of the one generated meter's ESI IDs
    simulator.send(remove(2, esiid=ESIID))
    run(clock, 10)
    rejected = {report.command_id: report for _, report in events.timed if report.reason}
    assert rejected["add-1"].status is S.ADD_REJECTED
    assert rejected["remove-2"].status is S.REMOVE_REJECTED
    assert all("not served" in report.reason for report in rejected.values())
    simulator.stop()


def test_a_mac_that_is_not_an_eui64_is_rejected() -> None:
    """An add whose MAC address is not 16 hex digits is rejected, never joined."""
    clock = Clock()
    simulator, events = running(clock)
    simulator.send(add(1, mac="000D6F00000010"))
    run(clock, 10)
    assert events.statuses_of("add-1") == [S.ACKNOWLEDGED, S.ADD_REJECTED]
    assert "EUI-64" in events.timed[-1][1].reason
    simulator.stop()


def test_an_unreachable_head_end_answers_no_query() -> None:
    """While the head-end (or the ESI ID) is unreachable a ping fails; back up, it answers."""
    clock = Clock()
    simulator, _ = running(clock)
    simulator.set_fault("unreachable")
    failed(simulator.query(PingEsi(ESIID)), QueryFailed)
    simulator.set_fault("none")
    simulator.set_fault("unreachable", esiid=ESIID)
    failed(simulator.query(PingEsi(ESIID)), QueryFailed)
    other = simulator.query(PingEsi("10443720000000002"))
    clock.advance(1)
    assert succeeded(other).reachable
    simulator.stop()


def test_stop_fails_the_queries_still_unanswered() -> None:
    """A query whose answer is not due yet fails as the head-end stops; no call is left behind."""
    clock = Clock()
    simulator, _ = running(clock)
    answer = simulator.query(PingEsi(ESIID))
    no_result(answer)
    simulator.stop()
    failed(answer, QueryFailed)
    assert clock.getDelayedCalls() == []


class HoldingEvents(RecordingEvents):
    """Takes every report but one command's Add Pending, which it never answers."""

    def __init__(self, clock: Clock, held: str) -> None:
        super().__init__(clock)
        self.held = held

    def provisioning_report(self, report: ProvisioningReport) -> Deferred[None]:
        if report.command_id == self.held and report.status is S.ADD_PENDING:
            return Deferred()
        return super().provisioning_report(report)


def test_stop_commits_the_journal_while_a_report_awaits_the_gateway(tmp_path: Path) -> None:
    """Steps reached before a stop are on disk at once, though one report is still unanswered."""
    journal = str(tmp_path / "head-end.sqlite")
    clock = Clock()
    simulator = SimulatedHeadEnd(config(journal_path=journal), clock)
    simulator.start(HoldingEvents(clock, held="add-1"))
    simulator.send(add(1))
    simulator.send(add(2, mac="000D6F0000002000"))
    clock.pump([0.2, 0.5])  # both pending; add-1's report awaits the gateway
    simulator.stop()
    assert journaled(journal)["add-2"] == 2


def test_failed_report_is_retried_in_order() -> None:
    """When the gateway fails to record a report, it is sent again and later steps wait for it."""
    clock = Clock()
    simulator = SimulatedHeadEnd(config(report_retry_delay_s=1.0), clock)
    events = RecordingEvents(clock, failures=2)
    with capture_logs() as logs:
        simulator.start(events)
        simulator.send(add())
        run(clock, 10)
    assert events.statuses == [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
    assert [round(t, 6) for t, _ in events.timed] == [2.2, 2.7, 3.2, 4.2]
    assert [e["event"] for e in logs].count("simulator.report_failed") == 2


def test_report_retries_are_bounded() -> None:
    """A gateway that never records reports gets a bounded number of attempts and no crash."""
    clock = Clock()
    simulator = SimulatedHeadEnd(config(report_max_retries=2, report_retry_delay_s=0.5), clock)
    events = RecordingEvents(clock, failures=10**6)
    with capture_logs() as logs:
        simulator.start(events)
        simulator.send(add())
        run(clock, 60)
    assert events.attempts == 4 * 3  # four steps, each tried once and retried twice
    assert [e["event"] for e in logs].count("simulator.report_abandoned") == 4
    assert clock.getDelayedCalls() == []


def test_raising_event_sink_does_not_crash_the_simulator() -> None:
    """An event sink raising instead of returning a failed Deferred is handled the same way."""

    @implementer(IAdapterEvents)
    class Raising:
        calls = 0

        def provisioning_report(self, report: ProvisioningReport) -> Deferred[None]:
            self.calls += 1
            raise RuntimeError("boom")

    clock = Clock()
    simulator = SimulatedHeadEnd(config(report_max_retries=1), clock)
    sink = Raising()
    simulator.start(sink)
    acknowledged = simulator.send(add())
    run(clock, 60)
    assert succeeded(acknowledged) is None
    assert sink.calls == 8


def walk(start: DeviceStatus, statuses: list[HeadEndStatus]) -> DeviceStatus:
    status = start
    for head_end_status in statuses:
        status = next_status(status, HEAD_END_STATUS_TO_TABLE_EVENT[head_end_status])
    return status


FINAL_STATUSES = {
    ("add", Fault.NONE): DeviceStatus.DEVICE_ADDED,
    ("add", Fault.REJECT): DeviceStatus.ADD_REJECTED,
    ("add", Fault.FAIL): DeviceStatus.ADD_FAILED,
    ("add", Fault.NO_ANSWER): DeviceStatus.ADD_ACKNOWLEDGED,
    ("add", Fault.NEVER_JOIN): DeviceStatus.METER_READY,
    ("remove", Fault.NONE): DeviceStatus.DEVICE_REMOVED,
    ("remove", Fault.REJECT): DeviceStatus.REMOVE_REJECTED,
    ("remove", Fault.FAIL): DeviceStatus.REMOVE_FAILED,
    ("remove", Fault.NO_ANSWER): DeviceStatus.REMOVE_ACKNOWLEDGED,
    ("remove", Fault.NEVER_JOIN): DeviceStatus.DEVICE_REMOVED,
}


def test_mapping_covers_every_head_end_status() -> None:
    """Every HeadEndStatus has an event of the gateway's table in the test's mapping."""
    assert set(HEAD_END_STATUS_TO_TABLE_EVENT) == set(HeadEndStatus)


@pytest.mark.parametrize(("action", "fault"), sorted(FINAL_STATUSES))
def test_reports_are_accepted_by_the_gateway_table(action: str, fault: Fault) -> None:
    """Every report sequence the simulator makes is legal in hangw.provisioning's table."""
    clock = Clock()
    simulator, events = running(clock, fault=fault)
    simulator.send(add() if action == "add" else remove())
    run(clock, 60)
    start = (
        INITIAL_STATUS
        if action == "add"
        else next_status(DeviceStatus.DEVICE_ADDED, Event.REMOVE_REQUESTED)
    )
    final = walk(start, events.statuses)
    assert final is FINAL_STATUSES[(action, fault)]
    # the statuses the simulator leaves open are closed by the gateway's own timers
    if fault is Fault.NEVER_JOIN and action == "add":
        assert next_status(final, Event.JOIN_WINDOW_EXPIRED) is DeviceStatus.ADD_FAILED
    if fault is Fault.NO_ANSWER:
        assert next_status(final, Event.COMMAND_TIMED_OUT) in (
            DeviceStatus.ADD_FAILED,
            DeviceStatus.REMOVE_FAILED,
        )


def test_walk_refuses_an_out_of_order_sequence() -> None:
    """The table walk used above does catch a sequence the gateway would refuse."""
    with pytest.raises(IllegalTransition):
        walk(INITIAL_STATUS, [S.ACKNOWLEDGED, S.DEVICE_JOINED, S.METER_READY])


def final_statuses_with_rates(seed: int, n: int = 400) -> list[HeadEndStatus | None]:
    """The last status of each of ``n`` adds (None: the send found the head-end down)."""
    clock = Clock()
    simulator, events = running(
        clock, seed=seed, reject_rate=0.25, fail_rate=0.25, unreachable_rate=0.1
    )
    for i in range(n):
        simulator.send(add(i, mac=f"000D6F0000{i:06X}")).addErrback(lambda _: None)
    run(clock, 10)
    finals: list[HeadEndStatus | None] = []
    for i in range(n):
        statuses = events.statuses_of(f"add-{i}")
        finals.append(statuses[-1] if statuses else None)
    return finals


def test_fault_rates_are_seeded_and_roughly_kept() -> None:
    """Rates draw faults from a seeded generator: same seed, same run; shares near the rates."""
    first = final_statuses_with_rates(seed=7)
    assert first == final_statuses_with_rates(seed=7)
    assert first != final_statuses_with_rates(seed=8)
    n = len(first)
    for status, rate in (
        (None, 0.1),
        (S.ADD_REJECTED, 0.9 * 0.25),
        (S.ADD_FAILED, 0.9 * 0.25),
        (S.DEVICE_JOINED, 0.9 * 0.5),
    ):
        share = first.count(status) / n
        assert abs(share - rate) < 0.08, (status, share, rate)


def test_planned_steps_start_with_the_acknowledgement() -> None:
    """Every plan starts with the TDSP acknowledgement after ack_delay_s."""
    conf = config(ack_delay_s=0.3)
    for action in ("add", "remove"):
        for fault in Fault:
            if fault is not Fault.UNREACHABLE:
                first = planned_steps(action, fault, conf)[0]
                assert (first.status, first.delay_s) == (S.ACKNOWLEDGED, 0.3)


def test_logs_never_hold_install_codes_or_link_keys() -> None:
    """Nothing the simulator logs contains the install code or the link key."""
    with capture_logs() as logs:
        clock = Clock()
        simulator, _ = running(clock)
        simulator.send(add())
        simulator.send(add())
        simulator.send(remove())
        run(clock, 10)
        simulator.stop()
    assert {"simulator.accepted", "simulator.duplicate"} <= {e["event"] for e in logs}
    text = repr(logs).lower()
    for secret in (INSTALL_CODE, LINK_KEY):
        assert secret.hex() not in text
        assert repr(secret).lower() not in text
    assert "install_code" not in text and "link_key" not in text


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults_finish_a_demo_within_seconds() -> None:
    """The defaults acknowledge in 0.2 s and join within about two seconds, with no faults."""
    conf = config()
    assert (conf.ack_delay_s, conf.pending_delay_s, conf.meter_ready_delay_s) == (0.2, 0.5, 0.5)
    assert conf.join_delay_s == 1.0
    assert conf.fault is Fault.NONE
    assert conf.journal_path is None
    total = conf.ack_delay_s + conf.pending_delay_s + conf.meter_ready_delay_s + conf.join_delay_s
    assert total < 5


def test_config_from_a_toml_table() -> None:
    """An [adapters.<duns>] table with kind = "simulator" reads into a SimulatorConfig."""
    document = tomllib.loads(f"""
[adapters.{TDSP}]
kind = "simulator"
ack_delay_s = 0.1
join_delay_s = 2
reject_rate = 0.01
seed = 42
journal_path = "/tmp/journal.sqlite"
[adapters.{TDSP}.faults_by_mac]
"00:0D:6F:00:00:00:10:00" = "never_join"
[adapters.{TDSP}.faults_by_esiid]
"{ESIID}" = "reject"
""")
    table = dict(document["adapters"][TDSP], tdsp_duns=TDSP)
    conf = SimulatorConfig.from_mapping(table)
    assert conf.ack_delay_s == 0.1 and conf.join_delay_s == 2.0
    assert conf.reject_rate == 0.01 and conf.seed == 42
    assert dict(conf.faults_by_mac) == {MAC: Fault.NEVER_JOIN}
    assert dict(conf.faults_by_esiid) == {ESIID: Fault.REJECT}
    assert conf.journal_path == "/tmp/journal.sqlite"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"join_delay_s": "x"}, "simulator.join_delay_s must be a number >= 0, got 'x'"),
        ({"ack_delay_s": -1}, "simulator.ack_delay_s must be a number >= 0, got -1"),
        ({"pending_delay_s": True}, "simulator.pending_delay_s must be a number >= 0"),
        ({"meter_ready_delay_s": float("nan")}, "simulator.meter_ready_delay_s must be"),
        ({"reject_rate": 1.5}, "simulator.reject_rate must be a number from 0 to 1, got 1.5"),
        ({"fail_rate": 0.6, "reject_rate": 0.6}, "simulator.reject_rate + fail_rate"),
        ({"fault": "explode"}, "simulator.fault must be one of none, reject, fail"),
        ({"faults_by_mac": {"nope": "reject"}}, "simulator.faults_by_mac: 'nope' is not a MAC"),
        ({"faults_by_mac": {MAC: "late"}}, f"simulator.faults_by_mac.{MAC} must be one of"),
        ({"faults_by_esiid": ["x"]}, "simulator.faults_by_esiid must be a table"),
        ({"seed": 1.5}, "simulator.seed must be an integer, got 1.5"),
        ({"report_max_retries": -1}, "simulator.report_max_retries must be an integer >= 0"),
        ({"journal_path": 3}, "simulator.journal_path must be a file path, got 3"),
        ({"tdsp_duns": "TXU"}, "simulator.tdsp_duns must be the TDSP's DUNS number"),
        ({"joindelay": 1}, "simulator.joindelay is not a simulator option"),
        ({"kind": "wire"}, "simulator.kind must be 'simulator'"),
    ],
)
def test_config_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    """A bad option raises a ValueError subclass whose message names the key and the value."""
    table = {"tdsp_duns": TDSP, **options}
    with pytest.raises(SimulatorConfigError) as raised:
        SimulatorConfig.from_mapping(table)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith(message)


def test_config_requires_tdsp_duns() -> None:
    """from_mapping without tdsp_duns names the missing key."""
    with pytest.raises(SimulatorConfigError, match=r"^simulator\.tdsp_duns is required"):
        SimulatorConfig.from_mapping({"join_delay_s": 1})


def test_config_built_directly_is_validated_too() -> None:
    """SimulatorConfig(...) in code checks and normalizes its values like from_mapping."""
    with pytest.raises(SimulatorConfigError, match="join_delay_s"):
        SimulatorConfig(tdsp_duns=TDSP, join_delay_s=-2)
    conf = SimulatorConfig(tdsp_duns=TDSP, faults_by_mac={"00-0d-6f-00-00-00-10-00": Fault.FAIL})
    assert dict(conf.faults_by_mac) == {MAC: Fault.FAIL}
