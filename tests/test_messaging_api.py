"""HAN messaging over the real API (mutual TLS on loopback) with the in-process simulated head-end:
every category ends in the right status per delivery, SE 1.0 rules are enforced before anything
is sent, and refusals leave nothing behind."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from hangw.store.model import deliveries, delivery_statuses, message_outbox, message_requests
from tests.conftest import start_gateway
from tests.gateway_harness import (
    E_OLD_FIRMWARE,
    E_OTHER,
    E_OWN,
    E_REMOVED,
    HSP,
    INSTALL_CODE,
    INSTALL_CODE_2,
    TDSP,
    Harness,
)

#: The SMT HAN messaging log columns (smt-han.md), written out here rather than taken from the code.
SMT_COLUMNS = (
    "TDSPDUNSNumber",
    "MessageDate",
    "RequestID",
    "MessageCancellationID",
    "MessageStatusID",
    "ESIID",
    "MeterSerialNumber",
    "DeviceMACAddr",
    "EventCategoryID",
    "StatusCode",
    "StatusDesc",
    "StatusTimestamp",
)
# MACs the simulator would take for load control switches if it went by the MAC (as it does for
# a device provisioned without a type): each behaves as the device_type it is provisioned with
THERMOSTAT_MAC = "000D6F0000ABCD3E"
DISPLAY_MAC = "000D6F0000ABCD02"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def provisioned(harness: Harness, mac: str, device_type: str, code: str) -> str:
    rep = harness.caller("demo-rep-a")
    status, device = await rep.call(
        "POST",
        f"/v1/esiids/{E_OWN}/han-devices",
        {"mac": mac, "install_code": code, "device_type": device_type},
    )
    assert status == 202, device
    for _ in range(200):
        status, device = await rep.call("GET", f"/v1/han-devices/{device['id']}")
        if device["status"] == "Device Added":
            return str(device["id"])
        await sleep(0.05)
    raise AssertionError(f"device never joined: {device}")


async def settled(harness: Harness, caller_name: str, request_id: str, timeout: float = 15) -> Any:
    caller = harness.caller(caller_name)
    deadline = time.monotonic() + timeout
    while True:
        status, summary = await caller.call("GET", f"/v1/messages/{request_id}")
        assert status == 200, summary
        if summary["complete"] or time.monotonic() > deadline:
            return summary
        await sleep(0.05)


def by_target(summary: Any) -> dict[str, Any]:
    return {(d["mac"] or "esi"): d for d in summary["delivery_list"]}


async def counts(harness: Harness) -> tuple[int, ...]:
    def thd(conn: sa.Connection) -> tuple[int, ...]:
        return tuple(
            conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (message_requests, deliveries, delivery_statuses, message_outbox)
        )

    return await harness.gateway.store.run(thd)


def lce(issuer_event_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "category": "LCE",
        "esiids": [E_OWN],
        "issuer_event_id": issuer_event_id,
        "device_class": 1,  # HVAC compressor or furnace: thermostats
        "duration_minutes": 30,
        "criticality": 3,
        "cooling_temperature_offset": 20,
        **fields,
    }


#: hangw-sim's options as --set KEY=VALUE, and the in-process simulator's, for quick answers.
SIM_DELAYS = {
    "ack_delay_s": 0.01,
    "pending_delay_s": 0.02,
    "meter_ready_delay_s": 0.02,
    "join_delay_s": 0.03,
}


async def start(
    tmp_path: Path, kind: str, ack_timeout_s: float = 10, **simulator: float
) -> tuple[Harness, list[Any]]:
    """A gateway whose TDSP is the in-process simulator, or the wire adapter with hangw-sim
    dialling in over TLS as a separate process; returns it and what to stop afterwards."""
    if kind == "inprocess":
        return await start_gateway(tmp_path / "state", simulator=simulator), []
    running = await start_gateway(
        tmp_path / "state", adapter={"kind": "wire", "ack_timeout_s": ack_timeout_s}
    )
    argv = [sys.executable, "-m", "simulators.headend", "--gateway"]
    argv += [f"127.0.0.1:{running.adapter_port}", "--cert-dir", str(running.config.cert_dir)]
    argv += ["--party", "demo-tdsp", "--tdsp-duns", TDSP, "--log-level", "warning"]
    for key, value in {**SIM_DELAYS, **simulator}.items():
        argv += ["--set", f"{key}={value}"]
    log = open(tmp_path / "hangw-sim.log", "wb")
    sim = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    adapter = running.gateway.adapters[TDSP]
    for _ in range(300):
        if adapter.connected:
            break
        assert sim.poll() is None, (tmp_path / "hangw-sim.log").read_text()
        await sleep(0.05)
    else:
        raise AssertionError(
            "hangw-sim did not connect: " + (tmp_path / "hangw-sim.log").read_text()
        )
    return running, [sim, log]


async def stop(running: Harness, closers: list[Any]) -> None:
    running.close()
    for closer in closers:
        if isinstance(closer, subprocess.Popen):
            closer.terminate()
            for _ in range(100):  # without blocking the reactor: hangw-sim says goodbye first
                if closer.poll() is not None:
                    break
                await sleep(0.05)
            else:
                closer.kill()
                closer.wait(5)
        else:
            closer.close()
    await running.gateway.stopService()


@pytest_twisted.async_yield_fixture(params=["inprocess", "wire"])
async def harness(request: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    running, closers = await start(tmp_path, request.param)
    yield running
    await stop(running, closers)


@pytest_twisted.async_yield_fixture(params=["inprocess", "wire"])
async def devices_harness(request: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    running, closers = await start(tmp_path, request.param)
    await provisioned(running, THERMOSTAT_MAC, "thermostat", INSTALL_CODE)
    await provisioned(running, DISPLAY_MAC, "in_home_display", INSTALL_CODE_2)
    yield running
    await stop(running, closers)


@pytest_twisted.ensureDeferred
async def test_load_control_event_is_confirmed_and_started_per_device(
    devices_harness: Harness,
) -> None:
    """An LCE goes RQA -> ACK -> CON at the meter, and the thermostat confirms and starts it.
    Its summary, on POST and on GET, carries `warnings` although there are none."""
    rep = devices_harness.caller("demo-rep-a")
    status, summary = await rep.call("POST", "/v1/messages", lce(7001))
    assert status == 202, summary
    assert summary["category"] == "LCE" and summary["targets"] == 1
    assert summary["warnings"] == []
    request_id = summary["request_id"]
    # the display takes no load control: only the thermostat gets a delivery of its own
    assert set(by_target(summary)) == {"esi", THERMOSTAT_MAC}
    done = await settled(devices_harness, "demo-rep-a", request_id)
    assert done["complete"], done
    assert done["warnings"] == []
    targets = by_target(done)
    assert targets["esi"]["status"] == "CON"
    # "command received" (CON) then "event started" (STR)
    for _ in range(100):
        if by_target(done)[THERMOSTAT_MAC]["status"] == "STR":
            break
        await sleep(0.05)
        done = await settled(devices_harness, "demo-rep-a", request_id)
    assert by_target(done)[THERMOSTAT_MAC]["status"] == "STR"
    status, page = await rep.call("GET", f"/v1/message-log?request_id={request_id}")
    assert status == 200
    codes = [(e["DeviceMACAddr"], e["StatusCode"]) for e in page["entries"]]
    assert codes[:2] == [(None, "RQA"), (THERMOSTAT_MAC, "RQA")]
    assert (None, "ACK") in codes and (None, "CON") in codes
    thermostat = [code for mac, code in codes if mac == THERMOSTAT_MAC]
    assert thermostat == ["RQA", "ACK", "CON", "STR"]


@pytest_twisted.ensureDeferred
async def test_text_with_confirmation_is_tracked_to_the_users_confirmation(
    devices_harness: Harness,
) -> None:
    """An STM asking for confirmation settles per display only on its Message Confirmation."""
    rep = devices_harness.caller("demo-rep-a")
    status, summary = await rep.call(
        "POST",
        "/v1/messages",
        {
            "category": "STM",
            "esiids": [E_OWN],
            "message": "Peak pricing 3-6 pm today",
            "confirmation_required": True,
            "importance": "high",
        },
    )
    assert status == 202, summary
    assert set(by_target(summary)) == {"esi", DISPLAY_MAC, THERMOSTAT_MAC}
    done = await settled(devices_harness, "demo-rep-a", summary["request_id"])
    assert done["complete"], done
    for mac in (DISPLAY_MAC, THERMOSTAT_MAC):
        assert by_target(done)[mac]["status"] == "CON"
        assert by_target(done)[mac]["status_desc"] == "message confirmed by the user"


@pytest_twisted.ensureDeferred
async def test_text_cancelled_before_confirmation(devices_harness: Harness) -> None:
    """CSM: a text cancelled before its start reaches the meters (CON) and stops its displays
    waiting for a confirmation that will not come."""
    rep = devices_harness.caller("demo-rep-a")
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    status, text = await rep.call(
        "POST",
        "/v1/messages",
        {
            "category": "STM",
            "esiids": [E_OWN],
            "message": "Tomorrow 3-6 pm: conserve",
            "confirmation_required": True,
            "start_time": later,
        },
    )
    assert status == 202, text
    status, cancel = await rep.call("POST", f"/v1/messages/{text['request_id']}/cancel", {})
    assert status == 202, cancel
    assert cancel["category"] == "CSM" and set(by_target(cancel)) == {"esi"}
    assert cancel["warnings"] == []
    done = await settled(devices_harness, "demo-rep-a", cancel["request_id"])
    assert by_target(done)["esi"]["status"] == "CON"
    _, original = await rep.call("GET", f"/v1/messages/{text['request_id']}")
    assert original["cancelled_by"] == cancel["request_id"]
    for mac in (DISPLAY_MAC, THERMOSTAT_MAC):
        assert by_target(original)[mac]["status_desc"].startswith("text cancelled")
    _, page = await rep.call("GET", f"/v1/message-log?request_id={text['request_id']}&category=CSM")
    assert {e["MessageCancellationID"] for e in page["entries"]} == {cancel["cancellation_id"]}


@pytest_twisted.ensureDeferred
async def test_price_to_an_esiid_without_price_capable_devices(harness: Harness) -> None:
    """A price to an ESI ID with no price-capable device is confirmed by the ESI, with a warning."""
    rep = harness.caller("demo-rep-a")
    status, summary = await rep.call(
        "POST",
        "/v1/messages",
        {
            "category": "PRM",
            "esiids": [E_OWN],
            "provider_id": 42,
            "rate_label": "PEAK",
            "price": 2150,
            "price_trailing_digit": 4,
            "duration_minutes": 120,
        },
    )
    assert status == 202, summary
    assert any("no price-capable HAN device" in w for w in summary["warnings"])
    done = await settled(harness, "demo-rep-a", summary["request_id"])
    assert done["warnings"] == summary["warnings"]
    esi = by_target(done)["esi"]
    assert esi["status"] == "CON"
    assert esi["status_desc"].startswith("price acknowledged by the meter")


@pytest_twisted.ensureDeferred
async def test_newer_overlapping_event_supersedes_the_older(devices_harness: Harness) -> None:
    """An overlapping LCE for the same class and group supersedes the older; both logs say so."""
    rep = devices_harness.caller("demo-rep-a")
    _, first = await rep.call("POST", "/v1/messages", lce(7101))
    await settled(devices_harness, "demo-rep-a", first["request_id"])
    status, second = await rep.call("POST", "/v1/messages", lce(7102, duration_minutes=60))
    assert status == 202, second
    assert any(first["request_id"] in w for w in second["warnings"])
    later = await settled(devices_harness, "demo-rep-a", second["request_id"])
    assert later["warnings"] == second["warnings"]
    for _ in range(100):
        _, older = await rep.call("GET", f"/v1/messages/{first['request_id']}")
        if "superseded" in by_target(older)[THERMOSTAT_MAC]["status_desc"]:
            break
        await sleep(0.05)
    assert older["superseded_by"] == second["request_id"]
    assert by_target(older)[THERMOSTAT_MAC]["status_desc"] == "event superseded"
    _, page = await rep.call("GET", f"/v1/message-log?request_id={first['request_id']}")
    descs = [e["StatusDesc"] for e in page["entries"]]
    assert any(d.startswith("superseded by issuer event 7102") for d in descs)


@pytest_twisted.ensureDeferred
async def test_cancel_before_start_and_in_progress(devices_harness: Harness) -> None:
    """CLE before the start and during the event: the cancellation and the event both say so."""
    rep = devices_harness.caller("demo-rep-a")
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    for issuer_event_id, fields in ((7201, {"start_time": later}), (7202, {})):
        status, summary = await rep.call("POST", "/v1/messages", lce(issuer_event_id, **fields))
        assert status == 202, summary
        request_id = summary["request_id"]
        await settled(devices_harness, "demo-rep-a", request_id)
        status, cancel = await rep.call("POST", f"/v1/messages/{request_id}/cancel", {})
        assert status == 202, cancel
        assert cancel["category"] == "CLE" and cancel["cancellation_id"].startswith("C")
        done = await settled(devices_harness, "demo-rep-a", cancel["request_id"])
        assert by_target(done)[THERMOSTAT_MAC]["status"] == "CON"
        assert by_target(done)[THERMOSTAT_MAC]["status_desc"] == "event cancelled"
        _, event = await rep.call("GET", f"/v1/messages/{request_id}")
        assert event["cancelled_by"] == cancel["request_id"]
        assert by_target(event)[THERMOSTAT_MAC]["status_desc"].startswith("event cancelled")
        # the log shows the cancellation under the event's RequestID with its own id
        _, page = await rep.call("GET", f"/v1/message-log?request_id={request_id}&category=CLE")
        assert page["entries"]
        assert {e["RequestID"] for e in page["entries"]} == {request_id}
        assert {e["MessageCancellationID"] for e in page["entries"]} == {cancel["cancellation_id"]}


@pytest_twisted.ensureDeferred
async def test_cancel_refusals(harness: Harness) -> None:
    """Cancel of an unknown request, a price, or an already-cancelled event is refused with why."""
    rep = harness.caller("demo-rep-a")
    status, problem = await rep.call("POST", "/v1/messages/RDOESNOTEXIST/cancel", {})
    assert status == 404 and "no request" in problem["detail"]
    _, price = await rep.call(
        "POST",
        "/v1/messages",
        {"category": "PRM", "esiids": [E_OWN], "provider_id": 1, "price": 100},
    )
    status, problem = await rep.call("POST", f"/v1/messages/{price['request_id']}/cancel", {})
    assert status == 409 and "a price is replaced" in problem["detail"]
    _, event = await rep.call("POST", "/v1/messages", lce(7301))
    status, cancel = await rep.call("POST", f"/v1/messages/{event['request_id']}/cancel", {})
    assert status == 202
    for request_id in (price["request_id"], event["request_id"], cancel["request_id"]):
        await settled(harness, "demo-rep-a", request_id)
    before = await counts(harness)
    status, problem = await rep.call("POST", f"/v1/messages/{event['request_id']}/cancel", {})
    assert status == 409 and "already cancelled" in problem["detail"]
    assert await counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_se1_rules_refuse_before_anything_is_sent(harness: Harness) -> None:
    """Expired events, bad ranges and sentinels, reused issuer event ids: problems, no change."""
    rep = harness.caller("demo-rep-a")
    _, first = await rep.call("POST", "/v1/messages", lce(7401))
    await settled(harness, "demo-rep-a", first["request_id"])
    before = await counts(harness)
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
    cases = [
        (lce(7401), 409, "already used by you in request " + first["request_id"]),
        (lce(7402, start_time=past), 422, "in the past"),
        (lce(7403, duration_minutes=1441), 422, "duration_minutes"),
        (lce(7404, criticality=0), 422, "criticality"),
        (lce(7405, duty_cycle=101), 422, "duty_cycle"),
        (lce(7406, average_load_adjustment_percentage=-128), 422, "average_load"),
        (lce(7407, device_class=0), 422, "device_class"),
        ({**lce(7408), "category": "XYZ"}, 422, "category"),
        ({**lce(7409), "esiids": ["1044372000000000X9"]}, 422, "not in the meter registry"),
        ({**lce(7410), "esiids": [E_OWN, E_OWN]}, 422, "listed twice"),
        ({"category": "STM", "esiids": [E_OWN], "message": "x" * 255}, 422, "at most 254"),
    ]
    for body, code, words in cases:
        status, problem = await rep.call("POST", "/v1/messages", body)
        assert status == code, (body, problem)
        assert words in problem["detail"], (words, problem)
        assert problem["type"].startswith("https://")
    assert await counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_who_may_send(harness: Harness) -> None:
    """Another REP's ESI ID, inactive or HAN-incapable meters, an HSP without (or after) a grant,
    a customer: all refused, nothing left behind; the HSP may send while its grant is live."""
    rep_a = harness.caller("demo-rep-a")
    hsp = harness.caller("demo-hsp")
    customer = harness.caller("demo-customer")
    before = await counts(harness)
    refusals = [
        (rep_a, {**lce(7501), "esiids": [E_OTHER]}, 403),
        (rep_a, {**lce(7502), "esiids": [E_REMOVED]}, 422),
        (rep_a, {**lce(7503), "esiids": [E_OLD_FIRMWARE]}, 422),
        (hsp, lce(7504), 403),
        (customer, lce(7505), 403),
    ]
    for caller, body, code in refusals:
        status, problem = await caller.call("POST", "/v1/messages", body)
        assert status == code, (caller.name, problem)
    assert await counts(harness) == before
    status, _ = await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    assert status == 201
    status, summary = await hsp.call("POST", "/v1/messages", lce(7506))
    assert status == 202, summary
    # settled first: the head-end's statuses for it would otherwise land between the counts
    assert (await settled(harness, "demo-hsp", summary["request_id"]))["complete"]
    status, _ = await customer.call("DELETE", f"/v1/esiids/{E_OWN}/grants/{HSP}")
    assert status == 200
    middle = await counts(harness)
    status, problem = await hsp.call("POST", "/v1/messages", lce(7507))
    assert status == 403 and "not granted" in problem["detail"]
    assert await counts(harness) == middle
    # the REP cannot see the HSP's request
    status, _ = await rep_a.call("GET", f"/v1/messages/{summary['request_id']}")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_a_group_with_a_misspelt_field_is_refused_and_not_made(harness: Harness) -> None:
    """PUT /v1/groups/{name} with a field other than esiids is 422 naming it; no group is made."""
    rep = harness.caller("demo-rep-a")
    status, problem = await rep.call(
        "PUT", "/v1/groups/typo", {"esiids": [E_OWN], "esiid": [E_OTHER]}
    )
    assert (status, problem.get("field")) == (422, "esiid"), problem
    assert (await rep.call("GET", "/v1/groups/typo"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_groups_and_cancel_all(harness: Harness) -> None:
    """A REP's named group is a target; CAL cancels every event on it."""
    rep = harness.caller("demo-rep-a")
    status, group = await rep.call("PUT", "/v1/groups/summer-dr", {"esiids": [E_OWN]})
    assert status == 200 and group["size"] == 1
    status, problem = await rep.call(
        "PUT", "/v1/groups/bad", {"esiids": [E_OWN, "10443720999999999"]}
    )
    assert status == 422 and "esiids[1]" in problem["detail"]
    body = lce(7601)
    del body["esiids"]
    body["group"] = "summer-dr"
    status, summary = await rep.call("POST", "/v1/messages", body)
    assert status == 202 and summary["group"] == "summer-dr"
    await settled(harness, "demo-rep-a", summary["request_id"])
    status, cal = await rep.call("POST", "/v1/groups/summer-dr/load-control/cancel-all", {})
    assert status == 202 and cal["category"] == "CAL"
    done = await settled(harness, "demo-rep-a", cal["request_id"])
    assert by_target(done)["esi"]["status"] == "CON"
    status, _ = await rep.call("POST", "/v1/groups/nope/load-control/cancel-all", {})
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_csv_log_has_the_smt_columns_and_the_stores_values(devices_harness: Harness) -> None:
    """The CSV message log has exactly the SMT columns, one row per status, matching the store."""
    rep = devices_harness.caller("demo-rep-a")
    _, summary = await rep.call("POST", "/v1/messages", lce(7701))
    request_id = summary["request_id"]
    await settled(devices_harness, "demo-rep-a", request_id)
    raw = await deferToThread(_get_csv, rep, request_id)
    rows = list(csv.reader(io.StringIO(raw)))
    assert tuple(rows[0]) == SMT_COLUMNS
    entries = [dict(zip(SMT_COLUMNS, row, strict=True)) for row in rows[1:]]

    def thd(conn: sa.Connection) -> list[Any]:
        return conn.execute(
            sa.select(
                delivery_statuses.c.esiid,
                delivery_statuses.c.mac,
                delivery_statuses.c.code,
                delivery_statuses.c.description,
                deliveries.c.delivery_id,
                deliveries.c.tdsp_duns,
            )
            .join(
                deliveries,
                sa.and_(
                    deliveries.c.request_id == delivery_statuses.c.request_id,
                    deliveries.c.esiid == delivery_statuses.c.esiid,
                    deliveries.c.mac == delivery_statuses.c.mac,
                ),
            )
            .where(delivery_statuses.c.request_id == request_id)
            .order_by(delivery_statuses.c.status_id)
        ).all()

    stored = await devices_harness.gateway.store.run(thd)
    assert len(entries) == len(stored) > 0
    for entry, row in zip(entries, stored, strict=True):
        assert entry["RequestID"] == request_id
        assert entry["ESIID"] == row.esiid == E_OWN
        assert entry["DeviceMACAddr"] == row.mac
        assert entry["StatusCode"] == row.code
        assert entry["StatusDesc"] == row.description
        assert entry["MessageStatusID"] == str(row.delivery_id)
        assert entry["TDSPDUNSNumber"] == row.tdsp_duns
        assert entry["EventCategoryID"] == "LCE"
        assert entry["MeterSerialNumber"] == "M0001"
        assert entry["MessageCancellationID"] == ""


def _get_csv(caller: Any, request_id: str) -> str:
    out = io.BytesIO()
    caller.client.download(f"/v1/message-log?request_id={request_id}&format=csv", out)
    return out.getvalue().decode("utf-8")


@pytest.mark.parametrize("kind", ["inprocess", "wire"])
@pytest.mark.parametrize("rate", ["silent_rate", "opt_out_rate"])
@pytest_twisted.ensureDeferred
async def test_silent_devices_fail_and_opt_outs_are_reported(
    tmp_path: Path, rate: str, kind: str
) -> None:
    """A device that never answers fails (FLR) at the deadline; an opting-out user shows OPT."""
    running, closers = await start(tmp_path, kind, **{rate: 1.0})
    running.gateway.messaging._config = type(running.gateway.messaging._config)(settle_timeout_s=2)
    try:
        await provisioned(running, THERMOSTAT_MAC, "thermostat", INSTALL_CODE)
        rep = running.caller("demo-rep-a")
        _, summary = await rep.call("POST", "/v1/messages", lce(7801))
        done = await settled(running, "demo-rep-a", summary["request_id"])
        for _ in range(100):
            thermostat = by_target(done)[THERMOSTAT_MAC]
            if thermostat["status"] in ("FLR", "OPT"):
                break
            await sleep(0.1)
            done = await settled(running, "demo-rep-a", summary["request_id"])
        if rate == "silent_rate":
            assert thermostat["status"] == "FLR"
            assert thermostat["status_desc"].startswith("no confirmation in time")
        else:
            assert thermostat["status"] == "OPT"
            assert thermostat["status_desc"] == "user opted out"
    finally:
        await stop(running, closers)


@pytest_twisted.ensureDeferred
async def test_log_pages_follow_their_next_links(harness: Harness) -> None:
    """JSON pages of the log chain through 'next' (filters kept, encoded) to every entry once."""
    rep = harness.caller("demo-rep-a")
    for n in range(3):
        # three enrollment groups: no event supersedes another
        _, summary = await rep.call("POST", "/v1/messages", lce(7900 + n, enrollment_group=n))
        await settled(harness, "demo-rep-a", summary["request_id"])
    query = "category=LCE&from=2000-01-01T00:00:00%2B00:00"
    status, whole = await rep.call("GET", f"/v1/message-log?{query}")
    assert status == 200
    seen: list[Any] = []
    path: str | None = f"/v1/message-log?{query}&limit=2"
    while path:
        status, page = await rep.call("GET", path)
        assert status == 200, page
        assert len(page["entries"]) <= 2
        seen.extend(page["entries"])
        path = page["next"]
    assert seen == whole["entries"] and len(seen) == 9  # RQA, ACK, CON for each of three


@pytest_twisted.ensureDeferred
async def test_log_limit_and_cursor_take_only_ascii_digits_of_a_sane_length(
    harness: Harness,
) -> None:
    """A log limit or cursor of non-ASCII digits or too many digits is a 422 naming it."""
    rep = harness.caller("demo-rep-a")
    for name in ("limit", "after"):
        for value in ("%C2%B2", "%D9%A4", "9" * 5000, "9" * 19):
            status, problem = await rep.call("GET", f"/v1/message-log?{name}={value}")
            assert status == 422 and problem["field"] == name, (name, value, problem)
    status, page = await rep.call("GET", "/v1/message-log?limit=2&after=" + "9" * 18)
    assert status == 200 and page["entries"] == [], page


@pytest_twisted.ensureDeferred
async def test_extreme_durations_are_refused_for_every_category(harness: Harness) -> None:
    """An LCE, price or text lasting -10**12 or 10**400 minutes is a 422, and nothing is stored."""
    rep = harness.caller("demo-rep-a")
    before = await counts(harness)
    bodies = [
        lce(7951),
        {"category": "PRM", "esiids": [E_OWN], "provider_id": 1, "price": 100},
        {"category": "STM", "esiids": [E_OWN], "message": "hello"},
    ]
    for body in bodies:
        for duration in (-1_000_000_000_000, 10**400):
            status, problem = await rep.call(
                "POST", "/v1/messages", {**body, "duration_minutes": duration}
            )
            assert status == 422 and problem["field"] == "duration_minutes", (body, problem)
    assert await counts(harness) == before


def chunked_post(caller: Any, path: str, pieces: list[bytes]) -> tuple[int, Any]:
    """POST ``pieces`` as a chunked body (no Content-Length) on the caller's connection."""
    connection = caller.client._connection
    connection.request(
        "POST",
        path,
        body=iter(pieces),
        headers={"content-type": "application/json", "transfer-encoding": "chunked"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


@pytest_twisted.ensureDeferred
async def test_a_chunked_cancel_body_is_read(harness: Harness) -> None:
    """A cancel or cancel-all body sent chunked (no Content-Length) is read and checked."""
    rep = harness.caller("demo-rep-a")
    before = await counts(harness)
    status, problem = await deferToThread(
        chunked_post,
        rep,
        f"/v1/esiids/{E_OWN}/load-control/cancel-all",
        [b'{"randomize_end":', b' "not-a-bool"}'],
    )
    assert status == 422 and problem["field"] == "randomize_end", problem
    assert await counts(harness) == before
    starts = time.time() + 3600
    start_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(starts))
    _, event = await rep.call("POST", "/v1/messages", lce(7961, start_time=start_time))
    effective = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(starts + 600))
    status, cancel = await deferToThread(
        chunked_post,
        rep,
        f"/v1/messages/{event['request_id']}/cancel",
        [b'{"effective_time": ', f'"{effective}"}}'.encode()],
    )
    assert status == 202, cancel
    assert cancel["fields"]["effective_time"] == effective


@pytest_twisted.ensureDeferred
async def test_a_misspelt_cancel_field_is_refused_not_ignored(harness: Harness) -> None:
    """A cancel or cancel-all body with a field it does not take is 422 naming the field."""
    rep = harness.caller("demo-rep-a")
    _, event = await rep.call("POST", "/v1/messages", lce(7971))
    await settled(harness, "demo-rep-a", event["request_id"])  # no status still to come
    before = await counts(harness)
    cases = [
        (f"/v1/esiids/{E_OWN}/load-control/cancel-all", {"randomise_end": True}, "randomise_end"),
        (
            f"/v1/esiids/{E_OWN}/load-control/cancel-all",
            {"effective_time": "now"},
            "effective_time",
        ),
        (f"/v1/messages/{event['request_id']}/cancel", {"effective_tme": "now"}, "effective_tme"),
    ]
    for path, body, field in cases:
        status, problem = await rep.call("POST", path, body)
        assert status == 422 and problem["field"] == field, (path, problem)
        assert field in problem["detail"]
    assert await counts(harness) == before
    status, _ = await rep.call("POST", f"/v1/messages/{event['request_id']}/cancel", {})
    assert status == 202
