"""Idempotency-Key over the real API (mutual TLS on loopback, SQLite file, simulated head-end):
every POST that makes something keeps its key's answer in the transaction that makes it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet.threads import deferToThread

from hangw.store.model import (
    grants,
    han_devices,
    message_requests,
    usage_jobs,
    webhook_subscriptions,
)
from tests.gateway_harness import E_OWN, HSP, INSTALL_CODE, Caller, Harness


def lce(issuer_event_id: int) -> dict[str, Any]:
    return {
        "category": "LCE",
        "esiids": [E_OWN],
        "issuer_event_id": issuer_event_id,
        "device_class": 1,
        "duration_minutes": 30,
        "criticality": 3,
        "cooling_temperature_offset": 20,
    }


async def cancel_path(harness: Harness) -> str:
    """The cancel path of a load control event sent (without a key) for the test."""
    status, summary = await harness.caller("demo-rep-a").call("POST", "/v1/messages", lce(8101))
    assert status == 202, summary
    return f"/v1/messages/{summary['request_id']}/cancel"


async def group_cancel_all_path(harness: Harness) -> str:
    status, group = await harness.caller("demo-rep-a").call(
        "PUT", "/v1/groups/idem", {"esiids": [E_OWN]}
    )
    assert status == 200, group
    return "/v1/groups/idem/load-control/cancel-all"


async def fixed(path: str, harness: Harness) -> str:
    return path


yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)

#: Each keyed POST: who sends it, where (made ready by a set-up), its body, its status, and the
#: table where the thing it makes is counted.
CASES: dict[str, tuple[str, Callable[[Harness], Awaitable[str]], Any, int, sa.Table]] = {
    "device add": (
        "demo-rep-a",
        lambda h: fixed(f"/v1/esiids/{E_OWN}/han-devices", h),
        {"mac": "000D6F0700000001", "install_code": INSTALL_CODE, "device_type": "thermostat"},
        202,
        han_devices,
    ),
    "message": ("demo-rep-a", lambda h: fixed("/v1/messages", h), lce(8201), 202, message_requests),
    "cancellation": ("demo-rep-a", cancel_path, {}, 202, message_requests),
    "cancel all on an ESI ID": (
        "demo-rep-a",
        lambda h: fixed(f"/v1/esiids/{E_OWN}/load-control/cancel-all", h),
        {},
        202,
        message_requests,
    ),
    "cancel all on a group": ("demo-rep-a", group_cancel_all_path, {}, 202, message_requests),
    "grant": (
        "demo-customer",
        lambda h: fixed(f"/v1/esiids/{E_OWN}/grants", h),
        {"hsp_party_id": HSP},
        201,
        grants,
    ),
    "usage job": (
        "demo-rep-a",
        lambda h: fixed("/v1/usage/jobs", h),
        {"report": "daily", "esiids": [E_OWN], "from": str(yesterday), "to": str(yesterday)},
        202,
        usage_jobs,
    ),
    "webhook subscription": (
        "demo-rep-a",
        lambda h: fixed("/v1/webhooks", h),
        {"url": "https://hooks.example.invalid/hangw"},
        201,
        webhook_subscriptions,
    ),
}


async def count(harness: Harness, table: sa.Table) -> int:
    def thd(conn: sa.Connection) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    return await harness.gateway.store.run(thd)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest_twisted.ensureDeferred
async def test_an_accepted_keyed_post_keeps_its_answer_with_what_it_made(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """With no store job free to keep the answer after the request's own, an accepted keyed
    POST still answers, and its retry replays that answer and makes nothing more."""
    caller_name, setup, body, wanted, table = CASES[case]
    path = await setup(harness)
    store = harness.gateway.store
    run = store.run

    def answer_jobs_fail(thd: Any, *args: Any) -> Any:
        if getattr(thd, "__name__", "") == "answer_thd":
            raise RuntimeError("the gateway stopped before the answer's own job")
        return run(thd, *args)

    monkeypatch.setattr(store, "run", answer_jobs_fail)
    caller: Caller = harness.caller(caller_name)
    key = {"idempotency-key": f"kept-{case}"}
    status, first = await caller.call("POST", path, body, key)
    assert status == wanted, first
    made = await count(harness, table)
    status, again = await caller.call("POST", path, body, key)
    first.pop("secret", None)  # a webhook's secret is in the first answer only
    assert (status, again) == (wanted, first)
    assert await count(harness, table) == made


def keyed_post(
    caller: Caller, path: str, body: Any, key: str
) -> tuple[int, str | None, str | None]:
    """POST ``body`` with ``key``: the status, Location and Idempotent-Replayed of the answer."""
    connection = caller.client._connection
    connection.request(
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={"content-type": "application/json", "idempotency-key": key},
    )
    response = connection.getresponse()
    response.read()
    return (
        response.status,
        response.getheader("location"),
        response.getheader("idempotent-replayed"),
    )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest_twisted.ensureDeferred
async def test_a_replay_carries_the_location_the_first_answer_carried(
    harness: Harness, case: str
) -> None:
    """A replayed keyed POST answers with the same Location header as its first answer, or none."""
    caller_name, setup, body, wanted, _ = CASES[case]
    path = await setup(harness)
    caller = harness.caller(caller_name)
    status, location, replayed = await deferToThread(keyed_post, caller, path, body, "located")
    assert (status, replayed) == (wanted, None)
    assert await deferToThread(keyed_post, caller, path, body, "located") == (
        wanted,
        location,
        "true",
    )
    if case not in ("cancel all on an ESI ID", "cancel all on a group", "grant"):
        assert location is not None and location.startswith("/v1/"), location
