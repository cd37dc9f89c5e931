"""The provisioning API end to end: real TLS on loopback, real SQLite file, simulated head-end."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from structlog.testing import capture_logs
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from hangw.client import ApiError, Client, Identity
from hangw.store.model import device_history, grants, han_devices, idempotency_keys, outbox
from tests.conftest import start_gateway
from tests.gateway_harness import (
    E_OLD_FIRMWARE,
    E_OTHER,
    E_OWN,
    E_REMOVED,
    INSTALL_CODE,
    INSTALL_CODE_2,
    REP_A,
    TDSP,
    Caller,
    Harness,
)


def add_body(
    mac: str = "000D6F000A1B2C3D", code: str = INSTALL_CODE, **extra: Any
) -> dict[str, Any]:
    return {
        "mac": mac,
        "install_code": code,
        "device_type": "thermostat",
        "description": "t",
        **extra,
    }


async def wait_for_status(caller: Caller, device_id: str, wanted: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await caller.call("GET", f"/v1/han-devices/{device_id}")
        assert status == 200, body
        if body["status"] == wanted:
            return body
        assert time.monotonic() < deadline, (
            f"{device_id} stuck in {body['status']}, wanted {wanted}"
        )
        await deferLater(reactor, 0.05)


async def store_counts(harness: Harness) -> tuple[int, ...]:
    """What a request could leave behind: devices, history of parties' requests (not of head-end
    reports, which keep arriving in the background), outbox rows, grants, idempotency keys."""

    def thd(conn: sa.Connection) -> tuple[int, ...]:
        def count(table: sa.Table, *where: Any) -> int:
            return conn.execute(
                sa.select(sa.func.count()).select_from(table).where(*where)
            ).scalar_one()

        return (
            count(han_devices),
            count(
                device_history, device_history.c.event.in_(["add requested", "remove requested"])
            ),
            count(outbox),
            count(grants),
            count(idempotency_keys),
        )

    return await harness.gateway.store.run(thd)


@pytest_twisted.ensureDeferred
async def test_add_then_remove_walks_every_status(harness: Harness) -> None:
    """A device walks from Add Acknowledged to Device Added, then on to Device Removed."""
    rep = harness.caller("demo-rep-a")
    status, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    assert status == 202, device
    assert device["status"] == "Add Acknowledged"
    assert "install_code" not in device
    added = await wait_for_status(rep, device["id"], "Device Added")
    assert [h["status"] for h in added["history"]] == [
        "Add Acknowledged",
        "Add Acknowledged",
        "Add Pending",
        "Meter Ready",
        "Device Added",
    ]
    assert added["history"][1]["event"] == "TDSP acknowledged"
    # who acted: the REP for its request, the meter's TDSP (by DUNS) for each head-end report
    assert [h["actor"] for h in added["history"]] == [REP_A] + [TDSP] * 4

    status, removing = await rep.call("DELETE", f"/v1/han-devices/{device['id']}?reason=moving")
    assert status == 202 and removing["status"] == "Remove Acknowledged"
    removed = await wait_for_status(rep, device["id"], "Device Removed")
    assert [h["status"] for h in removed["history"]][5:] == [
        "Remove Acknowledged",
        "Remove Acknowledged",
        "Remove Pending",
        "Device Removed",
    ]
    status, history = await rep.call("GET", f"/v1/esiids/{E_OWN}/han-history")
    assert status == 200 and len(history["history"]) == 9
    assert all(row["mac"] == "000D6F000A1B2C3D" for row in history["history"])


@pytest_twisted.ensureDeferred
async def test_pending_add_can_be_withdrawn(harness: Harness) -> None:
    """Removing a device before it joined withdraws the add and frees its slot."""
    rep = harness.caller("demo-rep-a")
    _, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    status, body = await rep.call("DELETE", f"/v1/han-devices/{device['id']}")
    assert status == 202 and body["status"] == "Remove Acknowledged"
    assert body["reason"] == "withdrawn before it was added"
    await wait_for_status(rep, device["id"], "Device Removed")


@pytest_twisted.ensureDeferred
async def test_bad_requests_are_problems_and_change_nothing(harness: Harness) -> None:
    """Each bad request gets a problem+json naming what is wrong, and the store is unchanged."""
    rep = harness.caller("demo-rep-a")
    before = await store_counts(harness)
    path = f"/v1/esiids/{E_OWN}/han-devices"
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", path, add_body(mac="00:0D:6F:ZZ"), 422, "mac"),
        ("POST", path, add_body(mac="FFFFFFFFFFFFFFFF"), 422, "mac"),
        ("POST", path, add_body(code="83FED3407A939723A5C639B26916D505C3B6"), 422, "install_code"),
        ("POST", path, add_body(code="83FED3"), 422, "install_code"),
        ("POST", path, add_body(device_type="toaster"), 422, "device_type"),
        ("POST", path, {"mac": "000D6F000A1B2C3D"}, 422, "install_code"),
        ("POST", path, add_body(colour="red"), 422, "colour"),
        ("POST", "/v1/esiids/99999999999999999/han-devices", add_body(), 404, ""),
        ("POST", f"/v1/esiids/{E_REMOVED}/han-devices", add_body(), 409, ""),
        ("POST", f"/v1/esiids/{E_OLD_FIRMWARE}/han-devices", add_body(), 409, ""),
        ("GET", "/v1/han-devices/dev_nosuchdevice", None, 404, ""),
        ("GET", "/v1/no/such/path", None, 404, ""),
    ]
    for method, where, body, want_status, want_field in cases:
        status, problem = await rep.call(method, where, body)
        assert status == want_status, (where, body, problem)
        assert problem["status"] == want_status and problem["detail"] and problem["title"]
        if want_field:
            assert problem["field"] == want_field, problem
        assert INSTALL_CODE[:12] not in problem["detail"]
    status, problem = await rep.call("POST", f"/v1/esiids/{E_OLD_FIRMWARE}/han-devices", add_body())
    assert "firmware 1.0.3" in problem["detail"] and "cannot serve HAN devices" in problem["detail"]
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_malformed_and_oversized_bodies(harness: Harness) -> None:
    """Malformed JSON is 400, a wrong media type 415, an oversized body 413; nothing is stored."""
    rep = harness.caller("demo-rep-a")
    before = await store_counts(harness)
    path = f"/v1/esiids/{E_OWN}/han-devices"
    connection = rep.client._connection

    def raw(body: bytes, content_type: str) -> tuple[int, bytes, str]:
        connection.request("POST", path, body=body, headers={"content-type": content_type})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("content-type")

    from twisted.internet.threads import deferToThread

    for body, content_type, want in [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"mac": "x"}', "text/plain", 415),
        (b"{" + b" " * 70000 + b"}", "application/json", 413),
    ]:
        status, payload, media = await deferToThread(raw, body, content_type)
        assert status == want, payload
        assert media == "application/problem+json"
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_a_number_too_long_to_read_is_a_bad_request(harness: Harness) -> None:
    """A JSON number of more digits than Python reads is 400 problem+json on every POST path."""
    rep = harness.caller("demo-rep-a")
    before = await store_counts(harness)
    connection = rep.client._connection
    body = b'{"mac": ' + b"1" * 5000 + b"}"

    def raw(path: str) -> tuple[int, str, dict[str, Any]]:
        connection.request("POST", path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), json.loads(response.read())

    for path in (
        f"/v1/esiids/{E_OWN}/han-devices",
        f"/v1/esiids/{E_OWN}/grants",
        "/v1/messages",
        "/v1/usage/jobs",
        "/v1/webhooks",
    ):
        status, media, problem = await deferToThread(raw, path)
        assert (status, media) == (400, "application/problem+json"), (path, problem)
        assert "more than 4300 digits" in problem["detail"], problem
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_text_no_store_can_hold_is_refused_naming_where(harness: Harness) -> None:
    """A NUL or a lone surrogate in a body's text (which PostgreSQL, or UTF-8, cannot hold) is
    422 naming the field, and a NUL in the URL is 400; nothing is stored."""
    rep = harness.caller("demo-rep-a")
    before = await store_counts(harness)
    connection = rep.client._connection

    def raw(method: str, path: str, body: bytes = b"") -> tuple[int, str, dict[str, Any]]:
        headers = {"content-type": "application/json"} if body else {}
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), json.loads(response.read())

    adds = {
        "description": b'{"mac": "000D6F000A1B2C3D", "install_code": "%s", '
        b'"device_type": "thermostat", "description": "a\\u0000b"}',
        "a lone surrogate": b'{"mac": "000D6F000A1B2C3D", "install_code": "%s", '
        b'"device_type": "thermostat", "description": "\\ud800"}',
    }
    for wanted, body in adds.items():
        status, media, problem = await deferToThread(
            raw, "POST", f"/v1/esiids/{E_OWN}/han-devices", body % INSTALL_CODE.encode()
        )
        assert (status, media) == (422, "application/problem+json"), problem
        assert "description" in problem["detail"] and wanted.split()[-1] in problem["detail"]
    for method, path in (
        ("GET", "/v1/han-devices/dev_a%00b"),
        ("DELETE", "/v1/han-devices/dev_a?reason=x%00"),
        ("GET", f"/v1/esiids/{E_OWN}/han-devices?x=%00"),
        ("GET", "/v1/no-such%00thing"),  # a path that matches no route, too
    ):
        status, media, problem = await deferToThread(raw, method, path)
        assert (status, media) == (400, "application/problem+json"), (path, problem)
        assert "NUL" in problem["detail"], problem
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_a_query_parameter_given_twice_is_refused_naming_it(harness: Harness) -> None:
    """A query parameter given twice is 422 naming it, not answered for one of its values."""
    rep = harness.caller("demo-rep-a")
    _, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    day = "2026-11-01"
    for path, name in (
        ("/v1/message-log?limit=1&limit=abc", "limit"),
        (f"/v1/message-log?esiid={E_OWN}&esiid={E_OTHER}", "esiid"),
        ("/v1/message-log?format=csv&request_id=a&request_id=b", "request_id"),
        (f"/v1/usage/daily?esiid={E_OWN}&esiid={E_OTHER}&from={day}&to={day}", "esiid"),
        (f"/v1/usage/daily?esiid={E_OWN}&from={day}&to={day}&format=csv&format=csv", "format"),
    ):
        status, problem = await rep.call("GET", path)
        assert (status, problem.get("field")) == (422, name), (path, problem)
        assert "2 times" in problem["detail"], problem
    before = await store_counts(harness)
    status, problem = await rep.call("DELETE", f"/v1/han-devices/{device['id']}?reason=a&reason=b")
    assert (status, problem.get("field")) == (422, "reason"), problem
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_a_query_parameter_the_path_does_not_take_is_refused_naming_it(
    harness: Harness,
) -> None:
    """A misspelt filter or an unknown format is 422 naming it, not a whole log or report
    answered as if it had been filtered."""
    rep = harness.caller("demo-rep-a")
    _, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    day = "2026-11-01"
    for path, name, said in (
        (f"/v1/message-log?esid={E_OWN}", "esid", "unknown query parameter 'esid'"),
        ("/v1/message-log?format=xml", "format", "format must be csv or json"),
        (f"/v1/usage/daily?esiid={E_OWN}&from={day}&to={day}&chanel=1", "chanel", "chanel"),
        (f"/v1/usage/daily?esiid={E_OWN}&from={day}&to={day}&format=pdf", "format", "csv or json"),
    ):
        status, problem = await rep.call("GET", path)
        assert (status, problem.get("field")) == (422, name), (path, problem)
        assert said in problem["detail"], problem
    status, problem = await rep.call("GET", "/v1/message-log?" + "x" * 300 + "=1")
    assert status == 422 and len(problem["detail"]) < 300, problem
    status, page = await rep.call("GET", f"/v1/message-log?esiid={E_OWN}&format=json&limit=5")
    assert status == 200 and "entries" in page
    before = await store_counts(harness)
    status, problem = await rep.call("DELETE", f"/v1/han-devices/{device['id']}?reson=moved")
    assert (status, problem.get("field")) == (422, "reson"), problem
    assert "this path takes: reason" in problem["detail"]
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_sixth_device_and_duplicate_mac_are_refused(harness: Harness) -> None:
    """Five slot holders fill an ESI ID; a sixth and a MAC already live are refused with 409."""
    rep = harness.caller("demo-rep-a")
    path = f"/v1/esiids/{E_OWN}/han-devices"
    for n in range(5):
        status, _ = await rep.call("POST", path, add_body(mac=f"000D6F00000000{n:02X}"))
        assert status == 202
    before = await store_counts(harness)
    status, problem = await rep.call("POST", path, add_body(mac="000D6F00000000FF"))
    assert status == 409 and problem["type"].endswith("han-slots-full")
    assert len(problem["devices"]) == 5
    assert await store_counts(harness) == before

    status, problem = await harness.caller("demo-customer").call(
        "POST", path, add_body(mac="000D6F0000000001")
    )
    assert status == 409
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_illegal_transition_is_refused(harness: Harness) -> None:
    """Removing a device that is already Device Removed is a 409 naming the current status."""
    rep = harness.caller("demo-rep-a")
    _, device = await rep.call("POST", f"/v1/esiids/{E_OWN}/han-devices", add_body())
    await wait_for_status(rep, device["id"], "Device Added")
    await rep.call("DELETE", f"/v1/han-devices/{device['id']}")
    await wait_for_status(rep, device["id"], "Device Removed")
    before = await store_counts(harness)
    status, problem = await rep.call("DELETE", f"/v1/han-devices/{device['id']}")
    assert status == 409 and problem["current_status"] == "Device Removed"
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_idempotency_key_replays_the_first_answer(harness: Harness) -> None:
    """The same POST with the same Idempotency-Key creates one device; another body is refused."""
    rep = harness.caller("demo-rep-a")
    path = f"/v1/esiids/{E_OWN}/han-devices"
    key = {"idempotency-key": "k-1"}
    first = await rep.call("POST", path, add_body(), key)
    second = await rep.call("POST", path, add_body(), key)
    assert first == second and first[0] == 202
    status, problem = await rep.call("POST", path, add_body(code=INSTALL_CODE_2), key)
    assert status == 422 and "Idempotency-Key" in problem["detail"]
    _, listed = await rep.call("GET", path)
    assert len(listed["devices"]) == 1


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_not_printable_ascii_is_refused_and_nothing_made(
    harness: Harness,
) -> None:
    """An Idempotency-Key with bytes that are not printable ASCII (two such keys would read
    alike once decoded) is refused with 422 naming the header, and nothing is stored."""
    body = json.dumps(add_body()).encode()

    def post(key: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        sock = tls_socket(harness)
        sock.sendall(
            b"POST /v1/esiids/%s/han-devices HTTP/1.1\r\nHost: localhost\r\n"
            b"content-type: application/json\r\nidempotency-key: %s\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (E_OWN.encode(), key, len(body), body)
        )
        try:
            return read_answer(sock)
        finally:
            sock.close()

    before = await store_counts(harness)
    for key in (b"k-\xff", b"k-\xc3\xa9", b"k-\x01"):
        status, headers, answer, _ = await deferToThread(post, key)
        problem = json.loads(answer[answer.index(b"{") : answer.rindex(b"}") + 1])  # one chunk
        assert status == 422 and headers["content-type"] == "application/problem+json", answer
        assert problem["field"] == "Idempotency-Key" and "printable ASCII" in problem["detail"]
    assert await store_counts(harness) == before


@pytest_twisted.ensureDeferred
async def test_a_keyed_add_keeps_its_answer_in_its_own_transaction(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed add claims its key and keeps its answer in its own job; a refusal's comes after."""
    store = harness.gateway.store
    jobs: list[str] = []
    run = store.run

    def recording_run(thd: Any, *args: Any) -> Any:
        jobs.append(getattr(thd, "__name__", ""))
        return run(thd, *args)

    monkeypatch.setattr(store, "run", recording_run)
    rep = harness.caller("demo-rep-a")
    path = f"/v1/esiids/{E_OWN}/han-devices"
    first = await rep.call("POST", path, add_body(mac="000D6F0600000001"), {"idempotency-key": "a"})
    key_jobs = {"claim_thd", "answer_thd", "claim_answered_thd"}
    assert first[0] == 202 and not key_jobs & set(jobs), jobs
    again = await rep.call("POST", path, add_body(mac="000D6F0600000001"), {"idempotency-key": "a"})
    assert again == first
    jobs.clear()
    refused = await rep.call("POST", path, add_body(mac="not-a-mac"), {"idempotency-key": "b"})
    assert refused[0] == 422 and [j for j in jobs if j in key_jobs] == ["claim_answered_thd"]
    assert await rep.call("POST", path, add_body(mac="not-a-mac"), {"idempotency-key": "b"}) == (
        refused
    )


@pytest_twisted.ensureDeferred
async def test_a_keyed_add_refused_in_its_transaction_keeps_the_refusal(harness: Harness) -> None:
    """A keyed add the slot rule refuses leaves only its answer; a retry replays the refusal (even
    after a removal), and the key with another body is refused as reused."""
    rep = harness.caller("demo-rep-a")
    path = f"/v1/esiids/{E_OWN}/han-devices"
    added = []
    for n in range(5):
        status, device = await rep.call("POST", path, add_body(mac=f"000D6F080000000{n}"))
        assert status == 202, device
        added.append(device["id"])
    before = await store_counts(harness)
    key = {"idempotency-key": "sixth"}
    refused = await rep.call("POST", path, add_body(mac="000D6F0800000009"), key)
    assert refused[0] == 409 and refused[1]["type"].endswith("slots-full"), refused
    counts = await store_counts(harness)
    assert counts[:4] == before[:4] and counts[4] == before[4] + 1  # only the key's answer
    status, _ = await rep.call("DELETE", f"/v1/han-devices/{added[0]}")
    assert status == 202
    assert await rep.call("POST", path, add_body(mac="000D6F0800000009"), key) == refused
    status, problem = await rep.call("POST", path, add_body(mac="000D6F080000000A"), key)
    assert status == 422 and "Idempotency-Key" in problem["detail"]


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_with_one_idempotency_key_make_one_device(
    harness: Harness,
) -> None:
    """Parallel POSTs with the same key create one device; the others wait (409) or replay it."""
    rep = harness.caller("demo-rep-a")
    demo = harness.issued["demo-rep-a"]
    identity = Identity(
        Path(demo.cert_path), Path(demo.key_path), harness.config.cert_dir / "ca.pem"
    )
    clients = [Client(f"https://localhost:{harness.api_port}", identity) for _ in range(4)]

    def post(client: Client) -> tuple[int, Any]:
        try:
            return client.request(
                "POST",
                f"/v1/esiids/{E_OWN}/han-devices",
                add_body(mac="000D6F0500000001"),
                {"idempotency-key": "same-key"},
            )
        except ApiError as error:
            return error.status, error.problem

    results = await DeferredList([deferToThread(post, client) for client in clients])
    for client in clients:
        client.close()
    answers = [value for _, value in results]
    accepted = [body for status, body in answers if status == 202]
    assert accepted and all(body == accepted[0] for body in accepted), answers
    assert all(
        status == 202 or (status == 409 and body["type"].endswith("idempotency-key-in-progress"))
        for status, body in answers
    ), answers
    _, listed = await rep.call("GET", f"/v1/esiids/{E_OWN}/han-devices")
    assert len(listed["devices"]) == 1


@pytest_twisted.ensureDeferred
async def test_a_replayed_refusal_is_still_a_problem(harness: Harness) -> None:
    """The answer replayed for a refused request keeps its status and problem+json media type."""
    rep = harness.caller("demo-rep-a")
    connection = rep.client._connection
    body = json.dumps(add_body(mac="not-a-mac")).encode()

    def post() -> tuple[int, str | None, str | None]:
        connection.request(
            "POST",
            f"/v1/esiids/{E_OWN}/han-devices",
            body=body,
            headers={"content-type": "application/json", "idempotency-key": "refused-once"},
        )
        response = connection.getresponse()
        response.read()
        return (
            response.status,
            response.getheader("content-type"),
            response.getheader("idempotent-replayed"),
        )

    assert await deferToThread(post) == (422, "application/problem+json", None)
    assert await deferToThread(post) == (422, "application/problem+json", "true")


@pytest_twisted.ensureDeferred
async def test_deep_json_wrong_method_and_pasted_codes_are_clear_problems(harness: Harness) -> None:
    """Deeply nested JSON is 400, a wrong method 405 with its instance, and no value is echoed."""
    rep = harness.caller("demo-rep-a")
    connection = rep.client._connection
    nested = b'{"mac":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    def raw(method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        connection.request(method, path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    status, problem = await deferToThread(
        raw, "POST", f"/v1/esiids/{E_OWN}/han-devices", nested[:60000]
    )
    assert status == 400 and "nested too deeply" in problem["detail"], problem
    status, problem = await deferToThread(raw, "PUT", f"/v1/esiids/{E_OWN}/han-devices", b"{}")
    assert status == 405 and problem["instance"] == f"/v1/esiids/{E_OWN}/han-devices"
    status, problem = await rep.call(
        "POST", f"/v1/esiids/{E_OWN}/han-devices", add_body(mac=INSTALL_CODE)
    )
    assert status == 422 and problem["field"] == "mac"
    assert INSTALL_CODE[:12] not in json.dumps(problem)


@pytest_twisted.ensureDeferred
async def test_routing_refusals_are_problems_with_a_request_id(harness: Harness) -> None:
    """Non-UTF-8 path, unknown path, wrong method: problems with X-Request-Id (405 with Allow)."""
    connection = harness.caller("demo-rep-a").client._connection

    def raw(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    for method, path, wanted in [
        ("GET", "/v1/han-devices/%FF", 400),
        ("GET", "/v1/%C3%28/han-devices", 400),
        ("GET", "/v1/no/such/path", 404),
        ("PUT", f"/v1/esiids/{E_OWN}/han-devices", 405),
    ]:
        status, headers, body = await deferToThread(raw, method, path)
        assert (status, headers["content-type"]) == (wanted, "application/problem+json"), body
        problem = json.loads(body)
        assert problem["status"] == wanted and problem["instance"] == path, problem
        assert len(headers.get("x-request-id", "")) == 16, headers
        if status == 400:
            assert "not UTF-8" in problem["detail"], problem
        if status == 405:
            assert headers["allow"] == "GET, HEAD, POST", headers


@pytest_twisted.ensureDeferred
async def test_a_path_with_an_empty_segment_is_404_not_500(harness: Harness) -> None:
    """A path with a doubled slash is an unknown path, 404, never a 500 nor another path's 405."""
    connection = harness.caller("demo-rep-a").client._connection

    def raw(method: str, path: str) -> tuple[int, str, dict[str, Any]]:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), json.loads(response.read())

    with capture_logs() as logs:
        for method, path in [
            ("GET", "/v1//han-devices/dev_x"),
            ("DELETE", f"/v1/esiids/{E_OWN}/grants//x"),
            ("POST", "/v1/messages//cancel"),
            ("GET", "/v1/usage/jobs//result"),
        ]:
            status, media, problem = await deferToThread(raw, method, path)
            assert (status, media) == (404, "application/problem+json"), (path, problem)
            assert problem["instance"] == path and "no such resource" in problem["detail"], problem
    assert not [entry for entry in logs if entry["log_level"] == "error"], logs


def tls_socket(harness: Harness, name: str = "demo-rep-a") -> ssl.SSLSocket:
    """A mutual-TLS socket to the API, as the party ``name``."""
    demo = harness.issued[name]
    context = ssl.create_default_context(cafile=str(harness.config.cert_dir / "ca.pem"))
    context.load_cert_chain(demo.cert_path, demo.key_path)
    raw = socket.create_connection(("127.0.0.1", harness.api_port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_answer(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers and body of the answer on ``sock``, and whether the connection ended."""
    data = b""
    try:
        while piece := sock.recv(65536):
            data += piece
        ended = True
    except (TimeoutError, ConnectionResetError):
        ended = False
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body, ended


@pytest_twisted.async_yield_fixture
async def capped_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """A gateway whose largest body (messaging's) is 1 MiB."""
    running = await start_gateway(
        tmp_path / "state", messaging={"max_body_bytes": 1 << 20}, usage={"max_job_esiids": 100}
    )
    yield running
    running.close()
    await running.gateway.stopService()


@pytest_twisted.ensureDeferred
async def test_a_declared_body_over_the_cap_is_refused_before_it_is_sent(
    capped_harness: Harness,
) -> None:
    """A Content-Length over every path's limit gets 413 problem+json and a closed connection."""
    assert capped_harness.gateway.api.largest_body_bytes == 1 << 20

    def declare(path: str, length: int, more: str = "") -> tuple[int, dict[str, str], bytes, bool]:
        with tls_socket(capped_harness) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
                f"content-length: {length}\r\n{more}\r\n".encode()
            )
            return read_answer(sock)  # no byte of the body was sent

    for path, more in [
        ("/v1/messages", ""),
        (f"/v1/esiids/{E_OWN}/han-devices", "expect: 100-continue\r\n"),
    ]:
        status, headers, body, ended = await deferToThread(declare, path, 10**12, more)
        assert (status, headers["content-type"]) == (413, "application/problem+json"), body
        assert headers["connection"] == "close" and len(headers["x-request-id"]) == 16
        assert "no path takes more than 1048576" in json.loads(body)["detail"]
        assert ended
    # a body under the cap reaches its path, which answers it (here: no JSON in it)
    status, _, body, _ = await deferToThread(
        declare, f"/v1/esiids/{E_OWN}/han-devices", 0, "connection: close\r\n"
    )
    assert status == 400 and b"not valid JSON" in body, body


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_cap_is_refused_as_it_passes_it(
    capped_harness: Harness,
) -> None:
    """A chunked body is refused with 413 once its bytes pass the cap, and the connection ends."""
    before = await store_counts(capped_harness)

    def upload() -> tuple[int, dict[str, str], bytes, bool]:
        piece = b"[" + b" " * (64 * 1024 - 2) + b"]"
        sent = 0
        with tls_socket(capped_harness) as sock:
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\n"
                b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            try:
                while sent < 4 << 20:  # four times the cap
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
            except OSError:
                pass  # the gateway closed the connection: the rest is not wanted
            return read_answer(sock)

    status, headers, body, ended = await deferToThread(upload)
    assert (status, headers["content-type"]) == (413, "application/problem+json"), body
    assert headers["connection"] == "close"
    assert "the body is over 1048576 bytes" in json.loads(body)["detail"]
    assert ended
    assert await store_counts(capped_harness) == before


@pytest_twisted.ensureDeferred
async def test_a_request_twisted_cannot_parse_is_a_problem(harness: Harness) -> None:
    """Malformed HTTP (header line, Content-Length, NUL, too many headers) is a 400 problem."""
    before = await store_counts(harness)
    path = f"/v1/esiids/{E_OWN}/han-devices"

    def send(head: str) -> tuple[int, dict[str, str], bytes, bool]:
        with tls_socket(harness) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{head}\r\n".encode())
            return read_answer(sock)

    for head in [
        "no colon in this line\r\n",
        f"content-length: {'9' * 5000}\r\n",
        "content-length: twelve\r\n",
        "x-note: a\x00b\r\n",
        "transfer-encoding: gzip\r\n",
        "".join(f"x-h{n}: 1\r\n" for n in range(501)),
    ]:
        status, headers, body, ended = await deferToThread(send, head)
        assert (status, headers.get("content-type")) == (400, "application/problem+json"), (
            head[:40],
            body,
        )
        problem = json.loads(body)
        assert problem["status"] == 400 and "not well-formed HTTP/1.1" in problem["detail"]
        assert headers["connection"] == "close" and ended
    assert await store_counts(harness) == before
    # the API still answers on a new connection
    status, _ = await harness.caller("demo-rep-a").call("GET", path)
    assert status == 200
