"""The provisioning machine as the store applies it: every status x every event, and no sequence
of requests and head-end answers ever breaks the five-slot rule or leaves an illegal status."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.python.failure import Failure

from adapters.commands import DeprovisionDevice, HeadEndStatus, ProvisioningReport, ReportRefused
from hangw.devices import REPORT_EVENTS, AddDeviceRequest, DeviceService, new_device_id
from hangw.domain import Device, Party, Role
from hangw.problems import Forbidden, IllegalTransitionProblem, Problem
from hangw.provisioning import (
    COMMAND_TIMEOUT_STATUSES,
    JOIN_WINDOW_STATUSES,
    MAX_SLOTS_PER_ESIID,
    SLOT_HOLDING,
    TRANSITIONS,
    DeviceStatus,
    Event,
)
from hangw.store.model import device_history, han_devices, outbox
from tests.gateway_harness import E_OTHER, E_OWN, INSTALL_CODE, REP_A, TDSP
from tests.service_harness import make_service, resolve

REP = Party(REP_A, Role.REP, "demo-rep-a", "f" * 64)
TDSP_PARTY = Party(TDSP, Role.TDSP, "demo-tdsp", "e" * 64)
EVENT_FOR_REPORT = {event: status for status, event in REPORT_EVENTS.items()}


def place_device(service: DeviceService, status: DeviceStatus, deadline: float | None) -> str:
    """Add a device through the service, then set its status directly (the starting point)."""
    device = resolve(
        service.add_device(
            REP, E_OWN, AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
        )
    )

    def thd(conn: sa.Connection) -> None:
        conn.execute(
            han_devices.update()
            .where(han_devices.c.device_id == device.device_id)
            .values(status=status.value, deadline=deadline)
        )

    service.store.transaction(thd)
    return device.device_id


def snapshot(service: DeviceService, device_id: str) -> tuple[str, int]:
    def thd(conn: sa.Connection) -> tuple[str, int]:
        status = conn.execute(
            sa.select(han_devices.c.status).where(han_devices.c.device_id == device_id)
        ).scalar_one()
        count = conn.execute(
            sa.select(sa.func.count()).where(device_history.c.device_id == device_id)
        ).scalar_one()
        return status, count

    return service.store.transaction(thd)


def latest_command(service: DeviceService, device_id: str) -> str:
    return service.store.transaction(
        lambda conn: (
            conn.execute(
                sa.select(outbox.c.command_id)
                .where(outbox.c.device_id == device_id)
                .order_by(outbox.c.outbox_id.desc())
            )
            .scalars()
            .first()
        )
    )


@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
@pytest.mark.parametrize("status", list(DeviceStatus), ids=lambda s: s.name)
def test_every_status_and_event(tmp_path: Path, status: DeviceStatus, event: Event) -> None:
    """Legal pairs move the device as the table says, with one history row; others write nothing."""
    service, clock = make_service(tmp_path / "s.sqlite")
    now = clock.seconds()
    timer_event = event in (Event.JOIN_WINDOW_EXPIRED, Event.COMMAND_TIMED_OUT)
    # a timer only runs in the statuses it belongs to; its event fires when the deadline passes
    runs_timer = (event is Event.JOIN_WINDOW_EXPIRED and status in JOIN_WINDOW_STATUSES) or (
        event is Event.COMMAND_TIMED_OUT and status in COMMAND_TIMEOUT_STATUSES
    )
    device_id = place_device(service, status, now - 1 if runs_timer else None)
    before_status, before_rows = snapshot(service, device_id)
    expected = TRANSITIONS.get((status, event))

    if event is Event.REMOVE_REQUESTED:
        try:
            resolve(service.remove_device(REP, device_id))
        except IllegalTransitionProblem:
            assert expected is None
    elif timer_event:
        moved = service.store.transaction(service.fire_timers_thd, now)
        assert bool(moved) == runs_timer
        if not runs_timer:
            expected = None
    else:
        report = ProvisioningReport(
            latest_command(service, device_id), E_OWN, device_id, EVENT_FOR_REPORT[event], "r"
        )
        applied = service.store.transaction(service.apply_report_thd, report, now)
        assert (applied is not None) == (expected is not None)

    after_status, after_rows = snapshot(service, device_id)
    if expected is None:
        assert (after_status, after_rows) == (before_status, before_rows)
    else:
        assert after_status == expected.value
        assert after_rows == before_rows + 1


def test_timer_events_exist_only_where_timers_run() -> None:
    """The table's timer events are exactly those of the statuses that run a timer."""
    for status, event in TRANSITIONS:
        if event is Event.JOIN_WINDOW_EXPIRED:
            assert status in JOIN_WINDOW_STATUSES
        if event is Event.COMMAND_TIMED_OUT:
            assert status in COMMAND_TIMEOUT_STATUSES


def test_stale_report_is_ignored(tmp_path: Path) -> None:
    """A report about an older command of the device (its add, after a remove) changes nothing."""
    service, clock = make_service(tmp_path / "s.sqlite")
    device_id = place_device(service, DeviceStatus.METER_READY, None)
    add_command = latest_command(service, device_id)
    resolve(service.remove_device(REP, device_id))
    before = snapshot(service, device_id)
    report = ProvisioningReport(add_command, E_OWN, device_id, HeadEndStatus.DEVICE_JOINED)
    assert service.store.transaction(service.apply_report_thd, report, clock.seconds()) is None
    assert snapshot(service, device_id) == before


def test_a_report_resent_after_a_crash_is_applied_once(tmp_path: Path) -> None:
    """A head-end event applied and committed, then resent under its id (the gateway died before
    acknowledging it), gets the same answer and leaves one history row, even for the TDSP
    acknowledgement that the table allows again in Add Acknowledged."""
    service, clock = make_service(tmp_path / "s.sqlite")
    device_id = place_device(service, DeviceStatus.ADD_ACKNOWLEDGED, None)
    command = latest_command(service, device_id)
    ack = ProvisioningReport(
        command, E_OWN, device_id, HeadEndStatus.ACKNOWLEDGED, tdsp_duns=TDSP, event_id="hx-1"
    )
    first = service.store.transaction(service.apply_reports_thd, [ack], clock.seconds())
    assert first[0] is not None
    after_first = snapshot(service, device_id)
    again = service.store.transaction(service.apply_reports_thd, [ack], clock.seconds())
    assert again == [None]
    assert snapshot(service, device_id) == after_first
    # a refused event is refused again with the same reason, from the record
    other = ProvisioningReport(
        command, E_OTHER, device_id, HeadEndStatus.ACKNOWLEDGED, tdsp_duns=TDSP, event_id="hx-2"
    )
    refusals = [
        service.store.transaction(service.apply_reports_thd, [other], clock.seconds())[0]
        for _ in range(2)
    ]
    assert all(isinstance(r, ReportRefused) for r in refusals)
    assert str(refusals[0]) == str(refusals[1])
    # the same acknowledgement under a new id is a new event, and applied
    fresh = service.store.transaction(
        service.apply_reports_thd, [replace(ack, event_id="hx-3")], clock.seconds()
    )
    assert fresh[0] is not None and snapshot(service, device_id)[1] == after_first[1] + 1


class ProvisioningMachine(RuleBasedStateMachine):
    """Random requests, head-end answers and timer ticks against one store."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: list[str] = []

    @initialize(path=st.uuids())
    def start(self, path: object) -> None:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.service, self.clock = make_service(
            Path(self.tmp.name) / "m.sqlite", join_window_s=50, command_timeout_s=30
        )

    def teardown(self) -> None:
        self.service.store.engine.dispose()
        self.tmp.cleanup()

    @rule(
        esiid=st.sampled_from([E_OWN, E_OTHER]),
        mac=st.integers(0, 9),
        party=st.sampled_from([REP, TDSP_PARTY]),
    )
    def add(self, esiid: str, mac: int, party: Party) -> None:
        request = AddDeviceRequest(f"000D6F00000000{mac:02X}", INSTALL_CODE, "thermostat")
        try:
            device = resolve(self.service.add_device(party, esiid, request))
        except Forbidden:
            assert party is REP and esiid == E_OTHER
        except Problem as problem:
            assert problem.status == 409, problem.detail
        else:
            self.devices.append(device.device_id)

    @rule(index=st.integers(0, 50))
    def remove(self, index: int) -> None:
        if not self.devices:
            return
        try:
            resolve(self.service.remove_device(TDSP_PARTY, self.devices[index % len(self.devices)]))
        except IllegalTransitionProblem:
            pass

    @rule(index=st.integers(0, 50), status=st.sampled_from(list(HeadEndStatus)))
    def head_end_reports(self, index: int, status: HeadEndStatus) -> None:
        if not self.devices:
            return
        device_id = self.devices[index % len(self.devices)]
        report = ProvisioningReport(latest_command(self.service, device_id), "", device_id, status)
        self.service.store.transaction(self.service.apply_report_thd, report, self.clock.seconds())

    @rule(seconds=st.integers(1, 60))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.service.store.transaction(self.service.fire_timers_thd, self.clock.seconds())

    @invariant()
    def at_most_five_slot_holders_and_legal_statuses(self) -> None:
        if not hasattr(self, "service"):
            return

        def thd(conn: sa.Connection) -> list[tuple[str, str]]:
            return [
                tuple(r) for r in conn.execute(sa.select(han_devices.c.esiid, han_devices.c.status))
            ]

        rows = self.service.store.transaction(thd)
        holding: dict[str, int] = {}
        for esiid, status in rows:
            assert status in {s.value for s in DeviceStatus}
            if DeviceStatus(status) in SLOT_HOLDING:
                holding[esiid] = holding.get(esiid, 0) + 1
        assert all(count <= MAX_SLOTS_PER_ESIID for count in holding.values()), holding

    @invariant()
    def every_history_is_a_walk_through_the_table(self) -> None:
        if not hasattr(self, "service"):
            return

        def thd(conn: sa.Connection) -> list[tuple[str, str, str]]:
            rows = conn.execute(
                sa.select(
                    device_history.c.device_id, device_history.c.status, device_history.c.event
                ).order_by(device_history.c.history_id)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]

        current: dict[str, DeviceStatus] = {}
        for device_id, status, event in self.service.store.transaction(thd):
            if device_id not in current:
                assert (status, event) == (DeviceStatus.ADD_ACKNOWLEDGED.value, "add requested")
            else:
                assert TRANSITIONS[(current[device_id], Event(event))].value == status, (
                    device_id,
                    current[device_id],
                    event,
                    status,
                )
            current[device_id] = DeviceStatus(status)
        final = {
            row[0]: row[1]
            for row in self.service.store.transaction(
                lambda conn: conn.execute(
                    sa.select(han_devices.c.device_id, han_devices.c.status)
                ).all()
            )
        }
        assert {d: s.value for d, s in current.items()} == final


ProvisioningMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProvisioningMachine = ProvisioningMachine.TestCase


def test_reports_of_one_reactor_turn_are_applied_together_in_order(tmp_path: Path) -> None:
    """Reports arriving together are applied in arrival order once the turn ends, one job."""
    service, clock = make_service(tmp_path / "s.sqlite")
    device_id = place_device(service, DeviceStatus.ADD_ACKNOWLEDGED, None)
    command = latest_command(service, device_id)
    jobs: list[int] = []
    real_run = service.store.run

    def counting_run(thd: Any, *args: Any) -> Any:
        if thd == service.apply_reports_thd:
            jobs.append(len(args[0]))
        return real_run(thd, *args)

    service.store.run = counting_run  # type: ignore[method-assign]
    fired: list[object] = []
    for status in (
        HeadEndStatus.ACKNOWLEDGED,
        HeadEndStatus.ADD_PENDING,
        HeadEndStatus.METER_READY,
    ):
        report = ProvisioningReport(command, E_OWN, device_id, status)
        service.apply_report(report).addCallback(fired.append)
    assert fired == [] and snapshot(service, device_id)[0] == "Add Acknowledged"
    clock.advance(0)
    assert jobs == [3]
    assert [device.status for device in fired] == [  # type: ignore[attr-defined]
        DeviceStatus.ADD_ACKNOWLEDGED,
        DeviceStatus.ADD_PENDING,
        DeviceStatus.METER_READY,
    ]
    assert snapshot(service, device_id) == ("Meter Ready", 4)


def test_an_add_the_head_end_never_took_is_not_sent_after_it_timed_out(tmp_path: Path) -> None:
    """A command timeout abandons the unsent provision: its slot is free, nothing goes out."""
    service, clock = make_service(tmp_path / "s.sqlite", command_timeout_s=30)
    device = resolve(
        service.add_device(
            REP, E_OWN, AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
        )
    )
    clock.advance(31)
    (moved,) = service.store.transaction(service.fire_timers_thd, clock.seconds())
    assert moved.status is DeviceStatus.ADD_FAILED and "did not answer" in moved.reason
    pending = service.store.transaction(service.pending_commands_thd, TDSP, 10, frozenset())
    assert [c for c in pending if c.device_id == device.device_id] == []


def test_an_add_taken_but_never_answered_is_taken_back_after_it_timed_out(tmp_path: Path) -> None:
    """If the head-end accepted the add and then went silent, the timeout queues a de-provision."""
    service, clock = make_service(tmp_path / "s.sqlite", command_timeout_s=30)
    device = resolve(
        service.add_device(
            REP, E_OWN, AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
        )
    )
    (sent,) = service.store.transaction(service.pending_commands_thd, TDSP, 10, frozenset())
    service.store.transaction(service.retire_many_thd, [sent.command_id], clock.seconds())
    wakes: list[None] = []
    service._on_outbox = lambda: wakes.append(None)  # the router, as the gateway wires it
    clock.advance(31)
    resolve(service.fire_timers())
    (undo,) = service.store.transaction(service.pending_commands_thd, TDSP, 10, frozenset())
    assert isinstance(undo, DeprovisionDevice) and undo.device_id == device.device_id
    assert wakes, "the router is woken for the de-provision, not left to its next poll"


def test_a_provision_for_a_device_that_freed_its_slot_is_never_sent(tmp_path: Path) -> None:
    """An unsent provision whose device already failed is retired by the outbox read, not sent."""
    service, _ = make_service(tmp_path / "s.sqlite")
    device_id = place_device(service, DeviceStatus.ADD_REJECTED, None)
    assert service.store.transaction(service.pending_commands_thd, TDSP, 10, frozenset()) == []
    retired_at = service.store.transaction(
        lambda conn: conn.execute(
            sa.select(outbox.c.retired_at).where(outbox.c.device_id == device_id)
        ).scalar_one()
    )
    assert retired_at is not None  # kept for the record, never to be sent


def test_removing_again_after_a_failed_removal_is_not_called_a_withdrawal(tmp_path: Path) -> None:
    """A second removal request from Remove Failed records no 'withdrawn' reason; one from an
    adding status does."""
    service, _ = make_service(tmp_path / "s.sqlite")
    failed = place_device(service, DeviceStatus.REMOVE_FAILED, None)
    device = resolve(service.remove_device(REP, failed))
    assert device.status is DeviceStatus.REMOVE_ACKNOWLEDGED and device.reason == ""
    service2, _ = make_service(tmp_path / "t.sqlite")
    pending = place_device(service2, DeviceStatus.METER_READY, None)
    assert resolve(service2.remove_device(REP, pending)).reason == "withdrawn before it was added"


def test_the_drivers_own_integrity_error_is_recognised(tmp_path: Path) -> None:
    """A constraint violation raised by the DB-API cursor counts as an integrity error."""
    service, _ = make_service(tmp_path / "s.sqlite")

    def violate(conn: sa.Connection) -> None:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("INSERT INTO meters (esiid) VALUES (NULL)")

    with pytest.raises(service.store.integrity_errors):
        service.store.transaction(violate)


def test_an_esiid_history_holds_its_devices_rows_in_the_order_written(tmp_path: Path) -> None:
    """An ESI ID's history has its devices' rows in the order written, none of another's."""
    service, clock = make_service(tmp_path / "history.sqlite")

    def add(party: Party, esiid: str, mac: str) -> str:
        clock.advance(1)
        request = AddDeviceRequest(mac, INSTALL_CODE, "thermostat")
        return resolve(service.add_device(party, esiid, request)).device_id

    first = add(REP, E_OWN, "000D6F0000000001")
    elsewhere = add(TDSP_PARTY, E_OTHER, "000D6F0000000009")
    second = add(REP, E_OWN, "000D6F0000000002")
    clock.advance(1)
    resolve(service.remove_device(REP, first, "moving"))
    history = resolve(service.esiid_history(REP, E_OWN))
    assert [(entry.device_id, entry.status.value) for entry, _ in history] == [
        (first, "Add Acknowledged"),
        (second, "Add Acknowledged"),
        (first, "Remove Acknowledged"),
    ]
    assert [entry.at for entry, _ in history] == sorted(entry.at for entry, _ in history)
    assert all(device.device_id == entry.device_id for entry, device in history)
    assert [e.device_id for e, _ in resolve(service.esiid_history(TDSP_PARTY, E_OTHER))] == [
        elsewhere
    ]


def test_what_also_writes_is_kept_exactly_when_the_add_is(tmp_path: Path) -> None:
    """add_device's ``also`` is undone with the add if it fails, and never runs for a refusal."""
    service, _ = make_service(tmp_path / "also.sqlite")
    request = AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")

    def failing(conn: sa.Connection, device: Any) -> None:
        raise RuntimeError("the answer could not be kept")

    with pytest.raises(RuntimeError):
        resolve(service.add_device(REP, E_OWN, request, also=failing))
    assert (
        service.store.transaction(
            lambda conn: conn.execute(sa.select(sa.func.count()).select_from(han_devices)).scalar()
        )
        == 0
    )
    seen: list[str] = []
    device = resolve(
        service.add_device(REP, E_OWN, request, also=lambda conn, d: seen.append(d.device_id))
    )
    assert seen == [device.device_id]
    with pytest.raises(Problem):  # the same MAC again: refused before ``also``
        resolve(service.add_device(REP, E_OWN, request, also=lambda conn, d: seen.append("x")))
    assert seen == [device.device_id]


def test_device_ids_sort_in_the_order_they_were_made() -> None:
    """Device ids are dev_ and 24 hex digits, sort in the order made, and differ within one ms."""
    made = [new_device_id(1_795_000_000 + (n + 0.5) / 1000) for n in range(2000)]
    assert made == sorted(made)
    assert all(re.fullmatch(r"dev_[0-9a-f]{24}", device_id) for device_id in made)
    same_millisecond = {new_device_id(1_795_000_000.0005) for _ in range(2000)}
    assert len(same_millisecond) == 2000


def test_a_devices_commands_fit_the_outbox(tmp_path: Path) -> None:
    """The ids of an add's and a removal's commands fit the outbox's command_id column."""
    service, _ = make_service(tmp_path / "ids.sqlite")
    device = resolve(
        service.add_device(
            REP, E_OWN, AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
        )
    )
    resolve(service.remove_device(REP, device.device_id, "moved"))
    command_ids = service.store.transaction(
        lambda conn: conn.execute(sa.select(outbox.c.command_id)).scalars().all()
    )
    limit = outbox.c.command_id.type.length
    assert len(command_ids) == 2 and all(len(c) <= limit for c in command_ids), command_ids
    assert all(device.device_id in c for c in command_ids)


def test_a_report_the_store_cannot_take_fails_alone(tmp_path: Path) -> None:
    """A report the store refuses (an event id that is no UTF-8) fails by itself: the reports
    that came in the same reactor turn are applied all the same."""
    service, clock = make_service(tmp_path / "s.sqlite")
    device_id = place_device(service, DeviceStatus.ADD_ACKNOWLEDGED, None)
    command = latest_command(service, device_id)
    good = ProvisioningReport(
        command, E_OWN, device_id, HeadEndStatus.ADD_PENDING, tdsp_duns=TDSP, event_id="good-1"
    )
    poison = ProvisioningReport(
        command, E_OWN, device_id, HeadEndStatus.METER_READY, tdsp_duns=TDSP, event_id="bad\ud800"
    )
    results: list[object] = []
    service.apply_report(good).addBoth(results.append)
    service.apply_report(poison).addBoth(results.append)
    clock.advance(0)
    applied, refused = results
    assert isinstance(applied, Device) and applied.status is DeviceStatus.ADD_PENDING
    assert isinstance(refused, Failure) and refused.check(UnicodeEncodeError)
    assert snapshot(service, device_id)[0] == "Add Pending"
