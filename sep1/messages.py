"""The SE 1.0 commands hangw sends and receives, as frozen messages with their field tables.

Each class is one command in one direction. Its fields, declared with ``wire(...)``, are the
command's field table in wire order. Values outside their SE 1.0 range are refused when the
message is made, with a FieldValueError naming the field. "Not used" is None in Python and the
sentinel on the wire. Times are UTCTime integers (seconds since 2000; see sep1.utctime), where a
start time of 0 means "now".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

from .errors import FieldValueError
from .utctime import UTC_TIME_INVALID
from .wire import (
    ATTRIBUTE_RECORDS,
    CHAR_STRING,
    ENUM8,
    HIGH_NIBBLE,
    INT8,
    INT16,
    INT24,
    LOW_NIBBLE,
    MAP8,
    MAP16,
    OCTET_STRING,
    UINT8,
    UINT16,
    UINT16_LIST,
    UINT24,
    UINT24_COUNTED_LIST,
    UINT32,
    UINT48,
    UTC_TIME,
    FieldSpec,
    WireType,
    field_table,
    fixed_octets,
    wire,
)

__all__ = [
    "MESSAGE_TYPES",
    "METERING_ATTRIBUTES",
    "AttributeRecord",
    "CancelAllLoadControlEvents",
    "CancelLoadControlEvent",
    "CancelMessage",
    "DisplayMessage",
    "GetCurrentPrice",
    "GetLastMessage",
    "GetProfile",
    "GetProfileResponse",
    "GetScheduledEvents",
    "GetScheduledPrices",
    "LoadControlEvent",
    "Message",
    "MessageConfirmation",
    "PublishPrice",
    "ReadAttributes",
    "ReadAttributesResponse",
    "ReportEventStatus",
]

PRICE = 0x0700
DRLC = 0x0701
METERING = 0x0702
MESSAGING = 0x0703

#: Start time 0: the event or message starts now.
NOW = 0
#: Duration 0xFFFF of a price or message: until changed.
UNTIL_CHANGED = 0xFFFF

Validator = Callable[[Any], str | None]


class Message:
    """Base of every SE 1.0 command. Subclasses are made with the ``command`` decorator."""

    __slots__ = ()

    CLUSTER_ID: ClassVar[int]
    COMMAND_ID: ClassVar[int]
    #: True for ESI-to-device commands (ZCL direction bit set: server to client).
    SERVER_TO_CLIENT: ClassVar[bool]
    #: True for ZCL general (profile-wide) commands such as Read Attributes.
    GENERAL: ClassVar[bool] = False
    FIELDS: ClassVar[tuple[FieldSpec, ...]]
    _VALIDATORS: ClassVar[tuple[tuple[str, Validator], ...]]

    def __post_init__(self) -> None:
        for name, check in self._VALIDATORS:
            problem = check(getattr(self, name))
            if problem is not None:
                raise FieldValueError(type(self).__name__, name, problem)
        self._check()

    def _check(self) -> None:
        """Rules that involve more than one field; raise FieldValueError."""

    def _refuse(self, field: str, reason: str) -> FieldValueError:
        return FieldValueError(type(self).__name__, field, reason)


M = TypeVar("M", bound=Message)

#: Every command class, keyed by (cluster id, general, server to client, command id).
MESSAGE_TYPES: dict[tuple[int, bool, bool, int], type[Message]] = {}


def _validator(spec: FieldSpec) -> Validator:
    form = spec.wire.form
    lo, hi, not_used = spec.lo, spec.hi, spec.not_used
    limit = spec.max_length

    if form in ("int", "high_nibble", "low_nibble"):
        sentinel_text = (
            f"0x{not_used:X}" if not_used is not None and not_used >= 0 else str(not_used)
        )
        invalid_time = UTC_TIME_INVALID if spec.wire is UTC_TIME else None

        def check_int(value: Any) -> str | None:
            if value is None:
                return (
                    None
                    if not_used is not None
                    else "a value is required (this field has no not-used value)"
                )
            if type(value) is not int:
                return f"expected an integer, got {type(value).__name__}"
            if value == not_used:
                return f"{value} is the not-used sentinel {sentinel_text}; pass None for not used"
            if value == invalid_time:
                return "0xFFFFFFFF is ZCL's invalid UTCTime, not a time (the last is 0xFFFFFFFE)"
            if not lo <= value <= hi:
                return f"{value} is outside {lo}..{hi}"
            return None

        return check_int
    if form == "octets" or form == "fixed_octets":
        size = spec.wire.size

        def check_octets(value: Any) -> str | None:
            if type(value) is not bytes:
                return f"expected bytes, got {type(value).__name__}"
            if size is not None and len(value) != size:
                return f"must be exactly {size} bytes, got {len(value)}"
            if limit is not None and len(value) > limit:
                return f"{len(value)} bytes is over the {limit}-byte limit"
            return None

        return check_octets
    if form == "text":

        def check_text(value: Any) -> str | None:
            if type(value) is not str:
                return f"expected a str, got {type(value).__name__}"
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                return "is not valid UTF-8 text (it holds a lone surrogate)"
            if limit is not None and size > limit:
                return f"{size} bytes of UTF-8 is over the {limit}-byte limit of a ZCL string"
            return None

        return check_text
    if form in ("uint24_counted_list", "uint16_list"):
        item_hi = 0xFFFFFF if form == "uint24_counted_list" else 0xFFFF

        def check_list(value: Any) -> str | None:
            if type(value) is not tuple:
                return f"expected a tuple, got {type(value).__name__}"
            if limit is not None and len(value) > limit:
                return f"{len(value)} items is over the limit of {limit}"
            for i, item in enumerate(value):
                if type(item) is not int or not 0 <= item <= item_hi:
                    return f"item {i} ({item!r}) is not an integer in 0..{item_hi}"
            return None

        return check_list
    if form == "attribute_records":

        def check_records(value: Any) -> str | None:
            if type(value) is not tuple:
                return f"expected a tuple, got {type(value).__name__}"
            for i, item in enumerate(value):
                if not isinstance(item, AttributeRecord):
                    return f"item {i} is not an AttributeRecord"
            return None

        return check_records
    raise AssertionError(f"no validator for wire form {form}")


@dataclass_transform(frozen_default=True, field_specifiers=(wire, dataclasses.field))
def command(
    *, cluster_id: int, command_id: int, server_to_client: bool, general: bool = False
) -> Callable[[type[M]], type[M]]:
    """Make a class a frozen SE 1.0 command and register it for decoding."""

    def make(cls: type[M]) -> type[M]:
        made = dataclasses.dataclass(frozen=True, slots=True)(cls)
        made.CLUSTER_ID = cluster_id
        made.COMMAND_ID = command_id
        made.SERVER_TO_CLIENT = server_to_client
        made.GENERAL = general
        made.FIELDS = field_table(made)
        made._VALIDATORS = tuple((spec.name, _validator(spec)) for spec in made.FIELDS)
        key = (cluster_id, general, server_to_client, command_id)
        if key in MESSAGE_TYPES:
            raise AssertionError(f"{made.__name__} and {MESSAGE_TYPES[key].__name__} share {key}")
        MESSAGE_TYPES[key] = made
        return made

    return make


# --- Price (0x0700) ---------------------------------------------------------------------


@command(cluster_id=PRICE, command_id=0x00, server_to_client=False)
class GetCurrentPrice(Message):
    """Price C->S 0x00: a device asks the ESI for the current price."""

    #: Command Options bit 0: the requestor's receiver is on when idle.
    RX_ON_WHEN_IDLE: ClassVar[int] = 0x01

    command_options: int = wire(MAP8, default=0)


@command(cluster_id=PRICE, command_id=0x01, server_to_client=False)
class GetScheduledPrices(Message):
    """Price C->S 0x01: a device asks for the prices scheduled from a start time."""

    start_time: int = wire(UTC_TIME, doc="0 = now")
    number_of_events: int = wire(UINT8, default=0, doc="0 = all")


@command(cluster_id=PRICE, command_id=0x00, server_to_client=True)
class PublishPrice(Message):
    """Price S->C 0x00: the ESI publishes a price.

    Fields from ``price_ratio`` on are optional on the wire: a SE 1.0 sender may stop early and
    the receiver reads what is missing as not used. ``optional_fields`` says how many of those
    six are sent (all of them by default); fields that are not sent must keep their defaults.
    """

    OPTIONAL_FIELD_COUNT: ClassVar[int] = 6
    KWH: ClassVar[int] = 0x00
    USD: ClassVar[int] = 840
    KG_CO2: ClassVar[int] = 0x01

    provider_id: int = wire(UINT32)
    rate_label: bytes = wire(OCTET_STRING, max_length=12, doc="up to 12 bytes")
    issuer_event_id: int = wire(UINT32)
    current_time: int = wire(UTC_TIME)
    unit_of_measure: int = wire(ENUM8, default=0x00, doc="0x00 kWh")
    currency: int = wire(UINT16, default=840, doc="ISO 4217 numeric; 840 USD")
    price_trailing_digit: int = wire(HIGH_NIBBLE, default=0, doc="decimal places in price")
    price_tier: int = wire(LOW_NIBBLE, default=0)
    number_of_price_tiers: int = wire(HIGH_NIBBLE, default=0)
    register_tier: int = wire(LOW_NIBBLE, default=0)
    start_time: int = wire(UTC_TIME, default=NOW, doc="0 = now")
    duration_in_minutes: int = wire(UINT16, default=UNTIL_CHANGED, doc="0xFFFF = until changed")
    price: int = wire(UINT32, default=0)
    price_ratio: int | None = wire(UINT8, not_used=0xFF, optional=True, default=None)
    generation_price: int | None = wire(UINT32, not_used=0xFFFFFFFF, optional=True, default=None)
    generation_price_ratio: int | None = wire(UINT8, not_used=0xFF, optional=True, default=None)
    alternate_cost_delivered: int | None = wire(
        UINT32, not_used=0xFFFFFFFF, optional=True, default=None
    )
    alternate_cost_unit: int = wire(ENUM8, optional=True, default=0x01, doc="0x01 kg CO2")
    alternate_cost_trailing_digit: int = wire(HIGH_NIBBLE, optional=True, default=0)
    optional_fields: int = dataclasses.field(default=6, kw_only=True)

    def _check(self) -> None:
        if type(self.optional_fields) is not int or not 0 <= self.optional_fields <= 6:
            raise self._refuse("optional_fields", f"{self.optional_fields!r} is outside 0..6")
        optional = self.FIELDS[-self.OPTIONAL_FIELD_COUNT :]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for spec in optional[self.optional_fields :]:
            if getattr(self, spec.name) != defaults[spec.name]:
                raise self._refuse(
                    spec.name,
                    f"is not sent when optional_fields is {self.optional_fields}; "
                    f"leave it at {defaults[spec.name]!r} or send more optional fields",
                )


# --- Demand response and load control (0x0701) ------------------------------------------


class DeviceClass:
    """Device Class bits (map16) of DRLC commands."""

    HVAC_COMPRESSOR_OR_FURNACE = 1 << 0
    STRIP_HEATERS_BASEBOARD_HEATERS = 1 << 1
    WATER_HEATER = 1 << 2
    POOL_PUMP_SPA_JACUZZI = 1 << 3
    SMART_APPLIANCES = 1 << 4
    IRRIGATION_PUMP = 1 << 5
    MANAGED_COMMERCIAL_INDUSTRIAL_LOADS = 1 << 6
    SIMPLE_MISC_LOADS = 1 << 7
    EXTERIOR_LIGHTING = 1 << 8
    INTERIOR_LIGHTING = 1 << 9
    ELECTRIC_VEHICLE = 1 << 10
    GENERATION_SYSTEMS = 1 << 11
    ALL = 0x0FFF


class EventStatus:
    """Event Status codes of Report Event Status."""

    COMMAND_RECEIVED = 0x01
    EVENT_STARTED = 0x02
    EVENT_COMPLETED = 0x03
    USER_OPTED_OUT = 0x04
    USER_OPTED_IN = 0x05
    EVENT_CANCELLED = 0x06
    EVENT_SUPERSEDED = 0x07
    PARTIALLY_COMPLETED_WITH_OPT_OUT = 0x08
    PARTIALLY_COMPLETED_DUE_TO_OPT_IN = 0x09
    COMPLETED_NO_USER_PARTICIPATION = 0x0A
    REJECTED_INVALID_CANCEL_COMMAND = 0xF8
    REJECTED_INVALID_CANCEL_EFFECTIVE_TIME = 0xF9
    REJECTED_EVENT_EXPIRED = 0xFB
    REJECTED_INVALID_CANCEL_UNDEFINED_EVENT = 0xFD
    REJECTED = 0xFE
    #: Codes that mean the device refused the command.
    REJECTIONS = frozenset({0xF8, 0xF9, 0xFB, 0xFD, 0xFE})


#: Event Control / Cancel Control bits.
RANDOMIZE_START = 0x01
RANDOMIZE_END = 0x02


@command(cluster_id=DRLC, command_id=0x00, server_to_client=True)
class LoadControlEvent(Message):
    """DRLC S->C 0x00: a load control event for the devices of the given classes and group."""

    issuer_event_id: int = wire(UINT32)
    device_class: int = wire(MAP16)
    utility_enrollment_group: int = wire(UINT8, default=0)
    start_time: int = wire(UTC_TIME, default=NOW, doc="0 = now")
    duration_in_minutes: int = wire(UINT16, hi=1440, default=60, doc="at most 1440")
    criticality_level: int = wire(UINT8, lo=1, hi=15, default=1)
    cooling_temperature_offset: int | None = wire(UINT8, not_used=0xFF, default=None, doc="0.1 C")
    heating_temperature_offset: int | None = wire(UINT8, not_used=0xFF, default=None, doc="0.1 C")
    cooling_temperature_set_point: int | None = wire(
        INT16, lo=-27315, not_used=-0x8000, default=None, doc="0.01 C"
    )
    heating_temperature_set_point: int | None = wire(
        INT16, lo=-27315, not_used=-0x8000, default=None, doc="0.01 C"
    )
    average_load_adjustment_percentage: int | None = wire(
        INT8, lo=-100, hi=100, not_used=-0x80, default=None
    )
    duty_cycle: int | None = wire(UINT8, hi=100, not_used=0xFF, default=None)
    event_control: int = wire(MAP8, default=0, doc="bit0 randomize start, bit1 randomize end")


@command(cluster_id=DRLC, command_id=0x01, server_to_client=True)
class CancelLoadControlEvent(Message):
    """DRLC S->C 0x01: cancel one load control event."""

    issuer_event_id: int = wire(UINT32)
    device_class: int = wire(MAP16)
    utility_enrollment_group: int = wire(UINT8, default=0)
    cancel_control: int = wire(MAP8, default=0, doc="bit0 randomize the end of a running event")
    effective_time: int = wire(UTC_TIME, default=NOW, doc="0 = now")


@command(cluster_id=DRLC, command_id=0x02, server_to_client=True)
class CancelAllLoadControlEvents(Message):
    """DRLC S->C 0x02: cancel every load control event on the device."""

    cancel_control: int = wire(MAP8, default=0)


@command(cluster_id=DRLC, command_id=0x00, server_to_client=False)
class ReportEventStatus(Message):
    """DRLC C->S 0x00: a device reports what it did with a load control event."""

    SIGNATURE_SIZE: ClassVar[int] = 42
    NO_SIGNATURE: ClassVar[int] = 0x00
    ECDSA: ClassVar[int] = 0x01

    issuer_event_id: int = wire(UINT32)
    event_status: int = wire(UINT8)
    event_status_time: int = wire(UTC_TIME)
    criticality_level_applied: int = wire(UINT8, hi=15)
    cooling_temperature_set_point_applied: int | None = wire(
        INT16, lo=-27315, not_used=-0x8000, default=None
    )
    heating_temperature_set_point_applied: int | None = wire(
        INT16, lo=-27315, not_used=-0x8000, default=None
    )
    average_load_adjustment_percentage_applied: int | None = wire(
        INT8, lo=-100, hi=100, not_used=-0x80, default=None
    )
    duty_cycle_applied: int | None = wire(UINT8, hi=100, not_used=0xFF, default=None)
    event_control: int = wire(MAP8, default=0)
    signature_type: int = wire(UINT8, hi=1, default=0, doc="0 none, 1 ECDSA")
    signature: bytes = wire(
        fixed_octets(42), default=bytes(42), doc="ECDSA r||s; zeros when unsigned"
    )

    @property
    def rejected(self) -> bool:
        """True when the status says the device refused the command."""
        return self.event_status in EventStatus.REJECTIONS


@command(cluster_id=DRLC, command_id=0x01, server_to_client=False)
class GetScheduledEvents(Message):
    """DRLC C->S 0x01: a device asks for the events scheduled from a start time."""

    start_time: int = wire(UTC_TIME, doc="0 = now")
    number_of_events: int = wire(UINT8, default=0, doc="0 = all")


# --- Metering (0x0702) --------------------------------------------------------------------


@command(cluster_id=METERING, command_id=0x00, server_to_client=False)
class GetProfile(Message):
    """Metering C->S 0x00: ask for interval data ending at a time."""

    CONSUMPTION_DELIVERED: ClassVar[int] = 0x00
    CONSUMPTION_RECEIVED: ClassVar[int] = 0x01

    interval_channel: int = wire(ENUM8, hi=1, doc="0 delivered, 1 received")
    end_time: int = wire(UTC_TIME, doc="0 = the most recent interval")
    number_of_periods: int = wire(UINT8)


@command(cluster_id=METERING, command_id=0x00, server_to_client=True)
class GetProfileResponse(Message):
    """Metering S->C 0x00: interval data, most recent first."""

    SUCCESS: ClassVar[int] = 0x00
    #: Profile Interval Period code -> minutes.
    PERIOD_MINUTES: ClassVar[dict[int, float]] = {
        0: 1440,
        1: 60,
        2: 30,
        3: 15,
        4: 10,
        5: 7.5,
        6: 5,
        7: 2.5,
    }

    end_time: int = wire(UTC_TIME)
    status: int = wire(ENUM8, hi=5)
    profile_interval_period: int = wire(ENUM8, hi=7, doc="3 = 15 minutes")
    intervals: tuple[int, ...] = wire(UINT24_COUNTED_LIST, max_length=255, default=())


class MeteringAttribute:
    """A Metering attribute hangw reads: id, name and wire type."""

    __slots__ = ("attribute_id", "name", "wire")

    def __init__(self, attribute_id: int, name: str, wire_type: WireType) -> None:
        self.attribute_id = attribute_id
        self.name = name
        self.wire = wire_type

    def __repr__(self) -> str:
        return f"MeteringAttribute(0x{self.attribute_id:04X}, {self.name!r}, {self.wire.name})"


#: The Metering attributes read through ZCL Read Attributes, by attribute id.
METERING_ATTRIBUTES: dict[int, MeteringAttribute] = {
    a.attribute_id: a
    for a in (
        MeteringAttribute(0x0000, "current_summation_delivered", UINT48),
        MeteringAttribute(0x0001, "current_summation_received", UINT48),
        MeteringAttribute(0x0200, "status", MAP8),
        MeteringAttribute(0x0300, "unit_of_measure", ENUM8),
        MeteringAttribute(0x0301, "multiplier", UINT24),
        MeteringAttribute(0x0302, "divisor", UINT24),
        MeteringAttribute(0x0303, "summation_formatting", MAP8),
        MeteringAttribute(0x0306, "metering_device_type", MAP8),
        MeteringAttribute(0x0400, "instantaneous_demand", INT24),
    )
}

#: ZCL status codes a Read Attributes record may carry.
SUCCESS = 0x00
UNSUPPORTED_ATTRIBUTE = 0x86


@dataclasses.dataclass(frozen=True, slots=True)
class AttributeRecord:
    """One attribute in a Read Attributes Response: success with a value, or a failure status."""

    attribute_id: int
    status: int = SUCCESS
    value: int | None = None

    def __post_init__(self) -> None:
        def refuse(field: str, reason: str) -> FieldValueError:
            return FieldValueError("AttributeRecord", field, reason)

        if type(self.attribute_id) is not int or not 0 <= self.attribute_id <= 0xFFFF:
            raise refuse("attribute_id", f"{self.attribute_id!r} is not a uint16")
        if type(self.status) is not int or not 0 <= self.status <= 0xFF:
            raise refuse("status", f"{self.status!r} is not a uint8")
        if self.status != SUCCESS:
            if self.value is not None:
                raise refuse("value", "a record with a failure status carries no value")
            return
        attribute = METERING_ATTRIBUTES.get(self.attribute_id)
        if attribute is None:
            raise refuse(
                "attribute_id",
                f"0x{self.attribute_id:04X} is not a Metering attribute sep1 knows the type of",
            )
        wire_type = attribute.wire
        if type(self.value) is not int or not wire_type.lo <= self.value <= wire_type.hi:
            raise refuse(
                "value",
                f"{self.value!r} is not a {wire_type.name} ({wire_type.lo}..{wire_type.hi}) "
                f"for {attribute.name}",
            )


@command(cluster_id=METERING, command_id=0x00, server_to_client=False, general=True)
class ReadAttributes(Message):
    """ZCL general 0x00 on Metering: read attributes of the meter."""

    attribute_ids: tuple[int, ...] = wire(UINT16_LIST)


@command(cluster_id=METERING, command_id=0x01, server_to_client=True, general=True)
class ReadAttributesResponse(Message):
    """ZCL general 0x01 on Metering: one record per attribute asked for."""

    records: tuple[AttributeRecord, ...] = wire(ATTRIBUTE_RECORDS)

    def values(self) -> dict[str, int]:
        """Successful readings by attribute name."""
        return {
            METERING_ATTRIBUTES[r.attribute_id].name: r.value
            for r in self.records
            if r.status == SUCCESS and r.value is not None
        }


# --- Messaging (0x0703) -------------------------------------------------------------------


class MessageControl:
    """Message Control bits of Display Message and Cancel Message."""

    NORMAL = 0
    NORMAL_AND_INTER_PAN = 1
    INTER_PAN_ONLY = 2
    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3
    CONFIRMATION_REQUIRED = 0x80

    @staticmethod
    def make(
        transmission: int = 0, importance: int = 0, confirmation_required: bool = False
    ) -> int:
        """The map8 of a transmission mode (0..2), an importance (0..3) and the confirmation bit."""
        if transmission not in (0, 1, 2):
            raise ValueError(f"transmission {transmission} is not 0, 1 or 2")
        if importance not in (0, 1, 2, 3):
            raise ValueError(f"importance {importance} is not 0..3")
        return transmission | importance << 2 | (0x80 if confirmation_required else 0)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 fits ``max_bytes``, cut between characters."""
    # a negative limit would slice from the end ("drop 3 bytes"), not cap the length
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes: {max_bytes!r} is not a byte count (an integer from 0)")
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


@command(cluster_id=MESSAGING, command_id=0x00, server_to_client=True)
class DisplayMessage(Message):
    """Messaging S->C 0x00: show a text on the device.

    A ZCL string holds at most 254 bytes of UTF-8, but only about UNFRAGMENTED_TEXT_BYTES fit one
    unfragmented secured frame; longer text needs APS fragmentation, which not every device does.
    ``fits_one_frame`` says which it is and ``truncated()`` cuts the text on a character boundary.
    """

    UNFRAGMENTED_TEXT_BYTES: ClassVar[int] = 59
    MAX_TEXT_BYTES: ClassVar[int] = 254

    message_id: int = wire(UINT32)
    message_control: int = wire(MAP8, default=0, doc="see MessageControl")
    start_time: int = wire(UTC_TIME, default=NOW, doc="0 = now")
    duration_in_minutes: int = wire(UINT16, default=UNTIL_CHANGED, doc="0xFFFF = until changed")
    message: str = wire(CHAR_STRING, max_length=254, default="")

    @property
    def confirmation_required(self) -> bool:
        """True when the device must answer with Message Confirmation."""
        return bool(self.message_control & MessageControl.CONFIRMATION_REQUIRED)

    @property
    def importance(self) -> int:
        """0 low, 1 medium, 2 high, 3 critical."""
        return (self.message_control >> 2) & 0x03

    @property
    def fits_one_frame(self) -> bool:
        """True when the text fits one unfragmented frame."""
        return len(self.message.encode("utf-8")) <= self.UNFRAGMENTED_TEXT_BYTES

    def truncated(self, max_bytes: int | None = None) -> DisplayMessage:
        """A copy whose text fits ``max_bytes`` (one unfragmented frame by default)."""
        limit = self.UNFRAGMENTED_TEXT_BYTES if max_bytes is None else max_bytes
        return dataclasses.replace(self, message=truncate_utf8(self.message, limit))


@command(cluster_id=MESSAGING, command_id=0x01, server_to_client=True)
class CancelMessage(Message):
    """Messaging S->C 0x01: withdraw a displayed message."""

    message_id: int = wire(UINT32)
    message_control: int = wire(MAP8, default=0)


@command(cluster_id=MESSAGING, command_id=0x00, server_to_client=False)
class GetLastMessage(Message):
    """Messaging C->S 0x00: a device asks for the last message (no payload)."""


@command(cluster_id=MESSAGING, command_id=0x01, server_to_client=False)
class MessageConfirmation(Message):
    """Messaging C->S 0x01: the user confirmed a message."""

    message_id: int = wire(UINT32)
    confirmation_time: int = wire(UTC_TIME)
