"""sep1's codec: round trips for every message type, header handling and where decoding stops."""

from __future__ import annotations

import enum
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sep1
from tests.sep1_strategies import ALL_TYPES, messages_of

COMMANDS_IN_SEP1_WIRE = {
    # (cluster, server to client, command id): name, from the tables of sep1-wire.md
    (0x0700, False, 0x00): "GetCurrentPrice",
    (0x0700, False, 0x01): "GetScheduledPrices",
    (0x0700, True, 0x00): "PublishPrice",
    (0x0701, False, 0x00): "ReportEventStatus",
    (0x0701, False, 0x01): "GetScheduledEvents",
    (0x0701, True, 0x00): "LoadControlEvent",
    (0x0701, True, 0x01): "CancelLoadControlEvent",
    (0x0701, True, 0x02): "CancelAllLoadControlEvents",
    (0x0702, False, 0x00): "GetProfile",
    (0x0702, True, 0x00): "GetProfileResponse",
    (0x0703, False, 0x00): "GetLastMessage",
    (0x0703, False, 0x01): "MessageConfirmation",
    (0x0703, True, 0x00): "DisplayMessage",
    (0x0703, True, 0x01): "CancelMessage",
}


def test_every_listed_command_has_a_type_in_its_direction() -> None:
    """Every SE 1.0 command of the reference, both directions, has a message type with its ids."""
    cluster_commands = {
        (cluster, s2c, cid): cls.__name__
        for (cluster, general, s2c, cid), cls in sep1.MESSAGE_TYPES.items()
        if not general
    }
    assert cluster_commands == COMMANDS_IN_SEP1_WIRE
    general = {key: cls.__name__ for key, cls in sep1.MESSAGE_TYPES.items() if key[1]}
    assert general == {
        (0x0702, True, False, 0x00): "ReadAttributes",
        (0x0702, True, True, 0x01): "ReadAttributesResponse",
    }


def test_round_trip_every_type() -> None:
    """decode(encode(m)) == m for every message type, and the frame re-encodes to the same bytes."""
    for cls in ALL_TYPES:
        check_round_trip(cls)


def check_round_trip(cls: type[sep1.Message]) -> None:
    # Hypothesis runs inside the test (not on it): pytest-twisted's wrapper and a parametrized
    # @given test do not mix.
    @settings(max_examples=150, deadline=None)
    @given(message=messages_of(cls), tsn=st.integers(0, 255), ddr=st.booleans())
    def round_trip(message: sep1.Message, tsn: int, ddr: bool) -> None:
        frame = sep1.encode(message, tsn, disable_default_response=ddr)
        assert sep1.decode(cls.CLUSTER_ID, frame) == message
        decoded = sep1.decode_frame(cls.CLUSTER_ID, frame)
        assert (decoded.header.tsn, decoded.header.disable_default_response) == (tsn, ddr)
        assert decoded.header.server_to_client is cls.SERVER_TO_CLIENT
        assert sep1.encode(decoded.message, tsn, disable_default_response=ddr) == frame
        assert sep1.encode_frame(decoded) == frame

    round_trip()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), trailing=st.binary(min_size=1, max_size=8))
def test_valid_frames_with_appended_fields_reencode_exactly(
    data: st.DataObject, trailing: bytes
) -> None:
    """Bytes after the last field (a later revision's fields) are kept and re-encoded exactly."""
    cls = data.draw(
        st.sampled_from(
            [
                c
                for c in ALL_TYPES
                if c.FIELDS and c.FIELDS[-1].wire.form not in ("uint16_list", "attribute_records")
            ]
        )
    )
    message = data.draw(messages_of(cls))
    if cls is sep1.PublishPrice and message.optional_fields < 6:  # type: ignore[attr-defined]
        return  # trailing bytes there would be read as the next optional field
    frame = sep1.encode(message, 1) + trailing
    decoded = sep1.decode_frame(cls.CLUSTER_ID, frame)
    assert decoded.message == message and decoded.trailing == trailing
    assert sep1.encode_frame(decoded) == frame


def test_encode_frame_refuses_trailing_bytes_a_receiver_would_read_as_fields() -> None:
    """Trailing bytes after a Publish Price short of optional fields, or after a list that runs to
    the end of the frame, are refused; after a complete fixed-length body they are kept."""
    price_header = sep1.ZCLHeader(1, True, 5, 0x00)
    short = sep1.PublishPrice(1, b"x", 1, 1, optional_fields=0)
    read = sep1.ReadAttributes(attribute_ids=(0x0000,))
    response = sep1.ReadAttributesResponse(records=(sep1.AttributeRecord(0x0001, 0x86),))
    for frame in (
        sep1.Frame(sep1.PRICE, price_header, short, b"\x05"),
        sep1.Frame(sep1.METERING, sep1.ZCLHeader(0, False, 5, 0x00), read, b"\x00\x04"),
        sep1.Frame(sep1.METERING, sep1.ZCLHeader(0, True, 5, 0x01), response, b"\x00\x00\x86"),
    ):
        with pytest.raises(ValueError, match="trailing"):
            sep1.encode_frame(frame)
        assert sep1.encode_frame(sep1.Frame(frame.cluster_id, frame.header, frame.message)) == (
            sep1.encode(frame.message, 5)
        )
    full = sep1.PublishPrice(1, b"x", 1, 1)  # all six optional fields sent
    data = sep1.encode_frame(sep1.Frame(sep1.PRICE, price_header, full, b"\x05\x00"))
    assert data == sep1.encode(full, 5) + b"\x05\x00"
    assert sep1.decode_frame(sep1.PRICE, data) == sep1.Frame(
        sep1.PRICE, price_header, full, b"\x05\x00"
    )


def test_load_control_event_bytes_follow_the_reference_layout() -> None:
    """A Load Control Event is the 23-byte little-endian layout of sep1-wire.md, sentinels too."""
    event = sep1.LoadControlEvent(
        issuer_event_id=0x11223344,
        device_class=sep1.DeviceClass.HVAC_COMPRESSOR_OR_FURNACE | sep1.DeviceClass.WATER_HEATER,
        utility_enrollment_group=7,
        start_time=0x0A0B0C0D,
        duration_in_minutes=120,
        criticality_level=3,
        cooling_temperature_offset=None,
        heating_temperature_offset=15,
        cooling_temperature_set_point=2500,
        heating_temperature_set_point=None,
        average_load_adjustment_percentage=-20,
        duty_cycle=None,
        event_control=sep1.RANDOMIZE_START | sep1.RANDOMIZE_END,
    )
    expected_payload = struct.pack(
        "<IHBIHBBBhhbBB",
        0x11223344,
        0x0005,
        7,
        0x0A0B0C0D,
        120,
        3,
        0xFF,
        15,
        2500,
        -0x8000,
        -20,
        0xFF,
        0x03,
    )
    assert len(expected_payload) == 23
    frame = sep1.encode(event, 0x42)
    assert frame == bytes([0x09, 0x42, 0x00]) + expected_payload


def test_publish_price_optional_fields_absent_read_as_not_used() -> None:
    """A Publish Price that stops after Price reads the rest as not used and re-encodes as short."""
    payload = (
        struct.pack("<I", 77)
        + b"\x03TOU"
        + struct.pack("<IIBHBBIHI", 9, 1000, 0, 840, 0x21, 0x63, 0, 0xFFFF, 1234)
    )
    frame = bytes([0x09, 0x05, 0x00]) + payload
    price = sep1.decode(sep1.PRICE, frame)
    assert isinstance(price, sep1.PublishPrice)
    assert (price.price_trailing_digit, price.price_tier) == (2, 1)
    assert (price.number_of_price_tiers, price.register_tier) == (6, 3)
    assert price.optional_fields == 0
    assert (
        price.price_ratio is None
        and price.generation_price is None
        and price.alternate_cost_delivered is None
    )
    assert sep1.encode(price, 0x05) == frame
    full = sep1.encode(sep1.PublishPrice(77, b"TOU", 9, 1000, price=1234), 1)
    assert full.endswith(b"\xff" + b"\xff" * 4 + b"\xff" + b"\xff" * 4 + b"\x01\x00")


def test_display_message_text_is_length_prefixed_utf8_bytes() -> None:
    """The message string's length byte counts UTF-8 bytes, not characters."""
    message = sep1.DisplayMessage(message_id=1, message="¡Sí! 20°C")
    frame = sep1.encode(message, 0)
    text = "¡Sí! 20°C".encode()
    assert frame[-len(text) - 1] == len(text) == 12
    assert frame.endswith(text)


def test_read_attributes_response_carries_types_and_statuses() -> None:
    """Read Attributes Response records carry each attribute's ZCL type and value, or a status."""
    response = sep1.ReadAttributesResponse(
        (
            sep1.AttributeRecord(0x0000, 0, 0x0000_0102_0304),
            sep1.AttributeRecord(0x0400, 0, -2),
            sep1.AttributeRecord(0x0001, 0x86),
        )
    )
    frame = sep1.encode(response, 3)
    assert frame[:3] == bytes([0x08, 0x03, 0x01])  # general frame, server to client, command 0x01
    assert frame[3:] == (
        bytes.fromhex("00000025040302010000")
        + bytes.fromhex("0004002afeffff")
        + bytes.fromhex("010086")
    )
    assert response.values() == {
        "current_summation_delivered": 0x01020304,
        "instantaneous_demand": -2,
    }


@pytest.mark.parametrize(
    ("cluster", "frame", "field", "words"),
    [
        (0x0701, b"", None, "empty frame"),
        (0x0701, bytes([0x09, 0x01]), None, "sequence number and command id"),
        (0x0701, bytes([0x29, 0x01, 0x00]), None, "reserved frame control"),
        (0x0701, bytes([0x0D, 0x34, 0x12, 0x01, 0x00]), None, "manufacturer-specific"),
        (0x0701, bytes([0x09, 0x01, 0x07]), None, "no cluster command"),
        (0x0006, bytes([0x09, 0x01, 0x00]), None, "not a SE 1.0 cluster"),
        (0x0701, bytes([0x09, 0x01, 0x00]) + bytes(10), "start_time", "frame ends 3 of 4 bytes"),
        (
            0x0701,
            bytes([0x09, 0x01, 0x00]) + bytes(13) + b"\x00" + bytes(9),
            "criticality_level",
            "outside 1..15",
        ),
        (
            0x0701,
            bytes([0x09, 0x01, 0x00]) + bytes(11) + b"\xa1\x05\x01" + bytes(9),
            "duration_in_minutes",
            "1441",
        ),
        (
            0x0703,
            bytes([0x09, 0x01, 0x00]) + bytes(11) + b"\x05ab",
            "message",
            "says 5 bytes but 2 remain",
        ),
        (
            0x0703,
            bytes([0x09, 0x01, 0x00]) + bytes(11) + b"\x02\xc3\x28",
            "message",
            "not valid UTF-8",
        ),
        (0x0703, bytes([0x09, 0x01, 0x00]) + bytes(11) + b"\xff", "message", "invalid string"),
        (
            0x0700,
            bytes([0x09, 0x01, 0x00]) + bytes(4) + b"\x0dABCDEFGHIJKLM",
            "rate_label",
            "over the 12-byte limit",
        ),
        (0x0702, bytes([0x00, 0x01, 0x00, 0x00]), "attribute_ids", "whole number"),
        (
            0x0702,
            bytes([0x08, 0x01, 0x01, 0x00, 0x00, 0x00, 0x23, 0, 0, 0, 0]),
            "records",
            "expected uint48",
        ),
    ],
)
def test_decode_errors_say_where_and_why(
    cluster: int, frame: bytes, field: str | None, words: str
) -> None:
    """A bad frame raises DecodeError naming the cluster, the field where it stopped and why."""
    with pytest.raises(sep1.DecodeError) as caught:
        sep1.decode(cluster, frame)
    error = caught.value
    assert words in str(error)
    assert error.field == field
    if cluster in (0x0700, 0x0701, 0x0702, 0x0703):
        assert error.cluster_id == cluster and f"cluster 0x{cluster:04X}" in str(error)


def test_decoding_refuses_the_invalid_utc_time() -> None:
    """A device's Report Event Status or Message Confirmation at 0xFFFFFFFF is a DecodeError
    naming the time field and its byte."""
    report = struct.pack("<IBIBhhbBBB", 7, 0x02, 0xFFFFFFFF, 3, -0x8000, -0x8000, -0x80, 0xFF, 0, 0)
    confirmation = struct.pack("<II", 42, 0xFFFFFFFF)
    for cluster, command_id, payload, field, offset in (
        (sep1.DRLC, 0x00, report + bytes(42), "event_status_time", 3 + 4 + 1),
        (sep1.MESSAGING, 0x01, confirmation, "confirmation_time", 3 + 4),
    ):
        with pytest.raises(sep1.DecodeError) as caught:
            sep1.decode(cluster, bytes([0x01, 0x05, command_id]) + payload)
        error = caught.value
        assert (error.field, error.offset) == (field, offset)
        assert "0xFFFFFFFF" in error.reason and "invalid" in error.reason


def test_decode_error_offset_points_at_the_field() -> None:
    """The offset of a range fault is the byte where the offending field starts."""
    frame = bytearray(sep1.encode(sep1.LoadControlEvent(1, 1), 0))
    frame[3 + 13] = 0  # criticality level
    with pytest.raises(sep1.DecodeError) as caught:
        sep1.decode(sep1.DRLC, bytes(frame))
    assert caught.value.offset == 16 and caught.value.command == "LoadControlEvent"


def test_encode_refuses_what_is_not_a_frame() -> None:
    """encode refuses a sequence number outside a byte and objects that are not sep1 messages."""
    with pytest.raises(ValueError, match="tsn"):
        sep1.encode(sep1.GetLastMessage(), 256)
    with pytest.raises(TypeError):
        sep1.encode(object(), 1)  # type: ignore[arg-type]


class Uint8(int):
    """An int subclass, as zigpy's uint8_t (a parsed header's tsn) is."""


class Cluster(enum.IntEnum):
    DRLC = 0x0701


def test_integer_subclasses_work_as_the_integers_they_are() -> None:
    """A tsn, command id or cluster id given as an int subclass or IntEnum works as a plain int."""
    event = sep1.LoadControlEvent(issuer_event_id=1, device_class=1)
    frame = sep1.encode(event, Uint8(9))
    assert frame[:3] == bytes([0x09, 9, 0x00])
    assert sep1.decode(Cluster.DRLC, frame) == event
    decoded = sep1.decode_frame(Cluster.DRLC, frame)
    assert type(decoded.cluster_id) is int and decoded.cluster_id == 0x0701
    header = sep1.ZCLHeader(1, True, Uint8(9), Uint8(2), manufacturer_code=Uint8(0x1234))
    assert [type(v) for v in (header.tsn, header.command_id, header.manufacturer_code)] == [int] * 3
    assert header.encode() == bytes([0x0D, 0x34, 0x12, 9, 2])


def test_bools_are_not_ids_and_unknown_clusters_are_named_in_hex() -> None:
    """True is refused as a tsn or cluster id; a cluster sep1 does not decode is shown in hex."""
    with pytest.raises(ValueError, match="tsn"):
        sep1.encode(sep1.GetLastMessage(), True)
    with pytest.raises(ValueError, match="tsn"):
        sep1.ZCLHeader(1, True, True, 0)
    with pytest.raises(sep1.DecodeError, match="bool"):
        sep1.decode(True, bytes([0x09, 0x01, 0x00]))  # type: ignore[arg-type]
    with pytest.raises(sep1.DecodeError, match=r"cluster 0x0006 is not a SE 1\.0 cluster"):
        sep1.decode(0x0006, bytes([0x09, 0x01, 0x00]))


def test_header_with_manufacturer_code_round_trips() -> None:
    """The ZCL header round-trips its manufacturer code, direction and default-response bits."""
    header = sep1.ZCLHeader(
        1, True, 0x7F, 0x02, disable_default_response=True, manufacturer_code=0x1234
    )
    data = header.encode()
    assert data == bytes([0x1D, 0x34, 0x12, 0x7F, 0x02])
    assert sep1.ZCLHeader.decode(data + b"rest") == (header, 5)


def test_sep1_imports_no_io_framework() -> None:
    """Importing sep1 brings in no Twisted, asyncio, logging, database, zigpy or project code."""
    probe = (
        "import sys, sep1, sep1.pcap, sep1.codec, sep1.installcode, sep1.utctime\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(' '.join(sorted(roots & {'twisted', 'asyncio', 'logging', 'sqlalchemy', "
        "'structlog', "
        "'zigpy', 'hangw', 'adapters', 'simulators', 'socket', 'threading'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
