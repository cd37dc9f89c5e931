"""ZCL frames as a classic libpcap capture that Wireshark decodes down to the Smart Energy cluster.

Each ZCL frame is wrapped the way it travels over the air inside one HAN: an IEEE 802.15.4 MAC
data frame (short addresses, PAN id compression), a ZigBee PRO NWK data header (protocol version 2,
security off) and an APS data frame (profile 0x0109 by default). Link type 195 carries the MAC
frame with its 2-byte FCS (CRC-16/KERMIT), link type 230 without it.

Bytes in, bytes out: the caller opens the file and passes the timestamps; nothing here reads a
clock. Frames are unsecured (a real SE network encrypts NWK and APS), so Wireshark can show the
ZCL fields without any key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from .crc import crc16_kermit

__all__ = [
    "LINKTYPE_IEEE802_15_4_NOFCS",
    "LINKTYPE_IEEE802_15_4_WITHFCS",
    "MAX_PSDU",
    "MAX_ZCL",
    "PcapWriter",
    "Route",
    "crc16_kermit",
    "file_header",
    "packet",
    "record",
]

LINKTYPE_IEEE802_15_4_WITHFCS = 195
LINKTYPE_IEEE802_15_4_NOFCS = 230
_LINK_TYPES = (LINKTYPE_IEEE802_15_4_WITHFCS, LINKTYPE_IEEE802_15_4_NOFCS)

#: The largest 802.15.4 PSDU (MAC header, payload and the 2-byte FCS), aMaxPHYPacketSize.
MAX_PSDU = 127
_MAC_HEADER = 9  # frame control, sequence number, PAN id, destination, source
_FCS = 2
_NWK_HEADER = 8  # frame control, destination, source, radius, sequence number
_APS_HEADER = 8  # frame control, destination endpoint, cluster, profile, source endpoint, counter
#: The largest ZCL frame (header included) one unfragmented, unsecured frame carries.
MAX_ZCL = MAX_PSDU - _MAC_HEADER - _FCS - _NWK_HEADER - _APS_HEADER

_PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
_PCAP_SNAPLEN = 65535
_BROADCAST = 0xFFFF

# IEEE 802.15.4-2003 frame control: data frame, PAN id compression, short destination and source.
_MAC_DATA = 0x0001
_MAC_ACK_REQUEST = 0x0020
_MAC_PAN_ID_COMPRESSION = 0x0040
_MAC_SHORT_ADDRESSES = (0b10 << 10) | (0b10 << 14)
# ZigBee NWK frame control: data frame, protocol version 2 (ZigBee PRO), route discovery enabled.
_NWK_DATA_V2 = 0x0000 | (2 << 2) | (1 << 6)
# ZigBee APS frame control: data frame, unicast or broadcast delivery, acknowledgement request.
_APS_DATA = 0x00
_APS_BROADCAST = 0b10 << 2
_APS_ACK_REQUEST = 0x40


def _check(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low:#x}..{high:#x}, not {value!r}")


def _check_link_type(link_type: int) -> None:
    if link_type not in _LINK_TYPES:
        raise ValueError(f"link_type must be 195 (with FCS) or 230 (without), not {link_type!r}")


def _is_broadcast(nwk_address: int) -> bool:
    """0xFFFF all devices, 0xFFFD receivers on when idle, 0xFFFC routers and the coordinator."""
    return 0xFFFC <= nwk_address <= 0xFFFF


@dataclass(frozen=True)
class Route:
    """Who sends a frame to whom: the PAN, the NWK short addresses, the endpoints and the profile.

    The defaults are the ESI (the coordinator, 0x0000) sending to the first device (0x0001). A
    broadcast ``dst_nwk`` (0xFFFC, 0xFFFD, 0xFFFF) makes a broadcast MAC, NWK and APS frame.
    """

    pan_id: int = 0x1A62
    src_nwk: int = 0x0000
    dst_nwk: int = 0x0001
    src_endpoint: int = 1
    dst_endpoint: int = 1
    profile_id: int = 0x0109
    radius: int = 30
    aps_ack_request: bool = False

    def __post_init__(self) -> None:
        _check("Route.pan_id", self.pan_id, 0x0000, 0xFFFE)
        _check("Route.src_nwk", self.src_nwk, 0x0000, 0xFFF7)
        if not (0x0000 <= self.dst_nwk <= 0xFFF7 or _is_broadcast(self.dst_nwk)):
            raise ValueError(
                f"Route.dst_nwk must be 0x0..0xfff7 or a broadcast address 0xfffc..0xffff, "
                f"not {self.dst_nwk!r}"
            )
        _check("Route.src_endpoint", self.src_endpoint, 1, 240)
        if not (1 <= self.dst_endpoint <= 240 or self.dst_endpoint == 0xFF):
            raise ValueError(
                f"Route.dst_endpoint must be 1..240 or 0xff (all endpoints), "
                f"not {self.dst_endpoint!r}"
            )
        _check("Route.profile_id", self.profile_id, 0x0000, 0xFFFF)
        _check("Route.radius", self.radius, 1, 0xFF)
        if self.aps_ack_request and _is_broadcast(self.dst_nwk):
            raise ValueError("Route.aps_ack_request cannot be set on a broadcast route")

    def reverse(self) -> Route:
        """The route of the answer: source and destination addresses and endpoints swapped."""
        return Route(
            pan_id=self.pan_id,
            src_nwk=self.dst_nwk,
            dst_nwk=self.src_nwk,
            src_endpoint=self.dst_endpoint,
            dst_endpoint=self.src_endpoint,
            profile_id=self.profile_id,
            radius=self.radius,
            aps_ack_request=self.aps_ack_request,
        )


def file_header(link_type: int = LINKTYPE_IEEE802_15_4_WITHFCS) -> bytes:
    """The 24-byte pcap global header: little-endian, version 2.4, microsecond timestamps."""
    _check_link_type(link_type)
    return struct.pack("<IHHiIII", _PCAP_MAGIC, 2, 4, 0, 0, _PCAP_SNAPLEN, link_type)


def record(frame: bytes, timestamp: float) -> bytes:
    """One pcap record: its 16-byte header (time in whole microseconds, lengths) and the frame."""
    if not 0 <= timestamp < 2**32:  # also refuses NaN
        raise ValueError(f"timestamp must be 0..2**32 seconds since 1970, not {timestamp!r}")
    seconds, microseconds = divmod(round(timestamp * 1_000_000), 1_000_000)
    if seconds >= 2**32:  # rounded up past the last representable second
        raise ValueError(f"timestamp must be 0..2**32 seconds since 1970, not {timestamp!r}")
    if len(frame) > _PCAP_SNAPLEN:
        raise ValueError(f"frame of {len(frame)} bytes exceeds the snapshot length {_PCAP_SNAPLEN}")
    return struct.pack("<IIII", seconds, microseconds, len(frame), len(frame)) + frame


def packet(
    zcl: bytes,
    *,
    cluster_id: int,
    route: Route,
    mac_sequence: int,
    nwk_sequence: int,
    aps_counter: int,
    link_type: int = LINKTYPE_IEEE802_15_4_WITHFCS,
) -> bytes:
    """One 802.15.4 MAC data frame carrying NWK, APS and ``zcl``; the FCS is appended for 195."""
    _check_link_type(link_type)
    _check("cluster_id", cluster_id, 0x0000, 0xFFFF)
    _check("mac_sequence", mac_sequence, 0, 0xFF)
    _check("nwk_sequence", nwk_sequence, 0, 0xFF)
    _check("aps_counter", aps_counter, 0, 0xFF)
    if len(zcl) > MAX_ZCL:
        raise ValueError(
            f"ZCL frame of {len(zcl)} bytes exceeds the {MAX_ZCL} bytes an unfragmented, unsecured "
            f"frame carries (802.15.4 PSDU of at most {MAX_PSDU} bytes); it needs APS fragmentation"
        )
    broadcast = _is_broadcast(route.dst_nwk)
    mac_control = _MAC_DATA | _MAC_PAN_ID_COMPRESSION | _MAC_SHORT_ADDRESSES
    if not broadcast:
        mac_control |= _MAC_ACK_REQUEST
    mac_destination = _BROADCAST if broadcast else route.dst_nwk
    mac = struct.pack(
        "<HBHHH", mac_control, mac_sequence, route.pan_id, mac_destination, route.src_nwk
    )
    nwk = struct.pack(
        "<HHHBB", _NWK_DATA_V2, route.dst_nwk, route.src_nwk, route.radius, nwk_sequence
    )
    aps_control = _APS_DATA | (_APS_BROADCAST if broadcast else 0)
    if route.aps_ack_request:
        aps_control |= _APS_ACK_REQUEST
    aps = struct.pack(
        "<BBHHBB",
        aps_control,
        route.dst_endpoint,
        cluster_id,
        route.profile_id,
        route.src_endpoint,
        aps_counter,
    )
    frame = mac + nwk + aps + zcl
    if link_type == LINKTYPE_IEEE802_15_4_WITHFCS:
        frame += struct.pack("<H", crc16_kermit(frame))
    return frame


@dataclass
class _Counters:
    """One sending node's MAC data sequence number, NWK sequence number and APS counter."""

    mac: int = 0
    nwk: int = 0
    aps: int = 0


class PcapWriter:
    """Writes ZCL frames to a binary stream as a pcap capture, starting with the global header.

    Each sending node (``Route.src_nwk``) keeps its own MAC, NWK and APS counters, as on a real
    network; they start at 0 and wrap at 256. The stream stays the caller's to flush and close.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        link_type: int = LINKTYPE_IEEE802_15_4_WITHFCS,
        route: Route = Route(),  # frozen, so one shared default is safe
    ) -> None:
        _check_link_type(link_type)
        self._stream = stream
        self.link_type = link_type
        self.route = route
        self._counters: dict[int, _Counters] = {}
        stream.write(file_header(link_type))

    def write(
        self, zcl: bytes, *, cluster_id: int, timestamp: float, route: Route | None = None
    ) -> None:
        """Append one record carrying ``zcl`` on ``route`` (the writer's route when not given)."""
        route = self.route if route is None else route
        counters = self._counters.setdefault(route.src_nwk, _Counters())
        frame = packet(
            zcl,
            cluster_id=cluster_id,
            route=route,
            mac_sequence=counters.mac,
            nwk_sequence=counters.nwk,
            aps_counter=counters.aps,
            link_type=self.link_type,
        )
        self._stream.write(record(frame, timestamp))
        counters.mac = (counters.mac + 1) & 0xFF
        counters.nwk = (counters.nwk + 1) & 0xFF
        counters.aps = (counters.aps + 1) & 0xFF
