"""Encode SE 1.0 messages to ZCL frames and decode frames back, derived from the field tables.

Each message class gets a codec compiled once from its field table: runs of fixed-size fields
become one ``struct.Struct``; strings, lists and optional fields are read one at a time. Decoding
raises only DecodeError, naming the cluster, command, field and byte where it stopped.

Bytes after the last field are kept in ``Frame.trailing`` and otherwise ignored, as ZCL asks of
receivers so that later revisions may append fields (SE 1.1 does, to Publish Price).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from .errors import DecodeError, FieldValueError
from .header import CLUSTER_SPECIFIC, GENERAL, ZCLHeader
from .messages import (
    MESSAGE_TYPES,
    METERING_ATTRIBUTES,
    SUCCESS,
    AttributeRecord,
    Message,
)
from .wire import FieldSpec

__all__ = ["Frame", "decode", "decode_frame", "encode", "encode_frame", "payload_layout"]

_CLUSTERS = frozenset(cluster for cluster, _, _, _ in MESSAGE_TYPES)


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded ZCL frame: its cluster, header, message and any bytes after the last field."""

    cluster_id: int
    header: ZCLHeader
    message: Message
    trailing: bytes = b""


class _Fault(Exception):
    """Internal: decoding stopped at a field (turned into DecodeError with the frame's context)."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        self.field = field
        self.offset = offset
        self.reason = reason


class _Item:
    """One wire item: a field, or two nibble fields sharing a byte."""

    __slots__ = ("code", "form", "names", "size", "specs", "to_python", "to_wire")

    def __init__(self, specs: tuple[FieldSpec, ...]) -> None:
        self.specs = specs
        self.names = tuple(s.name for s in specs)
        first = specs[0]
        self.form = first.wire.form
        self.size = first.wire.size
        self.code = first.wire.struct_code
        self.to_python: Callable[[Any], Any] | None = None
        self.to_wire: Callable[[Any], Any] | None = None
        if self.form == "high_nibble" and len(specs) == 2:
            self.to_python = lambda byte: (byte >> 4, byte & 0x0F)
            self.to_wire = lambda pair: pair[0] << 4 | pair[1]
        elif self.form == "high_nibble":
            self.to_wire = lambda value: value << 4
        elif first.not_used is not None:
            sentinel = first.not_used
            self.to_python = lambda value: None if value == sentinel else value
            self.to_wire = lambda value: sentinel if value is None else value


class _Codec:
    """The compiled codec of one message class."""

    def __init__(self, cls: type[Message]) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.items = _items(cls.FIELDS)
        self.optional_count = sum(1 for item in self.items if item.specs[0].optional)
        # Group the leading required fixed-size items into struct runs; everything else alone.
        self.ops: list[tuple[str, Any, list[_Item]]] = []
        run: list[_Item] = []
        for item in self.items:
            if item.code is not None and not item.specs[0].optional:
                run.append(item)
                continue
            if run:
                self.ops.append(("struct", _struct(run), run))
                run = []
            self.ops.append(("item", None, [item]))
        if run:
            self.ops.append(("struct", _struct(run), run))
        self.getters = [
            attrgetter(*[n for item in items for n in item.names]) for _, _, items in self.ops
        ]

    # -- encoding ------------------------------------------------------------------------

    def encode_body(self, message: Message) -> bytes:
        parts: list[bytes] = []
        optional_left = getattr(message, "optional_fields", 0)
        for (kind, st, items), getter in zip(self.ops, self.getters, strict=True):
            if kind == "struct":
                values = getter(message)
                if len(items) == 1 and len(items[0].names) == 1:
                    values = (values,)
                parts.append(st.pack(*_to_wire(items, values)))
                continue
            item = items[0]
            if item.specs[0].optional:
                if optional_left == 0:
                    break
                optional_left -= 1
            value = getter(message)
            parts.append(_encode_item(item, value))
        return b"".join(parts)

    # -- decoding ------------------------------------------------------------------------

    def decode_body(self, data: bytes, offset: int) -> tuple[Message, int]:
        start = offset
        values: dict[str, Any] = {}
        end = len(data)
        sent_optional = 0
        for kind, st, items in self.ops:
            if kind == "struct":
                if end - offset < st.size:
                    raise _truncated(items, offset, end)
                unpacked = st.unpack_from(data, offset)
                offset += st.size
                for item, value in zip(items, unpacked, strict=True):
                    _store(item, value, values, offset - st.size)
                continue
            item = items[0]
            if item.specs[0].optional:
                if offset == end:
                    break
                sent_optional += 1
            offset = _decode_item(item, data, offset, end, values)
        if self.optional_count:
            values["optional_fields"] = sent_optional
        try:
            message = self.cls(**values)
        except FieldValueError as error:
            raise _Fault(error.field, self._offset_of(error.field, start), error.reason) from None
        return message, offset

    def _offset_of(self, field: str, start: int) -> int:
        """Where ``field`` starts, counting fixed-size fields from ``start`` (best effort)."""
        offset = start
        for item in self.items:
            if field in item.names:
                return offset
            if item.size is None:
                break
            offset += item.size
        return offset

    def layout(self) -> list[tuple[str, int | None]]:
        """(field, wire size or None when variable) in wire order."""
        return [("/".join(item.names), item.size) for item in self.items]


def _items(fields: tuple[FieldSpec, ...]) -> list[_Item]:
    items: list[_Item] = []
    i = 0
    while i < len(fields):
        spec = fields[i]
        if (
            spec.wire.form == "high_nibble"
            and i + 1 < len(fields)
            and fields[i + 1].wire.form == "low_nibble"
        ):
            items.append(_Item((spec, fields[i + 1])))
            i += 2
            continue
        if spec.wire.form == "low_nibble":
            raise AssertionError(f"{spec.name}: a low nibble must follow a high nibble")
        items.append(_Item((spec,)))
        i += 1
    return items


def _struct(items: list[_Item]) -> struct.Struct:
    return struct.Struct("<" + "".join(item.code or "" for item in items))


def _to_wire(items: list[_Item], values: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    i = 0
    for item in items:
        if len(item.names) == 2:
            assert item.to_wire is not None
            out.append(item.to_wire((values[i], values[i + 1])))
            i += 2
            continue
        value = values[i]
        out.append(item.to_wire(value) if item.to_wire is not None else value)
        i += 1
    return out


def _store(item: _Item, value: Any, values: dict[str, Any], offset: int) -> None:
    if item.form == "high_nibble" and len(item.names) == 1:
        if value & 0x0F:
            raise _Fault(item.names[0], offset, f"reserved low bits set (0x{value:02X})")
        values[item.names[0]] = value >> 4
        return
    converted = item.to_python(value) if item.to_python is not None else value
    if len(item.names) == 2:
        values[item.names[0]], values[item.names[1]] = converted
    else:
        values[item.names[0]] = converted


def _truncated(items: list[_Item], offset: int, end: int) -> _Fault:
    for item in items:
        assert item.size is not None
        if end - offset < item.size:
            have = max(end - offset, 0)
            return _Fault(
                "/".join(item.names),
                offset,
                f"frame ends {have} of {item.size} bytes into the field",
            )
        offset += item.size
    raise AssertionError("struct run was not short")


def _encode_item(item: _Item, value: Any) -> bytes:
    form = item.form
    spec = item.specs[0]
    if item.to_wire is not None:
        value = item.to_wire(value)
    if form == "int":
        assert item.size is not None
        return int(value).to_bytes(item.size, "little", signed=spec.wire.signed)
    if item.code is not None:
        packed: bytes = struct.pack("<" + item.code, value)
        return packed
    if form == "octets":
        raw: bytes = value
        return bytes((len(raw),)) + raw
    if form == "text":
        text: bytes = value.encode("utf-8")
        return bytes((len(text),)) + text
    if form == "uint24_counted_list":
        return bytes((len(value),)) + b"".join(v.to_bytes(3, "little") for v in value)
    if form == "uint16_list":
        ids: bytes = struct.pack(f"<{len(value)}H", *value)
        return ids
    if form == "attribute_records":
        return b"".join(_encode_record(record) for record in value)
    raise AssertionError(f"no encoder for {form}")


def _encode_record(record: AttributeRecord) -> bytes:
    head = struct.pack("<HB", record.attribute_id, record.status)
    if record.status != SUCCESS:
        return head
    wire_type = METERING_ATTRIBUTES[record.attribute_id].wire
    assert (
        wire_type.size is not None
        and wire_type.zcl_type_id is not None
        and record.value is not None
    )
    return (
        head
        + bytes((wire_type.zcl_type_id,))
        + record.value.to_bytes(wire_type.size, "little", signed=wire_type.signed)
    )


def _decode_item(item: _Item, data: bytes, offset: int, end: int, values: dict[str, Any]) -> int:
    name = item.names[0]
    spec = item.specs[0]
    form = item.form
    if item.size is not None:
        if end - offset < item.size:
            raise _Fault(
                name, offset, f"frame ends {end - offset} of {item.size} bytes into the field"
            )
        if item.code is not None:
            (value,) = struct.unpack_from("<" + item.code, data, offset)
        else:
            value = int.from_bytes(
                data[offset : offset + item.size], "little", signed=spec.wire.signed
            )
        _store(item, value, values, offset)
        return offset + item.size
    if form in ("octets", "text", "uint24_counted_list"):
        if offset >= end:
            raise _Fault(name, offset, "frame ends before the length byte")
        length = data[offset]
        if form == "uint24_counted_list":
            size = 3 * length
        else:
            if length == 0xFF:
                raise _Fault(name, offset, "length 0xFF marks an invalid string")
            size = length
            if spec.max_length is not None and length > spec.max_length:
                raise _Fault(
                    name, offset, f"length {length} is over the {spec.max_length}-byte limit"
                )
        start = offset + 1
        if end - start < size:
            raise _Fault(name, offset, f"length byte says {size} bytes but {end - start} remain")
        raw = data[start : start + size]
        if form == "octets":
            values[name] = bytes(raw)
        elif form == "text":
            try:
                values[name] = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _Fault(name, start + error.start, "text is not valid UTF-8") from None
        else:
            values[name] = tuple(
                int.from_bytes(raw[i : i + 3], "little") for i in range(0, size, 3)
            )
        return start + size
    if form == "uint16_list":
        size = end - offset
        if size % 2:
            raise _Fault(
                name, end - 1, f"{size} bytes left is not a whole number of uint16 attribute ids"
            )
        values[name] = struct.unpack_from(f"<{size // 2}H", data, offset)
        return end
    if form == "attribute_records":
        values[name] = _decode_records(name, data, offset, end)
        return end
    raise AssertionError(f"no decoder for {form}")


_TYPE_SIZES = {a.wire.zcl_type_id: a.wire for a in METERING_ATTRIBUTES.values()}


def _decode_records(name: str, data: bytes, offset: int, end: int) -> tuple[AttributeRecord, ...]:
    records = []
    while offset < end:
        if end - offset < 3:
            raise _Fault(name, offset, "frame ends inside an attribute record (id and status)")
        attribute_id, status = struct.unpack_from("<HB", data, offset)
        offset += 3
        value = None
        if status == SUCCESS:
            attribute = METERING_ATTRIBUTES.get(attribute_id)
            if attribute is None:
                raise _Fault(
                    name,
                    offset - 3,
                    f"attribute 0x{attribute_id:04X} is not a Metering attribute sep1 knows",
                )
            if offset >= end:
                raise _Fault(
                    name,
                    offset,
                    f"frame ends before the data type of attribute 0x{attribute_id:04X}",
                )
            type_id = data[offset]
            wire_type = attribute.wire
            if type_id != wire_type.zcl_type_id:
                raise _Fault(
                    name,
                    offset,
                    f"attribute 0x{attribute_id:04X} has data type 0x{type_id:02X}, "
                    f"expected {wire_type.name} (0x{wire_type.zcl_type_id:02X})",
                )
            offset += 1
            assert wire_type.size is not None
            if end - offset < wire_type.size:
                raise _Fault(
                    name, offset, f"frame ends inside the value of attribute 0x{attribute_id:04X}"
                )
            value = int.from_bytes(
                data[offset : offset + wire_type.size], "little", signed=wire_type.signed
            )
            offset += wire_type.size
        try:
            records.append(AttributeRecord(attribute_id, status, value))
        except FieldValueError as error:
            raise _Fault(name, offset, f"attribute 0x{attribute_id:04X}: {error.reason}") from None
    return tuple(records)


_CODECS: dict[type[Message], _Codec] = {cls: _Codec(cls) for cls in MESSAGE_TYPES.values()}


def payload_layout(cls: type[Message]) -> list[tuple[str, int | None]]:
    """The wire items of a command in order: (field name, size in bytes or None if variable)."""
    return _CODECS[cls].layout()


def encode(message: Message, tsn: int, *, disable_default_response: bool = False) -> bytes:
    """The ZCL frame (header and payload) of a message with sequence number ``tsn``."""
    # int subclasses (zigpy's uint8_t, an IntEnum) are ints; bool is not a sequence number
    if isinstance(tsn, bool) or not isinstance(tsn, int) or not 0 <= tsn <= 0xFF:
        raise ValueError(f"tsn: {tsn!r} is not a uint8")
    tsn = int(tsn)
    cls = type(message)
    codec = _CODECS.get(cls)
    if codec is None:
        raise TypeError(f"{cls.__name__} is not a sep1 message")
    control = (GENERAL if cls.GENERAL else CLUSTER_SPECIFIC) | (0x08 if cls.SERVER_TO_CLIENT else 0)
    if disable_default_response:
        control |= 0x10
    return bytes((control, tsn, cls.COMMAND_ID)) + codec.encode_body(message)


def encode_frame(frame: Frame) -> bytes:
    """The bytes of a decoded frame, header flags and trailing bytes included."""
    header, message = frame.header, frame.message
    cls = type(message)
    if header.manufacturer_code is not None:
        raise ValueError("a SE 1.0 command frame carries no manufacturer code")
    expected = (cls.GENERAL, cls.SERVER_TO_CLIENT, cls.COMMAND_ID)
    actual = (header.frame_type == GENERAL, header.server_to_client, header.command_id)
    if expected != actual or frame.cluster_id != cls.CLUSTER_ID:
        raise ValueError(
            f"the header and cluster 0x{frame.cluster_id:04X} do not match {cls.__name__}"
        )
    codec = _CODECS[cls]
    if frame.trailing:
        _check_trailing(codec, message)
    return header.encode() + codec.encode_body(message) + frame.trailing


def _check_trailing(codec: _Codec, message: Message) -> None:
    """Trailing bytes may follow only a body a receiver reads to its end and no further."""
    last = codec.items[-1] if codec.items else None
    if last is not None and last.form in ("uint16_list", "attribute_records"):
        raise ValueError(
            f"{codec.name}.{last.names[0]} runs to the end of the frame; "
            "trailing bytes would be read as more of it"
        )
    sent = getattr(message, "optional_fields", codec.optional_count)
    if sent < codec.optional_count:
        raise ValueError(
            f"{codec.name} sends {sent} of its {codec.optional_count} optional fields; "
            "trailing bytes would be read as the next one (send all of them, or no trailing bytes)"
        )


def decode_frame(cluster_id: int, frame: bytes) -> Frame:
    """Decode a ZCL frame received on ``cluster_id``; raises only DecodeError."""
    if isinstance(cluster_id, bool) or not isinstance(cluster_id, int):
        raise DecodeError(f"a cluster id is an int, not {type(cluster_id).__name__}")
    cluster_id = int(cluster_id)  # zigpy's ClusterId, an IntEnum: a plain int from here on
    if cluster_id not in _CLUSTERS:
        raise DecodeError(f"cluster 0x{cluster_id:04X} is not a SE 1.0 cluster sep1 decodes")
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise DecodeError(f"a frame is bytes, not {type(frame).__name__}", cluster_id=cluster_id)
    data = bytes(frame)
    header, offset = ZCLHeader.decode(data, cluster_id)
    if header.manufacturer_code is not None:
        raise DecodeError(
            f"manufacturer-specific command (manufacturer 0x{header.manufacturer_code:04X}) "
            "is not a SE 1.0 command",
            cluster_id=cluster_id,
            command_id=header.command_id,
            offset=0,
        )
    key = (cluster_id, header.frame_type == GENERAL, header.server_to_client, header.command_id)
    cls = MESSAGE_TYPES.get(key)
    if cls is None:
        direction = "server to client" if header.server_to_client else "client to server"
        kind = "general" if header.frame_type == GENERAL else "cluster"
        raise DecodeError(
            f"no {kind} command with this id {direction} in SE 1.0 (as sep1 knows it)",
            cluster_id=cluster_id,
            command_id=header.command_id,
            offset=offset - 1,
        )
    try:
        message, end = _CODECS[cls].decode_body(data, offset)
    except _Fault as fault:
        raise DecodeError(
            fault.reason,
            cluster_id=cluster_id,
            command_id=header.command_id,
            command=cls.__name__,
            field=fault.field,
            offset=fault.offset,
        ) from None
    return Frame(cluster_id, header, message, data[end:])


def decode(cluster_id: int, frame: bytes) -> Message:
    """The message in a ZCL frame received on ``cluster_id``; raises only DecodeError."""
    return decode_frame(cluster_id, frame).message


def wire_values(message: Message) -> list[tuple[str, Any]]:
    """(wire item name, value as on the wire) for each item sent, in order.

    Nibble pairs are one item named ``<high>_and_<low>`` holding the shared byte; not-used
    fields hold their sentinel. This is the view zigpy's schemas (sep1.zigpy_schemas) take.
    """
    codec = _CODECS[type(message)]
    out: list[tuple[str, Any]] = []
    optional_left = getattr(message, "optional_fields", 0)
    for item in codec.items:
        if item.specs[0].optional:
            if optional_left == 0:
                break
            optional_left -= 1
        if len(item.names) == 2:
            assert item.to_wire is not None
            value = item.to_wire((getattr(message, item.names[0]), getattr(message, item.names[1])))
        else:
            value = getattr(message, item.names[0])
            if item.to_wire is not None:
                value = item.to_wire(value)
        out.append(("_and_".join(item.names), value))
    return out


def from_wire_values(cls: type[Message], values: dict[str, Any]) -> Message:
    """The message whose wire items (as ``wire_values`` names them) hold ``values``.

    Missing optional items are not sent; raises FieldValueError for values out of range.
    """
    codec = _CODECS[cls]
    kwargs: dict[str, Any] = {}
    sent_optional = 0
    for item in codec.items:
        name = "_and_".join(item.names)
        value = values.get(name)
        if item.specs[0].optional:
            if value is None:
                break
            sent_optional += 1
        try:
            _store(item, value, kwargs, 0)
        except _Fault as fault:
            raise FieldValueError(cls.__name__, fault.field, fault.reason) from None
    if codec.optional_count:
        kwargs["optional_fields"] = sent_optional
    return cls(**kwargs)


def wire_item_types(cls: type[Message]) -> list[tuple[str, FieldSpec, bool]]:
    """(wire item name, first field's spec, whether it is a nibble pair) in wire order."""
    return [
        ("_and_".join(item.names), item.specs[0], len(item.names) == 2)
        for item in _CODECS[cls].items
    ]
