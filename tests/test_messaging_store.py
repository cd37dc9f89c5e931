"""The messaging service's statements on a real SQLite file and, when one is given, PostgreSQL:
accept, fan-out outbox, acknowledgement, head-end statuses, device answers, deadlines, the log."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.task import Clock

import sep1
from adapters.commands import DeliveryState, DeliveryStatus, InboundFrame
from adapters.wire.protocol import MAX_REASON
from hangw.config import MessagingConfig
from hangw.domain import Party, Role
from hangw.messaging import log as message_log
from hangw.messaging import requests as specs
from hangw.messaging.requests import Targets
from hangw.messaging.service import MessagingService
from hangw.meters import parse_meter_csv, upsert_meters_thd
from hangw.store import schema
from hangw.store.db import Store
from hangw.store.model import han_devices, metadata
from sep1 import EventStatus, ReportEventStatus, utctime
from tests.gateway_harness import DATA, E_OTHER_TDSP, E_OWN, REP_A, TDSP

POSTGRES_URL = os.environ.get("HANGW_TEST_POSTGRES_URL")
REP = Party(REP_A, Role.REP, "demo-rep-a", "f" * 64)
MAC = "000D6F0000000101"
START = 1_800_000_000.0


def _wipe(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture(params=["sqlite", "postgresql"])
def messaging(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingService]:
    if request.param == "postgresql":
        if not POSTGRES_URL:
            pytest.skip("HANGW_TEST_POSTGRES_URL is not set (a throwaway PostgreSQL database)")
        url = POSTGRES_URL
    else:
        url = f"sqlite:///{tmp_path / 'hangw.sqlite'}"
    engine = schema.make_engine(url)
    if request.param == "postgresql":
        _wipe(engine)
    schema.upgrade(engine)
    store = Store(engine, reactor)
    with open(DATA / "meters.csv", newline="") as handle:
        store.transaction(upsert_meters_thd, parse_meter_csv(handle))
    store.start()
    clock = Clock()
    clock.advance(START)
    yield MessagingService(store, clock, MessagingConfig(settle_timeout_s=600))
    store.stop()
    if request.param == "postgresql":
        _wipe(engine)
    engine.dispose()


def report(issuer_event_id: int, status: int, at: float) -> bytes:
    return sep1.encode(ReportEventStatus(issuer_event_id, status, utctime.from_unix(at), 3), 1)


@pytest_twisted.ensureDeferred
async def test_one_event_walks_every_statement(messaging: MessagingService) -> None:
    """Accept -> fan-out command -> ACK -> meter CON -> device CON and STR -> log rows in order;
    a second fan-out read finds nothing; an unknown delivery id is refused."""
    store = messaging.store
    summary = await messaging.send(
        REP,
        {
            "category": "LCE",
            "esiids": [E_OWN],
            "issuer_event_id": 77,
            "device_class": 1,
            "duration_minutes": 30,
        },
    )
    request_id = summary["request_id"]
    commands, _ = await store.run(messaging.pending_after_thd, TDSP, 10, frozenset(), 0)
    assert len(commands) == 1
    command = commands[0]
    assert [t.esiid for t in command.targets] == [E_OWN]
    assert sep1.decode(command.cluster, command.zcl).issuer_event_id == 77
    await store.run(messaging.retire_many_thd, [command.command_id], START + 1)
    again, _ = await store.run(messaging.pending_after_thd, TDSP, 10, frozenset(), 0)
    assert again == []
    delivery_id = command.targets[0].delivery_id
    results = await messaging.delivery_statuses(
        [
            DeliveryStatus(delivery_id, E_OWN, DeliveryState.DELIVERED, tdsp_duns=TDSP),
            DeliveryStatus("999999", E_OWN, DeliveryState.DELIVERED, tdsp_duns=TDSP),
        ],
        "batch-1",
    )
    assert results[0] is None and "no delivery 999999" in (results[1] or "")
    frames = [
        InboundFrame(E_OWN, MAC, sep1.DRLC, report(77, s, START + 2), START + 2, tdsp_duns=TDSP)
        for s in (EventStatus.COMMAND_RECEIVED, EventStatus.EVENT_STARTED)
    ]
    assert await messaging.inbound_frames(frames, "batch-2") == [None, None]
    # the same batch again: the first answer, applied once
    assert await messaging.inbound_frames(frames, "batch-2") == [None, None]
    final = await messaging.get_request(REP, request_id)
    statuses = {(d["mac"], d["status"]) for d in final["delivery_list"]}
    assert statuses == {(None, "CON"), (MAC, "STR")}
    assert final["complete"]
    rows, _ = await store.run(
        message_log.page_thd, message_log.LogFilter(REP_A, request_id=request_id), 0, 100
    )
    codes = [(row[8], row[10]) for row in rows]
    assert codes == [("", "RQA"), ("", "ACK"), ("", "CON"), (MAC, "CON"), (MAC, "STR")]


@pytest_twisted.ensureDeferred
async def test_a_delivery_id_that_is_not_ascii_digits_is_refused_alone(
    messaging: MessagingService,
) -> None:
    """A head-end status naming delivery '²' or a 30-digit one is refused; the rest applies."""
    await messaging.send(
        REP,
        {"category": "LCE", "esiids": [E_OWN], "device_class": 1, "duration_minutes": 30},
    )
    commands, _ = await messaging.store.run(messaging.pending_after_thd, TDSP, 10, frozenset(), 0)
    delivery_id = commands[0].targets[0].delivery_id
    results = await messaging.delivery_statuses(
        [
            DeliveryStatus("\u00b2", E_OWN, DeliveryState.DELIVERED, tdsp_duns=TDSP),
            DeliveryStatus("9" * 30, E_OWN, DeliveryState.DELIVERED, tdsp_duns=TDSP),
            DeliveryStatus(delivery_id, E_OWN, DeliveryState.DELIVERED, tdsp_duns=TDSP),
        ],
        "batch-odd-ids",
    )
    assert ["is not one of hangw's" in (r or "") for r in results] == [True, True, False]
    assert results[2] is None


@pytest_twisted.ensureDeferred
async def test_a_report_at_the_invalid_utc_time_is_refused_not_recorded(
    messaging: MessagingService,
) -> None:
    """A Report Event Status timed 0xFFFFFFFF (ZCL's invalid time, year 2136 if taken as a time)
    is refused naming the field, and no device status is recorded from it."""
    summary = await messaging.send(
        REP,
        {
            "category": "LCE",
            "esiids": [E_OWN],
            "issuer_event_id": 79,
            "device_class": 1,
            "duration_minutes": 30,
        },
    )
    payload = struct.pack(
        "<IBIBhhbBBB",
        79,
        EventStatus.EVENT_STARTED,
        0xFFFFFFFF,
        3,
        -0x8000,
        -0x8000,
        -0x80,
        0xFF,
        0,
        0,
    ) + bytes(42)
    frame = InboundFrame(
        E_OWN, MAC, sep1.DRLC, bytes([0x01, 0x01, 0x00]) + payload, START, tdsp_duns=TDSP
    )
    (result,) = await messaging.inbound_frames([frame], "batch-invalid-time")
    assert result is not None
    assert "event_status_time" in result and "invalid" in result
    final = await messaging.get_request(REP, summary["request_id"])
    assert [d for d in final["delivery_list"] if d["mac"] == MAC] == []


@pytest_twisted.ensureDeferred
async def test_deadline_fails_what_never_settled(messaging: MessagingService) -> None:
    """A delivery with no answer by its deadline fails, saying what it last was."""
    clock: Clock = messaging._clock  # type: ignore[assignment]
    summary = await messaging.send(
        REP, {"category": "STM", "esiids": [E_OWN], "message": "hello", "message_id": 5}
    )
    clock.advance(601)
    assert await messaging.fire_timers() == 1
    final = await messaging.get_request(REP, summary["request_id"])
    (delivery,) = final["delivery_list"]
    assert delivery["status"] == "FLR"
    assert delivery["status_desc"] == "no confirmation in time (last status RQA)"
    assert await messaging.fire_timers() == 0


@pytest_twisted.ensureDeferred
async def test_late_answers_are_matched_after_the_targets_were_let_go(
    messaging: MessagingService,
) -> None:
    """Past the settle timeout the gateway forgets a request's targets, and reads them again
    when a device still answers (an event's "completed" comes at its end)."""
    clock: Clock = messaging._clock  # type: ignore[assignment]
    summary = await messaging.send(
        REP,
        {
            "category": "LCE",
            "esiids": [E_OWN],
            "issuer_event_id": 78,
            "device_class": 1,
            "duration_minutes": 1440,
        },
    )
    received = InboundFrame(
        E_OWN, MAC, sep1.DRLC, report(78, EventStatus.COMMAND_RECEIVED, START), START, TDSP
    )
    assert await messaging.inbound_frames([received]) == [None]
    live = messaging._live[summary["request_id"]]
    assert live.targets
    clock.advance(601)
    await messaging.fire_timers()
    assert live.targets == {}
    completed = InboundFrame(
        E_OWN,
        MAC,
        sep1.DRLC,
        report(78, EventStatus.EVENT_COMPLETED, START + 700),
        START + 700,
        TDSP,
    )
    assert await messaging.inbound_frames([completed]) == [None]
    final = await messaging.get_request(REP, summary["request_id"])
    device = next(d for d in final["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == ("CON", "event completed")


def restarted(messaging: MessagingService) -> MessagingService:
    """A new service on the same store, as hangwd is after a restart."""
    return MessagingService(messaging.store, messaging._clock, messaging._config)


def answer(issuer_event_id: int, status: int, at: float) -> InboundFrame:
    return InboundFrame(E_OWN, MAC, sep1.DRLC, report(issuer_event_id, status, at), at, TDSP)


LCE = {
    "category": "LCE",
    "esiids": [E_OWN],
    "issuer_event_id": 91,
    "device_class": 1,
    "duration_minutes": 120,
}


@pytest_twisted.ensureDeferred
async def test_event_answers_after_a_restart_reach_the_event_a_new_cancellation_shares(
    messaging: MessagingService,
) -> None:
    """An LCE sent before a restart and cancelled after it still gets its devices' answers."""
    clock: Clock = messaging._clock  # type: ignore[assignment]
    sent = await messaging.send(REP, dict(LCE))
    after = restarted(messaging)
    clock.advance(10)
    cancel = await after.cancel(REP, sent["request_id"], {})
    results = await after.inbound_frames(
        [
            answer(91, EventStatus.EVENT_STARTED, START + 11),
            answer(91, EventStatus.EVENT_CANCELLED, START + 12),
        ]
    )
    assert results == [None, None]
    event = await after.get_request(REP, sent["request_id"])
    device = next(d for d in event["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == (
        "CON",
        f"event cancelled by request {cancel['request_id']}",
    )
    cancellation = await after.get_request(REP, cancel["request_id"])
    device = next(d for d in cancellation["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == ("CON", "event cancelled")


@pytest_twisted.ensureDeferred
async def test_a_cancel_all_before_a_restart_is_matched_after_a_new_one(
    messaging: MessagingService,
) -> None:
    """A CAL sent before a restart still gets its devices' answers once a newer CAL was sent."""
    old = await messaging.cancel_all(REP, Targets(esiids=(E_OWN,)), {})
    after = restarted(messaging)
    await after.cancel_all(REP, Targets(esiids=(E_OTHER_TDSP,)), {})
    results = await after.inbound_frames([answer(555, EventStatus.EVENT_CANCELLED, START + 1)])
    assert results == [None]
    final = await after.get_request(REP, old["request_id"])
    device = next(d for d in final["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == ("CON", "event cancelled")


@pytest_twisted.ensureDeferred
async def test_another_tdsps_head_end_cannot_answer_a_cancel_all(
    messaging: MessagingService,
) -> None:
    """A cancel-all answer from a head-end that does not serve the meter is refused, not applied."""
    sent = await messaging.cancel_all(REP, Targets(esiids=(E_OWN,)), {})
    foreign = InboundFrame(
        E_OWN,
        MAC,
        sep1.DRLC,
        report(424242, EventStatus.EVENT_CANCELLED, START + 1),
        START + 1,
        tdsp_duns="9999999999999",
    )
    assert await messaging.inbound_frames([foreign], "x1") == [
        f"ESI ID {E_OWN} is a meter of another TDSP"
    ]
    final = await messaging.get_request(REP, sent["request_id"])
    assert [(d["mac"], d["status"]) for d in final["delivery_list"]] == [(None, "RQA")]


class Recorder:
    """A notifier that keeps what it is given, for a party that always has a subscription."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def wants(self, party_id: str) -> bool:
        return True

    def enqueue_thd(self, conn: sa.Connection, party_id: str, events: list[dict[str, Any]]) -> None:
        self.events.extend(events)

    def taken(self) -> list[tuple[str | None, str, str]]:
        """(mac, status code, description) of the events so far, and forget them."""
        taken = [(e["mac"], e["status_code"], e["status_desc"]) for e in self.events]
        self.events.clear()
        return taken


def with_webhooks(messaging: MessagingService) -> tuple[MessagingService, Recorder]:
    recorder = Recorder()
    service = MessagingService(
        messaging.store, messaging._clock, messaging._config, notifier=recorder
    )
    return service, recorder


def add_thermostat(conn: sa.Connection) -> None:
    conn.execute(
        han_devices.insert(),
        {
            "device_id": "dev_thermostat",
            "esiid": E_OWN,
            "mac": MAC,
            "install_code_enc": b"x",
            "link_key_enc": b"x",
            "device_type": "thermostat",
            "description": "",
            "owner_party_id": REP_A,
            "owner_role": "rep",
            "status": "Device Added",
            "status_at": START,
            "created_at": START,
        },
    )


@pytest_twisted.ensureDeferred
async def test_deadline_failures_are_posted(messaging: MessagingService) -> None:
    """A delivery failed by its deadline is posted as FLR, saying what it last was."""
    service, recorder = with_webhooks(messaging)
    clock: Clock = messaging._clock  # type: ignore[assignment]
    await service.send(REP, {"category": "STM", "esiids": [E_OWN], "message": "hi"})
    assert [code for _, code, _ in recorder.taken()] == ["RQA"]
    clock.advance(601)
    assert await service.fire_timers() == 1
    assert recorder.taken() == [(None, "FLR", "no confirmation in time (last status RQA)")]


@pytest_twisted.ensureDeferred
async def test_devices_settled_with_their_meter_or_by_a_text_cancellation_are_posted(
    messaging: MessagingService,
) -> None:
    """Device deliveries failed because the meter failed, and those a CSM settles, are posted."""
    await messaging.store.run(add_thermostat)
    service, recorder = with_webhooks(messaging)
    event = await service.send(REP, dict(LCE))
    meter = next(d for d in event["delivery_list"] if d["mac"] is None)
    recorder.taken()
    failed = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.FAILED, "gone", TDSP)
    assert await service.delivery_statuses([failed], "f1") == [None]
    assert recorder.taken() == [
        (None, "FLR", "failed at the head-end: gone"),
        (MAC, "FLR", "the meter did not take the frame (failed at the head-end: gone)"),
    ]
    text = await service.send(
        REP,
        {"category": "STM", "esiids": [E_OWN], "message": "hi", "confirmation_required": True},
    )
    recorder.events.clear()
    cancel = await service.cancel(REP, text["request_id"], {})
    settled = [e for e in recorder.events if e["request_id"] == text["request_id"]]
    assert [(e["mac"], e["status_code"], e["status_desc"]) for e in settled] == [
        (MAC, "CON", f"text cancelled (cancellation {cancel['cancellation_id']})")
    ]


@pytest_twisted.ensureDeferred
async def test_each_change_is_posted_once_and_only_changes_are_posted(
    messaging: MessagingService,
) -> None:
    """Two answers in one batch post two events; an answer or ACK not taken posts none."""
    service, recorder = with_webhooks(messaging)
    sent = await service.send(REP, dict(LCE))
    recorder.taken()
    both = [
        answer(91, EventStatus.COMMAND_RECEIVED, START + 1),
        answer(91, EventStatus.EVENT_STARTED, START + 2),
    ]
    assert await service.inbound_frames(both, "b1") == [None, None]
    assert recorder.taken() == [
        (MAC, "CON", "command received by the device"),
        (MAC, "STR", "event started"),
    ]
    (meter,) = [d for d in sent["delivery_list"] if d["mac"] is None]
    delivered = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.DELIVERED, "", TDSP)
    pending = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.PENDING, "", TDSP)
    assert await service.delivery_statuses([delivered, pending], "b2") == [None, None]
    assert recorder.taken() == [(None, "CON", "delivered to the meter (ESI)")]
    commands, _ = await service.store.run(service.pending_after_thd, TDSP, 10, frozenset(), 0)
    await service.store.run(service.retire_many_thd, [commands[0].command_id], START + 3)
    assert recorder.taken() == []


@pytest_twisted.ensureDeferred
async def test_cancel_alls_past_their_deadline_are_not_read_again(
    messaging: MessagingService,
) -> None:
    """A late answer does not read the targets of every cancel-all ever sent, only of those
    still within their settle timeout; the event it names still takes it."""
    clock: Clock = messaging._clock  # type: ignore[assignment]
    sent = await messaging.send(REP, dict(LCE, duration_minutes=1440))
    old = [
        (await messaging.cancel_all(REP, Targets(esiids=(E_OWN,)), {}))["request_id"]
        for _ in range(3)
    ]
    clock.advance(10_000)
    await messaging.fire_timers()
    late = answer(91, EventStatus.EVENT_COMPLETED, START + 10_000)
    assert await messaging.inbound_frames([late]) == [None]

    def read_again() -> list[str]:
        return [r for r in old if r in messaging._live and messaging._live[r].targets]

    assert read_again() == []
    final = await messaging.get_request(REP, sent["request_id"])
    device = next(d for d in final["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == ("CON", "event completed")
    # a cancel-all within its deadline is still matched
    recent = await messaging.cancel_all(REP, Targets(esiids=(E_OWN,)), {})
    cancelled = answer(91, EventStatus.EVENT_CANCELLED, START + 10_001)
    assert await messaging.inbound_frames([cancelled]) == [None]
    assert read_again() == []
    final = await messaging.get_request(REP, recent["request_id"])
    device = next(d for d in final["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == ("CON", "event cancelled")


@pytest_twisted.ensureDeferred
async def test_a_settled_delivery_takes_only_a_newer_answer_and_never_leaves_flr(
    messaging: MessagingService,
) -> None:
    """An older or weaker answer does not replace a settled status, and a FLR stays FLR."""
    sent = await messaging.send(REP, dict(LCE))
    reordered = [
        answer(91, EventStatus.USER_OPTED_OUT, START + 5),
        answer(91, EventStatus.COMMAND_RECEIVED, START + 1),
        answer(91, EventStatus.COMMAND_RECEIVED, START + 6),
    ]
    assert await messaging.inbound_frames(reordered) == [None, None, None]
    final = await messaging.get_request(REP, sent["request_id"])
    device = next(d for d in final["delivery_list"] if d["mac"] == MAC)
    assert (device["status"], device["status_desc"]) == ("OPT", "user opted out")
    assert device["status_at"] == specs.iso(START + 5)
    text = await messaging.send(REP, {"category": "STM", "esiids": [E_OWN], "message": "hi"})
    (meter,) = text["delivery_list"]
    gave_up = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.FAILED, "gone", TDSP)
    late = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.DELIVERED, "", TDSP)
    await messaging.delivery_statuses([gave_up], "b1")
    await messaging.delivery_statuses([late], "b2")
    final = await messaging.get_request(REP, text["request_id"])
    assert [(d["status"], d["status_desc"]) for d in final["delivery_list"]] == [
        ("FLR", "failed at the head-end: gone")
    ]


@pytest_twisted.ensureDeferred
async def test_superseding_another_senders_event_shows_neither_sender_the_others_ids(
    messaging: MessagingService,
) -> None:
    """An LCE superseded by another party's says so without that party's request or event id."""
    tdsp = Party(TDSP, Role.TDSP, "demo-tdsp", "e" * 64)
    older = await messaging.send(REP, dict(LCE))
    newer = await messaging.send(tdsp, dict(LCE, issuer_event_id=4711))
    assert not any(older["request_id"] in w for w in newer["warnings"])
    assert newer["warnings"] == [
        "supersedes an overlapping event of another sender on 1 deliveries"
    ]
    final = await messaging.get_request(REP, older["request_id"])
    assert final["superseded_by"] is None
    assert [d["status_desc"] for d in final["delivery_list"]] == [
        "superseded by a newer overlapping event of another sender"
    ]
    rows, _ = await messaging.store.run(
        message_log.page_thd, message_log.LogFilter(REP_A, request_id=older["request_id"]), 0, 100
    )
    assert not any(newer["request_id"] in str(row) or "4711" in str(row) for row in rows)


@pytest_twisted.ensureDeferred
async def test_superseding_keeps_a_failed_deliverys_reason(messaging: MessagingService) -> None:
    """A delivery that failed keeps its failure reason when its event is superseded."""
    older = await messaging.send(REP, dict(LCE))
    (meter,) = older["delivery_list"]
    gone = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.FAILED, "gone", TDSP)
    await messaging.delivery_statuses([gone], "f1")
    await messaging.send(REP, dict(LCE, issuer_event_id=92))
    final = await messaging.get_request(REP, older["request_id"])
    assert [(d["status"], d["status_desc"]) for d in final["delivery_list"]] == [
        ("FLR", "failed at the head-end: gone")
    ]


@pytest_twisted.ensureDeferred
async def test_a_failed_delivery_keeps_a_head_end_reason_of_1000_characters_whole(
    messaging: MessagingService,
) -> None:
    """The longest reason a head-end may give a failed delivery is kept whole, in the log too."""
    await messaging.store.run(add_thermostat)
    event = await messaging.send(REP, dict(LCE))
    meter = next(d for d in event["delivery_list"] if d["mac"] is None)
    reason = "é" * MAX_REASON
    failed = DeliveryStatus(meter["message_status_id"], E_OWN, DeliveryState.FAILED, reason, TDSP)
    assert await messaging.delivery_statuses([failed], "f1") == [None]
    final = await messaging.get_request(REP, event["request_id"])
    assert {(d["mac"], d["status"], d["status_desc"]) for d in final["delivery_list"]} == {
        (None, "FLR", f"failed at the head-end: {reason}"),
        (MAC, "FLR", f"the meter did not take the frame (failed at the head-end: {reason})"),
    }
    rows, _ = await messaging.store.run(
        message_log.page_thd,
        message_log.LogFilter(REP_A, request_id=event["request_id"]),
        0,
        100,
    )
    assert sum(reason in str(row) for row in rows) == 2
