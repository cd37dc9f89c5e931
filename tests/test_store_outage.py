"""A store that cannot be used for a while: the gateway says so, loses nothing, goes on after."""

from __future__ import annotations

import http.client
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from hangw.client import Identity, tls_context
from tests.gateway_harness import E_OWN, INSTALL_CODE, Harness

pytestmark = pytest.mark.slow


def _call(
    harness: Harness,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request as REP A, with the answer's headers (lower-case names)."""
    demo = harness.issued["demo-rep-a"]
    identity = Identity(
        Path(demo.cert_path), Path(demo.key_path), harness.config.cert_dir / "ca.pem"
    )
    connection = http.client.HTTPSConnection(
        "localhost", harness.api_port, context=tls_context(identity), timeout=30
    )
    try:
        sent = {"accept": "application/json", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["content-type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        answer = {name.lower(): value for name, value in response.getheaders()}
        return response.status, answer, json.loads(response.read())
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_a_locked_store_is_answered_503_and_the_request_succeeds_after(
    harness: Harness,
) -> None:
    """While another process holds the SQLite file's lock, requests get 503 store-unavailable
    problems with Retry-After (not 500s); once it lets go, the same add is accepted and done."""
    add = {"mac": "000D6F0000001001", "install_code": INSTALL_CODE, "device_type": "thermostat"}
    key = {"idempotency-key": "add-during-outage"}
    path = f"/v1/esiids/{E_OWN}/han-devices"
    lock = sqlite3.connect(harness.config.state_dir / "hangw.sqlite", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        answers = await gatherResults(
            [
                deferToThread(_call, harness, "GET", path),
                deferToThread(_call, harness, "POST", path, add, key),
            ]
        )
    finally:
        lock.close()
    for status, headers, problem in answers:
        assert status == 503, problem
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"].isdigit()
        assert problem["type"].endswith("/store-unavailable"), problem
        assert "Idempotency-Key" in problem["detail"]
    status, _, device = await deferToThread(_call, harness, "POST", path, add, key)
    assert status == 202, device
    for _ in range(200):
        status, _, device = await deferToThread(_call, harness, "GET", device["links"]["self"])
        if device["status"] == "Device Added":
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert device["status"] == "Device Added"
    status, _, listed = await deferToThread(_call, harness, "GET", path)
    assert [d["id"] for d in listed["devices"]] == [device["id"]]
