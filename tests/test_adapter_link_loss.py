"""Link loss: the head-end's connection is cut again and again while thousands of provisioning
commands flow through hangwd's outbox and the wire adapter; every command completes, none twice."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from hangw.devices import AddDeviceRequest
from hangw.domain import Meter, Party, Role
from hangw.meters import upsert_meters_thd
from simulators.headend import LinkFaults, SimulatedHeadEndClient, tls_endpoint
from simulators.inprocess import SimulatedHeadEnd, SimulatorConfig
from tests.adapter_harness import FAST, eventually
from tests.conftest import start_gateway
from tests.gateway_harness import INSTALL_CODE, REP_A, TDSP, Harness

COMMANDS = int(os.environ.get("HANGW_LINK_LOSS_COMMANDS", "10000"))


@pytest_twisted.async_yield_fixture
async def wired(tmp_path: Path) -> AsyncIterator[Harness]:
    running = await start_gateway(
        tmp_path / "state",
        adapter={"kind": "wire", "ack_timeout_s": 10, "heartbeat_s": 5},
        join_window_s=3600,
        command_timeout_s=3600,
    )
    yield running
    running.close()
    await running.gateway.stopService()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_commands_survive_repeated_link_loss(wired: Harness) -> None:
    """With the link cut every second, 10,000 adds all reach Device Added, each applied once."""
    meters = [
        Meter(f"1099{i:013d}", f"LL{i}", TDSP, REP_A, None, "GE-I210+c", "5.2.1", True, True)
        for i in range(COMMANDS // 5 + 1)
    ]
    store = wired.gateway.store
    await store.run(upsert_meters_thd, meters)
    rep = Party(REP_A, Role.REP, "demo-rep-a", "f" * 64)
    devices = wired.gateway.devices

    headend = SimulatedHeadEnd(SimulatorConfig(tdsp_duns=TDSP, **FAST), reactor)
    endpoint = tls_endpoint(
        reactor, "127.0.0.1", wired.adapter_port, wired.config.cert_dir, "demo-tdsp"
    )
    client = SimulatedHeadEndClient(
        endpoint, headend, reactor, LinkFaults(drop_every_s=1.0), max_retry_delay_s=0.2
    )
    client.start()
    started = time.monotonic()
    try:
        await client.when_connected()
        adds = [
            devices.add_device(
                rep,
                meters[i // 5].esiid,
                AddDeviceRequest(f"000D6F{i:010X}", INSTALL_CODE, "thermostat"),
            )
            for i in range(COMMANDS)
        ]
        added = await gatherResults([_coro(a) for a in adds])
        assert len(added) == COMMANDS

        def statuses() -> dict[str, int]:
            engine = sa.create_engine(wired.config.store_url)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT status, count(*) FROM han_devices GROUP BY status")
                ).all()
            engine.dispose()
            return {status: count for status, count in rows}

        await eventually(
            lambda: statuses().get("Device Added", 0) == COMMANDS,
            timeout=600,
            what=f"all {COMMANDS} devices added (now {statuses()})",
        )
        assert client.drops >= 2, "the link was not cut while commands flowed"
        applied = [headend.applied_count(c.command_id) for c in headend.received]
        assert len(applied) == COMMANDS and set(applied) == {1}
        print(
            f"{COMMANDS} adds through {client.drops} link cuts in "
            f"{time.monotonic() - started:.1f} s"
        )
    finally:
        await client.stop()


def _coro(coroutine: object) -> object:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)  # type: ignore[arg-type]
