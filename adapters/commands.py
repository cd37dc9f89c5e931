"""What the gateway asks of a head-end and what a head-end reports back.

Plain frozen values, shared by every adapter (in-process simulator, adapter protocol, coordinator),
so an adapter never needs to import the daemon. Secrets (install codes, link keys) are carried as
bytes and are left out of every ``repr``.

- Commands (``Command``) are durable: they leave through the outbox, carry a ``command_id``, are
  acknowledged by the head-end and applied once however often they are sent.
- Queries (``Query``: ping an ESI, ping a device, read the meter) are asked while a person waits;
  they are not queued, and an unreachable head-end answers at once with an error.
- Events come back: provisioning reports, delivery statuses, inbound ZCL frames, meter events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class HeadEndStatus(enum.StrEnum):
    """Provisioning statuses a head-end reports (the TDSP side of smt-han.md's conditions)."""

    ACKNOWLEDGED = "acknowledged"
    ADD_PENDING = "add-pending"
    METER_READY = "meter-ready"
    DEVICE_JOINED = "device-joined"
    ADD_REJECTED = "add-rejected"
    ADD_FAILED = "add-failed"
    REMOVE_PENDING = "remove-pending"
    REMOVE_REJECTED = "remove-rejected"
    REMOVE_FAILED = "remove-failed"
    DEVICE_REMOVED = "device-removed"


@dataclass(frozen=True)
class ProvisionDevice:
    """Load a device's install code into the meter and open its join window."""

    command_id: str
    esiid: str
    device_id: str
    mac: str
    install_code: bytes = field(repr=False)
    link_key: bytes = field(repr=False)
    join_window_s: int
    #: What the device is, as the gateway registered it (``in_home_display``, ``thermostat``,
    #: ``load_control``, ``smart_appliance``, ``range_extender``, ``other``); "" if not known.
    device_type: str = ""


@dataclass(frozen=True)
class DeprovisionDevice:
    """Remove a device from the meter's HAN."""

    command_id: str
    esiid: str
    device_id: str
    mac: str


#: ``OutboundFrame.destination`` for the ESI itself (the meter), and for every device on its HAN.
TO_ESI = "esi"
TO_ALL = "all"


@dataclass(frozen=True)
class OutboundFrame:
    """One SE 1.0 ZCL frame for the HAN of an ESI ID, tracked under its ``delivery_id``."""

    delivery_id: str
    #: A device's MAC (16 upper-case hex digits), ``"all"`` (every device) or ``"esi"``.
    destination: str
    cluster: int
    zcl: bytes


@dataclass(frozen=True)
class SendFrames:
    """Send SE 1.0 frames to the HAN of one ESI ID (the meter relays them to its devices)."""

    command_id: str
    esiid: str
    frames: tuple[OutboundFrame, ...]


@dataclass(frozen=True)
class FanOutTarget:
    """One ESI ID of a fan-out, and the delivery that tracks the frame there."""

    esiid: str
    delivery_id: str


@dataclass(frozen=True)
class FanOutFrame:
    """One SE 1.0 frame for the HANs of many ESI IDs: a price, an event or a text to a program.

    Every target gets the same bytes (the same issuer event id, the same fields); the head-end
    reports a ``DeliveryStatus`` per target under the target's ``delivery_id``, and the devices'
    answers come back as ``InboundFrame``s.
    """

    command_id: str
    #: ``"all"`` (every device on each HAN) or ``"esi"`` (the meter itself).
    destination: str
    cluster: int
    zcl: bytes
    targets: tuple[FanOutTarget, ...]


Command = ProvisionDevice | DeprovisionDevice | SendFrames | FanOutFrame


@dataclass(frozen=True)
class PingEsi:
    """Is the meter (the ESI) reachable, and which firmware does it run?"""

    esiid: str


@dataclass(frozen=True)
class PingDevice:
    """Is this HAN device joined to the meter and answering?"""

    esiid: str
    mac: str


@dataclass(frozen=True)
class ReadMeter:
    """Read Metering cluster attributes from the meter (ZCL Read Attributes, 0x0702)."""

    esiid: str
    attribute_ids: tuple[int, ...]


Query = PingEsi | PingDevice | ReadMeter


@dataclass(frozen=True)
class PingResult:
    """The answer to a ping: reachable or not, and why not."""

    reachable: bool
    reason: str = ""
    #: The meter's firmware version when the head-end knows it (ping ESI).
    firmware_version: str = ""
    #: Round-trip time the head-end measured, in milliseconds (0: not measured).
    rtt_ms: float = 0.0


@dataclass(frozen=True)
class MeterReading:
    """The meter's answer to ReadMeter: a ZCL Read Attributes Response frame (decode with sep1)."""

    zcl: bytes
    #: When the meter answered, POSIX seconds.
    read_at: float


QueryResult = PingResult | MeterReading


class QueryFailed(Exception):
    """A query could not be answered (head-end not connected, meter unknown or offline, timeout)."""


@dataclass(frozen=True)
class ProvisioningReport:
    """A head-end's report about one provisioning or de-provisioning command."""

    command_id: str
    esiid: str
    device_id: str
    status: HeadEndStatus
    reason: str = ""
    #: The TDSP whose head-end sent the report, set by the adapter that received it; the
    #: gateway refuses a report about a meter of another TDSP. Empty: not checked.
    tdsp_duns: str = ""
    #: The head-end's id of the event that carried it, set by the adapter that received it; the
    #: gateway records it with the report's effect and applies a resent copy once. Empty: an
    #: adapter that never resends (the in-process simulator).
    event_id: str = ""


class DeliveryState(enum.StrEnum):
    """What a head-end knows about one frame it was given."""

    #: Handed to the device (or the ESI) and acknowledged at the network layer.
    DELIVERED = "delivered"
    #: Not yet: the meter or the device is not reachable now; the head-end keeps trying.
    PENDING = "pending"
    #: Given up, with the reason.
    FAILED = "failed"


@dataclass(frozen=True)
class DeliveryStatus:
    """A head-end's report on one ``OutboundFrame``."""

    delivery_id: str
    esiid: str
    state: DeliveryState
    reason: str = ""
    tdsp_duns: str = ""
    event_id: str = ""


#: ``InboundFrame.source`` when the frame came from the ESI rather than a device.
FROM_ESI = "esi"


@dataclass(frozen=True)
class InboundFrame:
    """A ZCL frame a HAN device (or the ESI) sent, such as Report Event Status."""

    esiid: str
    #: The device's MAC (16 upper-case hex digits) or ``"esi"``.
    source: str
    cluster: int
    zcl: bytes
    #: When the head-end received it, POSIX seconds.
    received_at: float
    tdsp_duns: str = ""
    event_id: str = ""


class MeterEventKind(enum.StrEnum):
    """Changes to a meter the TDSP tells the gateway about."""

    METER_EXCHANGED = "meter_exchanged"
    METER_REMOVED = "meter_removed"
    FIRMWARE_CHANGED = "firmware_changed"


@dataclass(frozen=True)
class MeterEvent:
    """A meter was exchanged, removed, or its firmware changed; empty fields did not change."""

    esiid: str
    kind: MeterEventKind
    meter_serial: str = ""
    firmware_version: str = ""
    han_capable: bool | None = None
    reason: str = ""
    tdsp_duns: str = ""
    event_id: str = ""


class ReportRefused(Exception):
    """The gateway will not apply a report: it is about a device the head-end does not serve
    (another TDSP's meter, another ESI ID). Resending it does not help."""
