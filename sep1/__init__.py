"""sep1: the ZigBee Smart Energy 1.0 codec. Bytes in, frozen messages out; no I/O.

``encode(message, tsn) -> bytes`` and ``decode(cluster_id, frame) -> message`` (raising only
DecodeError); the message types, the ZCL header, UTCTime helpers and install codes. zigpy
schemas and clusters derived from the same field tables live in ``sep1.zigpy_schemas``
(imported on its own, since zigpy brings asyncio); pcap captures in ``sep1.pcap``.
"""

from . import utctime
from .codec import Frame, decode, decode_frame, encode, encode_frame, payload_layout
from .errors import DecodeError, FieldValueError
from .header import ZCLHeader
from .installcode import check_install_code, crc16_x25, derive_link_key
from .messages import (
    DRLC,
    MESSAGE_TYPES,
    MESSAGING,
    METERING,
    METERING_ATTRIBUTES,
    NOW,
    PRICE,
    RANDOMIZE_END,
    RANDOMIZE_START,
    UNTIL_CHANGED,
    AttributeRecord,
    CancelAllLoadControlEvents,
    CancelLoadControlEvent,
    CancelMessage,
    DeviceClass,
    DisplayMessage,
    EventStatus,
    GetCurrentPrice,
    GetLastMessage,
    GetProfile,
    GetProfileResponse,
    GetScheduledEvents,
    GetScheduledPrices,
    LoadControlEvent,
    Message,
    MessageConfirmation,
    MessageControl,
    PublishPrice,
    ReadAttributes,
    ReadAttributesResponse,
    ReportEventStatus,
    truncate_utf8,
)

PROFILE_ID = 0x0109

__all__ = [
    "DRLC",
    "MESSAGE_TYPES",
    "MESSAGING",
    "METERING",
    "METERING_ATTRIBUTES",
    "NOW",
    "PRICE",
    "PROFILE_ID",
    "RANDOMIZE_END",
    "RANDOMIZE_START",
    "UNTIL_CHANGED",
    "AttributeRecord",
    "CancelAllLoadControlEvents",
    "CancelLoadControlEvent",
    "CancelMessage",
    "DecodeError",
    "DeviceClass",
    "DisplayMessage",
    "EventStatus",
    "FieldValueError",
    "Frame",
    "GetCurrentPrice",
    "GetLastMessage",
    "GetProfile",
    "GetProfileResponse",
    "GetScheduledEvents",
    "GetScheduledPrices",
    "LoadControlEvent",
    "Message",
    "MessageConfirmation",
    "MessageControl",
    "PublishPrice",
    "ReadAttributes",
    "ReadAttributesResponse",
    "ReportEventStatus",
    "ZCLHeader",
    "check_install_code",
    "crc16_x25",
    "decode",
    "decode_frame",
    "derive_link_key",
    "encode",
    "encode_frame",
    "payload_layout",
    "truncate_utf8",
    "utctime",
]
