"""zigpy as a second judge of sep1's bytes, and sep1's zigpy clusters and SE device at work.

The schemas compared here are derived from sep1's field tables, but serialized and parsed by
zigpy's own type system; Metering and Read Attributes are also checked against the definitions
zigpy ships itself, which owe nothing to sep1.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sep1
from tests.sep1_strategies import ALL_TYPES, messages_of

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import zigpy.endpoint
    import zigpy.types as t
    import zigpy.zdo.types as zdo_t
    from zigpy.zcl import Cluster, foundation
    from zigpy.zcl.clusters import smartenergy

    from sep1 import zigpy_schemas
    from simulators.zigpy_radio import FakeRadioApplication

CLUSTER_TYPES = [cls for cls in ALL_TYPES if not cls.GENERAL]


def test_every_cluster_command_has_a_zigpy_definition() -> None:
    """Price, DRLC and Messaging clusters carry every SE 1.0 command of sep1 on the right side."""
    for cluster in (
        zigpy_schemas.PriceCluster,
        zigpy_schemas.DrlcCluster,
        zigpy_schemas.MessagingCluster,
    ):
        for cls in CLUSTER_TYPES:
            if cls.CLUSTER_ID != cluster.cluster_id:
                continue
            # zigpy: server_commands are what a server receives (client to server).
            table = cluster.client_commands if cls.SERVER_TO_CLIENT else cluster.server_commands
            assert table[cls.COMMAND_ID].name == zigpy_schemas.command_def(cls).name


def test_zigpy_serializes_and_parses_like_sep1() -> None:
    """For every cluster command zigpy serializes sep1's bytes and parses them back the same."""
    for cls in CLUSTER_TYPES:
        check_against_zigpy(cls)


def check_against_zigpy(cls: type[sep1.Message]) -> None:
    schema = zigpy_schemas.command_def(cls).schema

    @settings(max_examples=120, deadline=None)
    @given(message=messages_of(cls), tsn=st.integers(0, 255))
    def judge(message: sep1.Message, tsn: int) -> None:
        frame = sep1.encode(message, tsn)
        header, payload = foundation.ZCLHeader.deserialize(frame)
        assert (header.tsn, header.command_id) == (tsn, cls.COMMAND_ID)
        assert header.frame_control.frame_type == foundation.FrameType.CLUSTER_COMMAND
        expected_direction = (
            foundation.Direction.Server_to_Client
            if cls.SERVER_TO_CLIENT
            else foundation.Direction.Client_to_Server
        )
        assert header.direction == expected_direction
        assert schema(**zigpy_schemas.to_zigpy(message)).serialize() == payload
        parsed, rest = schema.deserialize(payload)
        assert rest == b""
        assert zigpy_schemas.from_zigpy(cls, parsed) == message

    judge()


def test_zigpy_schema_writes_text_length_in_utf8_bytes() -> None:
    """The zigpy schema writes a non-ASCII text's UTF-8 byte count as its length, like sep1."""
    text = "Précio: 12¢"
    encoded = text.encode()
    assert (len(text), len(encoded)) == (11, 13)  # é and ¢ are two bytes each
    message = sep1.DisplayMessage(message_id=9, message=text)
    schema = zigpy_schemas.command_def(sep1.DisplayMessage).schema
    zigpy_payload = schema(**zigpy_schemas.to_zigpy(message)).serialize()
    assert zigpy_payload.endswith(bytes([13]) + encoded)
    assert zigpy_payload == sep1.encode(message, 1)[3:]
    parsed, rest = schema.deserialize(zigpy_payload)
    assert rest == b"" and zigpy_schemas.from_zigpy(sep1.DisplayMessage, parsed) == message


def test_zigpy_schema_reads_text_as_sep1_does() -> None:
    """The zigpy schema keeps text after a NUL and refuses invalid UTF-8, as sep1.decode does."""
    schema = zigpy_schemas.command_def(sep1.DisplayMessage).schema
    head = bytes(11)  # message id, control, start time, duration
    parsed, rest = schema.deserialize(head + b"\x05a\x00b\xc3\xa9")
    assert rest == b"" and parsed.message == "a\x00bé"
    with pytest.raises(ValueError):
        schema.deserialize(head + b"\x02\xc3\x28")
    with pytest.raises(ValueError):
        schema.deserialize(head + b"\x05abc")


@settings(max_examples=200, deadline=None)
@given(message=st.one_of(messages_of(sep1.GetProfile), messages_of(sep1.GetProfileResponse)))
def test_metering_matches_zigpys_own_definitions(message: sep1.Message) -> None:
    """Get Profile and its response are byte-identical to zigpy's built-in Metering definitions."""
    if isinstance(message, sep1.GetProfile):
        schema = smartenergy.Metering.ServerCommandDefs.get_profile.schema
        kwargs: dict[str, Any] = {
            "interval_channel": message.interval_channel,
            "end_time": message.end_time,
            "number_of_periods": message.number_of_periods,
        }
    else:
        assert isinstance(message, sep1.GetProfileResponse)
        schema = smartenergy.Metering.ClientCommandDefs.get_profile_response.schema
        kwargs = {
            "end_time": message.end_time,
            "status": message.status,
            "profile_interval_period": message.profile_interval_period,
            "number_of_periods_delivered": len(message.intervals),
            "intervals": list(message.intervals),
        }
    payload = sep1.encode(message, 0)[3:]
    assert schema(**kwargs).serialize() == payload
    parsed, rest = schema.deserialize(payload)
    assert rest == b""
    assert {
        name: (list(v) if isinstance(v, list) else int(v)) for name, v in parsed.as_dict().items()
    } == kwargs


@settings(max_examples=200, deadline=None)
@given(request=messages_of(sep1.ReadAttributes), response=messages_of(sep1.ReadAttributesResponse))
def test_read_attributes_match_zigpys_foundation(
    request: sep1.ReadAttributes, response: sep1.ReadAttributesResponse
) -> None:
    """Read Attributes and its response match zigpy's foundation: ids, types and values."""
    read = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Read_Attributes].schema
    frame = sep1.encode(request, 4)
    header, payload = foundation.ZCLHeader.deserialize(frame)
    assert header.frame_control.frame_type == foundation.FrameType.GLOBAL_COMMAND
    assert header.command_id == foundation.GeneralCommand.Read_Attributes
    assert read(attribute_ids=list(request.attribute_ids)).serialize() == payload
    assert [int(a) for a in read.deserialize(payload)[0].attribute_ids] == list(
        request.attribute_ids
    )

    read_rsp = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Read_Attributes_rsp].schema
    header, payload = foundation.ZCLHeader.deserialize(sep1.encode(response, 5))
    assert header.command_id == foundation.GeneralCommand.Read_Attributes_rsp
    parsed, rest = read_rsp.deserialize(payload)
    assert rest == b""
    seen = []
    for record in parsed.status_records:
        value = None
        if record.status == foundation.Status.SUCCESS:
            type_id = record.value.type
            value = int(record.value.value)
            expected = sep1.METERING_ATTRIBUTES[int(record.attrid)].wire.zcl_type_id
            assert type_id == expected
        seen.append(sep1.AttributeRecord(int(record.attrid), int(record.status), value))
    assert tuple(seen) == response.records
    assert read_rsp(status_records=parsed.status_records).serialize() == payload


def test_clusters_leave_zigpys_registry_alone_unless_asked() -> None:
    """sep1's clusters leave zigpy's registry alone until install_in_registry() is called."""
    registry = Cluster._registry
    saved = {cid: registry[cid] for cid in zigpy_schemas.SE_CLUSTERS}
    assert registry[0x0701] is smartenergy.Drlc
    try:
        zigpy_schemas.install_in_registry()
        assert registry[0x0701] is zigpy_schemas.DrlcCluster
        assert registry[0x0700] is zigpy_schemas.PriceCluster
    finally:
        registry.update(saved)


def make_device(app: FakeRadioApplication) -> tuple[zigpy_schemas.SmartEnergyDevice, Any]:
    """An in-home display that has joined: Price, DRLC and Messaging clients on endpoint 1."""
    ieee = t.EUI64.convert("00:0d:6f:00:0a:bc:de:f1")
    device = zigpy_schemas.SmartEnergyDevice(app, ieee, t.NWK(0x1234))
    device.node_desc = zdo_t.NodeDescriptor(logical_type=zdo_t.LogicalType.EndDevice)
    app.devices[ieee] = device
    endpoint = device.add_endpoint(1)
    endpoint.profile_id = sep1.PROFILE_ID
    endpoint.status = zigpy.endpoint.Status.ZDO_INIT
    for cluster_id in (sep1.PRICE, sep1.DRLC, sep1.MESSAGING):
        endpoint.add_output_cluster(cluster_id)
    zigpy_schemas.SmartEnergyDevice.use_se_clusters(endpoint)
    return device, endpoint


def packet_from_device(cluster_id: int, frame: bytes) -> t.ZigbeePacket:
    return t.ZigbeePacket(
        src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=0x1234),
        src_ep=1,
        dst=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=0x0000),
        dst_ep=1,
        profile_id=sep1.PROFILE_ID,
        cluster_id=cluster_id,
        data=t.SerializableBytes(frame),
        lqi=200,
        rssi=-50,
    )


def test_se_device_hands_profile_0109_frames_to_its_clusters() -> None:
    """Report Event Status and Message Confirmation on profile 0x0109 reach the SE clusters."""

    async def scenario() -> list[tuple[int, sep1.Message]]:
        app = FakeRadioApplication()
        _, endpoint = make_device(app)
        received: list[tuple[int, sep1.Message]] = []
        for cluster_id, cls in (
            (sep1.DRLC, sep1.ReportEventStatus),
            (sep1.MESSAGING, sep1.MessageConfirmation),
        ):
            cluster = endpoint.out_clusters[cluster_id]

            def handle(
                hdr: Any,
                args: Any,
                *,
                cls: type[sep1.Message] = cls,
                cluster_id: int = cluster_id,
                **_: Any,
            ) -> None:
                received.append((cluster_id, zigpy_schemas.from_zigpy(cls, args)))

            cluster.handle_cluster_request = handle
        app.receive(packet_from_device(sep1.DRLC, sep1.encode(REPORT, 9)))
        app.receive(packet_from_device(sep1.MESSAGING, sep1.encode(CONFIRMATION, 10)))
        return received

    assert asyncio.run(scenario()) == [(sep1.DRLC, REPORT), (sep1.MESSAGING, CONFIRMATION)]


def test_plain_zigpy_device_drops_profile_0109_frames() -> None:
    """Without the SE device subclass zigpy ignores the same frame (the gap the subclass fills)."""

    async def scenario() -> list[Any]:
        app = FakeRadioApplication()
        ieee = t.EUI64.convert("00:0d:6f:00:0a:bc:de:f2")
        device = zigpy.device.Device(app, ieee, t.NWK(0x1235))
        device.node_desc = zdo_t.NodeDescriptor(logical_type=zdo_t.LogicalType.EndDevice)
        app.devices[ieee] = device
        endpoint = device.add_endpoint(1)
        endpoint.profile_id = sep1.PROFILE_ID
        endpoint.status = zigpy.endpoint.Status.ZDO_INIT
        endpoint.add_output_cluster(sep1.DRLC, zigpy_schemas.DrlcCluster(endpoint, is_server=False))
        seen: list[Any] = []
        endpoint.out_clusters[sep1.DRLC].handle_cluster_request = lambda hdr, args, **_: (
            seen.append(args)
        )
        packet = packet_from_device(sep1.DRLC, sep1.encode(REPORT, 9))
        app.receive(packet.replace(src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=0x1235)))
        return seen

    assert asyncio.run(scenario()) == []


def send_through_zigpy(message: sep1.Message, tsn: int) -> t.ZigbeePacket:
    """The packet zigpy sends for an ESI command, as the coordinator path sends it."""

    async def scenario() -> t.ZigbeePacket:
        app = FakeRadioApplication()
        _, endpoint = make_device(app)
        await endpoint.out_clusters[message.CLUSTER_ID].client_command(
            message.COMMAND_ID, **zigpy_schemas.to_zigpy(message), tsn=tsn
        )
        return app.sent[-1]

    return asyncio.run(scenario())


def test_esi_commands_sent_through_zigpy_are_sep1_frames() -> None:
    """A Display Message sent through zigpy goes out as sep1's bytes on profile 0x0109."""
    message = sep1.DisplayMessage(
        message_id=42,
        message_control=sep1.MessageControl.make(importance=2, confirmation_required=True),
        duration_in_minutes=30,
        message="Peak price 2-6 pm",
    )
    packet = send_through_zigpy(message, 7)
    assert packet.profile_id == sep1.PROFILE_ID and packet.cluster_id == sep1.MESSAGING
    sent = packet.data.serialize()
    ddr = bool(sent[0] & 0x10)
    assert sent == sep1.encode(message, 7, disable_default_response=ddr)
    assert sep1.decode(sep1.MESSAGING, sent) == message


def test_non_ascii_text_sent_through_zigpy_keeps_every_byte() -> None:
    """Non-ASCII text sent through zigpy carries its UTF-8 byte count, so no text is cut off."""
    text = "Prix: 12 €/kWh"
    encoded = text.encode()
    assert (len(text), len(encoded)) == (14, 16)  # € is three bytes
    message = sep1.DisplayMessage(message_id=42, message=text)
    sent = send_through_zigpy(message, 7).data.serialize()
    assert sent.endswith(bytes([16]) + encoded)
    assert sent == sep1.encode(message, 7, disable_default_response=bool(sent[0] & 0x10))
    decoded = sep1.decode_frame(sep1.MESSAGING, sent)
    assert decoded.message == message and decoded.trailing == b""


def test_zigpys_tsn_and_cluster_id_are_taken_as_they_are() -> None:
    """A reply built with a parsed zigpy header's tsn, decoded on zigpy's cluster id, works."""
    header, _ = foundation.ZCLHeader.deserialize(sep1.encode(sep1.GetCurrentPrice(), 9))
    price = sep1.PublishPrice(provider_id=1, rate_label=b"x", issuer_event_id=1, current_time=1)
    reply = sep1.encode(price, header.tsn)
    assert reply[:3] == bytes([0x09, 9, 0x00])
    assert sep1.ZCLHeader(1, True, header.tsn, 0).tsn == 9
    assert sep1.decode(smartenergy.Price.cluster_id, reply) == price


REPORT = sep1.ReportEventStatus(
    issuer_event_id=0xCAFE0001,
    event_status=sep1.EventStatus.USER_OPTED_OUT,
    event_status_time=800_000_000,
    criticality_level_applied=3,
    cooling_temperature_set_point_applied=2650,
    average_load_adjustment_percentage_applied=-15,
)
CONFIRMATION = sep1.MessageConfirmation(message_id=42, confirmation_time=800_000_100)
