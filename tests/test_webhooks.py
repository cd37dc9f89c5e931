"""Webhooks end to end: the outbox, the signed POSTs to a real HTTPS receiver on loopback, back-off,
parking and resuming, and the API over mutual TLS."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from structlog.testing import capture_logs
from twisted.internet import reactor
from twisted.internet.task import deferLater

from hangw.config import WebhooksConfig
from hangw.domain import Party, Role
from hangw.secrets import SecretBox
from hangw.store import schema
from hangw.store.db import Store
from hangw.store.model import webhook_subscriptions
from hangw.webhooks import Subscription, WebhookService, sign, verify_signature
from tests.gateway_harness import (
    E_OWN,
    HSP,
    INSTALL_CODE,
    REP_A,
    REP_B,
    Harness,
    make_test_config,
    prepare_state,
)
from tests.webhook_receiver import Receiver, ReceiverCA

REP = Party(REP_A, Role.REP, "REP A", "f" * 64)
OTHER_REP = Party(REP_B, Role.REP, "REP B", "e" * 64)
SECRET = "s3cret-for-the-tests-0123456789"

FAST = {"first_retry_s": 0.05, "max_retry_s": 0.2, "timeout_s": 2.0, "batch": 10}


async def until(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Wait for ``check()`` (or what it returns, when that is awaitable) to be truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await deferLater(reactor, 0.02)


@dataclasses.dataclass
class Rig:
    """A WebhookService on a real SQLite store and the real reactor, with a receiver."""

    webhooks: WebhookService
    store: Store
    receiver: Receiver

    async def subscribe(self, party: Party = REP, secret: str | None = SECRET) -> Subscription:
        subscription, secret_used = await self.webhooks.subscribe(party, self.receiver.url, secret)
        self.receiver.secrets[subscription.subscription_id] = secret_used
        return subscription

    async def enqueue(self, party_id: str, first: int, count: int) -> None:
        events = [
            {"type": "device.status", "seq": n, "device_id": f"dev_{n}", "at": 1_800_000_000.0 + n}
            for n in range(first, first + count)
        ]
        await self.store.run(self.webhooks.enqueue_thd, party_id, events)
        self.webhooks.wake()

    async def state(self, subscription: Subscription, party: Party = REP) -> Subscription:
        return await self.webhooks.get(party, subscription.subscription_id)

    async def state_if(
        self, subscription: Subscription, wanted: Callable[[Subscription], bool]
    ) -> Subscription | None:
        state = await self.state(subscription)
        return state if wanted(state) else None


async def make_rig(tmp_path: Path, **settings: Any) -> Rig:
    ca = ReceiverCA.make(tmp_path / "receiver")
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'webhooks.sqlite'}")
    schema.upgrade(engine)
    store = Store(engine, reactor)
    store.start()
    config = WebhooksConfig(**{**FAST, **settings, "ca_file": str(ca.ca_file)})
    webhooks = WebhookService(
        store, SecretBox(b"k" * 32), reactor, config, reactor, poll_interval_s=0.5
    )
    webhooks.sender.startService()
    receiver = Receiver(ca)
    await receiver.start()
    return Rig(webhooks, store, receiver)


async def close_rig(rig: Rig) -> None:
    await rig.webhooks.sender.stopService()
    await rig.receiver.stop()
    rig.store.stop()


@pytest_twisted.async_yield_fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    running = await make_rig(tmp_path, max_attempts=1000)
    yield running
    await close_rig(running)


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_was_down_gets_every_event_in_order_once(rig: Rig) -> None:
    """While the receiver is down attempts fail and back off; once it is up every event arrives,
    in order, once per event_id, in signed batches of at most ``batch``."""
    receiver = rig.receiver
    await receiver.stop()
    subscription = await rig.subscribe()
    await rig.enqueue(REP_A, 0, 10)
    await rig.enqueue(REP_A, 10, 10)
    await rig.enqueue(REP_A, 20, 5)
    down = await until(
        lambda: rig.state_if(subscription, lambda s: s.failures >= 2),
        what="two failed attempts",
    )
    assert down.state == "active" and down.backlog == 25 and down.next_attempt_at is not None
    await receiver.start()
    await rig.enqueue(REP_A, 25, 5)  # more changes while the backlog drains
    await until(lambda: len(receiver.taken) >= 30, what="30 events")
    await deferLater(reactor, 0.3)  # nothing more comes
    assert seqs(receiver.taken) == list(range(30))
    event_ids = [event["event_id"] for event in receiver.taken]
    assert len(set(event_ids)) == 30 and all(
        re.fullmatch(r"evt_[0-9a-f]{16}", e) for e in event_ids
    )
    assert all(attempt.valid for attempt in receiver.attempts)
    assert all(len(json.loads(a.body)["events"]) <= 10 for a in receiver.attempts)
    assert receiver.taken[0]["occurred_at"] == "2027-01-15T08:00:00.000Z"
    assert receiver.taken[0]["type"] == "device.status" and "at" not in receiver.taken[0]
    after = await rig.state(subscription)
    assert (after.state, after.backlog, after.failures, after.next_attempt_at) == (
        "active",
        0,
        0,
        None,
    )


@pytest_twisted.ensureDeferred
async def test_events_of_a_party_without_subscription_touch_no_database(rig: Rig) -> None:
    """enqueue_thd for a party with no live subscription returns before using the connection,
    and a deleted subscription's party is dropped from the set it checks."""

    class NoDatabase:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the database was used ({name})")

    events = [{"type": "device.status", "device_id": "dev_1"}]
    await rig.store.run(rig.webhooks.refresh_live_thd)
    rig.webhooks.enqueue_thd(NoDatabase(), REP_A, events)  # type: ignore[arg-type]
    subscription = await rig.subscribe()
    with pytest.raises(AssertionError, match="the database was used"):
        rig.webhooks.enqueue_thd(NoDatabase(), REP_A, events)  # type: ignore[arg-type]
    rig.webhooks.enqueue_thd(NoDatabase(), REP_B, events)  # type: ignore[arg-type]
    await rig.webhooks.delete(REP, subscription.subscription_id)
    rig.webhooks.enqueue_thd(NoDatabase(), REP_A, events)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (500, "receiver answered 500 Internal Server Error 4 times"),
        (404, "receiver answered 404 Not Found 4 times"),
        ("hang", "no answer from 127.0.0.1:{port} within 0.3 s 4 times"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_answers_back_off_then_park_and_resume_sends_the_backlog(
    tmp_path: Path, mode: Any, problem: str
) -> None:
    """A receiver that answers 500, 404 or not at all is retried after 0.05, 0.1 and 0.15 s (the
    cap), parked after max_attempts with the reason, and resume delivers the whole backlog."""
    rig = await make_rig(tmp_path, max_attempts=4, max_retry_s=0.15, timeout_s=0.3)
    try:
        receiver = rig.receiver
        receiver.mode = mode
        subscription = await rig.subscribe()
        await rig.enqueue(REP_A, 0, 3)
        parked = await until(
            lambda: rig.state_if(subscription, lambda s: s.state == "parked"),
            what="the subscription parked",
        )
        assert len(receiver.attempts) == 4
        arrived = [attempt.arrived for attempt in receiver.attempts]
        waited = [later - earlier for earlier, later in itertools.pairwise(arrived)]
        # a hung attempt times out 0.3 s after it began connecting, which a new TLS connection
        # each time makes a little later than it arrived
        answer_time, slack = (0.3, 0.03) if mode == "hang" else (0.0, 0.01)
        for gap, delay in zip(waited, [0.05, 0.1, 0.15], strict=True):
            assert delay + answer_time - slack <= gap < delay + answer_time + 1.5, waited
        assert all(attempt.valid for attempt in receiver.attempts)
        assert problem.format(port=receiver.port) in parked.parked_reason, parked.parked_reason
        assert "resume" in parked.parked_reason and SECRET not in parked.parked_reason
        assert parked.failures == 4 and parked.backlog == 3

        await deferLater(reactor, 0.6)  # parked: no more attempts, the poll included
        assert len(receiver.attempts) == 4
        await rig.enqueue(REP_A, 3, 2)  # the backlog grows while parked
        assert (await rig.state(subscription)).backlog == 5

        receiver.mode = "ok"
        resumed = await rig.webhooks.resume(REP, subscription.subscription_id)
        assert (resumed.state, resumed.failures, resumed.parked_reason) == ("active", 0, "")
        await until(lambda: len(receiver.taken) >= 5, what="the backlog")
        assert seqs(receiver.taken) == [0, 1, 2, 3, 4]
        assert (await rig.state(subscription)).backlog == 0
    finally:
        await close_rig(rig)


def test_verify_signature_refuses_tampering_wrong_secrets_and_stale_or_malformed_headers() -> None:
    """verify_signature accepts the header sign() made and refuses any change to the body, the
    secret, the timestamp or the header's form."""
    body = b'{"events":[{"event_id":"evt_0123456789abcdef","type":"device.status"}]}'
    now = 1_800_000_000
    header = sign(SECRET, body, now)
    assert verify_signature(SECRET, header, body, now)
    assert verify_signature(SECRET.encode(), header.encode(), body, now + 299)
    assert not verify_signature(SECRET, header, body.replace(b"device", b"Device"), now)
    assert not verify_signature(SECRET, header, body + b" ", now)
    assert not verify_signature(SECRET + "x", header, body, now)
    assert not verify_signature(SECRET, header, body, now + 301)  # a replay, too late
    assert not verify_signature(SECRET, header, body, now - 301)
    digest = header.partition(",v1=")[2]
    assert verify_signature(SECRET, f"t={now},v1={'0' * 64},v1={digest}", body, now)
    for bad in (
        None,
        "",
        f"v1={digest}",
        f"t={now}",
        f"t={now + 1},v1={digest}",
        f"t=abc,v1={digest}",
        f"t={now},t={now},v1={digest}",
        f"t=١٢,v1={digest}",
        f"t={now},v1=é{digest}",
    ):
        assert not verify_signature(SECRET, bad, body, now), bad


def test_the_verification_example_in_the_guide_runs() -> None:
    """The Python example in docs/webhooks.md runs as written against hangw.webhooks."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1
    exec(blocks[0], {})


@pytest_twisted.ensureDeferred
async def test_a_receiver_certificate_from_an_untrusted_ca_is_a_failed_attempt(
    tmp_path: Path,
) -> None:
    """A receiver whose certificate chains to neither the system's CAs nor ca_file never gets a
    request, and the subscription is parked with the TLS failure as the reason."""
    rig = await make_rig(tmp_path, max_attempts=2)
    stranger = Receiver(ReceiverCA.make(tmp_path / "stranger"))
    await stranger.start()
    try:
        subscription, _ = await rig.webhooks.subscribe(REP, stranger.url, SECRET)
        await rig.enqueue(REP_A, 0, 1)
        parked = await until(
            lambda: rig.state_if(subscription, lambda s: s.state == "parked"), what="parked"
        )
        assert f"TLS with 127.0.0.1:{stranger.port} failed" in parked.parked_reason
        assert "certificate verify failed" in parked.parked_reason, parked.parked_reason
        assert stranger.attempts == [] and parked.backlog == 1
    finally:
        await stranger.stop()
        await close_rig(rig)


@pytest_twisted.ensureDeferred
async def test_a_stored_url_with_a_user_name_parks_without_naming_the_user(tmp_path: Path) -> None:
    """A subscription stored before such URLs were refused parks, its reason and log quoting no
    part of the user name or password the HTTP client refuses."""
    rig = await make_rig(tmp_path, max_attempts=1)
    try:
        subscription, _ = await rig.webhooks.subscribe(REP, rig.receiver.url, SECRET)
        port = rig.receiver.port

        def old_url_thd(conn: Any) -> None:
            conn.execute(
                sa.update(webhook_subscriptions)
                .where(webhook_subscriptions.c.subscription_id == subscription.subscription_id)
                .values(url=f"http://hookuser:s3cr3tpw@127.0.0.1:{port}/x")
            )

        await rig.store.run(old_url_thd)
        with capture_logs() as logs:
            await rig.enqueue(REP_A, 0, 1)
            parked = await until(
                lambda: rig.state_if(subscription, lambda s: s.state == "parked"), what="parked"
            )
        assert "cannot post to the URL of 127.0.0.1" in parked.parked_reason, parked.parked_reason
        said = json.dumps([parked.parked_reason, logs], default=str)
        assert "hookuser" not in said and "s3cr3tpw" not in said
    finally:
        await close_rig(rig)


@pytest_twisted.ensureDeferred
async def test_a_generated_secret_signs_the_posts_and_nothing_else_verifies(rig: Rig) -> None:
    """Without a secret one is generated (64 hex digits); the receiver's copy verifies the real
    request, and the same request with its body changed or checked with another secret fails."""
    subscription = await rig.subscribe(secret=None)
    secret = rig.receiver.secrets[subscription.subscription_id]
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    await rig.enqueue(REP_A, 0, 1)
    await until(lambda: rig.receiver.taken, what="the event")
    posted = rig.receiver.attempts[0]
    assert posted.valid and posted.signature is not None
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", posted.signature)
    now = time.time()
    assert verify_signature(secret, posted.signature, posted.body, now)
    assert not verify_signature(secret, posted.signature, posted.body.replace(b"0", b"1"), now)
    assert not verify_signature(SECRET, posted.signature, posted.body, now)


@pytest_twisted.ensureDeferred
async def test_the_secret_is_never_logged_nor_shown_after_creation(tmp_path: Path) -> None:
    """Through subscribing, failing, parking, resuming, delivering and deleting, no log event and
    no subscription read back carries the secret, and the store holds it only sealed."""
    rig = await make_rig(tmp_path, max_attempts=2)
    try:
        with capture_logs() as logs:
            rig.receiver.mode = 500
            subscription = await rig.subscribe()
            await rig.enqueue(REP_A, 0, 2)
            await until(
                lambda: rig.state_if(subscription, lambda s: s.state == "parked"),
                what="parked",
            )
            rig.receiver.mode = "ok"
            await rig.webhooks.resume(REP, subscription.subscription_id)
            await until(lambda: len(rig.receiver.taken) == 2, what="delivered")
            shown = [
                await rig.state(subscription),
                *(await rig.webhooks.list(REP)),
                await rig.webhooks.delete(REP, subscription.subscription_id),
            ]
        events = {line["event"] for line in logs}
        assert {"webhook.subscribed", "webhook.parked", "webhook.resumed", "webhook.deleted"} <= (
            events
        )
        assert SECRET not in json.dumps(logs, default=str)
        assert SECRET not in repr(shown) and SECRET not in json.dumps(
            [dataclasses.asdict(s) for s in shown]
        )

        def stored(conn: Any) -> bytes:
            return conn.exec_driver_sql("SELECT secret_enc FROM webhook_subscriptions").scalar_one()

        assert SECRET.encode() not in await rig.store.run(stored)
    finally:
        await close_rig(rig)


# ---- through the API and the whole gateway -------------------------------------------------------


async def start_gateway_with_webhooks(state_dir: Path, ca: ReceiverCA, **settings: Any) -> Harness:
    from hangw.gateway import Gateway

    config = make_test_config(state_dir)
    webhooks = WebhooksConfig(**{**FAST, **settings, "ca_file": str(ca.ca_file)})
    config = dataclasses.replace(config, webhooks=webhooks)
    issued = prepare_state(config)
    gateway = Gateway(config, reactor)
    gateway.startService()
    api_port = (await gateway.api_service._waitingForPort).getHost().port
    ops_port = (await gateway.ops_service._waitingForPort).getHost().port
    await gateway.registry.refresh()
    return Harness(config, gateway, api_port, ops_port, issued)


@dataclasses.dataclass
class GatewayRig:
    harness: Harness
    receiver: Receiver


@pytest_twisted.async_yield_fixture
async def gateway_rig(tmp_path: Path) -> AsyncIterator[GatewayRig]:
    ca = ReceiverCA.make(tmp_path / "receiver")
    harness = await start_gateway_with_webhooks(tmp_path / "state", ca, max_attempts=2)
    receiver = Receiver(ca)
    await receiver.start()
    yield GatewayRig(harness, receiver)
    harness.close()
    await harness.gateway.stopService()
    await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_api_subscribe_list_get_resume_delete(gateway_rig: GatewayRig) -> None:
    """Over mutual TLS a REP subscribes (the secret in that answer only), lists, reads, sees its
    subscription parked with the reason while the receiver is down, resumes it, and deletes it."""
    harness, receiver = gateway_rig.harness, gateway_rig.receiver
    rep = harness.caller("demo-rep-a")
    await receiver.stop()
    status, created = await rep.call("POST", "/v1/webhooks", {"url": receiver.url})
    assert status == 201, created
    secret = created.pop("secret")
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    receiver.secrets[created["id"]] = secret
    assert created["state"] == "active" and created["url"] == receiver.url
    assert created["backlog"] == 0 and created["links"]["self"] == f"/v1/webhooks/{created['id']}"
    status, listed = await rep.call("GET", "/v1/webhooks")
    assert status == 200 and listed == {"webhooks": [created]}
    status, read = await rep.call("GET", f"/v1/webhooks/{created['id']}")
    assert status == 200 and read == created
    assert secret not in json.dumps([listed, read])

    gateway = harness.gateway
    await gateway.store.run(
        gateway.webhooks.enqueue_thd, REP_A, [{"type": "device.status", "device_id": "dev_x"}]
    )

    async def parked() -> Any:
        _, body = await rep.call("GET", f"/v1/webhooks/{created['id']}")
        return body if body["state"] == "parked" else None

    body = await until(parked, what="parked")
    assert f"connection refused by 127.0.0.1:{receiver.port} 2 times" in body["parked_reason"]
    assert body["backlog"] == 1 and body["failures"] == 2 and secret not in json.dumps(body)

    await receiver.start()
    status, resumed = await rep.call("POST", f"/v1/webhooks/{created['id']}/resume")
    assert status == 200 and resumed["state"] == "active" and resumed["parked_reason"] == ""
    await until(lambda: receiver.taken, what="the backlog")
    assert [e["device_id"] for e in receiver.taken] == ["dev_x"] and receiver.attempts[0].valid
    status, read = await rep.call("GET", f"/v1/webhooks/{created['id']}")
    assert (read["backlog"], read["failures"]) == (0, 0)

    status, deleted = await rep.call("DELETE", f"/v1/webhooks/{created['id']}")
    assert status == 200 and deleted["state"] == "deleted"
    status, problem = await rep.call("GET", f"/v1/webhooks/{created['id']}")
    assert status == 404 and problem["type"].endswith("/not-found")
    assert await rep.call("GET", "/v1/webhooks") == (200, {"webhooks": []})


@pytest_twisted.ensureDeferred
async def test_api_refuses_customers_other_parties_and_bad_fields(gateway_rig: GatewayRig) -> None:
    """A customer is refused (403), another party's subscription is 404 for every verb, and a bad
    url or secret is a 422 naming the field without quoting the secret."""
    harness, receiver = gateway_rig.harness, gateway_rig.receiver
    rep_a, rep_b = harness.caller("demo-rep-a"), harness.caller("demo-rep-b")
    customer = harness.caller("demo-customer")
    status, created = await rep_a.call(
        "POST", "/v1/webhooks", {"url": receiver.url, "secret": SECRET}
    )
    assert status == 201 and created["secret"] == SECRET
    for method, path in [
        ("GET", f"/v1/webhooks/{created['id']}"),
        ("DELETE", f"/v1/webhooks/{created['id']}"),
        ("POST", f"/v1/webhooks/{created['id']}/resume"),
    ]:
        status, problem = await rep_b.call(method, path)
        assert status == 404, (method, problem)
    assert await rep_b.call("GET", "/v1/webhooks") == (200, {"webhooks": []})

    status, problem = await customer.call("POST", "/v1/webhooks", {"url": receiver.url})
    assert status == 403 and "only REPs, HAN service providers and TDSPs" in problem["detail"]
    assert (await customer.call("GET", "/v1/webhooks"))[0] == 403

    short = "tiny-secret"
    for body, field in [
        ({"url": "ftp://127.0.0.1/x"}, "url"),
        ({"url": "https:///no-host"}, "url"),
        ({"url": "https://h/" + "a" * 2000}, "url"),
        ({}, "url"),
        ({"url": receiver.url, "secret": short}, "secret"),
        ({"url": receiver.url, "secret": 12345678901234567890}, "secret"),
        ({"url": receiver.url, "colour": "red"}, "colour"),
    ]:
        status, problem = await rep_a.call("POST", "/v1/webhooks", body)
        assert status == 422 and problem["field"] == field, (body, problem)
        assert short not in json.dumps(problem)
    _, listed = await rep_a.call("GET", "/v1/webhooks")
    assert [s["id"] for s in listed["webhooks"]] == [created["id"]]
    assert SECRET not in json.dumps(listed)

    key = {"idempotency-key": "hook-1"}
    first = await rep_a.call("POST", "/v1/webhooks", {"url": receiver.url}, key)
    replay = await rep_a.call("POST", "/v1/webhooks", {"url": receiver.url}, key)
    assert first[0] == replay[0] == 201 and first[1]["id"] == replay[1]["id"]
    assert "secret" in first[1] and "secret" not in replay[1]


@pytest_twisted.ensureDeferred
async def test_a_url_with_a_user_or_password_is_refused_without_quoting_it(
    gateway_rig: GatewayRig,
) -> None:
    """A url carrying a user name or password is a 422 naming the field, quoting neither, and no
    subscription is made."""
    rep = gateway_rig.harness.caller("demo-rep-a")
    port = gateway_rig.receiver.port
    for url in [
        f"http://hookuser:s3cr3tpw@127.0.0.1:{port}/x",
        f"https://hookuser@127.0.0.1:{port}/x",
        f"http://:s3cr3tpw@127.0.0.1:{port}/x",
    ]:
        status, problem = await rep.call("POST", "/v1/webhooks", {"url": url})
        assert (status, problem["field"]) == (422, "url"), (url, problem)
        assert "signed" in problem["detail"], problem
        assert "hookuser" not in json.dumps(problem) and "s3cr3tpw" not in json.dumps(problem)
    assert await rep.call("GET", "/v1/webhooks") == (200, {"webhooks": []})


@pytest_twisted.ensureDeferred
async def test_a_provisioned_device_notifies_its_owner_of_every_status(
    gateway_rig: GatewayRig,
) -> None:
    """A device added through the API posts device.status events for each status it walks
    through to its owner's webhook, in order, and nothing to another party's webhook."""
    harness, receiver = gateway_rig.harness, gateway_rig.receiver
    rep_a, rep_b = harness.caller("demo-rep-a"), harness.caller("demo-rep-b")
    subscriptions = {}
    for name, caller in (("a", rep_a), ("b", rep_b)):
        status, created = await caller.call("POST", "/v1/webhooks", {"url": receiver.url})
        assert status == 201
        receiver.secrets[created["id"]] = created["secret"]
        subscriptions[name] = created["id"]
    status, device = await rep_a.call(
        "POST",
        f"/v1/esiids/{E_OWN}/han-devices",
        {"mac": "000D6F000A1B2C3D", "install_code": INSTALL_CODE, "device_type": "thermostat"},
    )
    assert status == 202, device
    await until(
        lambda: any(e["status"] == "Device Added" for e in receiver.taken), what="Device Added"
    )
    events = receiver.taken_by(subscriptions["a"])
    assert [e["status"] for e in events] == [
        "Add Acknowledged",
        "Add Acknowledged",
        "Add Pending",
        "Meter Ready",
        "Device Added",
    ]
    assert [e["event"] for e in events][:2] == ["add requested", "TDSP acknowledged"]
    first = events[0]
    assert set(first) == {
        "event_id",
        "type",
        "occurred_at",
        "device_id",
        "esiid",
        "status",
        "event",
        "reason",
        "_subscription",
    }
    assert (first["type"], first["device_id"], first["esiid"]) == (
        "device.status",
        device["id"],
        E_OWN,
    )
    assert first["occurred_at"] == device["created_at"]
    assert len({e["event_id"] for e in events}) == 5
    assert all(attempt.valid for attempt in receiver.attempts)
    assert receiver.taken_by(subscriptions["b"]) == []


@pytest_twisted.ensureDeferred
async def test_an_hsp_whose_grant_was_revoked_is_told_nothing_more_of_its_devices(
    gateway_rig: GatewayRig,
) -> None:
    """After the customer revokes an HSP's grant, the HSP's webhook gets none of its device's
    later statuses (its removal by the customer), as GET of the device answers it 403."""
    harness, receiver = gateway_rig.harness, gateway_rig.receiver
    hsp, customer = harness.caller("demo-hsp"), harness.caller("demo-customer")
    status, created = await hsp.call("POST", "/v1/webhooks", {"url": receiver.url})
    assert status == 201
    receiver.secrets[created["id"]] = created["secret"]
    subscription = created["id"]
    status, _ = await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    assert status == 201
    status, device = await hsp.call(
        "POST",
        f"/v1/esiids/{E_OWN}/han-devices",
        {"mac": "000D6F000A1B2C3E", "install_code": INSTALL_CODE, "device_type": "thermostat"},
    )
    assert status == 202, device
    await until(
        lambda: [e["status"] for e in receiver.taken_by(subscription)][-1:] == ["Device Added"],
        what="the HSP told of Device Added",
    )
    told_before = len(receiver.taken_by(subscription))

    status, _ = await customer.call("DELETE", f"/v1/esiids/{E_OWN}/grants/{HSP}")
    assert status == 200
    status, removing = await customer.call("DELETE", f"/v1/han-devices/{device['id']}")
    assert status == 202, removing

    async def removed() -> bool:
        status, shown = await customer.call("GET", f"/v1/han-devices/{device['id']}")
        return status == 200 and shown["status"] == "Device Removed"

    await until(removed, what="Device Removed")

    async def sent() -> bool:
        status, shown = await hsp.call("GET", f"/v1/webhooks/{subscription}")
        return status == 200 and shown["backlog"] == 0

    await until(sent, what="the HSP's backlog sent")
    assert len(receiver.taken_by(subscription)) == told_before
    status, _ = await hsp.call("GET", f"/v1/han-devices/{device['id']}")
    assert status == 403


@pytest_twisted.ensureDeferred
async def test_message_statuses_reach_the_senders_webhook_in_order_per_delivery(
    gateway_rig: GatewayRig,
) -> None:
    """Every status an LCE's delivery takes (RQA, ACK, CON) is posted to the sender's webhook,
    in order, once per event id, with the ids the message log shows."""
    harness, receiver = gateway_rig.harness, gateway_rig.receiver
    rep = harness.caller("demo-rep-a")
    status, created = await rep.call("POST", "/v1/webhooks", {"url": receiver.url})
    assert status == 201
    receiver.secrets[created["id"]] = created["secret"]
    status, summary = await rep.call(
        "POST",
        "/v1/messages",
        {"category": "LCE", "esiids": [E_OWN], "device_class": 1, "duration_minutes": 30},
    )
    assert status == 202, summary
    request_id = summary["request_id"]

    def statuses() -> list[str]:
        return [
            e["status_code"]
            for e in receiver.taken_by(created["id"])
            if e["type"] == "message.status" and e["request_id"] == request_id
        ]

    await until(lambda: "CON" in statuses(), what="the CON of the meter's delivery")
    assert statuses() == ["RQA", "ACK", "CON"]
    events = [e for e in receiver.taken_by(created["id"]) if e["type"] == "message.status"]
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["esiid"] for e in events} == {E_OWN}
    assert {e["message_status_id"] for e in events} == {
        summary["delivery_list"][0]["message_status_id"]
    }
    assert events[-1]["status_desc"].startswith("delivered to the meter (ESI)")
    # RQA says what the message log says, in the webhook and in the answer to the POST
    assert events[0]["status_desc"] == "request accepted and queued for the TDSP"
    assert summary["delivery_list"][0]["status"] == "RQA"
    assert summary["delivery_list"][0]["status_desc"] == events[0]["status_desc"]
    assert receiver.attempts and all(attempt.valid for attempt in receiver.attempts)
