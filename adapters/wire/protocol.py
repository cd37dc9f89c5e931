"""The adapter protocol's messages, without I/O: framing, validation and command conversion.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding one object with a
``type``. Messages that need an answer carry an ``id`` (unique per sender); answers carry its
``ref``. The full specification, for implementers in any language, is docs/adapter-protocol.md;
the tables here are the code's side of it and a test keeps the two in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from adapters.commands import (
    TO_ALL,
    TO_ESI,
    Command,
    DeliveryState,
    DeliveryStatus,
    DeprovisionDevice,
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
    "GATEWAY_TO_HEADEND",
    "HEADEND_TO_GATEWAY",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ProtocolError",
    "command_from_message",
    "command_message",
    "decode",
    "encode",
    "event_from_message",
    "event_message",
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


class ProtocolError(ValueError):
    """A message the peer should not have sent. ``fatal`` ones end the connection."""

    def __init__(self, reason: str, *, ref: str | None = None, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ref = ref
        self.fatal = fatal


def _text(limit: int = 200) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return "must be a non-empty string"
        if len(value) > limit:
            return f"must be at most {limit} characters"
        return None

    return check


def _optional_text(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 1000:
        return "must be a string of at most 1000 characters"
    return None


def _count(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if type(value) is not int or not lo <= value <= hi:
            return f"must be an integer in {lo}..{hi}"
        return None

    return check


_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")


def _hex_bytes(*sizes: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not _HEX.fullmatch(value):
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
    if not _HEX.fullmatch(value):
        return "must be a hex string (two digits per byte, nothing between)"
    if len(value) < 6:
        return "must hold at least a ZCL header (3 bytes)"
    return None


def _is_mac(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 16 and all(c in "0123456789ABCDEF" for c in value)
    )


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


def _frames(value: Any) -> str | None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_FRAMES_PER_SEND:
        return f"must be a list of 1 to {MAX_FRAMES_PER_SEND} frames"
    for index, frame in enumerate(value):
        if not isinstance(frame, dict):
            return f"[{index}] must be an object"
        for name, check in _FRAME_FIELDS.items():
            if name not in frame:
                return f"[{index}] is missing {name!r}"
            problem = check(frame[name])
            if problem is not None:
                return f"[{index}].{name} {problem}"
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
    def check(value: Any) -> str | None:
        try:
            kind(value)
        except ValueError:
            return f"must be one of {', '.join(v.value for v in kind)}"
        return None

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


Fields = Mapping[str, Callable[[Any], str | None]]

ID = _text(100)
_FRAME_FIELDS: Fields = {
    "delivery_id": ID,
    "destination": _destination,
    "cluster": _count(0, 0xFFFF),
    "zcl": _zcl,
}
#: Message type -> its fields and their checks; _OPTIONAL and _OPTIONAL_BY_TYPE say which fields
#: may be left out.
HEADEND_TO_GATEWAY: dict[str, Fields] = {
    "hello": {"versions": _versions, "credit": _count(1, 100_000), "software": _optional_text},
    "ack": {"ref": ID},
    "provisioning_status": {
        "id": ID,
        "command_id": ID,
        "esiid": _text(64),
        "device_id": _text(100),
        "status": _status,
        "reason": _optional_text,
    },
    "delivery_status": {
        "id": ID,
        "delivery_id": ID,
        "esiid": _text(64),
        "state": _one_of(DeliveryState),
        "reason": _optional_text,
    },
    "inbound_frame": {
        "id": ID,
        "esiid": _text(64),
        "source": _source,
        "cluster": _count(0, 0xFFFF),
        "zcl": _zcl,
        "received_at": _seconds,
    },
    "meter_event": {
        "id": ID,
        "esiid": _text(64),
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
        "esiid": _text(64),
        "device_id": _text(100),
        "mac": _text(32),
        "install_code": _hex_bytes(8, 10, 14, 18),
        "link_key": _hex_bytes(16),
        "join_window_s": _count(1, 86_400),
    },
    "deprovision": {"id": ID, "esiid": _text(64), "device_id": _text(100), "mac": _text(32)},
    "send_frames": {"id": ID, "esiid": _text(64), "frames": _frames},
    "ping_esi": {"id": ID, "esiid": _text(64)},
    "ping_device": {"id": ID, "esiid": _text(64), "mac": _mac},
    "read_meter": {"id": ID, "esiid": _text(64), "attribute_ids": _attribute_ids},
    "ack": {"ref": ID},
    "nack": {"ref": ID, "reason": _optional_text},
    "credit": {"grant": _count(1, 100_000)},
    "heartbeat": {},
    "error": {"reason": _optional_text, "ref": ID},
}
#: Fields a message may leave out; every other field of its table is required.
_OPTIONAL = {"reason", "software"}
_OPTIONAL_BY_TYPE = {
    "error": {"ref"},
    "meter_event": {"meter_serial", "firmware_version", "han_capable"},
    "ping_result": {"firmware_version", "rtt_ms"},
}
#: Message types that are commands (acknowledged with ``ack``, one unit of credit each), queries
#: (answered with a result or a ``nack``, no credit) and events (acknowledged or refused).
COMMAND_TYPES = frozenset({"provision", "deprovision", "send_frames"})
QUERY_TYPES = frozenset({"ping_esi", "ping_device", "read_meter"})
EVENT_TYPES = frozenset({"provisioning_status", "delivery_status", "inbound_frame", "meter_event"})
QUERY_RESULT_TYPES = frozenset({"ping_result", "meter_read"})
#: The answer each query expects.
QUERY_ANSWERS = {
    "ping_esi": "ping_result",
    "ping_device": "ping_result",
    "read_meter": "meter_read",
}


def encode(message: Mapping[str, Any]) -> bytes:
    """The JSON body of one frame (the length prefix is the transport's)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(body: bytes, table: Mapping[str, Fields]) -> dict[str, Any]:
    """Parse and check one frame body against a direction's table; raises ProtocolError."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"malformed frame: not UTF-8 JSON ({error})", fatal=True) from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed frame: the JSON is not an object", fatal=True)
    kind = message.get("type")
    ref = message.get("id") if isinstance(message.get("id"), str) else None
    if not isinstance(kind, str):
        raise ProtocolError("message without a string 'type'", ref=ref)
    fields = table.get(kind)
    if fields is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}", ref=ref)
    for name, check in fields.items():
        if name not in message:
            if name in _OPTIONAL or name in _OPTIONAL_BY_TYPE.get(kind, ()):
                continue
            raise ProtocolError(f"{kind}: missing field {name!r}", ref=ref)
        problem = check(message[name])
        if problem is not None:
            raise ProtocolError(f"{kind}.{name} {problem}", ref=ref)
    return message


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
    raise TypeError(f"the adapter protocol has no message for {type(command).__name__}")


def command_from_message(message: Mapping[str, Any]) -> Command:
    """The command a checked ``provision``, ``deprovision`` or ``send_frames`` message carries."""
    if message["type"] == "provision":
        return ProvisionDevice(
            command_id=message["id"],
            esiid=message["esiid"],
            device_id=message["device_id"],
            mac=message["mac"],
            install_code=bytes.fromhex(message["install_code"]),
            link_key=bytes.fromhex(message["link_key"]),
            join_window_s=message["join_window_s"],
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
