"""The provisioning hot paths (Core statements run on the DB-API cursor) on a real PostgreSQL.

Runs when HANGW_TEST_POSTGRES_URL names a throwaway database; bin/test starts one when
HANGW_TEST_POSTGRES=1 (see bin/test). The store's tables are dropped before and after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.task import Clock

from adapters.commands import (
    DeprovisionDevice,
    HeadEndStatus,
    ProvisionDevice,
    ProvisioningReport,
)
from adapters.wire.protocol import MAX_REASON
from hangw.config import ProvisioningConfig
from hangw.devices import AddDeviceRequest, DeviceService
from hangw.domain import Party, Role
from hangw.meters import parse_meter_csv, upsert_meters_thd
from hangw.problems import Conflict
from hangw.provisioning import DeviceStatus
from hangw.secrets import SecretBox
from hangw.store import schema
from hangw.store.db import Store
from hangw.store.model import metadata
from tests.gateway_harness import DATA, E_OWN, INSTALL_CODE, REP_A, TDSP

POSTGRES_URL = os.environ.get("HANGW_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="HANGW_TEST_POSTGRES_URL is not set (a throwaway PostgreSQL database)"
)
REP = Party(REP_A, Role.REP, "demo-rep-a", "f" * 64)


def _wipe(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
def service() -> Iterator[tuple[DeviceService, Clock]]:
    assert POSTGRES_URL
    engine = schema.make_engine(POSTGRES_URL)
    _wipe(engine)
    schema.upgrade(engine)
    store = Store(engine, reactor)
    with open(DATA / "meters.csv", newline="") as handle:
        store.transaction(upsert_meters_thd, parse_meter_csv(handle))
    store.start()
    clock = Clock()
    clock.advance(1_800_000_000)
    config = ProvisioningConfig(join_window_s=600, command_timeout_s=30, timer_interval_s=1.0)
    yield DeviceService(store, SecretBox(b"k" * 32), clock, config), clock
    store.stop()
    _wipe(engine)
    engine.dispose()


@pytest_twisted.ensureDeferred
async def test_a_device_goes_from_add_to_added_on_postgresql(
    service: tuple[DeviceService, Clock],
) -> None:
    """Add, read the outbox, retire, and four reports in one batch walk a device to Device Added."""
    devices, clock = service
    device = await devices.add_device(
        REP, E_OWN, AddDeviceRequest("000D6F0700000001", INSTALL_CODE, "thermostat")
    )
    commands, last = await devices.store.run(devices.pending_after_thd, TDSP, 10, frozenset(), 0)
    (command,) = commands
    assert isinstance(command, ProvisionDevice) and command.install_code == bytes.fromhex(
        INSTALL_CODE
    )
    await devices.store.run(devices.retire_many_thd, [command.command_id], clock.seconds())
    assert await devices.store.run(devices.pending_after_thd, TDSP, 10, frozenset(), 0) == ([], 0)
    steps = [
        HeadEndStatus.ACKNOWLEDGED,
        HeadEndStatus.ADD_PENDING,
        HeadEndStatus.METER_READY,
        HeadEndStatus.DEVICE_JOINED,
    ]
    applied = [
        devices.apply_report(ProvisioningReport(command.command_id, E_OWN, device.device_id, s))
        for s in steps
    ]
    clock.advance(0)
    results = [await d for d in applied]
    assert [r.status for r in results if r] == [  # type: ignore[union-attr]
        DeviceStatus.ADD_ACKNOWLEDGED,
        DeviceStatus.ADD_PENDING,
        DeviceStatus.METER_READY,
        DeviceStatus.DEVICE_ADDED,
    ]
    _, history = await devices.get_device(REP, device.device_id)
    assert [h.actor for h in history] == [REP_A] + [TDSP] * 4
    assert last > 0


@pytest_twisted.ensureDeferred
async def test_slots_macs_and_timers_hold_on_postgresql(
    service: tuple[DeviceService, Clock],
) -> None:
    """A live MAC is refused, and an unanswered add times out to Add Failed with its command
    abandoned."""
    devices, clock = service
    device = await devices.add_device(
        REP, E_OWN, AddDeviceRequest("000D6F0700000002", INSTALL_CODE, "thermostat")
    )
    with pytest.raises(Conflict):
        await devices.add_device(
            REP, E_OWN, AddDeviceRequest("000D6F0700000002", INSTALL_CODE, "other")
        )
    clock.advance(31)
    (moved,) = await devices.store.run(devices.fire_timers_thd, clock.seconds())
    assert moved.device_id == device.device_id and moved.status is DeviceStatus.ADD_FAILED
    assert await devices.store.run(devices.pending_after_thd, TDSP, 10, frozenset(), 0) == ([], 0)


@pytest_twisted.ensureDeferred
async def test_an_add_timed_out_on_several_writers_is_taken_back(
    service: tuple[DeviceService, Clock],
) -> None:
    """With several writers the router may hand a provision out after the timer's question, so
    an unanswered add's timeout always queues a de-provision."""
    devices, clock = service
    assert devices.store.writers > 1
    device = await devices.add_device(
        REP, E_OWN, AddDeviceRequest("000D6F0700000003", INSTALL_CODE, "thermostat")
    )
    clock.advance(31)
    (moved,) = await devices.fire_timers()
    assert moved.device_id == device.device_id and moved.status is DeviceStatus.ADD_FAILED
    (undo,), _ = await devices.store.run(devices.pending_after_thd, TDSP, 10, frozenset(), 0)
    assert isinstance(undo, DeprovisionDevice) and undo.device_id == device.device_id


@pytest_twisted.ensureDeferred
async def test_a_report_with_the_longest_reason_is_applied_on_postgresql(
    service: tuple[DeviceService, Clock],
) -> None:
    """A provisioning report whose reason has the 1000 characters the protocol allows is kept."""
    devices, clock = service
    device = await devices.add_device(
        REP, E_OWN, AddDeviceRequest("000D6F0700000004", INSTALL_CODE, "thermostat")
    )
    (command,), _ = await devices.store.run(devices.pending_after_thd, TDSP, 10, frozenset(), 0)
    reason = "é" * MAX_REASON
    report = ProvisioningReport(
        command.command_id, E_OWN, device.device_id, HeadEndStatus.ADD_REJECTED, reason
    )
    applied = devices.apply_report(report)
    clock.advance(0)
    rejected = await applied
    assert rejected is not None and rejected.status is DeviceStatus.ADD_REJECTED
    stored, history = await devices.get_device(REP, device.device_id)
    assert stored.reason == history[-1].reason == reason
