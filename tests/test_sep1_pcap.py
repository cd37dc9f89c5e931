"""sep1.pcap: ZCL frames in a pcap file that tshark decodes down to the Smart Energy cluster.

The ZCL frames below are written out byte by byte from the field tables in sep1-wire.md, not made
by any project codec, so tshark is an independent judge of both the wrapping and the payload.
"""

from __future__ import annotations

import ast
import io
import struct
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

import sep1.pcap
from sep1.pcap import (
    LINKTYPE_IEEE802_15_4_NOFCS,
    LINKTYPE_IEEE802_15_4_WITHFCS,
    MAX_PSDU,
    MAX_ZCL,
    PcapWriter,
    Route,
    crc16_kermit,
    file_header,
    packet,
    record,
)

ESI = Route()  # the coordinator 0x0000 sending to device 0x0001, PAN 0x1A62, profile 0x0109
DEVICE = ESI.reverse()

# 2024-01-01T00:00:00Z as UTCTime: 1704067200 - 946684800 = 757382400 = 0x2D24BD00.
NEW_YEAR = "00bd242d"

LOAD_CONTROL_EVENT = bytes.fromhex(
    "09"  # ZCL frame control: cluster-specific, server to client
    "2a"  # transaction sequence number 42
    "00"  # DRLC command 0x00 Load Control Event
    "78563412"  # issuer event id 0x12345678
    "0100"  # device class: bit 0, HVAC compressor or furnace
    "00"  # utility enrollment group
    "00000000"  # start time 0 = now
    "3c00"  # duration 60 minutes
    "03"  # criticality level 3
    "ff"  # cooling temperature offset: not used
    "ff"  # heating temperature offset: not used
    "f609"  # cooling temperature set point 2550 = 25.50 C
    "0080"  # heating temperature set point: not used
    "80"  # average load adjustment percentage: not used
    "32"  # duty cycle 50 %
    "03"  # event control: randomize start and end
)
MESSAGE_CONFIRMATION = bytes.fromhex(
    "01"  # ZCL frame control: cluster-specific, client to server
    "07"  # transaction sequence number 7
    "01"  # Messaging command 0x01 Message Confirmation
    "04030201" + NEW_YEAR  # message id 0x01020304  # confirmation time
)
PUBLISH_PRICE = bytes.fromhex(
    "09"  # ZCL frame control: cluster-specific, server to client
    "10"  # transaction sequence number 16
    "00"  # Price command 0x00 Publish Price
    "57040000"  # provider id 1111
    "045045414b"  # rate label "PEAK"
    "44332211"  # issuer event id 0x11223344
    + NEW_YEAR  # current time
    + "00"  # unit of measure: kWh
    "4803"  # currency 840 (USD)
    "21"  # price trailing digit 2, price tier 1
    "31"  # 3 price tiers, register tier 1
    "00000000"  # start time: now
    "ffff"  # duration: until changed
    "d2040000"  # price 1234
    "ff"  # price ratio: not used
    "ffffffff"  # generation price: not used
    "ff"  # generation price ratio: not used
    "ffffffff"  # alternate cost delivered: not used
    "01"  # alternate cost unit: kg CO2
    "20"  # alternate cost trailing digit 2
)

TIMESTAMP = 1_700_000_000.25


# --- byte layout, checked without tshark ------------------------------------------------------


def test_crc16_kermit_check_value() -> None:
    """The FCS is CRC-16/KERMIT: the catalogue check value of b"123456789" is 0x2189."""
    assert crc16_kermit(b"123456789") == 0x2189
    assert crc16_kermit(b"") == 0x0000


def test_file_header_is_classic_libpcap() -> None:
    """The global header: magic a1b2c3d4 little-endian, version 2.4, snaplen 65535, link type."""
    assert file_header() == bytes.fromhex("d4c3b2a1020004000000000000000000ffff0000c3000000")
    assert file_header(LINKTYPE_IEEE802_15_4_NOFCS)[20:] == bytes.fromhex("e6000000")
    with pytest.raises(ValueError, match="link_type"):
        file_header(1)


def test_record_header_holds_time_and_lengths() -> None:
    """A record carries whole seconds, rounded microseconds and the frame length twice."""
    assert record(b"\xaa\xbb", 1_700_000_000.25) == bytes.fromhex(
        "00f1536590d003000200000002000000aabb"
    )
    assert record(b"", 1.9999999)[:8] == struct.pack("<II", 2, 0)
    for bad in (-1.0, float("nan"), float("inf"), 2.0**32):
        with pytest.raises(ValueError, match="timestamp"):
            record(b"", bad)


def test_packet_layout() -> None:
    """MAC, NWK and APS headers sit where the 802.15.4, ZigBee PRO and APS layouts put them."""
    frame = packet(
        MESSAGE_CONFIRMATION,
        cluster_id=0x0703,
        route=DEVICE,
        mac_sequence=5,
        nwk_sequence=6,
        aps_counter=7,
    )
    headers = bytes.fromhex(
        "6188"  # MAC frame control: data, ack request, PAN id compression, short addresses
        "05"  # MAC sequence number
        "621a"  # destination PAN 0x1A62
        "0000"  # MAC destination 0x0000
        "0100"  # MAC source 0x0001
        "4800"  # NWK frame control: data, protocol version 2, discover route, no security
        "0000"  # NWK destination 0x0000
        "0100"  # NWK source 0x0001
        "1e"  # radius 30
        "06"  # NWK sequence number
        "00"  # APS frame control: data, unicast, no security, no ack request
        "01"  # destination endpoint
        "0307"  # cluster 0x0703
        "0901"  # profile 0x0109
        "01"  # source endpoint
        "07"  # APS counter
    )
    body = headers + MESSAGE_CONFIRMATION
    assert frame == body + struct.pack("<H", crc16_kermit(body))
    without_fcs = packet(
        MESSAGE_CONFIRMATION,
        cluster_id=0x0703,
        route=DEVICE,
        mac_sequence=5,
        nwk_sequence=6,
        aps_counter=7,
        link_type=LINKTYPE_IEEE802_15_4_NOFCS,
    )
    assert without_fcs == body


def test_largest_payload_fills_the_psdu() -> None:
    """A ZCL frame of MAX_ZCL bytes makes exactly a 127-byte PSDU (FCS included)."""
    frame = packet(
        bytes(MAX_ZCL), cluster_id=0x0703, route=ESI, mac_sequence=0, nwk_sequence=0, aps_counter=0
    )
    assert len(frame) == MAX_PSDU == 127
    assert MAX_ZCL == 100


def test_oversized_payload_is_refused() -> None:
    """One byte more than fits is refused, naming its size and APS fragmentation."""
    with pytest.raises(ValueError, match=r"101 bytes.*APS fragmentation"):
        packet(
            bytes(MAX_ZCL + 1),
            cluster_id=0x0703,
            route=ESI,
            mac_sequence=0,
            nwk_sequence=0,
            aps_counter=0,
            link_type=LINKTYPE_IEEE802_15_4_NOFCS,
        )


def test_writer_refusal_writes_nothing_and_keeps_counters() -> None:
    """A refused write adds no bytes to the stream and does not advance the counters."""
    stream = io.BytesIO()
    writer = PcapWriter(stream)
    with pytest.raises(ValueError, match="APS fragmentation"):
        writer.write(bytes(MAX_ZCL + 1), cluster_id=0x0703, timestamp=TIMESTAMP)
    assert stream.getvalue() == file_header()
    writer.write(MESSAGE_CONFIRMATION, cluster_id=0x0703, timestamp=TIMESTAMP)
    frame = stream.getvalue()[24 + 16 :]
    assert (frame[2], frame[16], frame[24]) == (0, 0, 0)


def test_writer_counters_wrap_at_256() -> None:
    """Each sender's MAC, NWK and APS counters count 0..255 and wrap to 0."""
    stream = io.BytesIO()
    writer = PcapWriter(stream, link_type=LINKTYPE_IEEE802_15_4_NOFCS)
    for _ in range(257):
        writer.write(MESSAGE_CONFIRMATION, cluster_id=0x0703, timestamp=TIMESTAMP, route=DEVICE)
    size = 16 + 25 + len(MESSAGE_CONFIRMATION)
    data = stream.getvalue()[24:]
    counters = [
        (data[i * size + 16 + 2], data[i * size + 16 + 16], data[i * size + 16 + 24])
        for i in range(257)
    ]
    assert counters[:3] == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    assert counters[255] == (255, 255, 255)
    assert counters[256] == (0, 0, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pan_id", 0xFFFF),
        ("pan_id", -1),
        ("src_nwk", 0xFFFF),
        ("dst_nwk", 0xFFF8),
        ("dst_nwk", 0x10000),
        ("src_endpoint", 0),
        ("src_endpoint", 241),
        ("dst_endpoint", 0),
        ("dst_endpoint", 0xFE),
        ("profile_id", 0x10000),
        ("radius", 0),
        ("radius", 256),
    ],
)
def test_route_validates_each_field(field: str, value: int) -> None:
    """An out-of-range Route field raises ValueError naming that field."""
    with pytest.raises(ValueError, match=f"Route.{field} "):
        Route(**{field: value})


def test_route_refuses_acknowledged_broadcast() -> None:
    """A broadcast cannot ask for an APS acknowledgement."""
    with pytest.raises(ValueError, match="aps_ack_request"):
        Route(dst_nwk=0xFFFF, aps_ack_request=True)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("cluster_id", 0x10000),
        ("mac_sequence", 256),
        ("nwk_sequence", -1),
        ("aps_counter", 256),
        ("link_type", 1),
    ],
)
def test_packet_validates_arguments(argument: str, value: int) -> None:
    """packet() refuses an out-of-range argument, naming it."""
    arguments = {
        "cluster_id": 0x0703,
        "route": ESI,
        "mac_sequence": 0,
        "nwk_sequence": 0,
        "aps_counter": 0,
        argument: value,
    }
    with pytest.raises(ValueError, match=argument):
        packet(MESSAGE_CONFIRMATION, **arguments)


def test_module_is_sans_io() -> None:
    """sep1.pcap imports only the standard library and sep1's CRC: no Twisted, asyncio or hangw."""
    tree = ast.parse(Path(sep1.pcap.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "struct", "dataclasses", "typing", "crc"}  # crc: .crc


# --- tshark as the independent judge ----------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One named item of tshark's PDML tree: displayed value, raw hex, position in the frame."""

    name: str
    show: str
    value: str
    pos: int
    size: int


@dataclass(frozen=True)
class Dissected:
    """One frame as tshark decoded it."""

    length: int
    fields: tuple[Field, ...]

    @property
    def names(self) -> set[str]:
        return {field.name for field in self.fields}

    def show(self, name: str) -> list[str]:
        return [field.show for field in self.fields if field.name == name]

    def one(self, name: str) -> str:
        (value,) = self.show(name)
        return value


def dissect(tshark: str, capture: Path) -> list[Dissected]:
    """Every frame of ``capture`` as tshark's PDML tree, flattened to its named items."""
    done = subprocess.run(
        [tshark, "-n", "-r", str(capture), "-T", "pdml"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    frames = []
    for pdml_packet in ET.fromstring(done.stdout).iter("packet"):
        fields = []
        for item in pdml_packet.iter():
            if item.tag in ("proto", "field") and item.get("name"):
                fields.append(
                    Field(
                        name=item.get("name", ""),
                        show=item.get("show", ""),
                        value=item.get("value", ""),
                        pos=int(item.get("pos", "0")),
                        size=int(item.get("size", "0")),
                    )
                )
        (length,) = [field.size for field in fields if field.name == "frame"]
        frames.append(Dissected(length=length, fields=tuple(fields)))
    return frames


def zcl_end(frame: Dissected) -> int:
    """Where the last ZCL field tshark decoded ends (the layer itself spans trailing bytes too)."""
    zcl_fields = ("zbee_zcl.", "zbee_zcl_se.")
    return max(f.pos + f.size for f in frame.fields if f.name.startswith(zcl_fields) and f.size)


def write_capture(path: Path, link_type: int, frames: list[tuple[bytes, int, Route]]) -> None:
    with path.open("wb") as stream:
        writer = PcapWriter(stream, link_type=link_type)
        for number, (zcl, cluster_id, route) in enumerate(frames):
            writer.write(zcl, cluster_id=cluster_id, timestamp=TIMESTAMP + number, route=route)


SESSION = [
    (LOAD_CONTROL_EVENT, 0x0701, ESI),
    (MESSAGE_CONFIRMATION, 0x0703, DEVICE),
    (PUBLISH_PRICE, 0x0700, ESI),
    (MESSAGE_CONFIRMATION, 0x0703, DEVICE),
    (LOAD_CONTROL_EVENT, 0x0701, ESI),
]


@pytest.fixture(scope="module", params=[LINKTYPE_IEEE802_15_4_WITHFCS, LINKTYPE_IEEE802_15_4_NOFCS])
def session(
    request: pytest.FixtureRequest, tshark: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, list[Dissected]]:
    link_type: int = request.param
    capture = tmp_path_factory.mktemp("pcap") / f"session-{link_type}.pcap"
    write_capture(capture, link_type, SESSION)
    return link_type, dissect(tshark, capture)


def test_tshark_decodes_every_layer(session: tuple[int, list[Dissected]]) -> None:
    """tshark decodes wpan, ZigBee NWK v2 without security, APS data and the SE cluster layer."""
    _, frames = session
    layers = {0x0700: "price", 0x0701: "drlc", 0x0703: "msg"}
    for frame, (_, cluster_id, _) in zip(frames, SESSION, strict=True):
        assert frame.one("frame.protocols") == (
            f"wpan:zbee_nwk:zbee_aps:zbee_zcl:zbee_zcl_se.{layers[cluster_id]}"
        )
        assert frame.one("wpan.frame_type") == "0x0001"
        assert frame.one("zbee_nwk.proto_version") == "2"
        assert frame.one("zbee_nwk.security") == "0"
        assert frame.one("zbee_aps.type") == "0x00"
        assert frame.one("zbee_aps.cluster") == f"0x{cluster_id:04x}"


def test_aps_profile_is_smart_energy(session: tuple[int, list[Dissected]]) -> None:
    """Every frame's APS profile is 0x0109 (tshark itself does not check the profile)."""
    _, frames = session
    assert [frame.one("zbee_aps.profile") for frame in frames] == ["0x0109"] * len(SESSION)


def test_tshark_finds_nothing_malformed_or_undecoded(session: tuple[int, list[Dissected]]) -> None:
    """No frame is malformed or draws an expert note, and ZCL fields reach the frame's last byte."""
    link_type, frames = session
    fcs = 2 if link_type == LINKTYPE_IEEE802_15_4_WITHFCS else 0
    for frame, (zcl, _, _) in zip(frames, SESSION, strict=True):
        assert not {name for name in frame.names if name.startswith("_ws.")}
        assert "data" not in frame.names
        assert frame.length == 25 + len(zcl) + fcs
        assert zcl_end(frame) == frame.length - fcs


def test_fcs_is_reported_valid(session: tuple[int, list[Dissected]]) -> None:
    """With link type 195 tshark checks every FCS and finds it correct; 230 carries none."""
    link_type, frames = session
    for frame in frames:
        if link_type == LINKTYPE_IEEE802_15_4_WITHFCS:
            assert frame.one("wpan.fcs_ok") == "1"
            assert len(frame.show("wpan.fcs")) == 1
        else:
            assert frame.show("wpan.fcs") == []


def test_sequence_counters_increment_per_sender(session: tuple[int, list[Dissected]]) -> None:
    """MAC, NWK and APS counters count up per sending node: ESI 0,1,2 and the device 0,1."""
    _, frames = session
    counters = [
        (
            frame.one("wpan.src16"),
            frame.one("wpan.seq_no"),
            frame.one("zbee_nwk.seqno"),
            frame.one("zbee_aps.counter"),
        )
        for frame in frames
    ]
    assert counters == [
        ("0x0000", "0", "0", "0"),
        ("0x0001", "0", "0", "0"),
        ("0x0000", "1", "1", "1"),
        ("0x0001", "1", "1", "1"),
        ("0x0000", "2", "2", "2"),
    ]


def test_addresses_endpoints_and_time(session: tuple[int, list[Dissected]]) -> None:
    """PAN, NWK addresses, endpoints and the record timestamps come out as written."""
    _, frames = session
    first, second = frames[0], frames[1]
    assert first.one("wpan.dst_pan") == "0x1a62"
    assert (first.one("zbee_nwk.src"), first.one("zbee_nwk.dst")) == ("0x0000", "0x0001")
    assert (second.one("zbee_nwk.src"), second.one("zbee_nwk.dst")) == ("0x0001", "0x0000")
    assert (first.one("zbee_aps.src"), first.one("zbee_aps.dst")) == ("1", "1")
    assert first.one("zbee_nwk.radius") == "30"
    assert [frame.one("frame.time_epoch") for frame in frames[:2]] == [
        "1700000000.250000000",
        "1700000001.250000000",
    ]


def test_load_control_event_fields(session: tuple[int, list[Dissected]]) -> None:
    """tshark reads the hand-built Load Control Event's fields as the spec lays them out."""
    _, frames = session
    event = frames[0]
    assert event.one("zbee_zcl.dir") == "1"
    assert event.one("zbee_zcl.cmd.tsn") == "42"
    assert event.one("zbee_zcl_se.drlc.cmd.srv_tx.id") == "0x00"
    assert event.one("zbee_zcl_se.drlc.issuer_id") == "0x12345678"
    assert event.one("zbee_zcl_se.drlc.device_class") == "0x0001"
    assert event.one("zbee_zcl_se.drlc.start_time") == "0"
    assert event.one("zbee_zcl_se.drlc.duration_in_minutes") == "60"
    assert event.one("zbee_zcl_se.drlc.criticality_level") == "0x03"
    assert event.one("zbee_zcl_se.drlc.cooling_temperature_set_point") == "2550"
    (cooling,) = [f for f in event.fields if f.name.endswith("cooling_temperature_set_point")]
    assert (cooling.value, cooling.pos, cooling.size) == ("f609", 25 + 3 + 16, 2)
    assert event.one("zbee_zcl_se.drlc.heating_temperature_set_point") == "-32768"
    assert event.one("zbee_zcl_se.drlc.average_load_adjustment_percentage") == "-128"
    assert event.one("zbee_zcl_se.drlc.duty_cycle") == "0x32"
    assert event.one("zbee_zcl_se.drlc.event_control") == "0x03"


def test_message_confirmation_fields(session: tuple[int, list[Dissected]]) -> None:
    """tshark reads the hand-built Message Confirmation (client to server) as the spec says."""
    _, frames = session
    confirmation = frames[1]
    assert confirmation.one("zbee_zcl.dir") == "0"
    assert confirmation.one("zbee_zcl_se.msg.cmd.srv_rx.id") == "0x01"
    assert confirmation.one("zbee_zcl_se.msg.message.id") == "0x01020304"
    assert (
        confirmation.one("zbee_zcl_se.msg.message.confirm_time")
        == "Jan  1, 2024 00:00:00.000000000 UTC"
    )


def test_publish_price_fields(session: tuple[int, list[Dissected]]) -> None:
    """tshark reads all 17 fields of the hand-built Publish Price, optional ones included."""
    _, frames = session
    price = frames[2]
    assert price.one("zbee_zcl_se.price.cmd.srv_tx.id") == "0x00"
    assert price.one("zbee_zcl_se.price.provider_id") == "1111"
    assert price.one("zbee_zcl_se.price.rate_label") == "PEAK"
    assert price.one("zbee_zcl_se.price.issuer_event_id") == str(0x11223344)
    assert price.one("zbee_zcl_se.price.current_time") == "Jan  1, 2024 00:00:00.000000000 UTC"
    assert price.one("zbee_zcl_se.price.currency") == "0x0348"
    assert price.one("zbee_zcl_se.price.price") == "1234"
    assert price.one("zbee_zcl_se.price.alternate_cost.unit") == "0x01"


def test_checks_catch_trailing_bytes_and_bad_fcs(tshark: str, tmp_path: Path) -> None:
    """The judge's checks can fail: a trailing byte and a corrupted FCS are both caught."""
    trailing = LOAD_CONTROL_EVENT + b"\x00"
    capture = tmp_path / "broken.pcap"
    write_capture(capture, LINKTYPE_IEEE802_15_4_WITHFCS, [(trailing, 0x0701, ESI)])
    good = packet(
        LOAD_CONTROL_EVENT,
        cluster_id=0x0701,
        route=ESI,
        mac_sequence=0,
        nwk_sequence=0,
        aps_counter=0,
    )
    corrupted = good[:-1] + bytes([good[-1] ^ 0x01])
    with capture.open("ab") as stream:
        stream.write(record(corrupted, TIMESTAMP))
    with_trailing, with_bad_fcs = dissect(tshark, capture)
    assert zcl_end(with_trailing) == with_trailing.length - 3  # tshark skips the extra byte
    assert with_bad_fcs.one("wpan.fcs_ok") == "0"
    assert "zbee_zcl" not in with_bad_fcs.names


def test_broadcast_route(tshark: str, tmp_path: Path) -> None:
    """A broadcast route makes a MAC broadcast without ack request and an APS broadcast."""
    capture = tmp_path / "broadcast.pcap"
    everyone = Route(dst_nwk=0xFFFD, dst_endpoint=0xFF)
    write_capture(capture, LINKTYPE_IEEE802_15_4_WITHFCS, [(PUBLISH_PRICE, 0x0700, everyone)])
    (frame,) = dissect(tshark, capture)
    assert frame.one("wpan.dst16") == "0xffff"
    assert frame.one("wpan.ack_request") == "0"
    assert frame.one("zbee_nwk.dst") == "0xfffd"
    assert frame.one("zbee_aps.delivery") == "0x02"
    assert frame.one("zbee_aps.dst") == "255"
    assert frame.one("frame.protocols").endswith("zbee_zcl_se.price")
    assert not {name for name in frame.names if name.startswith("_ws.")}


def test_profile_comes_from_the_route(tshark: str, tmp_path: Path) -> None:
    """tshark shows whatever profile the route names, so checking 0x0109 above means something."""
    capture = tmp_path / "home-automation.pcap"
    other = Route(profile_id=0x0104, aps_ack_request=True)
    write_capture(capture, LINKTYPE_IEEE802_15_4_WITHFCS, [(LOAD_CONTROL_EVENT, 0x0701, other)])
    (frame,) = dissect(tshark, capture)
    assert frame.one("zbee_aps.profile") == "0x0104"
    assert frame.one("zbee_aps.ack_req") == "1"
