"""Pinging a meter or a HAN device through the API: answered by the head-end, for the parties
that may see the ESI ID, and a clear 502 when the head-end cannot answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from hangw.cli import main as cli_main
from tests.conftest import start_gateway
from tests.gateway_harness import E_OTHER, E_OWN, Harness
from tests.test_api_provisioning import add_body, wait_for_status


@pytest_twisted.ensureDeferred
async def test_a_rep_pings_its_meter_and_a_joined_device(harness: Harness) -> None:
    """The ROR's ping of its ESI ID answers with the firmware; a joined device answers; the
    customer of the ESI ID may ping too."""
    rep = harness.caller("demo-rep-a")
    status, meter = await rep.call("POST", f"/v1/esiids/{E_OWN}/ping")
    assert status == 200, meter
    assert meter["reachable"] is True and meter["firmware_version"] and meter["asked_at"]
    status, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    assert status == 202, device
    await wait_for_status(rep, device["id"], "Device Added")
    status, pinged = await rep.call("POST", f"/v1/han-devices/{device['id']}/ping")
    assert status == 200 and pinged["reachable"] is True, pinged
    assert pinged["device_id"] == device["id"]
    status, by_customer = await harness.caller("demo-customer").call(
        "POST", f"/v1/han-devices/{device['id']}/ping"
    )
    assert status == 200 and "mac" not in by_customer


@pytest_twisted.ensureDeferred
async def test_a_device_not_joined_is_reported_unreachable(harness: Harness) -> None:
    """A device whose add is still pending is not on the meter's HAN: reachable false, and why."""
    rep = harness.caller("demo-rep-a")
    status, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    assert status == 202
    status, pinged = await rep.call("POST", f"/v1/han-devices/{device['id']}/ping")
    assert status == 200 and pinged["reachable"] is False
    assert "not joined" in pinged["reason"]


@pytest_twisted.ensureDeferred
async def test_another_rep_may_not_ping(harness: Harness) -> None:
    """A REP pinging another REP's ESI ID, or a device on it, is refused with a problem."""
    rep_b = harness.caller("demo-rep-b")
    status, device = await rep_b.call("POST", f"/v1/esiids/{E_OTHER}/han-devices", add_body())
    assert status == 202, device
    rep_a = harness.caller("demo-rep-a")
    for path in (f"/v1/esiids/{E_OTHER}/ping", f"/v1/han-devices/{device['id']}/ping"):
        status, problem = await rep_a.call("POST", path)
        assert status == 403, problem
        assert problem["type"].endswith("forbidden")


@pytest_twisted.async_yield_fixture
async def unconnected(tmp_path: Path) -> AsyncIterator[Harness]:
    running = await start_gateway(tmp_path / "state", adapter={"kind": "wire", "ack_timeout_s": 2})
    yield running
    running.close()
    await running.gateway.stopService()


@pytest_twisted.ensureDeferred
async def test_a_head_end_not_connected_is_a_502_that_says_so(unconnected: Harness) -> None:
    """With no head-end dialled in, a ping is answered at once with 502 naming the TDSP."""
    status, problem = await unconnected.caller("demo-rep-a").call(
        "POST", f"/v1/esiids/{E_OWN}/ping"
    )
    assert status == 502, problem
    assert "not connected" in problem["detail"] and "1039940674000" in problem["detail"]


def test_cli_ping_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    """`hangw ping` with neither an ESI ID nor --device says what to give and exits 2."""
    assert cli_main(["ping"]) == 2
    assert "give an ESI ID" in capsys.readouterr().err
