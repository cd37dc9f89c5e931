"""The adapter protocol's fan-out and batch messages, without I/O: shapes, checks and limits."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from adapters.commands import (
    DeliveryState,
    DeliveryStatus,
    FanOutFrame,
    FanOutTarget,
    InboundFrame,
    ProvisionDevice,
)
from adapters.wire import protocol
from adapters.wire.protocol import ProtocolError

TDSP = "1039940674000"
ZCL = "0900" + "00" + "e9030000" + "ff0f"


def fan_out(**fields: Any) -> dict[str, Any]:
    message = {
        "type": "fan_out",
        "id": "fan-1",
        "destination": "all",
        "cluster": 0x0701,
        "zcl": ZCL,
        "targets": [["10443720000000001", "dlv-1"], ["10443720000000002", "dlv-2"]],
    }
    message.update(fields)
    return message


def wire(message: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """``message`` as the peer reads it: encoded, then decoded and checked."""
    return protocol.decode(protocol.encode(message), table)


def refusal(message: dict[str, Any], table: dict[str, Any]) -> str:
    with pytest.raises(ProtocolError) as caught:
        wire(message, table)
    assert caught.value.ref == message.get("id")
    return caught.value.reason


def test_fan_out_round_trips_to_the_same_command() -> None:
    """A FanOutFrame comes out of the head-end's decoding equal to what the gateway sent."""
    command = FanOutFrame(
        "fan-1",
        "esi",
        0x0700,
        bytes.fromhex(ZCL),
        (FanOutTarget("10443720000000001", "dlv-1"), FanOutTarget("10443720000000002", "dlv-2")),
    )
    message = protocol.command_message(command)
    assert message["targets"] == [["10443720000000001", "dlv-1"], ["10443720000000002", "dlv-2"]]
    assert "fan_out" in protocol.COMMAND_TYPES
    assert protocol.command_from_message(wire(message, protocol.GATEWAY_TO_HEADEND)) == command


def test_provision_carries_the_device_type_and_a_head_end_without_it_gets_none() -> None:
    """A provision round-trips with its device_type; one sent without (an older gateway) is
    read with an empty type; an empty or overlong type is refused naming the field."""
    command = ProvisionDevice(
        "add-1", "10443720000000001", "dev-1", "000D6F0000ABCD3E",
        bytes(range(18)), bytes(range(16)), 600, device_type="thermostat",
    )  # fmt: skip
    message = protocol.command_message(command)
    assert message["device_type"] == "thermostat"
    assert protocol.command_from_message(wire(message, protocol.GATEWAY_TO_HEADEND)) == command
    older = {k: v for k, v in message.items() if k != "device_type"}
    assert protocol.command_from_message(wire(older, protocol.GATEWAY_TO_HEADEND)).device_type == ""
    for bad in ("", "x" * 41):
        assert "device_type" in refusal(
            {**message, "device_type": bad}, protocol.GATEWAY_TO_HEADEND
        )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"destination": "00124B0001ABCD01"}, "fan_out.destination must be 'all' or 'esi'"),
        ({"targets": []}, "fan_out.targets must be a list of 1 to 5000 [esiid, delivery_id]"),
        ({"targets": "10443720000000001"}, "fan_out.targets must be a list of 1 to 5000"),
        ({"zcl": "0900"}, "fan_out.zcl must hold at least a ZCL header"),
        ({"cluster": 70000}, "fan_out.cluster must be an integer in 0..65535"),
    ],
)
def test_a_bad_fan_out_field_is_named(fields: dict[str, Any], reason: str) -> None:
    """A fan_out with a field out of its rules is refused with the field named."""
    assert refusal(fan_out(**fields), protocol.GATEWAY_TO_HEADEND).startswith(reason)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("10443720000000003", "fan_out.targets[2] must be a list of two strings"),
        (["10443720000000003"], "fan_out.targets[2] must be a list of two strings"),
        (["10443720000000003", "dlv-3", "x"], "fan_out.targets[2] must be a list of two"),
        (["", "dlv-3"], "fan_out.targets[2][0] (esiid) must be a non-empty string"),
        (["1" * 65, "dlv-3"], "fan_out.targets[2][0] (esiid) must be at most 64 characters"),
        ([10443720000000003, "dlv-3"], "fan_out.targets[2][0] (esiid) must be a non-empty"),
        (["10443720000000003", ""], "fan_out.targets[2][1] (delivery_id) must be a non-empty"),
        (["10443720000000003", "d" * 101], "fan_out.targets[2][1] (delivery_id) must be at most"),
        (["10443720000000003", "dlv-1"], "fan_out.targets[2][1] (delivery_id) is also the"),
    ],
)
def test_a_bad_fan_out_target_is_named_by_its_index(target: Any, reason: str) -> None:
    """A wrong target is refused with its index (and which of its two strings is wrong)."""
    targets = [["10443720000000001", "dlv-1"], ["10443720000000002", "dlv-2"], target]
    assert refusal(fan_out(targets=targets), protocol.GATEWAY_TO_HEADEND).startswith(reason)


def test_fan_out_takes_at_most_max_fan_out_targets() -> None:
    """5000 targets are taken; 5001 are refused."""
    targets = [[f"1044372{i:010d}", f"dlv-{i}"] for i in range(protocol.MAX_FAN_OUT_TARGETS + 1)]
    wire(fan_out(targets=targets[:-1]), protocol.GATEWAY_TO_HEADEND)
    assert "1 to 5000" in refusal(fan_out(targets=targets), protocol.GATEWAY_TO_HEADEND)


def test_a_full_fan_out_of_the_longest_ascii_ids_fits_in_a_frame() -> None:
    """5000 targets of the longest ASCII ids and the longest ZCL frame fit in one frame."""
    targets = tuple(
        FanOutTarget(f"{i:064d}", f"{i:0100d}") for i in range(protocol.MAX_FAN_OUT_TARGETS)
    )
    command = FanOutFrame("f" * 100, "all", 0x0703, bytes(protocol.MAX_ZCL_BYTES), targets)
    body = protocol.encode(protocol.command_message(command))
    assert len(body) <= protocol.MAX_FRAME_BYTES
    protocol.decode(body, protocol.GATEWAY_TO_HEADEND)


def statuses() -> list[DeliveryStatus]:
    return [
        DeliveryStatus("dlv-1", "10443720000000001", DeliveryState.DELIVERED),
        DeliveryStatus("dlv-2", "10443720000000002", DeliveryState.FAILED, "device not joined"),
    ]


def frames() -> list[InboundFrame]:
    return [
        InboundFrame("10443720000000001", "00124B0001ABCD01", 0x0701, bytes.fromhex(ZCL), 17.5),
        InboundFrame("10443720000000002", "esi", 0x0703, bytes.fromhex("010701"), 1_795_000_000),
    ]


def test_batches_round_trip_with_the_tdsp_set_and_no_event_id() -> None:
    """Batch items come out of decoding as sent, with the link's TDSP and no event id."""
    message = protocol.delivery_statuses_message("b-1", statuses())
    assert message["statuses"][0] == {
        "delivery_id": "dlv-1",
        "esiid": "10443720000000001",
        "state": "delivered",
    }
    checked = wire(message, protocol.HEADEND_TO_GATEWAY)
    parsed = protocol.delivery_statuses_from_message(checked, TDSP)
    assert parsed == [
        DeliveryStatus(s.delivery_id, s.esiid, s.state, s.reason, TDSP, "") for s in statuses()
    ]
    checked = wire(protocol.inbound_frames_message("b-2", frames()), protocol.HEADEND_TO_GATEWAY)
    parsed_frames = protocol.batch_from_message(checked, TDSP)
    assert parsed_frames == [
        InboundFrame(f.esiid, f.source, f.cluster, f.zcl, f.received_at, TDSP, "") for f in frames()
    ]
    assert {"delivery_statuses", "inbound_frames"} <= protocol.EVENT_TYPES


@pytest.mark.parametrize(
    ("kind", "index", "change", "reason"),
    [
        ("delivery_statuses", 1, {"state": "lost"}, "delivery_statuses.statuses[1].state must be"),
        ("delivery_statuses", 0, {"esiid": ""}, "delivery_statuses.statuses[0].esiid must be a"),
        (
            "delivery_statuses",
            1,
            {"delivery_id": None},
            "delivery_statuses.statuses[1].delivery_id",
        ),
        ("delivery_statuses", 1, {"reason": "r" * 1001}, "delivery_statuses.statuses[1].reason"),
        ("delivery_statuses", 0, {"delivery_id": ...}, "delivery_statuses.statuses[0] is missing"),
        ("inbound_frames", 1, {"zcl": "01070"}, "inbound_frames.frames[1].zcl must be a hex"),
        ("inbound_frames", 1, {"zcl": "0107 1"}, "inbound_frames.frames[1].zcl must be a hex"),
        ("inbound_frames", 0, {"source": "00124b0001abcd01"}, "inbound_frames.frames[0].source"),
        ("inbound_frames", 1, {"cluster": 1.0}, "inbound_frames.frames[1].cluster must be an int"),
        ("inbound_frames", 1, {"received_at": True}, "inbound_frames.frames[1].received_at must"),
        ("inbound_frames", 0, {"received_at": -1}, "inbound_frames.frames[0].received_at must"),
        ("inbound_frames", 1, {"esiid": ...}, "inbound_frames.frames[1] is missing 'esiid'"),
    ],
)
def test_a_bad_batch_item_is_named_by_its_index_and_field(
    kind: str, index: int, change: dict[str, Any], reason: str
) -> None:
    """A batch with one item out of the single event's rules is refused naming item and field."""
    if kind == "delivery_statuses":
        message = protocol.delivery_statuses_message("b-1", statuses())
    else:
        message = protocol.inbound_frames_message("b-1", frames())
    item = message[protocol.BATCH_FIELDS[kind]][index]
    for name, value in change.items():
        if value is ...:
            del item[name]
        else:
            item[name] = value
    assert refusal(message, protocol.HEADEND_TO_GATEWAY).startswith(reason)


def test_an_item_that_is_not_an_object_is_named() -> None:
    """A batch item that is not a JSON object is refused with its index."""
    message = protocol.inbound_frames_message("b-1", frames())
    message["frames"].append(["10443720000000001"])
    reason = refusal(message, protocol.HEADEND_TO_GATEWAY)
    assert reason == "inbound_frames.frames[2] must be an object"


@pytest.mark.parametrize("kind", sorted(protocol.BATCH_TYPES))
def test_a_batch_holds_one_to_max_events_per_batch_items(kind: str) -> None:
    """A batch of 2000 items is taken; an empty one and one of 2001 are refused."""
    name = protocol.BATCH_FIELDS[kind]
    one = protocol.batch_message(
        kind,
        "b-1",
        [protocol.delivery_status_item(statuses()[0])]
        if kind == "delivery_statuses"
        else [protocol.inbound_frame_item(frames()[0])],
    )[name][0]
    full = protocol.batch_message(kind, "b-1", [one] * protocol.MAX_EVENTS_PER_BATCH)
    wire(full, protocol.HEADEND_TO_GATEWAY)
    for items in ([], [one] * (protocol.MAX_EVENTS_PER_BATCH + 1)):
        reason = refusal(protocol.batch_message(kind, "b-1", items), protocol.HEADEND_TO_GATEWAY)
        assert reason.startswith(f"{kind}.{name} must be a list of 1 to 2000")


def test_full_batches_of_realistic_items_fit_in_a_frame() -> None:
    """2000 inbound frames of 63-byte ZCL, or 2000 failed statuses, fit in one frame."""
    zcl = bytes.fromhex("0101" + "00" + "e9030000" + "01") + bytes(55)
    assert len(zcl) == 63
    many_frames = [
        InboundFrame(f"1044372{i:010d}", "00124B0001ABCD01", 0x0701, zcl, 1_795_000_000.123456)
        for i in range(protocol.MAX_EVENTS_PER_BATCH)
    ]
    body = protocol.encode(protocol.inbound_frames_message("x" * 100, many_frames))
    assert len(body) <= protocol.MAX_FRAME_BYTES
    protocol.decode(body, protocol.HEADEND_TO_GATEWAY)
    many_statuses = [
        DeliveryStatus(
            f"{i:020d}",
            f"1044372{i:010d}",
            DeliveryState.FAILED,
            "the device did not answer within 300 s; the meter is offline or the device left",
        )
        for i in range(protocol.MAX_EVENTS_PER_BATCH)
    ]
    body = protocol.encode(protocol.delivery_statuses_message("x" * 100, many_statuses))
    assert len(body) <= protocol.MAX_FRAME_BYTES


def test_the_ack_of_a_batch_carries_its_refused_items() -> None:
    """An ack with refused [index, reason] pairs is taken by the head-end; without them too."""
    ack = protocol.batch_ack("b-1", [(1, "ESI ID 1 is a meter of another TDSP")])
    assert wire(ack, protocol.GATEWAY_TO_HEADEND)["refused"] == [
        [1, "ESI ID 1 is a meter of another TDSP"]
    ]
    assert protocol.batch_ack("b-1", []) == {"type": "ack", "ref": "b-1"}
    wire({"type": "ack", "ref": "b-1", "refused": []}, protocol.GATEWAY_TO_HEADEND)


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        ("all", "ack.refused must be a list of at most 2000 [index, reason] pairs"),
        ([[0, "x"], [1]], "ack.refused[1] must be a list of two: [index, reason]"),
        ([[0, "x"], ["1", "y"]], "ack.refused[1][0] (index) must be an integer in 0..1999"),
        ([[-1, "x"]], "ack.refused[0][0] (index) must be an integer in 0..1999"),
        ([[2000, "x"]], "ack.refused[0][0] (index) must be an integer in 0..1999"),
        ([[0, "x"], [1, None]], "ack.refused[1][1] (reason) must be a string"),
        ([[0, "x" * 1001]], "ack.refused[0][1] (reason) must be a string of at most 1000"),
    ],
)
def test_a_bad_refused_list_is_named(refused: Any, reason: str) -> None:
    """The head-end refuses an ack whose refused list is not [int index, string reason] pairs."""
    message = {"type": "ack", "ref": "b-1", "refused": refused}
    assert refusal(message, protocol.GATEWAY_TO_HEADEND).startswith(reason)


def test_an_ack_refusing_every_item_at_length_still_fits_in_a_frame() -> None:
    """2000 refusals of 1000 characters each are cut short so the ack fits, and stays valid."""
    refused = [(i, "é" * 1000) for i in range(protocol.MAX_EVENTS_PER_BATCH)]
    body = protocol.encode(protocol.batch_ack("b-1", refused))
    assert len(body) <= protocol.MAX_FRAME_BYTES
    pairs = protocol.decode(body, protocol.GATEWAY_TO_HEADEND)["refused"]
    assert [index for index, _ in pairs] == list(range(protocol.MAX_EVENTS_PER_BATCH))
    assert all(reason and reason == "é" * len(reason) for _, reason in pairs)
    few = protocol.batch_ack("b-1", [(3, "r" * 1200)])
    assert few["refused"] == [(3, "r" * 1000)]


def test_batch_item_problems_lists_every_bad_item() -> None:
    """The client's pre-check finds each bad item, worded as the gateway's error would be."""
    items: list[Any] = [protocol.inbound_frame_item(f) for f in frames()]
    items += [{**items[0], "cluster": -1}, "not an object", {**items[1], "zcl": "zz"}]
    problems = protocol.batch_item_problems("inbound_frames", items)
    assert sorted(problems) == [2, 3, 4]
    assert problems[2].startswith("inbound_frames.frames[2].cluster must be an integer")
    assert problems[3] == "inbound_frames.frames[3] must be an object"
    message = protocol.batch_message("inbound_frames", "b-1", [items[0], items[4]])
    assert refusal(message, protocol.HEADEND_TO_GATEWAY) == problems[4].replace("[4]", "[1]")
    assert json.loads(protocol.encode(message))["frames"][0] == items[0]


def status_message(**fields: Any) -> dict[str, Any]:
    return {
        "type": "provisioning_status",
        "id": "e-1",
        "command_id": "c-1",
        "esiid": "10443720000000001",
        "device_id": "dev-1",
        "status": "add-pending",
        **fields,
    }


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (status_message(id="e\ud800"), "provisioning_status.id must be text UTF-8 can carry"),
        (status_message(esiid="1\udfff"), "provisioning_status.esiid must be text UTF-8 can"),
        (status_message(reason="\ud83d"), "provisioning_status.reason must be text UTF-8 can"),
        (
            protocol.delivery_statuses_message(
                "b-1", [DeliveryStatus("dlv-\udc00", "1", DeliveryState.DELIVERED)]
            ),
            "delivery_statuses.statuses[0].delivery_id must be text UTF-8 can carry",
        ),
        (
            {"type": "hello", "versions": [1], "credit": 1, "software": "sim\ud800"},
            "hello.software must be text UTF-8 can carry",
        ),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_field(message: dict[str, Any], reason: str) -> None:
    """A string holding a lone surrogate (valid JSON, no UTF-8) is refused with its field named,
    and the refusal names only an id that UTF-8 can carry."""
    body = json.dumps(message).encode()  # the surrogate goes as a "\ud800" escape
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(body, protocol.HEADEND_TO_GATEWAY)
    assert caught.value.reason.startswith(reason)
    assert caught.value.had_id == ("id" in message)
    assert caught.value.ref == (None if message.get("id") == "e\ud800" else message.get("id"))
    answer = {"type": "error", "reason": caught.value.reason, "ref": caught.value.ref or "-"}
    assert protocol.decode(protocol.encode(answer), protocol.GATEWAY_TO_HEADEND) == answer


NO_CONTROL = "must hold no control character (U+0000 to U+001F)"
NO_CONTROL_IN_PROSE = (
    "must hold no control character but tab, line feed and carriage return (U+0000 to U+001F)"
)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (status_message(id="e-1\x00"), f"provisioning_status.id {NO_CONTROL}"),
        (status_message(command_id="\x00"), f"provisioning_status.command_id {NO_CONTROL}"),
        (status_message(esiid="1044\x00"), f"provisioning_status.esiid {NO_CONTROL}"),
        (status_message(device_id="dev\x1b[2J"), f"provisioning_status.device_id {NO_CONTROL}"),
        (status_message(esiid="1044\n"), f"provisioning_status.esiid {NO_CONTROL}"),
        (status_message(reason="no\x00pe"), f"provisioning_status.reason {NO_CONTROL_IN_PROSE}"),
        (status_message(reason="bell\x07"), f"provisioning_status.reason {NO_CONTROL_IN_PROSE}"),
        (
            {
                "type": "meter_event",
                "id": "m-1",
                "esiid": "1",
                "event": "meter_exchanged",
                "meter_serial": "M\x00",
            },
            f"meter_event.meter_serial {NO_CONTROL}",
        ),
        (
            protocol.delivery_statuses_message(
                "b-1",
                [
                    DeliveryStatus("1", "10443720000000001", DeliveryState.DELIVERED),
                    DeliveryStatus("2", "1044\x00", DeliveryState.DELIVERED),
                ],
            ),
            f"delivery_statuses.statuses[1].esiid {NO_CONTROL}",
        ),
        (
            protocol.inbound_frames_message(
                "b-2", [*frames(), InboundFrame("1044\x00", "esi", 0x0703, b"\x01\x07\x01", 1.8e9)]
            ),
            f"inbound_frames.frames[2].esiid {NO_CONTROL}",
        ),
        (
            {"type": "hello", "versions": [1], "credit": 1, "software": "sim\x00"},
            f"hello.software {NO_CONTROL_IN_PROSE}",
        ),
    ],
)
def test_a_control_character_is_refused_naming_the_field(
    message: dict[str, Any], reason: str
) -> None:
    """A NUL or other C0 control character in a field is refused naming it, and kept out of ref."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(protocol.encode(message), protocol.HEADEND_TO_GATEWAY)
    assert caught.value.reason == reason
    assert caught.value.had_id == ("id" in message)
    assert caught.value.ref == (None if message.get("id") == "e-1\x00" else message.get("id"))
    answer = {"type": "error", "reason": caught.value.reason, "ref": caught.value.ref or "-"}
    assert protocol.decode(protocol.encode(answer), protocol.GATEWAY_TO_HEADEND) == answer


@pytest.mark.parametrize("event_id", ["", "e" * 101], ids=["empty", "101-characters"])
def test_a_refusal_names_only_an_id_that_keeps_the_rules(event_id: str) -> None:
    """An event whose id is no id (empty, over 100 characters) is refused without a ref."""
    message = status_message(id=event_id)
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(protocol.encode(message), protocol.HEADEND_TO_GATEWAY)
    assert caught.value.reason.startswith("provisioning_status.id must ")
    assert caught.value.ref is None and caught.value.had_id


def test_a_reason_over_max_reason_is_cut_and_says_so() -> None:
    """cut_reason leaves a reason of 1000 characters alone and ends a longer one with "…"."""
    assert protocol.cut_reason("x" * 1000) == "x" * 1000
    assert protocol.cut_reason("x" * 5000) == "x" * 999 + "…"


def test_a_reason_may_run_over_lines() -> None:
    """Tab, line feed and carriage return are taken in a reason, which is text for people."""
    message = status_message(reason="line 1\r\n\tline 2")
    assert protocol.decode(protocol.encode(message), protocol.HEADEND_TO_GATEWAY) == message


def test_a_surrogate_pair_is_taken() -> None:
    """A character outside the BMP, escaped as a JSON surrogate pair, is ordinary text."""
    body = json.dumps(status_message(reason="plug \U0001f50c out")).encode()
    assert b"\\ud83d\\udd0c" in body
    assert protocol.decode(body, protocol.HEADEND_TO_GATEWAY)["reason"] == "plug \U0001f50c out"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "malformed frame: arrays or objects nested too deep"),
        (b'{"type":"heartbeat","n":' + b"9" * 4301 + b"}", "malformed frame: an integer of over"),
        (b'{"type":"heartbeat","n":NaN}', "malformed frame: not UTF-8 JSON (NaN is not a JSON"),
        (b'{"type":"heartbeat","n":-Infinity}', "malformed frame: not UTF-8 JSON (-Infinity"),
        (b'{"type":"heartbeat","n":"\xff"}', "malformed frame: not UTF-8 JSON"),
    ],
    ids=["nested", "long-integer", "nan", "infinity", "not-utf8"],
)
@pytest.mark.parametrize("table", [protocol.HEADEND_TO_GATEWAY, protocol.GATEWAY_TO_HEADEND])
def test_a_body_python_reads_but_json_has_not_is_malformed(
    body: bytes, reason: str, table: dict[str, Any]
) -> None:
    """Deep nesting, a huge integer, NaN or Infinity make a fatal ProtocolError, nothing else."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(body, table)
    assert caught.value.fatal and caught.value.reason.startswith(reason)


NACK = '{"type":"nack","ref":"q-1","reason":"offline"}'


@pytest.mark.parametrize(
    "body",
    [
        NACK.encode("utf-16-le"),
        NACK.encode("utf-16"),
        NACK.encode("utf-32-be"),
        b'{"type":"heartbeat","\xed\xa0\x80":1}',
        b'{"type":"nack","ref":"q-1","reason":"\xed\xb0\x80"}',
        NACK.encode("utf-8-sig"),
    ],
    ids=["utf-16-le", "utf-16-bom", "utf-32-be", "surrogate-in-key", "surrogate-in-reason", "bom"],
)
@pytest.mark.parametrize("table", [protocol.HEADEND_TO_GATEWAY, protocol.GATEWAY_TO_HEADEND])
def test_a_body_that_is_not_utf8_is_malformed(body: bytes, table: dict[str, Any]) -> None:
    """A body in UTF-16 or UTF-32, with an encoded surrogate or a byte order mark is refused."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(body, table)
    assert caught.value.fatal
    assert caught.value.reason.startswith("malformed frame: not UTF-8 JSON (")


def test_encode_writes_no_nan() -> None:
    """A float that is not finite is not written as NaN or Infinity, which JSON has not."""
    with pytest.raises(ValueError):
        protocol.encode({"type": "meter_read", "ref": "q-1", "zcl": "180101", "read_at": math.nan})
