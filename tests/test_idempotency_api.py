"""Idempotency-Key over the real API (mutual TLS on loopback, SQLite file, simulated head-end):
every POST that makes something keeps its key's answer in the transaction that makes it."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from hangw.store.model import (
    grants,
    han_devices,
    idempotency_keys,
    message_requests,
    usage_jobs,
    webhook_subscriptions,
)
from tests.gateway_harness import E_OWN, HSP, INSTALL_CODE, Caller, Harness
from tests.test_api_provisioning import tls_socket


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


async def until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait on the reactor until ``done()``; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "waited too long"
        await deferLater(reactor, 0.01, lambda: None)


class HeldSends:
    """Holds each message send's store job until ``release()``, as a busy writer would."""

    def __init__(self, harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run = run = harness.gateway.store.run
        self.jobs: list[str] = []
        self.waiting: list[Deferred[Any]] = []  # what each held job's caller awaits
        self.committed: list[Deferred[Any]] = []
        self._gate: Deferred[None] = Deferred()

        def held_run(thd: Any, *args: Any) -> Any:
            self.jobs.append(getattr(thd, "__name__", ""))
            if not getattr(thd, "__qualname__", "").startswith("MessagingService.send."):
                return run(thd, *args)
            waiting: Deferred[Any] = Deferred()  # no canceller, as the store's own

            def go(_: object) -> None:
                job = run(thd, *args)
                self.committed.append(job)
                job.chainDeferred(waiting)

            self.waiting.append(waiting)
            self._gate.addCallback(go)
            return waiting

        monkeypatch.setattr(harness.gateway.store, "run", held_run)

    async def held(self) -> None:
        await until(lambda: bool(self.waiting))

    async def release(self) -> None:
        self._gate.callback(None)
        await DeferredList(self.committed)


async def sent_with(harness: Harness, issuer_event_id: int) -> list[str]:
    def thd(conn: sa.Connection) -> list[str]:
        return list(
            conn.execute(
                sa.select(message_requests.c.request_id).where(
                    message_requests.c.issuer_event_id == issuer_event_id
                )
            ).scalars()
        )

    return await harness.gateway.store.run(thd)


@pytest_twisted.ensureDeferred
async def test_a_keyed_request_whose_client_went_away_keeps_its_answer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed message whose client left mid-request keeps its claim and answer; a retry replays."""
    sends = HeldSends(harness, monkeypatch)
    body = json.dumps(lce(8301)).encode()

    def post() -> ssl.SSLSocket:
        sock = tls_socket(harness)
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json"
            b"\r\nidempotency-key: left\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        return sock

    sock = await deferToThread(post)
    await sends.held()  # the request's job is queued: now its client goes away
    await deferToThread(sock.close)
    await until(lambda: sends.waiting[0].called)  # the gateway cancelled the handler
    await deferLater(reactor, 0.2, lambda: None)  # a job queued on the cancellation has run
    await sends.release()
    [request_id] = await sent_with(harness, 8301)
    status, again = await harness.caller("demo-rep-a").call(
        "POST", "/v1/messages", lce(8301), {"idempotency-key": "left"}
    )
    assert status == 202 and again["request_id"] == request_id, again
    assert await sent_with(harness, 8301) == [request_id]
    assert "release_thd" not in sends.jobs


@pytest_twisted.ensureDeferred
async def test_a_request_whose_claim_vanished_is_undone_not_left_unanswered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed message whose claim is gone when it commits makes nothing and answers 409."""
    sends = HeldSends(harness, monkeypatch)
    answer = harness.caller("demo-rep-a").call(
        "POST", "/v1/messages", lce(8401), {"idempotency-key": "vanished"}
    )
    await sends.held()

    def release_the_claim(conn: sa.Connection) -> None:  # as another writer's release would
        conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.key == "vanished"))

    await sends.run(release_the_claim)
    await sends.release()
    status, problem = await answer
    assert status == 409 and problem["type"].endswith("idempotency-key-in-progress"), problem
    assert await sent_with(harness, 8401) == []
    status, summary = await harness.caller("demo-rep-a").call(
        "POST", "/v1/messages", lce(8401), {"idempotency-key": "vanished"}
    )
    assert status == 202 and await sent_with(harness, 8401) == [summary["request_id"]]


@pytest_twisted.ensureDeferred
async def test_a_key_another_party_used_gets_no_answer_of_theirs(harness: Harness) -> None:
    """The same Idempotency-Key and body from another party runs that party's own request: it
    never replays the first party's answer, nor is refused as a reuse of that party's key."""
    key = {"idempotency-key": "shared-key"}
    body = {"url": "https://hooks.example.com/hangw"}
    status, first = await harness.caller("demo-rep-a").call("POST", "/v1/webhooks", body, key)
    assert status == 201, first
    for name in ("demo-rep-b", "demo-hsp"):
        status, own = await harness.caller(name).call("POST", "/v1/webhooks", body, key)
        assert status == 201 and own["id"] != first["id"] and own["secret"] != first["secret"]
        status, listed = await harness.caller(name).call("GET", "/v1/webhooks")
        assert [s["id"] for s in listed["webhooks"]] == [own["id"]]
    status, again = await harness.caller("demo-rep-a").call("POST", "/v1/webhooks", body, key)
    assert status == 201 and again["id"] == first["id"] and "secret" not in again
