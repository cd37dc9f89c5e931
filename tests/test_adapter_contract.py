"""One contract for every head-end adapter: the in-process simulator, and the wire adapter with
the simulated head-end dialling in over loopback TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from adapters.commands import DeprovisionDevice, HeadEndStatus, ProvisionDevice
from adapters.interfaces import IHeadEndAdapter
from tests.adapter_harness import AdapterUnderTest, eventually, start_inprocess, start_wire

S = HeadEndStatus
ADD_STEPS = [S.ACKNOWLEDGED, S.ADD_PENDING, S.METER_READY, S.DEVICE_JOINED]
KEY = bytes.fromhex("66B6900981E1EE3CA4206B6B861C02BB")
CODE = bytes.fromhex("83FED3407A939723A5C639B26916D505C3B5")


def add(n: int, mac: str = "00124B0001ABCD01", esiid: str = "10443720000000001") -> ProvisionDevice:
    return ProvisionDevice(f"cmd-add-{n}", esiid, f"dev-{n}", mac, CODE, KEY, 600)


def remove(
    n: int, mac: str = "00124B0001ABCD01", esiid: str = "10443720000000001"
) -> DeprovisionDevice:
    return DeprovisionDevice(f"cmd-rm-{n}", esiid, f"dev-{n}", mac)


@pytest_twisted.async_yield_fixture(params=["inprocess", "wire"])
async def under(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AdapterUnderTest]:
    options = {"faults_by_mac": {"00124B00DEADBEEF": "reject"}}
    if request.param == "wire":
        running = await start_wire(tmp_path, options=options)
    else:
        running = await start_inprocess(tmp_path, options=options)
    yield running
    await running.close()


def test_provides_the_adapter_interface(under: AdapterUnderTest) -> None:
    """The adapter provides IHeadEndAdapter and serves the configured TDSP."""
    assert verifyObject(IHeadEndAdapter, under.adapter)
    assert under.adapter.tdsp_duns == "1039940674000"


@pytest_twisted.ensureDeferred
async def test_add_is_acknowledged_then_reported_in_order(under: AdapterUnderTest) -> None:
    """A provisioning command is acknowledged, then reported pending, meter ready and joined."""
    await under.adapter.send(add(1))
    await eventually(
        lambda: S.DEVICE_JOINED in under.events.statuses_of("cmd-add-1"), what="the join"
    )
    assert under.events.statuses_of("cmd-add-1") == ADD_STEPS


@pytest_twisted.ensureDeferred
async def test_remove_is_reported_removed(under: AdapterUnderTest) -> None:
    """A de-provisioning command is acknowledged and reported pending, then removed."""
    await under.adapter.send(remove(2))
    await eventually(
        lambda: S.DEVICE_REMOVED in under.events.statuses_of("cmd-rm-2"), what="the removal"
    )
    assert under.events.statuses_of("cmd-rm-2") == [
        S.ACKNOWLEDGED,
        S.REMOVE_PENDING,
        S.DEVICE_REMOVED,
    ]


@pytest_twisted.ensureDeferred
async def test_a_command_sent_twice_is_applied_once(under: AdapterUnderTest) -> None:
    """The same command id sent again is acknowledged again and applied once."""
    await under.adapter.send(add(3))
    await under.adapter.send(add(3))
    await eventually(
        lambda: S.DEVICE_JOINED in under.events.statuses_of("cmd-add-3"), what="the join"
    )
    assert under.headend.applied_count("cmd-add-3") == 1
    assert under.events.statuses_of("cmd-add-3") == ADD_STEPS


@pytest_twisted.ensureDeferred
async def test_a_rejection_is_reported(under: AdapterUnderTest) -> None:
    """A head-end rejection comes back as an Add Rejected report with its reason."""
    await under.adapter.send(add(4, mac="00124B00DEADBEEF"))
    await eventually(
        lambda: S.ADD_REJECTED in under.events.statuses_of("cmd-add-4"), what="the rejection"
    )
    rejected = [r for r in under.events.reports if r.status is S.ADD_REJECTED]
    assert rejected[0].reason


@pytest_twisted.ensureDeferred
async def test_many_commands_flow(under: AdapterUnderTest) -> None:
    """Three hundred commands at once all complete, each applied once."""
    commands = [
        add(100 + i, mac=f"00124B0002{i:06X}", esiid=f"1044372{i:010d}") for i in range(300)
    ]
    for command in commands:
        under.adapter.send(command)
    await eventually(
        lambda: all(S.DEVICE_JOINED in under.events.statuses_of(c.command_id) for c in commands),
        timeout=30,
        what="all joins",
    )
    assert all(under.headend.applied_count(c.command_id) == 1 for c in commands)


@pytest_twisted.ensureDeferred
async def test_stopped_adapter_refuses_commands(under: AdapterUnderTest) -> None:
    """After stop, send fails with a ConnectionError instead of accepting the command."""
    await under.adapter.stop()
    with pytest.raises(ConnectionError):
        await under.adapter.send(add(5))
