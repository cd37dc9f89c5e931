"""Who may do what: each role x each operation x own/other ESI ID, over real TLS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet.threads import deferToThread

from hangw import certs
from hangw.client import ApiError, Client, Identity
from hangw.domain import Meter, Party, Role
from hangw.meters import upsert_meters_thd
from hangw.parties import register_party_thd
from hangw.store.model import meters
from tests.gateway_harness import (
    CUSTOMER,
    E_OTHER,
    E_OTHER_TDSP,
    E_OWN,
    HSP,
    INSTALL_CODE,
    Harness,
)
from tests.test_api_provisioning import add_body, store_counts

#: party -> ESI IDs it may provision on (E_OWN: ROR REP_A, TDSP demo, customer CUST-0001;
#: E_OTHER: ROR REP_B, TDSP demo; E_OTHER_TDSP: ROR REP_A, another TDSP)
MAY_PROVISION = {
    "demo-rep-a": {E_OWN, E_OTHER_TDSP},
    "demo-rep-b": {E_OTHER},
    "demo-tdsp": {E_OWN, E_OTHER},
    "demo-customer": {E_OWN},
    "demo-hsp": set(),  # until the customer grants access
}


@pytest_twisted.ensureDeferred
async def test_provision_and_read_matrix(harness: Harness) -> None:
    """Each role may add, list and read history only on the ESI IDs it has HAN access to."""
    mac = 0
    for name, allowed in MAY_PROVISION.items():
        caller = harness.caller(name)
        for esiid in (E_OWN, E_OTHER, E_OTHER_TDSP):
            before = await store_counts(harness)
            mac += 1
            status, body = await caller.call(
                "POST", f"/v1/esiids/{esiid}/han-devices", add_body(mac=f"000D6F01000000{mac:02X}")
            )
            list_status, _ = await caller.call("GET", f"/v1/esiids/{esiid}/han-devices")
            history_status, _ = await caller.call("GET", f"/v1/esiids/{esiid}/han-history")
            if esiid in allowed:
                assert (status, list_status, history_status) == (202, 200, 200), (name, esiid, body)
            else:
                assert (status, list_status, history_status) == (403, 403, 403), (name, esiid, body)
                assert body["type"].endswith("forbidden") and name.split("-")[1] in body["detail"]
                assert await store_counts(harness) == before


#: party -> ESI IDs whose HAN it may read (the same parties as MAY_PROVISION, by right)
MAY_READ = {
    "demo-rep-a": {E_OWN},
    "demo-rep-b": {E_OTHER},
    "demo-tdsp": {E_OWN, E_OTHER},
    "demo-customer": {E_OWN},
    "demo-hsp": set(),
}


@pytest_twisted.ensureDeferred
async def test_device_read_and_grant_matrix(harness: Harness) -> None:
    """Reading devices and grants follows HAN access; only the customer grants or revokes."""
    _, own_device = await harness.caller("demo-rep-a").call(
        "POST", f"/v1/esiids/{E_OWN}/han-devices", add_body(mac="000D6F0400000001")
    )
    _, other_device = await harness.caller("demo-rep-b").call(
        "POST", f"/v1/esiids/{E_OTHER}/han-devices", add_body(mac="000D6F0400000002")
    )
    device_on = {E_OWN: own_device["id"], E_OTHER: other_device["id"]}
    for name, readable in MAY_READ.items():
        caller = harness.caller(name)
        for esiid in (E_OWN, E_OTHER):
            allowed = esiid in readable
            status, body = await caller.call("GET", f"/v1/han-devices/{device_on[esiid]}")
            assert status == (200 if allowed else 403), (name, esiid, body)
            status, body = await caller.call("GET", f"/v1/esiids/{esiid}/grants")
            assert status == (200 if allowed else 403), (name, esiid, body)

            before = await store_counts(harness)
            may_grant = name == "demo-customer" and esiid == E_OWN
            status, body = await caller.call(
                "POST", f"/v1/esiids/{esiid}/grants", {"hsp_party_id": HSP}
            )
            assert status == (201 if may_grant else 403), (name, esiid, body)
            if not may_grant:
                assert body["type"].endswith("forbidden")
                assert await store_counts(harness) == before
            status, body = await caller.call("DELETE", f"/v1/esiids/{esiid}/grants/{HSP}")
            assert status == (200 if may_grant else 403), (name, esiid, body)


@pytest_twisted.ensureDeferred
async def test_removal_matrix(harness: Harness) -> None:
    """The ROR, the TDSP and the customer may remove any device on the ESI ID; others may not."""
    rep_a = harness.caller("demo-rep-a")
    for n, remover in enumerate(["demo-rep-a", "demo-tdsp", "demo-customer"]):
        _, device = await rep_a.call(
            "POST", f"/v1/esiids/{E_OWN}/han-devices", add_body(mac=f"000D6F02000000{n:02X}")
        )
        for outsider in ("demo-rep-b", "demo-hsp"):
            before = await store_counts(harness)
            status, _ = await harness.caller(outsider).call(
                "DELETE", f"/v1/han-devices/{device['id']}"
            )
            assert status == 403
            assert await store_counts(harness) == before
        status, body = await harness.caller(remover).call(
            "DELETE", f"/v1/han-devices/{device['id']}"
        )
        assert status == 202 and body["status"] == "Remove Acknowledged"


@pytest_twisted.ensureDeferred
async def test_hsp_access_follows_the_customers_grant(harness: Harness) -> None:
    """An HSP provisions only while the customer's grant is live, and the customer sees no MAC."""
    hsp = harness.caller("demo-hsp")
    customer = harness.caller("demo-customer")
    path = f"/v1/esiids/{E_OWN}/han-devices"
    status, _ = await hsp.call("POST", path, add_body(mac="000D6F0300000001"))
    assert status == 403

    status, _ = await harness.caller("demo-rep-a").call(
        "POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP}
    )
    assert status == 403, "only the customer grants access"
    status, grant = await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    assert status == 201 and grant["live"]
    status, device = await hsp.call("POST", path, add_body(mac="000D6F0300000001"))
    assert status == 202 and device["mac"] == "000D6F0300000001"

    _, seen_by_customer = await customer.call("GET", f"/v1/han-devices/{device['id']}")
    assert seen_by_customer["mac"] is None and seen_by_customer["mac_hidden"] is True
    _, history = await customer.call("GET", f"/v1/esiids/{E_OWN}/han-history")
    assert all(row["mac"] is None for row in history["history"])
    _, seen_by_rep = await harness.caller("demo-rep-a").call(
        "GET", f"/v1/han-devices/{device['id']}"
    )
    assert seen_by_rep["mac"] == "000D6F0300000001"

    status, _ = await customer.call("DELETE", f"/v1/esiids/{E_OWN}/grants/{HSP}")
    assert status == 200
    before = await store_counts(harness)
    status, _ = await hsp.call("POST", path, add_body(mac="000D6F0300000002"))
    assert status == 403
    status, _ = await hsp.call("GET", f"/v1/han-devices/{device['id']}")
    assert status == 403
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_customer_adding_an_hsp_devices_mac_learns_no_device_id(harness: Harness) -> None:
    """A customer adding a MAC an HSP holds on the ESI ID is refused without naming that device."""
    customer = harness.caller("demo-customer")
    path = f"/v1/esiids/{E_OWN}/han-devices"
    await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    status, device = await harness.caller("demo-hsp").call(
        "POST", path, add_body(mac="000D6F0300000011")
    )
    assert status == 202
    before = await store_counts(harness)
    status, problem = await customer.call("POST", path, add_body(mac="000D6F0300000011"))
    assert status == 409 and "HAN service provider" in problem["detail"], problem
    assert device["id"] not in json.dumps(problem)
    assert await store_counts(harness) == before
    status, problem = await harness.caller("demo-rep-a").call(
        "POST", path, add_body(mac="000D6F0300000011")
    )
    assert status == 409 and device["id"] in problem["detail"], "the ROR sees the MAC anyway"
    assert CUSTOMER  # the customer of E_OWN in tests/data/meters.csv


@pytest_twisted.ensureDeferred
async def test_a_grant_with_an_unknown_field_or_no_hsp_is_refused_without_its_value(
    harness: Harness,
) -> None:
    """A grant body with an unknown or mistyped field, or an id that is no HSP, is 422 naming
    the field, quoting no value, and grants nothing."""
    customer = harness.caller("demo-customer")
    path = f"/v1/esiids/{E_OWN}/grants"
    before = await store_counts(harness)
    cases = [
        ({"hsp_party_id": HSP, "install_code": INSTALL_CODE}, "install_code"),
        ({"hsp_partyid": HSP}, "hsp_partyid"),
        ({"hsp_party_id": INSTALL_CODE}, "hsp_party_id"),
    ]
    for body, field in cases:
        status, problem = await customer.call("POST", path, body)
        assert (status, problem["field"]) == (422, field), (body, problem)
        assert INSTALL_CODE[:12] not in json.dumps(problem), problem
        assert HSP not in problem["detail"], problem
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_unregistered_certificate_cannot_connect(harness: Harness, tmp_path: Path) -> None:
    """A client certificate from the dev CA that is not registered fails the TLS handshake."""
    ca_dir = harness.config.cert_dir
    stranger = certs.issue_client_cert(
        certs.load_ca(ca_dir),
        party_id="0000000000099",
        role="rep",
        name="stranger",
        now=time.time(),
    )
    (tmp_path / "s.pem").write_bytes(stranger.cert_pem)
    (tmp_path / "s-key.pem").write_bytes(stranger.key_pem)
    client = Client(
        f"https://localhost:{harness.api_port}",
        Identity(tmp_path / "s.pem", tmp_path / "s-key.pem", ca_dir / "ca.pem"),
    )
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await deferToThread(client.request, "GET", f"/v1/esiids/{E_OWN}/han-devices")
    client.close()


@pytest_twisted.ensureDeferred
async def test_client_without_certificate_cannot_connect(harness: Harness) -> None:
    """A client that presents no certificate fails the TLS handshake."""
    import http.client

    context = ssl.create_default_context(cafile=str(harness.config.cert_dir / "ca.pem"))
    connection = http.client.HTTPSConnection("localhost", harness.api_port, context=context)

    def attempt() -> int:
        connection.request("GET", f"/v1/esiids/{E_OWN}/han-devices")
        return connection.getresponse().status

    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await deferToThread(attempt)
    connection.close()


@pytest_twisted.ensureDeferred
async def test_an_expired_certificate_fails_even_when_registered(
    harness: Harness, tmp_path: Path
) -> None:
    """A registered party whose certificate has expired cannot connect; a fresh one can."""
    ca = certs.load_ca(harness.config.cert_dir)
    long_ago = time.time() - (certs.VALID_DAYS + 5) * 86400
    ca_file = harness.config.cert_dir / "ca.pem"
    path = f"/v1/esiids/{E_OTHER_TDSP}/han-devices"
    for name, issued_at, connects in (("expired", long_ago, False), ("fresh", time.time(), True)):
        issued = certs.issue_client_cert(
            ca, party_id=f"95787790{len(name)}", role="rep", name=name, now=issued_at
        )
        (tmp_path / f"{name}.pem").write_bytes(issued.cert_pem)
        (tmp_path / f"{name}-key.pem").write_bytes(issued.key_pem)
        await harness.gateway.store.run(
            register_party_thd,
            Party(f"95787790{len(name)}", Role.REP, name, issued.fingerprint),
            time.time(),
        )
        await harness.gateway.registry.refresh()
        client = Client(
            f"https://localhost:{harness.api_port}",
            Identity(tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem", ca_file),
        )
        if connects:  # identified as a REP that is nobody's ROR: the handshake succeeded
            with pytest.raises(ApiError) as refusal:
                await deferToThread(client.request, "GET", path)
            assert refusal.value.status == 403
        else:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await deferToThread(client.request, "GET", path)
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_new_customer_ends_the_grants_of_the_last_one(harness: Harness) -> None:
    """When the registry names a new customer for an ESI ID, the HSP its former customer granted
    loses HAN access, messaging and usage there, and the grant shows revoked."""
    customer = harness.caller("demo-customer")
    hsp = harness.caller("demo-hsp")
    status, grant = await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    assert status == 201 and grant["live"]
    status, _ = await hsp.call("GET", f"/v1/esiids/{E_OWN}/han-devices")
    assert status == 200

    def moved_in(conn: sa.Connection) -> None:
        row = conn.execute(sa.select(meters).where(meters.c.esiid == E_OWN)).one()
        meter = Meter(**{name: getattr(row, name) for name in Meter.__dataclass_fields__})
        upsert_meters_thd(conn, [dataclasses.replace(meter, customer_id="CUST-0002")])

    await harness.gateway.store.run(moved_in)

    status, problem = await hsp.call("GET", f"/v1/esiids/{E_OWN}/han-devices")
    assert status == 403, problem
    status, problem = await hsp.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    assert status == 403, problem
    status, problem = await hsp.call(
        "POST",
        "/v1/messages",
        {"category": "STM", "esiids": [E_OWN], "message": "still here"},
    )
    assert status == 403, problem
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date().isoformat()
    status, problem = await hsp.call(
        "GET", f"/v1/usage/daily?esiid={E_OWN}&from={yesterday}&to={yesterday}"
    )
    assert status == 403, problem
    status, listed = await harness.caller("demo-tdsp").call("GET", f"/v1/esiids/{E_OWN}/grants")
    assert status == 200
    assert [(g["id"], g["live"]) for g in listed["grants"]] == [(grant["id"], False)]
