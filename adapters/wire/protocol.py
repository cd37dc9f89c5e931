"""The adapter protocol's messages, without I/O: framing, validation and command conversion.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding one object with a
``type``. Messages that need an answer carry an ``id`` (unique per sender); answers carry its
``ref``. The full specification, for implementers in any language, is docs/adapter-protocol.md;
the tables here are the code's side of it and a test keeps the two in step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from adapters.commands import (
    Command,
    DeprovisionDevice,
    HeadEndStatus,
    ProvisionDevice,
    ProvisioningReport,
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
    "report_from_message",
    "report_message",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: Frames longer than this are refused (and the connection closed): 1 MiB.
MAX_FRAME_BYTES = 1 << 20


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


def _hex_bytes(*sizes: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a hex string"
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return "must be a hex string"
        if len(raw) not in sizes:
            return f"must be {' or '.join(map(str, sizes))} bytes"
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
#: Message type -> required fields and their checks; ``reason`` is optional where present.
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
    "ack": {"ref": ID},
    "nack": {"ref": ID, "reason": _optional_text},
    "credit": {"grant": _count(1, 100_000)},
    "heartbeat": {},
    "error": {"reason": _optional_text, "ref": ID},
}
#: Fields a message may leave out; every other field of its table is required.
_OPTIONAL = {"reason", "software"}
_OPTIONAL_BY_TYPE = {"error": {"ref"}}


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
    raise TypeError(f"the adapter protocol has no message for {type(command).__name__}")


def command_from_message(message: Mapping[str, Any]) -> Command:
    """The command a checked ``provision`` or ``deprovision`` message carries."""
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
    raise ValueError(f"{message['type']} is not a command")


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
    )
