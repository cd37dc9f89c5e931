"""Reading a meter on demand through the API: the simulated meter's register and demand, the
same as the interval files and register reads hangw-sim writes for it, for the parties that may
see the ESI ID, and a clear 502 when the meter cannot answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread

import sep1
from adapters.commands import MeterReading
from hangw import cli
from hangw.diagnostics import Diagnostics, HeadEndCouldNotAnswer
from sep1.messages import UNSUPPORTED_ATTRIBUTE, AttributeRecord, ReadAttributesResponse
from simulators import usage
from simulators.headend import main as sim_main
from tests.conftest import start_gateway
from tests.gateway_harness import DATA, E_OTHER, E_OWN, TDSP, Harness
from tests.test_cli import cli_config
from tests.test_messaging_api import start, stop


@pytest_twisted.async_yield_fixture(params=["inprocess", "wire"])
async def gateway(request: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    """A gateway whose TDSP is the in-process simulator, or hangw-sim dialling the wire adapter."""
    running, closers = await start(tmp_path, request.param)
    yield running
    await stop(running, closers)


@pytest_twisted.async_yield_fixture
async def offline(tmp_path: Path) -> AsyncIterator[Harness]:
    running = await start_gateway(tmp_path / "state", simulator={"offline_rate": 1.0})
    yield running
    running.close()
    await running.gateway.stopService()


def posix(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def lse_intervals(directory: Path, esiid: str, day: dt.date) -> list[int | None]:
    """The Wh of each interval of the ESI ID's record for ``day`` in the LSE files there."""
    found: list[list[int | None]] = []
    ours = False
    for path in sorted(directory.glob("*.lse")):
        for line in path.read_text().splitlines():
            fields = line.split(",")
            if fields[0] == "00000001":
                ours = fields[1] == esiid and fields[3] == f"{day:%Y%m%d}000000"
                if ours:
                    found.append([])
            elif ours and fields[0].startswith("1"):
                found[-1] += [
                    int(value.replace(".", "")) if value else None for value in fields[1:-1:3]
                ]
    assert len(found) == 1, f"{len(found)} records of {esiid} on {day}"
    return found[0]


def midnight_read_wh(path: Path, esiid: str, day: dt.date) -> int:
    """The register read at the start of ``day`` in a register-reads CSV, in Wh."""
    lines = path.read_text().splitlines()
    assert lines[0] == "esiid,read_date,channel,reading_kwh"
    for line in lines[1:]:
        read_esiid, read_date, channel, kwh = line.split(",")
        if (read_esiid, read_date, channel) == (esiid, f"{day}", "4"):
            return int(kwh.replace(".", ""))
    raise AssertionError(f"no read of {esiid} on {day} in {path}")


@pytest_twisted.ensureDeferred
async def test_a_read_is_the_register_the_interval_files_add_up_to(
    gateway: Harness, tmp_path: Path
) -> None:
    """The ROR's read is the profile's register and demand at read_at, and minus hangw-sim's
    midnight register read it is the sum of today's intervals so far in hangw-sim's LSE file."""
    status, read = await gateway.caller("demo-rep-a").call("POST", f"/v1/esiids/{E_OWN}/reads")
    assert status == 200, read
    assert read["esiid"] == E_OWN
    read_at, asked_at = posix(read["read_at"]), posix(read["asked_at"])
    assert asked_at - 1 <= read_at <= asked_at + 30
    # the meter answered at read_at; the answer may straddle the end of one interval
    instants = (read_at - 1, read_at + 1)
    reading = read["current_summation_delivered_wh"]
    assert isinstance(reading, int)
    assert reading in {usage.register_wh(E_OWN, t) for t in instants}
    assert read["instantaneous_demand_w"] in {usage.demand_w(E_OWN, t) for t in instants}

    today = dt.datetime.fromtimestamp(read_at, usage.MARKET_TZ).date()
    out, reads = tmp_path / "lse", tmp_path / "reads.csv"
    argv = [
        "lse",
        "--out",
        str(out),
        "--from",
        f"{today}",
        "--meters-csv",
        str(DATA / "meters.csv"),
    ]
    assert sim_main([*argv, "--tdsp-duns", TDSP, "--reads", str(reads)]) == 0
    values = lse_intervals(out, E_OWN, today)
    assert len(values) == usage.day_start(today)[1]
    k0 = usage.day_start(today)[0]
    so_far = {sum(v or 0 for v in values[: int(t // 900) - k0]) for t in instants}
    assert reading - midnight_read_wh(reads, E_OWN, today) in so_far


@pytest_twisted.ensureDeferred
async def test_the_customer_may_read_another_rep_may_not(harness: Harness) -> None:
    """The customer of the ESI ID reads its meter; a REP reading another REP's ESI ID is refused
    with 403, and an ESI ID not in the registry is 404."""
    status, read = await harness.caller("demo-customer").call("POST", f"/v1/esiids/{E_OWN}/reads")
    assert status == 200 and read["current_summation_delivered_wh"] > 0, read
    status, problem = await harness.caller("demo-rep-a").call("POST", f"/v1/esiids/{E_OTHER}/reads")
    assert status == 403 and problem["type"].endswith("forbidden"), problem
    status, problem = await harness.caller("demo-rep-a").call(
        "POST", "/v1/esiids/10443720999999999/reads"
    )
    assert status == 404, problem


@pytest_twisted.ensureDeferred
async def test_an_offline_meter_is_a_502_with_the_reason(offline: Harness) -> None:
    """A meter that does not answer makes the read a 502 problem saying it is offline."""
    status, problem = await offline.caller("demo-rep-a").call("POST", f"/v1/esiids/{E_OWN}/reads")
    assert status == 502, problem
    assert problem["type"].endswith("head-end-could-not-answer")
    assert "offline" in problem["detail"] and TDSP in problem["detail"]


@pytest_twisted.ensureDeferred
async def test_cli_read_prints_the_register_and_demand(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hangw read ESIID` prints the meter's register in Wh and its demand in W."""
    config = str(cli_config(harness, tmp_path))
    api = ["--api", f"https://localhost:{harness.api_port}", "--as", "demo-rep-a"]
    # in a thread, so the reactor keeps serving the gateway
    assert await deferToThread(cli.main, ["--config", config, "read", E_OWN, *api]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{E_OWN} at ") and " Wh, demand " in out and out.endswith(" W\n")


class _Meters:
    """Stands in for the DeviceService: every party may read, every meter is TDSP's."""

    async def authorized_meter(self, party: Any, esiid: str) -> Any:
        return SimpleNamespace(esiid=esiid, tdsp_duns=TDSP)


class _Answering:
    """A head-end adapter whose meter answers a read with these attribute records."""

    def __init__(self, *records: AttributeRecord) -> None:
        self.zcl = sep1.encode(ReadAttributesResponse(records=records), 1)

    def query(self, query: Any) -> Deferred[Any]:
        return succeed(MeterReading(self.zcl, 1_790_000_000.0))


def read_with(*records: AttributeRecord) -> Deferred[dict[str, Any]]:
    adapters: dict[str, Any] = {TDSP: _Answering(*records)}
    diagnostics = Diagnostics(_Meters(), adapters)  # type: ignore[arg-type]
    return Deferred.fromCoroutine(diagnostics.read_meter(None, E_OWN))  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_the_meters_multiplier_divisor_and_unit_are_applied() -> None:
    """Raw values are scaled by the meter's multiplier and divisor into Wh and W (1 when not
    given); a unit other than kWh, or divisor 0, is a 502 naming it."""
    read = await read_with(
        AttributeRecord(0x0000, value=12_345),
        AttributeRecord(0x0400, value=-7),
        AttributeRecord(0x0300, value=0),
        AttributeRecord(0x0301, value=3),
        AttributeRecord(0x0302, value=10),
    )
    assert read["current_summation_delivered_wh"] == 3_703_500
    assert read["instantaneous_demand_w"] == -2_100 and read["read_at"] == 1_790_000_000.0
    read = await read_with(
        AttributeRecord(0x0000, value=5), AttributeRecord(0x0400, status=UNSUPPORTED_ATTRIBUTE)
    )
    assert read["current_summation_delivered_wh"] == 5_000
    assert read["instantaneous_demand_w"] is None
    read = await read_with(AttributeRecord(0x0000, value=1), AttributeRecord(0x0302, value=3))
    assert read["current_summation_delivered_wh"] == 333.333
    with pytest.raises(HeadEndCouldNotAnswer, match="unit of measure 0x01"):
        await read_with(AttributeRecord(0x0000, value=1), AttributeRecord(0x0300, value=1))
    with pytest.raises(HeadEndCouldNotAnswer, match="divisor 0"):
        await read_with(AttributeRecord(0x0000, value=1), AttributeRecord(0x0302, value=0))
    with pytest.raises(HeadEndCouldNotAnswer, match="current summation delivered"):
        await read_with(AttributeRecord(0x0400, value=1))
