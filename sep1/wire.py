"""Wire types and the field specifier from which every command's field table is declared.

A message class declares each field once, as ``name: type = wire(UINT8, ...)``. The metadata of
those declarations is the command's field table: the codec (sep1.codec) and the zigpy schemas
(sep1.zigpy_schemas) are both derived from it, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .utctime import UTC_TIME_MAX

__all__ = [
    "ATTRIBUTE_RECORDS",
    "CHAR_STRING",
    "ENUM8",
    "HIGH_NIBBLE",
    "INT8",
    "INT16",
    "INT24",
    "LOW_NIBBLE",
    "MAP8",
    "MAP16",
    "OCTET_STRING",
    "UINT8",
    "UINT16",
    "UINT16_LIST",
    "UINT24",
    "UINT24_COUNTED_LIST",
    "UINT32",
    "UINT48",
    "UTC_TIME",
    "FieldSpec",
    "WireType",
    "fixed_octets",
    "wire",
]


@dataclass(frozen=True)
class WireType:
    """How one field is laid out on the wire.

    ``form`` says which codec path handles it: ``int`` (``struct_code`` set, or ``size`` 3 or
    6 bytes read as an integer), ``high_nibble``/``low_nibble`` (two fields sharing a map8),
    ``octets`` and ``text`` (one length byte then the bytes), ``fixed_octets``,
    ``uint24_counted_list`` (a uint8 count then that many uint24), ``uint16_list`` and
    ``attribute_records`` (repeated to the end of the frame).
    """

    name: str
    form: str
    size: int | None = None
    struct_code: str | None = None
    lo: int = 0
    hi: int = 0
    signed: bool = False
    zcl_type_id: int | None = None

    @property
    def fixed(self) -> bool:
        """True when the field always takes ``size`` bytes."""
        return self.size is not None


def _int(name: str, size: int, code: str | None, signed: bool, zcl_type_id: int) -> WireType:
    bits = size * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return WireType(name, "int", size, code, lo, hi, signed, zcl_type_id)


UINT8 = _int("uint8", 1, "B", False, 0x20)
UINT16 = _int("uint16", 2, "H", False, 0x21)
UINT24 = _int("uint24", 3, None, False, 0x22)
UINT32 = _int("uint32", 4, "I", False, 0x23)
UINT48 = _int("uint48", 6, None, False, 0x25)
INT8 = _int("int8", 1, "b", True, 0x28)
INT16 = _int("int16", 2, "h", True, 0x29)
INT24 = _int("int24", 3, None, True, 0x2A)
MAP8 = _int("map8", 1, "B", False, 0x18)
MAP16 = _int("map16", 2, "H", False, 0x19)
ENUM8 = _int("enum8", 1, "B", False, 0x30)
#: 0..0xFFFFFFFE: ZCL reserves 0xFFFFFFFF as invalid (see sep1.utctime).
UTC_TIME = dataclasses.replace(_int("UTCTime", 4, "I", False, 0xE2), hi=UTC_TIME_MAX)
#: The high four bits of a map8 shared with the next field (or with reserved zero bits).
HIGH_NIBBLE = WireType("map8 high nibble", "high_nibble", 1, "B", 0, 15)
#: The low four bits of a map8 shared with the previous field.
LOW_NIBBLE = WireType("map8 low nibble", "low_nibble", None, None, 0, 15)
OCTET_STRING = WireType("octet string", "octets", zcl_type_id=0x41)
CHAR_STRING = WireType("character string", "text", zcl_type_id=0x42)
UINT24_COUNTED_LIST = WireType("uint8 count, then uint24 each", "uint24_counted_list")
UINT16_LIST = WireType("uint16 to the end of the frame", "uint16_list")
ATTRIBUTE_RECORDS = WireType("read attribute status records", "attribute_records")


def fixed_octets(size: int) -> WireType:
    """A field of exactly ``size`` raw bytes."""
    return WireType(f"{size} octets", "fixed_octets", size, f"{size}s")


@dataclass(frozen=True)
class FieldSpec:
    """One row of a command's field table.

    ``lo``/``hi`` bound the Python value (defaulting to the wire type's range); ``not_used`` is
    the wire sentinel that decodes to None and that None encodes to; ``optional`` fields may be
    missing from the end of a frame; ``max_length`` bounds strings and lists in bytes or items.
    """

    name: str
    wire: WireType
    lo: int
    hi: int
    not_used: int | None
    optional: bool
    max_length: int | None
    doc: str

    def wire_value(self, value: Any) -> Any:
        """The value as it goes on the wire (None becomes the not-used sentinel)."""
        if value is None and self.not_used is not None:
            return self.not_used
        return value


def wire(
    wire_type: WireType,
    *,
    lo: int | None = None,
    hi: int | None = None,
    not_used: int | None = None,
    optional: bool = False,
    max_length: int | None = None,
    default: Any = dataclasses.MISSING,
    doc: str = "",
) -> Any:
    """Declare a message field and its row in the command's field table."""
    row = {
        "wire": wire_type,
        "lo": wire_type.lo if lo is None else lo,
        "hi": wire_type.hi if hi is None else hi,
        "not_used": not_used,
        "optional": optional,
        "max_length": max_length,
        "doc": doc,
    }
    return dataclasses.field(default=default, metadata={"sep1": row})


def field_table(cls: type) -> tuple[FieldSpec, ...]:
    """The field table of a message class, in wire order."""
    rows = []
    for f in dataclasses.fields(cls):
        row = f.metadata.get("sep1")
        if row is not None:
            rows.append(FieldSpec(name=f.name, **row))
    return tuple(rows)
