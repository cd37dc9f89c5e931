"""Simulated meters and the HAN devices on them, answering SE 1.0 frames as real ones do.

A ``Fleet`` is the meters one simulated head-end serves: read from the meter CSV (the file
``hangw meters import`` takes), generated (``generated_esiid(i)`` for i < N, each with up to five
devices), or open (any ESI ID, created on first use, as the spine's tests want). Meters and their
devices are made when first touched, so a fleet of 200,000 meters with 1,000,000 devices costs
memory only for what a run reaches; every property of a generated meter or device is drawn from a
generator seeded with the fleet's seed and the meter's ESI ID, so runs repeat.

Each meter is an ESI with devices of three kinds:

- in-home display: shows text messages (Message Confirmation when asked) and prices;
- thermostat: HVAC load control, shows text, takes prices;
- load control switch: water heater and pool pump load control.

A frame sent to a device is decoded with sep1 and answered as SE 1.0 devices do: a Load Control
Event matching the device's class gets Report Event Status "command received", then "started" at
its start and "completed" at its end, or "user opted out" from a device whose user opts out; an
event received after its end is rejected (0xFB); a newer overlapping event for the same class and
group supersedes the older one (0x07); cancels answer "cancelled" (0x06) or, for an event the
device does not know, 0xFD. Publish Price is acknowledged by the ESI. A frame a device cannot
decode fails its delivery with the decoder's reason.

Faults, drawn per meter or device with the configured probabilities: offline meters (deliveries
pending, then failed; provisioning fails), meters whose firmware is not HAN-capable (provisioning
rejected), users who opt out, devices that never answer. Outputs leave through ``emit`` (delivery
statuses and inbound frames), at times set on the injected clock.
"""

from __future__ import annotations

import csv
import enum
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

import sep1
from adapters.commands import (
    TO_ALL,
    TO_ESI,
    DeliveryState,
    DeliveryStatus,
    InboundFrame,
    MeterReading,
    OutboundFrame,
    PingDevice,
    PingEsi,
    PingResult,
    Query,
    QueryFailed,
    QueryResult,
    ReadMeter,
)
from sep1 import utctime
from sep1.messages import (
    METERING_ATTRIBUTES,
    UNSUPPORTED_ATTRIBUTE,
    AttributeRecord,
    CancelAllLoadControlEvents,
    CancelLoadControlEvent,
    CancelMessage,
    DeviceClass,
    DisplayMessage,
    EventStatus,
    LoadControlEvent,
    MessageConfirmation,
    PublishPrice,
    ReadAttributesResponse,
    ReportEventStatus,
)

__all__ = [
    "HAN_INCOMPATIBLE_FIRMWARE",
    "DeviceKind",
    "Fleet",
    "FleetConfig",
    "SimDevice",
    "SimMeter",
    "generated_esiid",
    "generated_mac",
    "write_meter_csv",
]

#: The firmware version of a generated meter that cannot run a HAN, and of one that can.
HAN_INCOMPATIBLE_FIRMWARE = "4.1.0"
HAN_FIRMWARE = "5.2.1"
_ESIID_PREFIX = "10443720"
_OUI = "000D6F"


class DeviceKind(enum.StrEnum):
    IN_HOME_DISPLAY = "ihd"
    THERMOSTAT = "thermostat"
    LOAD_CONTROL_SWITCH = "lcs"


#: The Device Class bits each kind answers load control for (0: no load control).
DEVICE_CLASSES = {
    DeviceKind.IN_HOME_DISPLAY: 0,
    DeviceKind.THERMOSTAT: DeviceClass.HVAC_COMPRESSOR_OR_FURNACE,
    DeviceKind.LOAD_CONTROL_SWITCH: DeviceClass.WATER_HEATER | DeviceClass.POOL_PUMP_SPA_JACUZZI,
}
#: Kinds with a screen (text messages) and kinds that take prices.
_DISPLAYS = {DeviceKind.IN_HOME_DISPLAY, DeviceKind.THERMOSTAT}
#: The kinds of a generated meter's devices, slot by slot.
_SLOTS = (
    DeviceKind.IN_HOME_DISPLAY,
    DeviceKind.THERMOSTAT,
    DeviceKind.LOAD_CONTROL_SWITCH,
    DeviceKind.THERMOSTAT,
    DeviceKind.LOAD_CONTROL_SWITCH,
)


def generated_esiid(index: int) -> str:
    """The ESI ID of generated meter ``index`` (17 digits)."""
    return f"{_ESIID_PREFIX}{index:09d}"


def generated_mac(index: int, slot: int) -> str:
    """The MAC of device ``slot`` (0 to 4) on generated meter ``index``."""
    return f"{_OUI}{index:08X}{slot:02X}"


def kind_of_mac(mac: str) -> DeviceKind:
    """The kind of a device known only by its MAC (one provisioned through the gateway)."""
    return _SLOTS[int(mac[-2:], 16) % len(_SLOTS)]


@dataclass(frozen=True)
class FleetConfig:
    """What the fleet looks like and how its meters and users misbehave."""

    #: Generated meters (0: none; see ``meters_csv`` and ``open``).
    meters: int = 0
    #: Meters from this meter CSV (``hangw meters import`` format); its ESI IDs are served.
    meters_csv: str | None = None
    #: Devices already on each generated or CSV meter (0 to 5), in the kinds of ``_SLOTS``.
    devices_per_meter: int = 0
    #: Probabilities per meter: offline; firmware that cannot run a HAN.
    offline_rate: float = 0.0
    incompatible_rate: float = 0.0
    #: Probabilities per device: its user opts out of load control; it never answers.
    opt_out_rate: float = 0.0
    silent_rate: float = 0.0
    #: Seconds from a frame reaching a device to its answer (delivery, command received).
    answer_delay_s: float = 0.05
    #: Seconds until a user confirms a text that asks for confirmation.
    confirm_delay_s: float = 0.5
    #: Seconds a delivery to an offline meter stays pending before it fails.
    offline_give_up_s: float = 300.0
    seed: int = 0

    @property
    def open(self) -> bool:
        """No meter list: every ESI ID is served (made on first use, online and HAN-capable)."""
        return self.meters == 0 and self.meters_csv is None


class _Event:
    """A load control event a device holds: when it runs, and its pending timers."""

    __slots__ = ("calls", "end", "message", "start", "state")

    def __init__(self, message: LoadControlEvent, start: float, end: float) -> None:
        self.message = message
        self.start = start
        self.end = end
        self.calls: list[IDelayedCall] = []
        self.state = "scheduled"  # scheduled | running | opted_out | over


class SimDevice:
    __slots__ = ("events", "kind", "mac", "messages", "opts_out", "silent")

    def __init__(self, mac: str, kind: DeviceKind, opts_out: bool, silent: bool) -> None:
        self.mac = mac
        self.kind = kind
        self.opts_out = opts_out
        self.silent = silent
        self.events: dict[int, _Event] = {}
        self.messages: dict[int, DisplayMessage] = {}

    @property
    def device_class(self) -> int:
        return DEVICE_CLASSES[self.kind]


class SimMeter:
    __slots__ = ("base_wh", "devices", "esiid", "firmware_version", "han_capable", "offline")

    def __init__(
        self, esiid: str, firmware_version: str, han_capable: bool, offline: bool, base_wh: int
    ) -> None:
        self.esiid = esiid
        self.firmware_version = firmware_version
        self.han_capable = han_capable
        self.offline = offline
        self.devices: dict[str, SimDevice] = {}
        self.base_wh = base_wh


Emit = Callable[[DeliveryStatus | InboundFrame], None]


class Fleet:
    """The meters of one simulated head-end; frames in, statuses and device frames out."""

    def __init__(self, config: FleetConfig, clock: IReactorTime, emit: Emit) -> None:
        self.config = config
        self._clock = clock
        self._emit = emit
        self._meters: dict[str, SimMeter] = {}
        self._csv: dict[str, dict[str, str]] = {}
        self._tsn = 0
        self._decoded: dict[tuple[int, bytes], Any] = {}
        #: Every answer still to come, so that ``stop`` can cancel them.
        self._calls: set[IDelayedCall] = set()
        if config.meters_csv is not None:
            with open(config.meters_csv, newline="", encoding="utf-8") as f:
                self._csv = {row["esiid"]: row for row in csv.DictReader(f)}

    # -- the meters ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._csv) + self.config.meters

    def serves(self, esiid: str) -> bool:
        return self.config.open or esiid in self._csv or self._generated_index(esiid) is not None

    def meter(self, esiid: str) -> SimMeter | None:
        """The meter, made on first use; None when this head-end does not serve the ESI ID."""
        meter = self._meters.get(esiid)
        if meter is None and self.serves(esiid):
            meter = self._meters[esiid] = self._make(esiid)
        return meter

    def _generated_index(self, esiid: str) -> int | None:
        if len(esiid) != 17 or not esiid.startswith(_ESIID_PREFIX) or not esiid.isdigit():
            return None
        index = int(esiid[len(_ESIID_PREFIX) :])
        return index if index < self.config.meters else None

    def _make(self, esiid: str) -> SimMeter:
        config = self.config
        draw = random.Random(f"{config.seed}:{esiid}")
        row = self._csv.get(esiid)
        offline = draw.random() < config.offline_rate
        incompatible = draw.random() < config.incompatible_rate
        if row is not None:
            firmware = row.get("firmware_version") or HAN_FIRMWARE
            capable = row.get("han_capable", "true").strip().lower() in ("true", "yes", "y", "1")
            capable = capable and not incompatible
        else:
            firmware = HAN_INCOMPATIBLE_FIRMWARE if incompatible else HAN_FIRMWARE
            capable = not incompatible
        meter = SimMeter(esiid, firmware, capable, offline, draw.randrange(1_000_000, 90_000_000))
        if not config.open and config.devices_per_meter and capable:
            index = self._generated_index(esiid)
            number = index if index is not None else draw.randrange(1 << 32)
            for slot in range(config.devices_per_meter):
                self._add(meter, generated_mac(number, slot), _SLOTS[slot], draw)
        return meter

    def _add(self, meter: SimMeter, mac: str, kind: DeviceKind, draw: random.Random) -> SimDevice:
        device = SimDevice(
            mac,
            kind,
            opts_out=draw.random() < self.config.opt_out_rate,
            silent=draw.random() < self.config.silent_rate,
        )
        meter.devices[mac] = device
        return device

    def join(self, esiid: str, mac: str) -> None:
        """A provisioned device joined the meter's HAN."""
        meter = self.meter(esiid)
        if meter is not None and mac not in meter.devices:
            self._add(meter, mac, kind_of_mac(mac), random.Random(f"{self.config.seed}:{mac}"))

    def leave(self, esiid: str, mac: str) -> None:
        """A device was removed from the meter's HAN."""
        meter = self._meters.get(esiid)
        if meter is not None:
            device = meter.devices.pop(mac, None)
            if device is not None:
                for event in device.events.values():
                    self._cancel_calls(event)

    def provisioning_refusal(self, esiid: str) -> tuple[str, str] | None:
        """Why provisioning onto this meter cannot work: ("reject" | "fail", reason), or None."""
        meter = self.meter(esiid)
        if meter is None:
            return "reject", f"ESI ID {esiid} is not served by this head-end"
        if not meter.han_capable:
            return "reject", (
                f"meter firmware {meter.firmware_version} is not HAN-capable; "
                "the meter needs a firmware upgrade"
            )
        if meter.offline:
            return "fail", "the meter is offline: the install code could not be loaded"
        return None

    # -- frames -------------------------------------------------------------------------------

    def deliver(self, esiid: str, frame: OutboundFrame) -> None:
        """Carry one frame to the ESI or its devices; statuses and answers leave through emit."""
        meter = self.meter(esiid)
        if meter is None:
            self._status(frame, esiid, DeliveryState.FAILED, "ESI ID not served by this head-end")
            return
        if meter.offline:
            self._status(frame, esiid, DeliveryState.PENDING, "the meter is offline")
            self._later(
                self.config.offline_give_up_s,
                self._status,
                frame,
                esiid,
                DeliveryState.FAILED,
                f"the meter stayed offline for {self.config.offline_give_up_s:g} s",
            )
            return
        try:
            decoded = self._decode(frame.cluster, frame.zcl)
        except sep1.DecodeError as error:
            self._status(
                frame, esiid, DeliveryState.FAILED, f"the device could not decode it: {error}"
            )
            return
        if frame.destination == TO_ESI:
            # the ESI takes prices (and relays them to price-capable devices); nothing else
            if isinstance(decoded, PublishPrice):
                self._status(frame, esiid, DeliveryState.DELIVERED, "price acknowledged by the ESI")
            else:
                self._status(frame, esiid, DeliveryState.FAILED, "the ESI does not take this frame")
            return
        if frame.destination == TO_ALL:
            targets = list(meter.devices.values())
        else:
            device = meter.devices.get(frame.destination)
            if device is None:
                self._status(
                    frame, esiid, DeliveryState.FAILED, "the device is not joined to the meter"
                )
                return
            targets = [device]
        delivered = "acknowledged by the ESI" if frame.destination == TO_ALL else ""
        self._later(
            self.config.answer_delay_s,
            self._status,
            frame,
            esiid,
            DeliveryState.DELIVERED,
            delivered,
        )
        for device in targets:
            if not device.silent:
                self._device_takes(meter, device, decoded)

    def _decode(self, cluster: int, zcl: bytes) -> Any:
        """Decode a frame; a fan-out sends the same bytes to every meter, so they are kept."""
        key = (cluster, zcl)
        message = self._decoded.get(key)
        if message is None:
            message = sep1.decode_frame(cluster, zcl).message
            if len(self._decoded) >= 256:
                self._decoded.clear()
            self._decoded[key] = message
        return message

    def _device_takes(self, meter: SimMeter, device: SimDevice, message: Any) -> None:
        if isinstance(message, LoadControlEvent):
            self._load_control(meter, device, message)
        elif isinstance(message, CancelLoadControlEvent):
            self._cancel(meter, device, message)
        elif isinstance(message, CancelAllLoadControlEvents):
            for event in list(device.events.values()):
                if event.state in ("scheduled", "running"):
                    self._end(meter, device, event, EventStatus.EVENT_CANCELLED)
        elif isinstance(message, DisplayMessage) and device.kind in _DISPLAYS:
            device.messages[message.message_id] = message
            if message.confirmation_required:
                confirmation = MessageConfirmation(
                    message_id=message.message_id,
                    confirmation_time=utctime.from_unix(
                        self._clock.seconds() + self.config.confirm_delay_s
                    ),
                )
                self._later(self.config.confirm_delay_s, self._answer, meter, device, confirmation)
        elif isinstance(message, CancelMessage):
            device.messages.pop(message.message_id, None)

    def _load_control(self, meter: SimMeter, device: SimDevice, lce: LoadControlEvent) -> None:
        if not lce.device_class & device.device_class:
            return  # not for this kind of load: the device ignores it, as SE 1.0 says
        now = self._clock.seconds()
        start = now if lce.start_time == 0 else float(utctime.to_unix(lce.start_time))
        end = start + 60 * lce.duration_in_minutes
        delay = self.config.answer_delay_s
        if end <= now:
            self._later(delay, self._report, meter, device, lce, EventStatus.REJECTED_EVENT_EXPIRED)
            return
        known = device.events.get(lce.issuer_event_id)
        if known is not None and known.state != "over":
            self._later(delay, self._report, meter, device, lce, EventStatus.COMMAND_RECEIVED)
            return  # the same event again: answered, not scheduled twice
        for older in list(device.events.values()):
            if (
                older.state in ("scheduled", "running")
                and older.message.utility_enrollment_group == lce.utility_enrollment_group
                and older.message.device_class & lce.device_class
                and older.start < end
                and start < older.end
            ):
                self._end(meter, device, older, EventStatus.EVENT_SUPERSEDED)
        event = _Event(lce, start, end)
        device.events[lce.issuer_event_id] = event
        event.calls.append(
            self._later(delay, self._report, meter, device, lce, EventStatus.COMMAND_RECEIVED)
        )
        begin = max(start - now, delay)
        event.calls.append(self._later(begin, self._begin, meter, device, event))

    def _begin(self, meter: SimMeter, device: SimDevice, event: _Event) -> None:
        if event.state != "scheduled":
            return
        if device.opts_out:
            event.state = "opted_out"
            self._report(meter, device, event.message, EventStatus.USER_OPTED_OUT)
            event.calls = [
                self._later(
                    max(event.end - self._clock.seconds(), 0.0),
                    self._finish,
                    meter,
                    device,
                    event,
                    EventStatus.COMPLETED_NO_USER_PARTICIPATION,
                )
            ]
            return
        event.state = "running"
        self._report(meter, device, event.message, EventStatus.EVENT_STARTED)
        event.calls = [
            self._later(
                max(event.end - self._clock.seconds(), 0.0),
                self._finish,
                meter,
                device,
                event,
                EventStatus.EVENT_COMPLETED,
            )
        ]

    def _finish(self, meter: SimMeter, device: SimDevice, event: _Event, status: int) -> None:
        if event.state in ("running", "opted_out"):
            event.state = "over"
            self._report(meter, device, event.message, status)

    def _end(self, meter: SimMeter, device: SimDevice, event: _Event, status: int) -> None:
        """Cancelled or superseded: the pending timers go and the device says so."""
        self._cancel_calls(event)
        event.state = "over"
        self._later(self.config.answer_delay_s, self._report, meter, device, event.message, status)

    def _cancel(self, meter: SimMeter, device: SimDevice, cancel: CancelLoadControlEvent) -> None:
        if not cancel.device_class & device.device_class:
            return
        event = device.events.get(cancel.issuer_event_id)
        if event is None or event.state == "over":
            self._later(
                self.config.answer_delay_s,
                self._report_id,
                meter,
                device,
                cancel.issuer_event_id,
                EventStatus.REJECTED_INVALID_CANCEL_UNDEFINED_EVENT,
            )
            return
        self._end(meter, device, event, EventStatus.EVENT_CANCELLED)

    def _cancel_calls(self, event: _Event) -> None:
        for call in event.calls:
            if call.active():
                call.cancel()
            self._calls.discard(call)
        event.calls = []

    # -- what leaves --------------------------------------------------------------------------

    def _later(self, delay: float, f: Callable[..., Any], *args: Any) -> IDelayedCall:
        holder: list[IDelayedCall] = []
        call = self._clock.callLater(delay, self._run, holder, f, args)
        holder.append(call)
        self._calls.add(call)
        return call

    def _run(
        self, holder: list[IDelayedCall], f: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self._calls.discard(holder[0])
        f(*args)

    def stop(self) -> None:
        """Cancel every answer still to come (the head-end stopped)."""
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()

    def _status(self, frame: OutboundFrame, esiid: str, state: DeliveryState, reason: str) -> None:
        self._emit(DeliveryStatus(frame.delivery_id, esiid, state, reason))

    def _report(
        self, meter: SimMeter, device: SimDevice, lce: LoadControlEvent, status: int
    ) -> None:
        applied = status in (EventStatus.EVENT_STARTED, EventStatus.EVENT_COMPLETED)
        report = ReportEventStatus(
            issuer_event_id=lce.issuer_event_id,
            event_status=status,
            event_status_time=utctime.from_unix(self._clock.seconds()),
            criticality_level_applied=lce.criticality_level,
            cooling_temperature_set_point_applied=(
                lce.cooling_temperature_set_point if applied else None
            ),
            heating_temperature_set_point_applied=(
                lce.heating_temperature_set_point if applied else None
            ),
            average_load_adjustment_percentage_applied=(
                lce.average_load_adjustment_percentage if applied else None
            ),
            duty_cycle_applied=lce.duty_cycle if applied else None,
            event_control=lce.event_control,
        )
        self._answer(meter, device, report)

    def _report_id(
        self, meter: SimMeter, device: SimDevice, issuer_event_id: int, status: int
    ) -> None:
        report = ReportEventStatus(
            issuer_event_id=issuer_event_id,
            event_status=status,
            event_status_time=utctime.from_unix(self._clock.seconds()),
            criticality_level_applied=0,
        )
        self._answer(meter, device, report)

    def _answer(self, meter: SimMeter, device: SimDevice, message: Any) -> None:
        if meter.devices.get(device.mac) is not device:
            return  # removed from the HAN meanwhile
        self._tsn = (self._tsn + 1) & 0xFF
        zcl = sep1.encode(message, self._tsn)
        self._emit(
            InboundFrame(
                esiid=meter.esiid,
                source=device.mac,
                cluster=type(message).CLUSTER_ID,
                zcl=zcl,
                received_at=self._clock.seconds(),
            )
        )

    # -- queries ------------------------------------------------------------------------------

    def query(self, query: Query) -> QueryResult:
        """Answer a ping or a meter read; raises QueryFailed when the meter cannot answer."""
        meter = self.meter(query.esiid)
        if meter is None:
            raise QueryFailed(f"ESI ID {query.esiid} is not served by this head-end")
        if isinstance(query, PingEsi):
            if meter.offline:
                return PingResult(False, "the meter did not answer (offline)")
            return PingResult(True, firmware_version=meter.firmware_version, rtt_ms=120.0)
        if isinstance(query, PingDevice):
            if meter.offline:
                return PingResult(False, "the meter did not answer (offline)")
            device = meter.devices.get(query.mac)
            if device is None:
                return PingResult(False, "the device is not joined to the meter")
            if device.silent:
                return PingResult(False, "the device did not answer")
            return PingResult(True, rtt_ms=240.0)
        if isinstance(query, ReadMeter):
            if meter.offline:
                raise QueryFailed("the meter did not answer (offline)")
            return self._read(meter, query.attribute_ids)
        raise QueryFailed(f"no such query {type(query).__name__}")

    def summation_wh(self, meter: SimMeter, at: float) -> int:
        """The meter's register: a base plus 1.2 kW since 2000, in Wh (it only goes up)."""
        return meter.base_wh + int(1200 * (at - utctime.UNIX_OFFSET) / 3600)

    def _read(self, meter: SimMeter, attribute_ids: tuple[int, ...]) -> MeterReading:
        now = self._clock.seconds()
        values = {
            0x0000: self.summation_wh(meter, now),
            0x0001: 0,
            0x0200: 0,
            0x0300: 0,  # kWh
            0x0301: 1,
            0x0302: 1000,
            0x0303: 0x33,
            0x0306: 0,  # electric metering
            0x0400: 1200,  # W
        }
        records = tuple(
            AttributeRecord(a, value=values[a])
            if a in values and a in METERING_ATTRIBUTES
            else AttributeRecord(a, status=UNSUPPORTED_ATTRIBUTE)
            for a in attribute_ids
        )
        self._tsn = (self._tsn + 1) & 0xFF
        return MeterReading(sep1.encode(ReadAttributesResponse(records=records), self._tsn), now)


def iter_generated(count: int) -> Iterator[str]:
    for index in range(count):
        yield generated_esiid(index)


def write_meter_csv(
    path: Path,
    count: int,
    *,
    tdsp_duns: str,
    ror_duns: str,
    seed: int = 0,
    incompatible_rate: float = 0.0,
) -> int:
    """Write the meter CSV of a generated fleet (the registry ``hangw meters import`` loads).

    The firmware and HAN capability of each meter are what the fleet itself will say, so the
    gateway and the simulator agree; returns the number of meters written.
    """
    config = FleetConfig(meters=count, seed=seed, incompatible_rate=incompatible_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "esiid",
                "meter_serial",
                "tdsp_duns",
                "ror_duns",
                "hardware_version",
                "firmware_version",
                "han_capable",
                "active",
            ]
        )
        for index, esiid in enumerate(iter_generated(count)):
            draw = random.Random(f"{config.seed}:{esiid}")
            draw.random()  # the offline draw: the registry does not know a meter is offline
            incompatible = draw.random() < config.incompatible_rate
            firmware = HAN_INCOMPATIBLE_FIRMWARE if incompatible else HAN_FIRMWARE
            out.writerow(
                [
                    esiid,
                    f"SIM{index:09d}",
                    tdsp_duns,
                    ror_duns,
                    "GE-I210+c",
                    firmware,
                    "false" if incompatible else "true",
                    "true",
                ]
            )
    return count
