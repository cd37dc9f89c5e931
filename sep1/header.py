"""The ZCL header: frame control, optional manufacturer code, sequence number, command id."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DecodeError

__all__ = ["CLUSTER_SPECIFIC", "GENERAL", "ZCLHeader"]

#: Frame type (frame control bits 0-1).
GENERAL = 0b00
CLUSTER_SPECIFIC = 0b01

_MANUFACTURER_SPECIFIC = 0x04
_SERVER_TO_CLIENT = 0x08
_DISABLE_DEFAULT_RESPONSE = 0x10
_RESERVED = 0xE0


@dataclass(frozen=True, slots=True)
class ZCLHeader:
    """A ZCL frame header. ``server_to_client`` is the direction bit (ESI to device when set)."""

    frame_type: int
    server_to_client: bool
    tsn: int
    command_id: int
    disable_default_response: bool = False
    manufacturer_code: int | None = None

    def __post_init__(self) -> None:
        if self.frame_type not in (GENERAL, CLUSTER_SPECIFIC):
            raise ValueError(
                f"ZCLHeader.frame_type: {self.frame_type!r} is not 0 (general) or 1 (cluster)"
            )
        # int subclasses (zigpy's uint8_t, an IntEnum) are kept as plain ints; bool is refused
        for name, hi, kind in (
            ("tsn", 0xFF, "uint8"),
            ("command_id", 0xFF, "uint8"),
            ("manufacturer_code", 0xFFFF, "uint16"),
        ):
            value = getattr(self, name)
            if value is None and name == "manufacturer_code":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise ValueError(f"ZCLHeader.{name}: {value!r} is not a {kind}")
            object.__setattr__(self, name, int(value))

    @property
    def frame_control(self) -> int:
        """The frame control byte."""
        return (
            self.frame_type
            | (_MANUFACTURER_SPECIFIC if self.manufacturer_code is not None else 0)
            | (_SERVER_TO_CLIENT if self.server_to_client else 0)
            | (_DISABLE_DEFAULT_RESPONSE if self.disable_default_response else 0)
        )

    def encode(self) -> bytes:
        """The header bytes."""
        if self.manufacturer_code is None:
            return bytes((self.frame_control, self.tsn, self.command_id))
        code = self.manufacturer_code
        return bytes((self.frame_control, code & 0xFF, code >> 8, self.tsn, self.command_id))

    @classmethod
    def decode(cls, frame: bytes, cluster_id: int | None = None) -> tuple[ZCLHeader, int]:
        """The header at the start of ``frame`` and the offset of the payload after it."""
        if not frame:
            raise DecodeError("empty frame: no ZCL frame control", cluster_id=cluster_id, offset=0)
        control = frame[0]
        if control & _RESERVED:
            raise DecodeError(
                f"reserved frame control bits set (0x{control:02X})",
                cluster_id=cluster_id,
                offset=0,
            )
        frame_type = control & 0x03
        if frame_type not in (GENERAL, CLUSTER_SPECIFIC):
            raise DecodeError(
                f"frame type {frame_type} is reserved", cluster_id=cluster_id, offset=0
            )
        manufacturer_code = None
        offset = 1
        if control & _MANUFACTURER_SPECIFIC:
            if len(frame) < 3:
                raise DecodeError(
                    "frame ends inside the manufacturer code",
                    cluster_id=cluster_id,
                    offset=len(frame),
                )
            manufacturer_code = frame[1] | frame[2] << 8
            offset = 3
        if len(frame) < offset + 2:
            raise DecodeError(
                "frame ends before the sequence number and command id",
                cluster_id=cluster_id,
                offset=len(frame),
            )
        header = cls(
            frame_type,
            bool(control & _SERVER_TO_CLIENT),
            frame[offset],
            frame[offset + 1],
            bool(control & _DISABLE_DEFAULT_RESPONSE),
            manufacturer_code,
        )
        return header, offset + 2
