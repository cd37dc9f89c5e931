"""A load control event to 200,000 ESI IDs through the wire adapter and hangw-sim: every delivery
ends settled, and the counts in the store, the API and the message log reconcile."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa

from hangw.meters import parse_meter_csv, upsert_meters_thd
from hangw.store.model import deliveries, delivery_statuses
from simulators.fleet import generated_esiid, write_meter_csv
from tests.gateway_harness import REP_A, TDSP
from tests.test_messaging_api import sleep, start, stop

METERS = 200_000
OFFLINE_RATE = 0.01


def census_thd(conn: sa.Connection, request_id: str) -> dict[str, Any]:
    def scalar(query: Any) -> int:
        return int(conn.execute(query).scalar_one())

    by_level_status = conn.execute(
        sa.select(
            sa.case((deliveries.c.mac == "", "esi"), else_="device"),
            deliveries.c.status,
            sa.func.count(),
        )
        .where(deliveries.c.request_id == request_id)
        .group_by(sa.case((deliveries.c.mac == "", "esi"), else_="device"), deliveries.c.status)
    ).all()
    log_codes = conn.execute(
        sa.select(delivery_statuses.c.code, sa.func.count())
        .where(delivery_statuses.c.request_id == request_id)
        .group_by(delivery_statuses.c.code)
    ).all()
    unsettled = scalar(
        sa.select(sa.func.count()).where(
            deliveries.c.request_id == request_id, deliveries.c.settled_at.is_(None)
        )
    )
    # devices that answered on a meter whose delivery failed: there must be none
    failed_meters = (
        sa.select(deliveries.c.esiid)
        .where(
            deliveries.c.request_id == request_id,
            deliveries.c.mac == "",
            deliveries.c.status == "FLR",
        )
        .scalar_subquery()
    )
    answered_on_failed = scalar(
        sa.select(sa.func.count()).where(
            deliveries.c.request_id == request_id,
            deliveries.c.mac != "",
            deliveries.c.esiid.in_(failed_meters),
        )
    )
    return {
        "deliveries": {(level, status): n for level, status, n in by_level_status},
        "log": dict(log_codes),
        "unsettled": unsettled,
        "answered_on_failed": answered_on_failed,
    }


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_lce_to_200000_esiids_settles_every_delivery_and_reconciles(tmp_path: Path) -> None:
    """200,000 ESI IDs x 5 devices, 1% of meters offline: each meter's delivery is CON or (offline)
    FLR, each load-control device on a reached meter confirms, and store, API and log agree."""
    running, closers = await start(
        tmp_path,
        "wire",
        # the head-end shares this process and its reactor with the gateway: on a loaded
        # two-core machine, with both busy with 200,000 deliveries, the gateway read some
        # acknowledgements more than 30 s late, resent those commands, and devices confirmed
        # before the ACK was logged (so no PEN after a CON): right, but not what this counts
        ack_timeout_s=600,
        meters=METERS,
        devices_per_meter=5,
        seed=7,
        offline_rate=OFFLINE_RATE,
        offline_give_up_s=2,
    )
    csv_path = tmp_path / "meters.csv"
    write_meter_csv(csv_path, METERS, tdsp_duns=TDSP, ror_duns=REP_A)
    with open(csv_path, newline="") as handle:
        rows = parse_meter_csv(handle, str(csv_path))
    rep = running.caller("demo-rep-a")
    try:
        for start_row in range(0, len(rows), 20_000):
            await running.gateway.store.run(upsert_meters_thd, rows[start_row : start_row + 20_000])
        status, group = await rep.call(
            "PUT", "/v1/groups/all", {"esiids": [generated_esiid(n) for n in range(METERS)]}
        )
        assert status == 200 and group["size"] == METERS
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
        status, summary = await rep.call(
            "POST",
            "/v1/messages",
            {
                "category": "LCE",
                "group": "all",
                "device_class": 0x000D,  # HVAC, water heater, pool pump
                "start_time": later,
                "duration_minutes": 60,
            },
        )
        assert status == 202, summary
        request_id = summary["request_id"]
        assert summary["targets"] == METERS and summary["fan_out"]["commands"] == 100
        deadline = time.monotonic() + 300
        while True:
            census = await running.gateway.store.run(census_thd, request_id)
            meters = sum(n for (level, _), n in census["deliveries"].items() if level == "esi")
            settled_meters = sum(
                n
                for (level, status), n in census["deliveries"].items()
                if level == "esi" and status in ("CON", "FLR")
            )
            # every delivery settled, and every fan-out command's acknowledgement logged
            acknowledged = census["log"].get("ACK", 0) == METERS
            if settled_meters == METERS and census["unsettled"] == 0 and acknowledged:
                break
            assert time.monotonic() < deadline, census
            await sleep(1.0)
        counts = census["deliveries"]
        esi_con, esi_flr = counts.get(("esi", "CON"), 0), counts.get(("esi", "FLR"), 0)
        devices = sum(n for (level, _), n in counts.items() if level == "device")
        assert meters == esi_con + esi_flr == METERS
        # about 1% of the meters are offline (drawn per meter): pending, then failed
        assert 0.005 * METERS < esi_flr < 0.015 * METERS
        # four of each reached meter's five devices take these classes; each confirmed
        assert counts.get(("device", "CON"), 0) == devices == 4 * esi_con
        assert census["answered_on_failed"] == 0
        # the log: an RQA and an ACK per meter, a PEN per meter (the event starts later; for one
        # whose "offline" status overtook the acknowledgement, that one) and per offline meter,
        # a CON per meter reached and per device, an FLR per failure
        log_codes = census["log"]
        assert log_codes["RQA"] == log_codes["ACK"] == METERS
        assert METERS <= log_codes["PEN"] <= METERS + esi_flr
        assert log_codes["CON"] == esi_con + devices
        assert log_codes["FLR"] == esi_flr
        # and the API's summary says the same
        status, final = await rep.call("GET", f"/v1/messages/{request_id}")
        assert final["deliveries"] == METERS + devices
        assert final["statuses"]["CON"] == esi_con + devices
        assert final["statuses"]["FLR"] == esi_flr
        assert final["complete"] and final["settled"] == final["deliveries"]
        assert final["fan_out"] == {"commands": 100, "acknowledged": 100}
    finally:
        await stop(running, closers)
