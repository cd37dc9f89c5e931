"""zigpy command definitions, clusters and an SE device, all derived from sep1's field tables.

zigpy (the coordinator path's ZigBee stack) defines Price, DRLC and Messaging as empty stubs and
drops frames of profile 0x0109. This module gives it the SE 1.0 commands, generated from the same
field tables as sep1's own codec, and a Device subclass that hands SE frames to its clusters.

It imports zigpy (and so asyncio), which is why ``import sep1`` does not import it.
The clusters set ``_skip_registry`` so that zigpy's global registry keeps its own entries unless
``install_in_registry()`` is called.
"""

from __future__ import annotations

import re
from typing import Any, cast

import zigpy.device
import zigpy.types as t
import zigpy.zdo
from zigpy.zcl import Cluster, foundation
from zigpy.zcl.clusters import smartenergy

from .codec import from_wire_values, wire_item_types, wire_values
from .messages import MESSAGE_TYPES, Message
from .wire import FieldSpec

__all__ = [
    "SE_CLUSTERS",
    "DrlcCluster",
    "MessagingCluster",
    "PriceCluster",
    "SmartEnergyDevice",
    "Utf8String",
    "command_def",
    "from_zigpy",
    "install_in_registry",
    "to_zigpy",
    "zigpy_schema",
]

PROFILE_ID = 0x0109

_INT_TYPES: dict[str, Any] = {
    "uint8": t.uint8_t,
    "uint16": t.uint16_t,
    "uint24": t.uint24_t,
    "uint32": t.uint32_t,
    "uint48": t.uint48_t,
    "int8": t.int8s,
    "int16": t.int16s,
    "int24": t.int24s,
    "map8": t.bitmap8,
    "map16": t.bitmap16,
    "enum8": t.uint8_t,
    "UTCTime": t.UTCTime,
}


class Utf8String(str):
    """A ZCL character string whose length byte counts UTF-8 bytes, as sep1 writes it.

    zigpy 2.4's CharacterString writes the character count (wrong for non-ASCII text, which a
    device then reads cut short), ends text at a NUL and replaces invalid UTF-8. This type
    reads and writes text as ``sep1.encode`` and ``sep1.decode`` do.
    """

    def serialize(self) -> bytes:
        """The length byte (UTF-8 bytes) and the UTF-8 text."""
        data = self.encode("utf-8")
        if len(data) > 254:
            raise ValueError(f"a ZCL string holds at most 254 bytes, not {len(data)}")
        return bytes((len(data),)) + data

    @classmethod
    def deserialize(cls, data: bytes) -> tuple[Utf8String, bytes]:
        """The text at the start of ``data`` and the bytes after it; ValueError if malformed."""
        if not data:
            raise ValueError("data ends before the string's length byte")
        length = data[0]
        if length == 0xFF:
            raise ValueError("length 0xFF marks an invalid string")
        if len(data) - 1 < length:
            raise ValueError(f"length byte says {length} bytes but {len(data) - 1} remain")
        # UnicodeDecodeError is a ValueError, which zigpy treats as a malformed frame
        return cls(bytes(data[1 : 1 + length]).decode("utf-8")), data[1 + length :]


def _zigpy_type(spec: FieldSpec, nibble_pair: bool) -> Any:
    form = spec.wire.form
    if nibble_pair or form == "high_nibble":
        return t.bitmap8
    if form == "int":
        return _INT_TYPES[spec.wire.name]
    if form == "octets":
        return t.LVBytes
    if form == "text":
        return Utf8String
    if form == "fixed_octets":
        fixed_list: Any = t.FixedList
        return fixed_list[t.uint8_t, spec.wire.size]
    if form == "uint24_counted_list":
        lv_list: Any = t.LVList
        return lv_list[t.uint24_t]
    raise TypeError(
        f"{spec.name}: wire form {form} has no zigpy schema (general commands use zigpy's own)"
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def zigpy_schema(cls: type[Message]) -> dict[str, Any]:
    """The zigpy schema dict (``name?`` for optional items) of a cluster-specific command."""
    if cls.GENERAL:
        raise TypeError(
            f"{cls.__name__} is a ZCL general command; zigpy defines it in zigpy.zcl.foundation"
        )
    schema: dict[str, Any] = {}
    for name, spec, nibble_pair in wire_item_types(cls):
        schema[name + ("?" if spec.optional else "")] = _zigpy_type(spec, nibble_pair)
    return schema


def command_def(cls: type[Message], *, compiled: bool = True) -> foundation.ZCLCommandDef:
    """A compiled zigpy ZCLCommandDef for a cluster-specific SE command.

    The direction is left for zigpy to set from the cluster side it is declared on:
    ServerCommandDefs hold what a device sends the ESI, ClientCommandDefs what the ESI sends.
    """
    definition = foundation.ZCLCommandDef(
        id=cast(Any, cls.COMMAND_ID),
        name=_snake(cls.__name__),
        schema=cast(Any, zigpy_schema(cls)),
        is_manufacturer_specific=False,
    )
    return definition.with_compiled_schema() if compiled else definition


def to_zigpy(message: Message) -> dict[str, Any]:
    """Keyword arguments for the zigpy schema of ``message`` (wire values, sentinels included)."""
    # zigpy holds a fixed run of octets (the DRLC signature) as a list of uint8
    return {
        name: list(value)
        if isinstance(value, bytes) and spec.wire.form == "fixed_octets"
        else value
        for (name, value), (_, spec, _) in zip(
            wire_values(message), wire_item_types(type(message)), strict=False
        )
    }


def from_zigpy(cls: type[Message], command: Any) -> Message:
    """The sep1 message of a zigpy schema instance (as zigpy's deserialize returns it)."""
    values: dict[str, Any] = {}
    for name, spec, _ in wire_item_types(cls):
        value = getattr(command, name, None)
        if value is None:
            continue
        form = spec.wire.form
        if form == "fixed_octets":
            value = bytes(value)
        elif form == "octets":
            value = bytes(value)
        elif form == "text":
            value = str(value)
        elif form == "uint24_counted_list":
            value = tuple(int(v) for v in value)
        else:
            value = int(value)
        values[name] = value
    return from_wire_values(cls, values)


def _defs(cluster_id: int, server_to_client: bool) -> dict[str, foundation.ZCLCommandDef]:
    return {
        _snake(cls.__name__): command_def(cls, compiled=False)
        for (cid, general, s2c, _), cls in sorted(MESSAGE_TYPES.items())
        if cid == cluster_id and not general and s2c == server_to_client
    }


def _command_defs_class(cluster_id: int, server_to_client: bool) -> Any:
    return type("CommandDefs", (foundation.BaseCommandDefs,), _defs(cluster_id, server_to_client))


class PriceCluster(smartenergy.Price):
    """Price (0x0700) with the SE 1.0 commands. Server commands are those a device sends the ESI."""

    _skip_registry = True
    ServerCommandDefs = _command_defs_class(0x0700, False)
    ClientCommandDefs = _command_defs_class(0x0700, True)


class DrlcCluster(smartenergy.Drlc):
    """Demand Response and Load Control (0x0701) with the SE 1.0 commands."""

    _skip_registry = True
    ServerCommandDefs = _command_defs_class(0x0701, False)
    ClientCommandDefs = _command_defs_class(0x0701, True)


class MessagingCluster(smartenergy.Messaging):
    """Messaging (0x0703) with the SE 1.0 commands."""

    _skip_registry = True
    ServerCommandDefs = _command_defs_class(0x0703, False)
    ClientCommandDefs = _command_defs_class(0x0703, True)


#: The cluster classes by cluster id.
SE_CLUSTERS: dict[int, type[Cluster]] = {
    PriceCluster.cluster_id: PriceCluster,
    DrlcCluster.cluster_id: DrlcCluster,
    MessagingCluster.cluster_id: MessagingCluster,
}


def install_in_registry() -> None:
    """Make zigpy build these clusters for every device (replacing its empty stubs)."""
    for cluster_id, cls in SE_CLUSTERS.items():
        Cluster._registry[cluster_id] = cls


class SmartEnergyDevice(zigpy.device.Device):
    """A zigpy Device that accepts profile 0x0109 frames and uses sep1's SE clusters.

    zigpy parses ZCL headers only for the Home Automation and ZLL profiles and passes anything
    else to ``custom_profile_packet_received``, which only logs. This subclass parses SE frames
    like HA ones, so they reach the endpoint's clusters (and zigpy's request/response matching).
    Call ``use_se_clusters(endpoint)`` for endpoints that speak Smart Energy.
    """

    def _parse_packet_header(self, packet: t.ZigbeePacket) -> Any:
        source = packet.src_ep
        if (
            packet.profile_id == PROFILE_ID
            and source is not None
            and source != zigpy.zdo.ZDO_ENDPOINT
        ):
            header, _ = foundation.ZCLHeader.deserialize(packet.data.serialize())
            key = zigpy.device.ResponseKey(
                endpoint_id=source,
                cluster_id=packet.cluster_id,
                direction=header.frame_control.direction,
                tsn=header.tsn,
            )
            return header, key
        return super()._parse_packet_header(packet)

    @staticmethod
    def use_se_clusters(endpoint: Any) -> None:
        """Give an endpoint sep1's Price, DRLC and Messaging clusters, server and client sides."""
        for cluster_id, cls in SE_CLUSTERS.items():
            if cluster_id in endpoint.in_clusters:
                endpoint.add_input_cluster(cluster_id, cls(endpoint, is_server=True))
            if cluster_id in endpoint.out_clusters:
                endpoint.add_output_cluster(cluster_id, cls(endpoint, is_server=False))
