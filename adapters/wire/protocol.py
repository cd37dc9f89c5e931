"""The adapter protocol's messages, without I/O: framing, validation and command conversion.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding one object with a
``type``. Messages that need an answer carry an ``id`` (unique per sender); answers carry its
``ref``. The full specification, for implementers in any language, is docs/adapter-protocol.md;
the tables here are the code's side of it and a test keeps the two in step.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adapters.commands import (
    TO_ALL,
    TO_ESI,
    Command,
    DeliveryState,
    DeliveryStatus,
    DeprovisionDevice,
    FanOutFrame,
    FanOutTarget,
    HeadEndStatus,
    InboundFrame,
    MeterEvent,
    MeterEventKind,
    MeterReading,
    OutboundFrame,
    PingDevice,
    PingEsi,
    PingResult,
    ProvisionDevice,
    ProvisioningReport,
    Query,
    QueryResult,
    ReadMeter,
    SendFrames,
)

__all__ = [
    "BATCH_FIELDS",
    "BATCH_TYPES",
    "GATEWAY_TO_HEADEND",
    "HEADEND_TO_GATEWAY",
    "MAX_EVENTS_PER_BATCH",
    "MAX_FAN_OUT_TARGETS",
    "MAX_FRAME_BYTES",
    "MAX_REASON",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ProtocolError",
    "batch_ack",
    "batch_from_message",
    "batch_item_problems",
    "batch_message",
    "check_message",
    "command_from_message",
    "command_message",
    "cut_reason",
    "decode",
    "delivery_status_item",
    "delivery_statuses_from_message",
    "delivery_statuses_message",
    "encode",
    "event_from_message",
    "event_message",
    "inbound_frame_item",
    "inbound_frames_from_message",
    "inbound_frames_message",
    "query_from_message",
    "query_message",
    "query_result_from_message",
    "query_result_message",
    "report_from_message",
    "report_message",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: Frames longer than this are refused (and the connection closed): 1 MiB.
MAX_FRAME_BYTES = 1 << 20
#: At most this many ZCL frames in one ``send_frames``, each at most MAX_ZCL_BYTES long.
MAX_FRAMES_PER_SEND = 64
MAX_ZCL_BYTES = 1024
#: At most this many attributes in one ``read_meter``.
MAX_READ_ATTRIBUTES = 32
#: At most this many ESI IDs in one ``fan_out``: with ASCII ids of the longest lengths allowed
#: and the longest ZCL frame, a full one is still under MAX_FRAME_BYTES.
MAX_FAN_OUT_TARGETS = 5000
#: At most this many characters in a ``reason`` (and in ``hello.software``).
MAX_REASON = 1000
#: At most this many items in one ``delivery_statuses`` or ``inbound_frames`` (which must also
#: fit in MAX_FRAME_BYTES: 2000 inbound frames of 64-byte ZCL take about half of it).
MAX_EVENTS_PER_BATCH = 2000


Check = Callable[[Any], str | None]
Fields = Mapping[str, Check]


class ProtocolError(ValueError):
    """A message the peer should not have sent. ``fatal`` ones end the connection.

    ``ref`` is the message's ``id``, to answer with, when it had one that keeps the rules of an
    id (1 to 100 characters of text); ``had_id`` is true when it had a string ``id`` at all (it
    was taken for an event).
    """

    def __init__(
        self,
        reason: str,
        *,
        ref: str | None = None,
        fatal: bool = False,
        had_id: bool | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ref = ref
        self.fatal = fatal
        self.had_id = ref is not None if had_id is None else had_id


#: Half of a surrogate pair: a JSON string can hold one alone (written ``"\ud800"``), UTF-8
#: cannot, so neither the store nor the peer could be given it back.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_UTF8 = "must be text UTF-8 can carry (no lone surrogate, \\ud800 to \\udfff)"
#: C0 control characters (U+0000 to U+001F): none in a name or an id. NUL above all, which a
#: JSON string can hold (``"\u0000"``) and PostgreSQL's text cannot: stored, the event would
#: fail again at every copy the head-end resends, and never be answered.
_CONTROL = re.compile(r"[\x00-\x1f]")
_NO_CONTROL = "must hold no control character (U+0000 to U+001F)"
#: Text for people (a reason) may run over lines: tab, line feed and carriage return are taken.
_CONTROL_IN_PROSE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_NO_CONTROL_IN_PROSE = (
    "must hold no control character but tab, line feed and carriage return (U+0000 to U+001F)"
)


def _is_utf8(value: str) -> bool:
    """True when ``value`` encodes as UTF-8: it holds no lone surrogate."""
    return value.isascii() or _LONE_SURROGATE.search(value) is None


def _text_problem(value: str, control: re.Pattern[str], no_control: str) -> str | None:
    """What keeps ``value`` from being text: a lone surrogate or a control character."""
    if value.isprintable():  # the usual case: neither (both are unprintable)
        return None
    if not _is_utf8(value):
        return _NOT_UTF8
    if control.search(value) is not None:
        return no_control
    return None


def _text(limit: int = 200) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return "must be a non-empty string"
        if len(value) > limit:
            return f"must be at most {limit} characters"
        return _text_problem(value, _CONTROL, _NO_CONTROL)

    return check


def _optional_text(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_REASON:
        return f"must be a string of at most {MAX_REASON} characters"
    return _text_problem(value, _CONTROL_IN_PROSE, _NO_CONTROL_IN_PROSE)


def _count(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if type(value) is not int or not lo <= value <= hi:
            return f"must be an integer in {lo}..{hi}"
        return None

    return check


_HEX_DIGITS = re.compile(r"[0-9A-Fa-f]*")


def _is_hex(value: str) -> bool:
    """Two hex digits per byte, nothing between."""
    return len(value) % 2 == 0 and _HEX_DIGITS.fullmatch(value) is not None


def _hex_bytes(*sizes: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not _is_hex(value):
            return "must be a hex string (two digits per byte, nothing between)"
        raw = bytes.fromhex(value)
        if len(raw) not in sizes:
            return f"must be {' or '.join(map(str, sizes))} bytes"
        return None

    return check


def _zcl(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty hex string"
    if len(value) > 2 * MAX_ZCL_BYTES:
        return f"must be at most {MAX_ZCL_BYTES} bytes"
    if not _is_hex(value):
        return "must be a hex string (two digits per byte, nothing between)"
    if len(value) < 6:
        return "must hold at least a ZCL header (3 bytes)"
    return None


_MAC = re.compile(r"[0-9A-F]{16}")


def _is_mac(value: Any) -> bool:
    return isinstance(value, str) and _MAC.fullmatch(value) is not None


def _mac(value: Any) -> str | None:
    return None if _is_mac(value) else "must be 16 upper-case hex digits (an EUI-64)"


def _destination(value: Any) -> str | None:
    if value in (TO_ESI, TO_ALL) or _is_mac(value):
        return None
    return f"must be {TO_ESI!r}, {TO_ALL!r} or a MAC (16 upper-case hex digits)"


def _source(value: Any) -> str | None:
    if value == TO_ESI or _is_mac(value):
        return None
    return f"must be {TO_ESI!r} or a MAC (16 upper-case hex digits)"


def _fan_out_destination(value: Any) -> str | None:
    if value in (TO_ALL, TO_ESI):
        return None
    return f"must be {TO_ALL!r} or {TO_ESI!r}"


def _item_problem(
    item: Any, fields: tuple[tuple[str, Check], ...], optional: frozenset[str]
) -> str | None:
    """What is wrong with one object of a list, worded to follow its ``[index]``."""
    if not isinstance(item, dict):
        return " must be an object"
    for name, check in fields:
        if name in item:
            problem = check(item[name])
            if problem is not None:
                return f".{name} {problem}"
        elif name not in optional:
            return f" is missing {name!r}"
    return None


def _objects(fields: Fields, optional: frozenset[str], most: int, noun: str) -> Check:
    """A check of a list of 1 to ``most`` objects whose fields are ``fields``."""
    named = tuple(fields.items())

    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not 1 <= len(value) <= most:
            return f"must be a list of 1 to {most} {noun}"
        for index, item in enumerate(value):
            problem = _item_problem(item, named, optional)
            if problem is not None:
                return f"[{index}]{problem}"
        return None

    return check


def _targets(value: Any) -> str | None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_FAN_OUT_TARGETS:
        return f"must be a list of 1 to {MAX_FAN_OUT_TARGETS} [esiid, delivery_id] pairs"
    first: dict[str, int] = {}
    for index, target in enumerate(value):
        if not isinstance(target, list) or len(target) != 2:
            return f"[{index}] must be a list of two strings: [esiid, delivery_id]"
        esiid, delivery_id = target
        problem = _ESIID(esiid)
        if problem is not None:
            return f"[{index}][0] (esiid) {problem}"
        problem = ID(delivery_id)
        if problem is not None:
            return f"[{index}][1] (delivery_id) {problem}"
        earlier = first.setdefault(delivery_id, index)
        if earlier != index:
            return f"[{index}][1] (delivery_id) is also the delivery_id of [{earlier}]"
    return None


def _refused(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > MAX_EVENTS_PER_BATCH:
        return f"must be a list of at most {MAX_EVENTS_PER_BATCH} [index, reason] pairs"
    for n, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            return f"[{n}] must be a list of two: [index, reason]"
        index, reason = pair
        if type(index) is not int or not 0 <= index < MAX_EVENTS_PER_BATCH:
            return f"[{n}][0] (index) must be an integer in 0..{MAX_EVENTS_PER_BATCH - 1}"
        problem = _optional_text(reason)
        if problem is not None:
            return f"[{n}][1] (reason) {problem}"
    return None


def _attribute_ids(value: Any) -> str | None:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_READ_ATTRIBUTES
        or not all(type(v) is int and 0 <= v <= 0xFFFF for v in value)
    ):
        return f"must be a list of 1 to {MAX_READ_ATTRIBUTES} attribute ids (0..65535)"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _seconds(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**40:
        return "must be a number of seconds since 1970 (POSIX time)"
    return None


def _milliseconds(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3.6e6:
        return "must be a number of milliseconds from 0 to 3600000"
    return None


def _one_of(kind: type[Any]) -> Callable[[Any], str | None]:
    values = frozenset(v.value for v in kind)
    wrong = f"must be one of {', '.join(v.value for v in kind)}"

    def check(value: Any) -> str | None:
        return None if isinstance(value, str) and value in values else wrong

    return check


def _versions(value: Any) -> str | None:
    if not isinstance(value, list) or not value or not all(type(v) is int for v in value):
        return "must be a non-empty list of integers"
    return None


def _status(value: Any) -> str | None:
    try:
        HeadEndStatus(value)
    except ValueError:
        return f"must be one of {', '.join(s.value for s in HeadEndStatus)}"
    return None


ID = _text(100)
_ESIID = _text(64)
_FRAME_FIELDS: Fields = {
    "delivery_id": ID,
    "destination": _destination,
    "cluster": _count(0, 0xFFFF),
    "zcl": _zcl,
}
#: The fields of a ``delivery_status`` and an ``inbound_frame`` besides their ``id``: the fields
#: of each item of ``delivery_statuses`` and ``inbound_frames``.
_DELIVERY_STATUS_FIELDS: Fields = {
    "delivery_id": ID,
    "esiid": _ESIID,
    "state": _one_of(DeliveryState),
    "reason": _optional_text,
}
_INBOUND_FRAME_FIELDS: Fields = {
    "esiid": _ESIID,
    "source": _source,
    "cluster": _count(0, 0xFFFF),
    "zcl": _zcl,
    "received_at": _seconds,
}
#: Fields a message (or an object in one of its lists) may leave out; every other field of its
#: table is required.
_OPTIONAL = frozenset({"reason", "software"})
_OPTIONAL_BY_TYPE = {
    "ack": {"refused"},
    "provision": {"device_type"},
    "error": {"ref"},
    "meter_event": {"meter_serial", "firmware_version", "han_capable"},
    "ping_result": {"firmware_version", "rtt_ms"},
}
_frames = _objects(_FRAME_FIELDS, frozenset(), MAX_FRAMES_PER_SEND, "frames")
#: Batch event type -> the field holding its items, and the fields of each item.
_BATCH_ITEMS: dict[str, tuple[str, Fields]] = {
    "delivery_statuses": ("statuses", _DELIVERY_STATUS_FIELDS),
    "inbound_frames": ("frames", _INBOUND_FRAME_FIELDS),
}
#: Message type -> its fields and their checks; _OPTIONAL and _OPTIONAL_BY_TYPE say which fields
#: may be left out.
HEADEND_TO_GATEWAY: dict[str, Fields] = {
    "hello": {"versions": _versions, "credit": _count(1, 100_000), "software": _optional_text},
    "ack": {"ref": ID},
    "provisioning_status": {
        "id": ID,
        "command_id": ID,
        "esiid": _ESIID,
        "device_id": _text(100),
        "status": _status,
        "reason": _optional_text,
    },
    "delivery_status": {"id": ID, **_DELIVERY_STATUS_FIELDS},
    "inbound_frame": {"id": ID, **_INBOUND_FRAME_FIELDS},
    "delivery_statuses": {
        "id": ID,
        "statuses": _objects(
            _DELIVERY_STATUS_FIELDS, _OPTIONAL, MAX_EVENTS_PER_BATCH, "delivery statuses"
        ),
    },
    "inbound_frames": {
        "id": ID,
        "frames": _objects(_INBOUND_FRAME_FIELDS, _OPTIONAL, MAX_EVENTS_PER_BATCH, "frames"),
    },
    "meter_event": {
        "id": ID,
        "esiid": _ESIID,
        "event": _one_of(MeterEventKind),
        "meter_serial": _text(64),
        "firmware_version": _text(32),
        "han_capable": _boolean,
        "reason": _optional_text,
    },
    "ping_result": {
        "ref": ID,
        "reachable": _boolean,
        "reason": _optional_text,
        "firmware_version": _text(32),
        "rtt_ms": _milliseconds,
    },
    "meter_read": {"ref": ID, "zcl": _zcl, "read_at": _seconds},
    "nack": {"ref": ID, "reason": _optional_text},
    "credit": {"grant": _count(1, 100_000)},
    "heartbeat": {},
    "error": {"reason": _optional_text, "ref": ID},
}
GATEWAY_TO_HEADEND: dict[str, Fields] = {
    "welcome": {
        "version": _count(1, 1000),
        "tdsp_duns": _text(16),
        "credit": _count(1, 100_000),
        "heartbeat_s": _count(1, 3600),
    },
    "goodbye": {"reason": _optional_text},
    "provision": {
        "id": ID,
        "esiid": _ESIID,
        "device_id": _text(100),
        "mac": _text(32),
        "install_code": _hex_bytes(8, 10, 14, 18),
        "link_key": _hex_bytes(16),
        "join_window_s": _count(1, 86_400),
        "device_type": _text(40),
    },
    "deprovision": {"id": ID, "esiid": _ESIID, "device_id": _text(100), "mac": _text(32)},
    "send_frames": {"id": ID, "esiid": _ESIID, "frames": _frames},
    "fan_out": {
        "id": ID,
        "destination": _fan_out_destination,
        "cluster": _count(0, 0xFFFF),
        "zcl": _zcl,
        "targets": _targets,
    },
    "ping_esi": {"id": ID, "esiid": _ESIID},
    "ping_device": {"id": ID, "esiid": _ESIID, "mac": _mac},
    "read_meter": {"id": ID, "esiid": _ESIID, "attribute_ids": _attribute_ids},
    "ack": {"ref": ID, "refused": _refused},
    "nack": {"ref": ID, "reason": _optional_text},
    "credit": {"grant": _count(1, 100_000)},
    "heartbeat": {},
    "error": {"reason": _optional_text, "ref": ID},
}
#: Message types that are commands (acknowledged with ``ack``, one unit of credit each), queries
#: (answered with a result or a ``nack``, no credit) and events (one unit of credit each,
#: acknowledged or refused; a batch is acknowledged with the indexes of the items refused).
COMMAND_TYPES = frozenset({"provision", "deprovision", "send_frames", "fan_out"})
QUERY_TYPES = frozenset({"ping_esi", "ping_device", "read_meter"})
#: Batch event type -> the field that holds its items.
BATCH_FIELDS = {kind: name for kind, (name, _) in _BATCH_ITEMS.items()}
BATCH_TYPES = frozenset(BATCH_FIELDS)
EVENT_TYPES = (
    frozenset({"provisioning_status", "delivery_status", "inbound_frame", "meter_event"})
    | BATCH_TYPES
)
QUERY_RESULT_TYPES = frozenset({"ping_result", "meter_read"})
#: The answer each query expects.
QUERY_ANSWERS = {
    "ping_esi": "ping_result",
    "ping_device": "ping_result",
    "read_meter": "meter_read",
}


def encode(message: Mapping[str, Any]) -> bytes:
    """The JSON body of one frame (the length prefix is the transport's).

    Raises ValueError for a float that is not finite: standard JSON has no NaN or Infinity.
    """
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return body.encode("utf-8")


class _NotStandard(ValueError):
    """NaN, Infinity or -Infinity in a body: Python's json reads them, RFC 8259 has none."""


def _no_constant(name: str) -> Any:
    raise _NotStandard(f"{name} is not a JSON number")


def decode(body: bytes, table: Mapping[str, Fields]) -> dict[str, Any]:
    """Parse and check one frame body against a direction's table; raises ProtocolError."""
    try:
        # decoded here, strictly: json.loads would take UTF-16 and UTF-32 bodies, and UTF-8
        # with encoded surrogates (bytes ED A0 80), which no UTF-8 decoder reads back
        message = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, _NotStandard) as error:
        raise ProtocolError(f"malformed frame: not UTF-8 JSON ({error})", fatal=True) from None
    except RecursionError:
        raise ProtocolError(
            "malformed frame: arrays or objects nested too deep", fatal=True
        ) from None
    except ValueError:  # the only other: an integer longer than Python converts
        raise ProtocolError(
            f"malformed frame: an integer of over {sys.get_int_max_str_digits()} digits",
            fatal=True,
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed frame: the JSON is not an object", fatal=True)
    kind = message.get("type")
    ref, had_id = _ref(message)
    if not isinstance(kind, str):
        raise ProtocolError("message without a string 'type'", ref=ref, had_id=had_id)
    if table.get(kind) is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}", ref=ref, had_id=had_id)
    check_message(message, table)
    return message


def check_message(message: Mapping[str, Any], table: Mapping[str, Fields]) -> None:
    """Check a message with a string ``type`` of ``table``'s fields; raises ProtocolError."""
    kind = message["type"]
    ref, had_id = _ref(message)
    for name, field_check in table[kind].items():
        if name not in message:
            if name in _OPTIONAL or name in _OPTIONAL_BY_TYPE.get(kind, ()):
                continue
            raise ProtocolError(f"{kind}: missing field {name!r}", ref=ref, had_id=had_id)
        problem = field_check(message[name])
        if problem is not None:
            # a list's check names the item first: "frames[2].zcl must be ..."
            space = "" if problem.startswith("[") else " "
            raise ProtocolError(f"{kind}.{name}{space}{problem}", ref=ref, had_id=had_id)


def _ref(message: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The ``id`` a refusal of ``message`` can name (None when it breaks the rules of an id: the
    peer could not take it back as a ``ref``), and whether it had a string ``id`` at all."""
    value = message.get("id")
    if not isinstance(value, str):
        return None, False
    return (value if ID(value) is None else None), True


def cut_reason(reason: str) -> str:
    """``reason`` as a message may carry it: one over MAX_REASON characters is cut, and ends
    with "…" to say so."""
    if len(reason) <= MAX_REASON:
        return reason
    return reason[: MAX_REASON - 1] + "…"


def command_message(command: Command) -> dict[str, Any]:
    """The message that carries a command to the head-end."""
    if isinstance(command, ProvisionDevice):
        return {
            "type": "provision",
            "id": command.command_id,
            "esiid": command.esiid,
            "device_id": command.device_id,
            "mac": command.mac,
            "install_code": command.install_code.hex(),
            "link_key": command.link_key.hex(),
            "join_window_s": command.join_window_s,
            **({"device_type": command.device_type} if command.device_type else {}),
        }
    if isinstance(command, DeprovisionDevice):
        return {
            "type": "deprovision",
            "id": command.command_id,
            "esiid": command.esiid,
            "device_id": command.device_id,
            "mac": command.mac,
        }
    if isinstance(command, SendFrames):
        return {
            "type": "send_frames",
            "id": command.command_id,
            "esiid": command.esiid,
            "frames": [
                {
                    "delivery_id": frame.delivery_id,
                    "destination": frame.destination,
                    "cluster": frame.cluster,
                    "zcl": frame.zcl.hex(),
                }
                for frame in command.frames
            ],
        }
    if isinstance(command, FanOutFrame):
        return {
            "type": "fan_out",
            "id": command.command_id,
            "destination": command.destination,
            "cluster": command.cluster,
            "zcl": command.zcl.hex(),
            "targets": [[target.esiid, target.delivery_id] for target in command.targets],
        }
    raise TypeError(f"the adapter protocol has no message for {type(command).__name__}")


def command_from_message(message: Mapping[str, Any]) -> Command:
    """The command a checked ``provision``, ``deprovision``, ``send_frames`` or ``fan_out``
    message carries."""
    if message["type"] == "provision":
        return ProvisionDevice(
            command_id=message["id"],
            esiid=message["esiid"],
            device_id=message["device_id"],
            mac=message["mac"],
            install_code=bytes.fromhex(message["install_code"]),
            link_key=bytes.fromhex(message["link_key"]),
            join_window_s=message["join_window_s"],
            device_type=message.get("device_type", ""),
        )
    if message["type"] == "deprovision":
        return DeprovisionDevice(
            command_id=message["id"],
            esiid=message["esiid"],
            device_id=message["device_id"],
            mac=message["mac"],
        )
    if message["type"] == "send_frames":
        return SendFrames(
            command_id=message["id"],
            esiid=message["esiid"],
            frames=tuple(
                OutboundFrame(
                    delivery_id=frame["delivery_id"],
                    destination=frame["destination"],
                    cluster=frame["cluster"],
                    zcl=bytes.fromhex(frame["zcl"]),
                )
                for frame in message["frames"]
            ),
        )
    if message["type"] == "fan_out":
        return FanOutFrame(
            command_id=message["id"],
            destination=message["destination"],
            cluster=message["cluster"],
            zcl=bytes.fromhex(message["zcl"]),
            targets=tuple(
                FanOutTarget(esiid, delivery_id) for esiid, delivery_id in message["targets"]
            ),
        )
    raise ValueError(f"{message['type']} is not a command")


def query_message(query_id: str, query: Query) -> dict[str, Any]:
    """The message that asks a query of the head-end."""
    if isinstance(query, PingEsi):
        return {"type": "ping_esi", "id": query_id, "esiid": query.esiid}
    if isinstance(query, PingDevice):
        return {"type": "ping_device", "id": query_id, "esiid": query.esiid, "mac": query.mac}
    if isinstance(query, ReadMeter):
        return {
            "type": "read_meter",
            "id": query_id,
            "esiid": query.esiid,
            "attribute_ids": list(query.attribute_ids),
        }
    raise TypeError(f"the adapter protocol has no query {type(query).__name__}")


def query_from_message(message: Mapping[str, Any]) -> Query:
    """The query a checked ``ping_esi``, ``ping_device`` or ``read_meter`` message asks."""
    kind = message["type"]
    if kind == "ping_esi":
        return PingEsi(message["esiid"])
    if kind == "ping_device":
        return PingDevice(message["esiid"], message["mac"])
    if kind == "read_meter":
        return ReadMeter(message["esiid"], tuple(message["attribute_ids"]))
    raise ValueError(f"{kind} is not a query")


def query_result_message(ref: str, result: QueryResult) -> dict[str, Any]:
    """The answer to query ``ref``."""
    if isinstance(result, PingResult):
        message: dict[str, Any] = {"type": "ping_result", "ref": ref, "reachable": result.reachable}
        if result.reason:
            message["reason"] = result.reason
        if result.firmware_version:
            message["firmware_version"] = result.firmware_version
        if result.rtt_ms:
            message["rtt_ms"] = result.rtt_ms
        return message
    if isinstance(result, MeterReading):
        return {
            "type": "meter_read",
            "ref": ref,
            "zcl": result.zcl.hex(),
            "read_at": result.read_at,
        }
    raise TypeError(f"the adapter protocol has no answer {type(result).__name__}")


def query_result_from_message(message: Mapping[str, Any]) -> QueryResult:
    """The result a checked ``ping_result`` or ``meter_read`` message carries."""
    if message["type"] == "ping_result":
        return PingResult(
            reachable=message["reachable"],
            reason=message.get("reason", ""),
            firmware_version=message.get("firmware_version", ""),
            rtt_ms=float(message.get("rtt_ms", 0.0)),
        )
    if message["type"] == "meter_read":
        return MeterReading(zcl=bytes.fromhex(message["zcl"]), read_at=float(message["read_at"]))
    raise ValueError(f"{message['type']} is not a query result")


Event = ProvisioningReport | DeliveryStatus | InboundFrame | MeterEvent


def event_message(event_id: str, event: Event) -> dict[str, Any]:
    """The message that carries a head-end event under ``event_id``."""
    if isinstance(event, ProvisioningReport):
        return report_message(event_id, event)
    message: dict[str, Any]
    if isinstance(event, DeliveryStatus):
        message = {
            "type": "delivery_status",
            "id": event_id,
            "delivery_id": event.delivery_id,
            "esiid": event.esiid,
            "state": event.state.value,
        }
    elif isinstance(event, InboundFrame):
        return {
            "type": "inbound_frame",
            "id": event_id,
            "esiid": event.esiid,
            "source": event.source,
            "cluster": event.cluster,
            "zcl": event.zcl.hex(),
            "received_at": event.received_at,
        }
    elif isinstance(event, MeterEvent):
        message = {
            "type": "meter_event",
            "id": event_id,
            "esiid": event.esiid,
            "event": event.kind.value,
        }
        if event.meter_serial:
            message["meter_serial"] = event.meter_serial
        if event.firmware_version:
            message["firmware_version"] = event.firmware_version
        if event.han_capable is not None:
            message["han_capable"] = event.han_capable
    else:
        raise TypeError(f"the adapter protocol has no event {type(event).__name__}")
    if event.reason:
        message["reason"] = event.reason
    return message


def event_from_message(message: Mapping[str, Any], tdsp_duns: str) -> Event:
    """The event a checked event message carries, from the head-end of ``tdsp_duns``."""
    kind = message["type"]
    if kind == "provisioning_status":
        return report_from_message(message, tdsp_duns)
    if kind == "delivery_status":
        return DeliveryStatus(
            delivery_id=message["delivery_id"],
            esiid=message["esiid"],
            state=DeliveryState(message["state"]),
            reason=message.get("reason", ""),
            tdsp_duns=tdsp_duns,
            event_id=message["id"],
        )
    if kind == "inbound_frame":
        return InboundFrame(
            esiid=message["esiid"],
            source=message["source"],
            cluster=message["cluster"],
            zcl=bytes.fromhex(message["zcl"]),
            received_at=float(message["received_at"]),
            tdsp_duns=tdsp_duns,
            event_id=message["id"],
        )
    if kind == "meter_event":
        return MeterEvent(
            esiid=message["esiid"],
            kind=MeterEventKind(message["event"]),
            meter_serial=message.get("meter_serial", ""),
            firmware_version=message.get("firmware_version", ""),
            han_capable=message.get("han_capable"),
            reason=message.get("reason", ""),
            tdsp_duns=tdsp_duns,
            event_id=message["id"],
        )
    raise ValueError(f"{kind} is not an event")


def report_message(event_id: str, report: ProvisioningReport) -> dict[str, Any]:
    """The ``provisioning_status`` message of a head-end report."""
    message = {
        "type": "provisioning_status",
        "id": event_id,
        "command_id": report.command_id,
        "esiid": report.esiid,
        "device_id": report.device_id,
        "status": report.status.value,
    }
    if report.reason:
        message["reason"] = report.reason
    return message


def report_from_message(message: Mapping[str, Any], tdsp_duns: str) -> ProvisioningReport:
    """The report a checked ``provisioning_status`` message carries, from ``tdsp_duns``."""
    return ProvisioningReport(
        command_id=message["command_id"],
        esiid=message["esiid"],
        device_id=message["device_id"],
        status=HeadEndStatus(message["status"]),
        reason=message.get("reason", ""),
        tdsp_duns=tdsp_duns,
        event_id=message["id"],
    )


def delivery_status_item(status: DeliveryStatus) -> dict[str, Any]:
    """The object of a ``delivery_statuses`` list that carries one delivery status."""
    item = {"delivery_id": status.delivery_id, "esiid": status.esiid, "state": status.state.value}
    if status.reason:
        item["reason"] = status.reason
    return item


def inbound_frame_item(frame: InboundFrame) -> dict[str, Any]:
    """The object of an ``inbound_frames`` list that carries one frame."""
    return {
        "esiid": frame.esiid,
        "source": frame.source,
        "cluster": frame.cluster,
        "zcl": frame.zcl.hex(),
        "received_at": frame.received_at,
    }


def batch_message(kind: str, batch_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``delivery_statuses`` or ``inbound_frames`` message (``kind``) holding ``items``."""
    return {"type": kind, "id": batch_id, _BATCH_ITEMS[kind][0]: items}


def delivery_statuses_message(batch_id: str, statuses: Sequence[DeliveryStatus]) -> dict[str, Any]:
    """The ``delivery_statuses`` message that carries ``statuses`` under ``batch_id``."""
    return batch_message("delivery_statuses", batch_id, [delivery_status_item(s) for s in statuses])


def inbound_frames_message(batch_id: str, frames: Sequence[InboundFrame]) -> dict[str, Any]:
    """The ``inbound_frames`` message that carries ``frames`` under ``batch_id``."""
    return batch_message("inbound_frames", batch_id, [inbound_frame_item(f) for f in frames])


_STATES = {state.value: state for state in DeliveryState}


def delivery_statuses_from_message(
    message: Mapping[str, Any], tdsp_duns: str
) -> list[DeliveryStatus]:
    """The statuses a checked ``delivery_statuses`` carries, from the head-end of ``tdsp_duns``.

    Their ``event_id`` is empty: the batch's id is the message's ``id``.
    """
    states = _STATES
    return [
        DeliveryStatus(
            delivery_id=item["delivery_id"],
            esiid=item["esiid"],
            state=states[item["state"]],
            reason=item.get("reason", ""),
            tdsp_duns=tdsp_duns,
        )
        for item in message["statuses"]
    ]


def inbound_frames_from_message(message: Mapping[str, Any], tdsp_duns: str) -> list[InboundFrame]:
    """The frames a checked ``inbound_frames`` carries, from the head-end of ``tdsp_duns``.

    Their ``event_id`` is empty: the batch's id is the message's ``id``.
    """
    fromhex = bytes.fromhex
    return [
        InboundFrame(
            esiid=item["esiid"],
            source=item["source"],
            cluster=item["cluster"],
            zcl=fromhex(item["zcl"]),
            received_at=float(item["received_at"]),
            tdsp_duns=tdsp_duns,
        )
        for item in message["frames"]
    ]


def batch_from_message(
    message: Mapping[str, Any], tdsp_duns: str
) -> list[DeliveryStatus] | list[InboundFrame]:
    """The items of a checked ``delivery_statuses`` or ``inbound_frames``."""
    if message["type"] == "delivery_statuses":
        return delivery_statuses_from_message(message, tdsp_duns)
    if message["type"] == "inbound_frames":
        return inbound_frames_from_message(message, tdsp_duns)
    raise ValueError(f"{message['type']} is not a batch event")


def batch_item_problems(kind: str, items: Sequence[Any]) -> dict[int, str]:
    """The items of a would-be ``kind`` batch that break its rules: index -> the reason, worded
    as the gateway's ``error`` would word it (``inbound_frames.frames[3].zcl must be ...``)."""
    name, fields = _BATCH_ITEMS[kind]
    named = tuple(fields.items())
    problems = {}
    for index, item in enumerate(items):
        problem = _item_problem(item, named, _OPTIONAL)
        if problem is not None:
            problems[index] = f"{kind}.{name}[{index}]{problem}"
    return problems


#: What a refused item's reason is cut to when the whole ``ack`` would not fit in a frame:
#: MAX_EVENTS_PER_BATCH reasons of this many characters fit, even at 6 bytes a character (a
#: control character is written as ``\u001f``).
_SHORT_REASON = 80


def batch_ack(ref: str, refused: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """The ``ack`` of batch ``ref`` with its refused ``(index, reason)`` pairs.

    Reasons are cut to 1000 characters, and to 80 when the whole ``ack`` would be over
    MAX_FRAME_BYTES.
    """
    message: dict[str, Any] = {"type": "ack", "ref": ref}
    if not refused:
        return message
    pairs = [(index, reason[:1000]) for index, reason in refused]
    message["refused"] = pairs
    if sum(len(reason) for _, reason in pairs) * 6 + 20 * len(pairs) + 200 > MAX_FRAME_BYTES:
        if len(encode(message)) > MAX_FRAME_BYTES:
            message["refused"] = [(index, reason[:_SHORT_REASON]) for index, reason in pairs]
    return message
