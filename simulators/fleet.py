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

A meter's register (Current Summation Delivered) and demand follow its load profile in
``simulators.usage``, so what a meter read answers agrees with the LSE interval files and
register reads ``hangw-sim lse`` writes for the same ESI IDs.

Faults, drawn per meter or device with the configured probabilities: offline meters (deliveries
pending, then failed; provisioning fails), meters whose firmware is not HAN-capable (provisioning
rejected), users who opt out, devices that never answer.

A frame goes to one meter (``deliver``) or, as a fan-out, to many (``deliver_many``: the same bytes
to each target). Outputs (delivery statuses and inbound frames) leave through ``emit`` in lists:
everything due at the same moment goes in one list, from one delayed call on the injected clock,
and the answers that are the same for many devices (a Report Event Status, a Message
Confirmation) are encoded once per moment, so a fan-out to a million devices costs a few delayed
calls and a few encodings rather than millions.
"""

from __future__ import annotations

import csv
import enum
import gc
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

import sep1
from adapters.commands import (
    TO_ALL,
    TO_ESI,
    DeliveryState,
    DeliveryStatus,
    FanOutFrame,
    FanOutTarget,
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
from simulators import usage

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
_SLOT_HEX = tuple(f"{slot:02X}" for slot in range(len(_SLOTS)))


def generated_esiid(index: int) -> str:
    """The ESI ID of generated meter ``index`` (17 digits)."""
    return f"{_ESIID_PREFIX}{index:09d}"


def generated_mac(index: int, slot: int) -> str:
    """The MAC of device ``slot`` (0 to 4) on generated meter ``index``."""
    return f"{_OUI}{index:08X}{slot:02X}"


def kind_of_mac(mac: str) -> DeviceKind:
    """The kind of a device known only by its MAC (one provisioned without a device type)."""
    return _SLOTS[int(mac[-2:], 16) % len(_SLOTS)]


#: A provisioned device's type (ProvisionDevice.device_type) -> the kind it behaves as, and the
#: Device Class bits it answers load control for: a thermostat runs HVAC, a load control
#: switch the loads a utility switches (water heater, pool pump, irrigation, C&I, simple
#: on/off, lighting, EV), a smart appliance its own class; the others take no load control.
_TYPES: dict[str, tuple[DeviceKind, int]] = {
    "in_home_display": (DeviceKind.IN_HOME_DISPLAY, 0),
    "thermostat": (
        DeviceKind.THERMOSTAT,
        DeviceClass.HVAC_COMPRESSOR_OR_FURNACE | DeviceClass.STRIP_HEATERS_BASEBOARD_HEATERS,
    ),
    "load_control": (
        DeviceKind.LOAD_CONTROL_SWITCH,
        DeviceClass.WATER_HEATER
        | DeviceClass.POOL_PUMP_SPA_JACUZZI
        | DeviceClass.IRRIGATION_PUMP
        | DeviceClass.MANAGED_COMMERCIAL_INDUSTRIAL_LOADS
        | DeviceClass.SIMPLE_MISC_LOADS
        | DeviceClass.EXTERIOR_LIGHTING
        | DeviceClass.INTERIOR_LIGHTING
        | DeviceClass.ELECTRIC_VEHICLE,
    ),
    "smart_appliance": (DeviceKind.LOAD_CONTROL_SWITCH, DeviceClass.SMART_APPLIANCES),
    "range_extender": (DeviceKind.LOAD_CONTROL_SWITCH, 0),
    "other": (DeviceKind.LOAD_CONTROL_SWITCH, 0),
}


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
    """A load control event one device holds: when it runs and where it stands."""

    __slots__ = ("device", "end", "message", "meter", "start", "state")

    def __init__(
        self,
        message: LoadControlEvent,
        start: float,
        end: float,
        meter: SimMeter,
        device: SimDevice,
    ) -> None:
        self.message = message
        self.start = start
        self.end = end
        self.meter = meter
        self.device = device
        self.state = "scheduled"  # scheduled | running | opted_out | over


class SimDevice:
    __slots__ = ("device_class", "events", "kind", "mac", "messages", "opts_out", "silent")

    def __init__(self, mac: str, kind: DeviceKind, opts_out: bool, silent: bool) -> None:
        self.mac = mac
        self.kind = kind
        self.opts_out = opts_out
        self.silent = silent
        #: The Device Class bits it answers load control for (0: none).
        self.device_class = int(DEVICE_CLASSES[kind])
        #: Its load control events, oldest first; an empty tuple until it gets one.
        self.events: list[_Event] | tuple[()] = ()
        #: The text messages it shows, by message id; None until it gets one.
        self.messages: dict[int, DisplayMessage] | None = None

    def live_event(self, issuer_event_id: int) -> _Event | None:
        """The event with this issuer event id that is neither over nor cancelled."""
        for event in self.events:
            if event.message.issuer_event_id == issuer_event_id and event.state != "over":
                return event
        return None


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


Out = DeliveryStatus | InboundFrame
#: Where the fleet's statuses and device frames go: a list of those due at the same moment.
Emit = Callable[[list[Out]], None]

_DRLC = ReportEventStatus.CLUSTER_ID
_APPLIED = (EventStatus.EVENT_STARTED, EventStatus.EVENT_COMPLETED)
_ACTIVE = ("running", "opted_out")


class _Statuses:
    """A delivery status for each target, all in one state for one reason."""

    __slots__ = ("reason", "state", "targets")

    def __init__(self, state: DeliveryState, reason: str) -> None:
        self.state = state
        self.reason = reason
        self.targets: list[FanOutTarget] = []

    def run(self, fleet: Fleet, now: float, out: list[Out]) -> None:
        state, reason = self.state, self.reason
        out.extend([DeliveryStatus(t.delivery_id, t.esiid, state, reason) for t in self.targets])


class _Reports:
    """One Report Event Status about each event: ended ones (superseded, cancelled), or, when
    ``finishing``, the end of each event still running or opted out (completed)."""

    __slots__ = ("events", "finishing", "status")

    def __init__(self, status: int, events: list[_Event], finishing: bool = False) -> None:
        self.status = status
        self.events = events
        self.finishing = finishing

    def run(self, fleet: Fleet, now: float, out: list[Out]) -> None:
        status, finishing = self.status, self.finishing
        last: LoadControlEvent | None = None
        zcl = b""
        for event in self.events:
            meter, device = event.meter, event.device
            if finishing:
                if event.state not in _ACTIVE:
                    continue
                event.state = "over"
            elif meter.devices.get(device.mac) is not device:
                continue  # removed from the HAN meanwhile
            if event.message is not last:
                last = event.message
                zcl = fleet._zcl(last, status, now)
            out.append(InboundFrame(meter.esiid, device.mac, _DRLC, zcl, now))


class _Answers:
    """The same answer from each (meter, device): a report about ``subject`` (an event or a
    cancel) with ``status``, or ``subject`` itself (a Message Confirmation)."""

    __slots__ = ("pairs", "status", "subject")

    def __init__(self, subject: Any, status: int | None) -> None:
        self.subject = subject
        self.status = status
        self.pairs: list[tuple[SimMeter, SimDevice]] = []

    def run(self, fleet: Fleet, now: float, out: list[Out]) -> None:
        subject = self.subject
        cluster = subject.CLUSTER_ID if isinstance(subject, MessageConfirmation) else _DRLC
        zcl: bytes | None = None
        for meter, device in self.pairs:
            if meter.devices.get(device.mac) is not device:
                continue
            if zcl is None:
                zcl = fleet._zcl(subject, self.status, now)
            out.append(InboundFrame(meter.esiid, device.mac, cluster, zcl, now))


class _Received:
    """Command received, from each device whose event was not cancelled or superseded since."""

    __slots__ = ("events",)

    def __init__(self, events: list[_Event]) -> None:
        self.events = events

    def run(self, fleet: Fleet, now: float, out: list[Out]) -> None:
        last: LoadControlEvent | None = None
        zcl = b""
        received = EventStatus.COMMAND_RECEIVED
        for event in self.events:
            if event.state == "over":
                continue
            if event.message is not last:
                last = event.message
                zcl = fleet._zcl(last, received, now)
            out.append(InboundFrame(event.meter.esiid, event.device.mac, _DRLC, zcl, now))


class _Begin:
    """The start of each event still scheduled: started, or opted out by the user; the end is
    scheduled for either."""

    __slots__ = ("events",)

    def __init__(self, events: list[_Event]) -> None:
        self.events = events

    def run(self, fleet: Fleet, now: float, out: list[Out]) -> None:
        ends: dict[tuple[float, int], list[_Event]] = {}
        zcls: dict[tuple[int, int], bytes] = {}
        for event in self.events:
            if event.state != "scheduled":
                continue
            if event.device.opts_out:
                event.state = "opted_out"
                status = EventStatus.USER_OPTED_OUT
                after = EventStatus.COMPLETED_NO_USER_PARTICIPATION
            else:
                event.state = "running"
                status = EventStatus.EVENT_STARTED
                after = EventStatus.EVENT_COMPLETED
            message = event.message
            zcl = zcls.get((id(message), status))
            if zcl is None:
                zcl = zcls[id(message), status] = fleet._zcl(message, status, now)
            out.append(InboundFrame(event.meter.esiid, event.device.mac, _DRLC, zcl, now))
            key = (max(event.end, now), after)
            ending = ends.get(key)
            if ending is None:
                ending = ends[key] = []
            ending.append(event)
        for (at, after), events in ends.items():
            fleet._at(at, _Reports(after, events, finishing=True))


_Entry = _Statuses | _Reports | _Answers | _Received | _Begin


class _Due:
    """Everything due at one moment, run by one delayed call."""

    __slots__ = ("call", "entries")

    def __init__(self, call: IDelayedCall) -> None:
        self.call = call
        self.entries: list[_Entry] = []


class _Plan:
    """What one frame brings about, for all its targets: statuses sent at once, and entries
    shared by every target, placed on the fleet's timeline when the frame has been carried."""

    def __init__(self, fleet: Fleet, now: float) -> None:
        self.fleet = fleet
        self.now = now
        self.reply_at = now + fleet.config.answer_delay_s
        #: Statuses that leave at once.
        self.out: list[Out] = []
        #: Events the devices took, each to be received and begun.
        self.fresh: list[_Event] = []
        self.start = self.end = now
        self._entries: dict[tuple[Any, ...], tuple[float, _Entry]] = {}
        self._confirmation: MessageConfirmation | None = None

    def statuses(self, at: float, state: DeliveryState, reason: str) -> list[FanOutTarget]:
        key = ("statuses", at, state, reason)
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = (at, _Statuses(state, reason))
        entry = found[1]
        assert isinstance(entry, _Statuses)
        return entry.targets

    def reports(self, status: int) -> list[_Event]:
        key = ("reports", status)
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = (self.reply_at, _Reports(status, []))
        entry = found[1]
        assert isinstance(entry, _Reports)
        return entry.events

    def answers(
        self, at: float, subject: Any, status: int | None
    ) -> list[tuple[SimMeter, SimDevice]]:
        key = ("answers", at, id(subject), status)
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = (at, _Answers(subject, status))
        entry = found[1]
        assert isinstance(entry, _Answers)
        return entry.pairs

    def confirmation(self, message: DisplayMessage) -> MessageConfirmation:
        """The confirmation of ``message``, which users give ``confirm_delay_s`` from now."""
        if self._confirmation is None or self._confirmation.message_id != message.message_id:
            self._confirmation = MessageConfirmation(
                message_id=message.message_id,
                confirmation_time=utctime.from_unix(self.now + self.fleet.config.confirm_delay_s),
            )
        return self._confirmation

    def commit(self) -> None:
        """Place every entry; the fresh events' come last, after the reports about the events
        they superseded, and each is received before it begins."""
        placed = list(self._entries.values())
        if self.fresh:
            # one frame, one event: every fresh event has the plan's start and end
            placed.append((self.reply_at, _Received(self.fresh)))
            placed.append((max(self.start, self.reply_at), _Begin(self.fresh)))
        for at, entry in placed:
            self.fleet._at(at, entry)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Cyclic garbage collection paused while a bulk of long-lived objects (meters, devices,
    events, frames) is made: the collector would otherwise walk the growing heap again and
    again, which costs more than making them."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _answer(subject: Any, status: int | None, now: float) -> Any:
    """The message a device sends: a Report Event Status about an event (or, for a cancel of an
    event it does not know, about the event id alone), or, without a status, ``subject``."""
    if status is None:
        return subject
    if isinstance(subject, LoadControlEvent):
        applied = status in _APPLIED
        return ReportEventStatus(
            issuer_event_id=subject.issuer_event_id,
            event_status=status,
            event_status_time=utctime.from_unix(now),
            criticality_level_applied=subject.criticality_level,
            cooling_temperature_set_point_applied=(
                subject.cooling_temperature_set_point if applied else None
            ),
            heating_temperature_set_point_applied=(
                subject.heating_temperature_set_point if applied else None
            ),
            average_load_adjustment_percentage_applied=(
                subject.average_load_adjustment_percentage if applied else None
            ),
            duty_cycle_applied=subject.duty_cycle if applied else None,
            event_control=subject.event_control,
        )
    if isinstance(subject, CancelLoadControlEvent):
        return ReportEventStatus(
            issuer_event_id=subject.issuer_event_id,
            event_status=status,
            event_status_time=utctime.from_unix(now),
            criticality_level_applied=0,
        )
    raise TypeError(f"no report about {type(subject).__name__}")


class Fleet:
    """The meters of one simulated head-end; frames in, statuses and device frames out.

    ``emit`` is called with lists: the statuses a delivery settles at once, and everything
    due at one moment later on (one delayed call on ``clock`` per moment, however many devices
    answer then).
    """

    def __init__(self, config: FleetConfig, clock: IReactorTime, emit: Emit) -> None:
        self.config = config
        self._clock = clock
        self._emit = emit
        self._meters: dict[str, SimMeter] = {}
        self._csv: dict[str, dict[str, str]] = {}
        self._tsn = 0
        self._decoded: dict[tuple[int, bytes], Any] = {}
        #: Encoded answers of the moment being run, by (subject, status).
        self._encoded: dict[tuple[int, int | None], tuple[Any, bytes]] = {}
        #: Everything still to come, by the moment it is due.
        self._due: dict[float, _Due] = {}
        if config.meters_csv is not None:
            with open(config.meters_csv, newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f):
                    row = {
                        k.strip(): (v or "").strip()
                        for k, v in row.items()
                        if k is not None and not isinstance(v, list)  # (a too-long line)
                    }
                    if row.get("esiid"):
                        self._csv[row["esiid"]] = row

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
        draw.randrange(1_000_000, 90_000_000)  # drawn as ever, so the draws after it stay put
        meter = SimMeter(esiid, firmware, capable, offline, usage.base_wh(esiid))
        if not config.open and config.devices_per_meter and capable:
            index = self._generated_index(esiid)
            number = index if index is not None else draw.randrange(1 << 32)
            prefix = generated_mac(number, 0)[:-2]
            uniform = draw.random
            opt_out_rate, silent_rate = config.opt_out_rate, config.silent_rate
            devices = meter.devices
            for slot in range(config.devices_per_meter):
                mac = prefix + _SLOT_HEX[slot]
                opts_out = uniform() < opt_out_rate
                devices[mac] = SimDevice(mac, _SLOTS[slot], opts_out, uniform() < silent_rate)
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

    def join(self, esiid: str, mac: str, device_type: str = "") -> None:
        """A provisioned device joined the meter's HAN; it behaves as its ``device_type`` says
        (as its MAC says, without one)."""
        meter = self.meter(esiid)
        if meter is not None and mac not in meter.devices:
            kind, device_class = _TYPES.get(device_type, (kind_of_mac(mac), None))
            device = self._add(meter, mac, kind, random.Random(f"{self.config.seed}:{mac}"))
            if device_class is not None:
                device.device_class = int(device_class)

    def leave(self, esiid: str, mac: str) -> None:
        """A device was removed from the meter's HAN: its events stop where they are."""
        meter = self.meter(esiid)
        if meter is not None:
            device = meter.devices.pop(mac, None)
            if device is not None:
                for event in device.events:
                    event.state = "over"

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
        self._carry(
            (FanOutTarget(esiid, frame.delivery_id),), frame.destination, frame.cluster, frame.zcl
        )

    def deliver_many(self, command: FanOutFrame) -> None:
        """Carry a fan-out's frame to every target meter (and, to ``all``, its devices), as
        ``deliver`` would one by one; the answers due at one moment leave in one list."""
        self._carry(command.targets, command.destination, command.cluster, command.zcl)

    def _carry(
        self, targets: Iterable[FanOutTarget], destination: str, cluster: int, zcl: bytes
    ) -> None:
        with _collector_paused():
            out = self._plan(targets, destination, cluster, zcl)
        if out:
            self._emit(out)

    def _plan(
        self, targets: Iterable[FanOutTarget], destination: str, cluster: int, zcl: bytes
    ) -> list[Out]:
        """Take the frame to each target and plan what follows; returns the statuses due now."""
        plan = _Plan(self, self._clock.seconds())
        out = plan.out
        config = self.config
        message: Any = None
        undecodable = ""
        try:
            message = self._decode(cluster, zcl)
        except sep1.DecodeError as error:
            undecodable = f"the device could not decode it: {error}"
        take = self._taker(plan, message)
        if isinstance(message, LoadControlEvent):
            plan.start = (
                plan.now if message.start_time == 0 else float(utctime.to_unix(message.start_time))
            )
            plan.end = plan.start + 60 * message.duration_in_minutes
        offline: list[FanOutTarget] | None = None
        delivered: list[FanOutTarget] | None = None
        delivered_reason = "acknowledged by the ESI" if destination == TO_ALL else ""
        for target in targets:
            esiid = target.esiid
            meter = self.meter(esiid)
            if meter is None:
                out.append(
                    DeliveryStatus(
                        target.delivery_id,
                        esiid,
                        DeliveryState.FAILED,
                        "ESI ID not served by this head-end",
                    )
                )
                continue
            if meter.offline:
                out.append(
                    DeliveryStatus(
                        target.delivery_id, esiid, DeliveryState.PENDING, "the meter is offline"
                    )
                )
                if offline is None:
                    offline = plan.statuses(
                        plan.now + config.offline_give_up_s,
                        DeliveryState.FAILED,
                        f"the meter stayed offline for {config.offline_give_up_s:g} s",
                    )
                offline.append(target)
                continue
            if message is None:
                out.append(
                    DeliveryStatus(target.delivery_id, esiid, DeliveryState.FAILED, undecodable)
                )
                continue
            if destination == TO_ESI:
                # the ESI takes prices (and relays them to price-capable devices); nothing else
                if isinstance(message, PublishPrice):
                    state, reason = DeliveryState.DELIVERED, "price acknowledged by the ESI"
                else:
                    state, reason = DeliveryState.FAILED, "the ESI does not take this frame"
                out.append(DeliveryStatus(target.delivery_id, esiid, state, reason))
                continue
            devices: Iterable[SimDevice]
            if destination == TO_ALL:
                devices = meter.devices.values()
            else:
                device = meter.devices.get(destination)
                if device is None:
                    out.append(
                        DeliveryStatus(
                            target.delivery_id,
                            esiid,
                            DeliveryState.FAILED,
                            "the device is not joined to the meter",
                        )
                    )
                    continue
                devices = (device,)
            if delivered is None:
                delivered = plan.statuses(plan.reply_at, DeliveryState.DELIVERED, delivered_reason)
            delivered.append(target)
            if take is not None:
                for device in devices:
                    if not device.silent:
                        take(meter, device, message)
        plan.commit()
        return out

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

    def _taker(
        self, plan: _Plan, message: Any
    ) -> Callable[[SimMeter, SimDevice, Any], None] | None:
        """What a device does with ``message``, or None when devices do nothing with it."""
        if isinstance(message, LoadControlEvent):
            return partial(self._load_control, plan)
        if isinstance(message, CancelLoadControlEvent):
            return partial(self._cancel, plan)
        if isinstance(message, CancelAllLoadControlEvents):
            return partial(self._cancel_all, plan)
        if isinstance(message, DisplayMessage):
            return partial(self._display, plan)
        if isinstance(message, CancelMessage):
            return self._cancel_message
        return None

    def _load_control(
        self, plan: _Plan, meter: SimMeter, device: SimDevice, lce: LoadControlEvent
    ) -> None:
        if not lce.device_class & device.device_class:
            return  # not for this kind of load: the device ignores it, as SE 1.0 says
        if plan.end <= plan.now:
            plan.answers(plan.reply_at, lce, EventStatus.REJECTED_EVENT_EXPIRED).append(
                (meter, device)
            )
            return
        held = device.events
        if held:
            if device.live_event(lce.issuer_event_id) is not None:
                # the same event again: answered, not scheduled twice
                plan.answers(plan.reply_at, lce, EventStatus.COMMAND_RECEIVED).append(
                    (meter, device)
                )
                return
            for older in held:
                if (
                    older.state in ("scheduled", "running")
                    and older.message.utility_enrollment_group == lce.utility_enrollment_group
                    and older.message.device_class & lce.device_class
                    and older.start < plan.end
                    and plan.start < older.end
                ):
                    self._end(plan, older, EventStatus.EVENT_SUPERSEDED)
            live = [event for event in held if event.state != "over"]
        else:
            live = []
        event = _Event(lce, plan.start, plan.end, meter, device)
        live.append(event)
        device.events = live
        plan.fresh.append(event)

    def _end(self, plan: _Plan, event: _Event, status: int) -> None:
        """Cancelled or superseded: what was still to come for it is off; the device says so."""
        event.state = "over"
        plan.reports(status).append(event)

    def _cancel(
        self, plan: _Plan, meter: SimMeter, device: SimDevice, cancel: CancelLoadControlEvent
    ) -> None:
        if not cancel.device_class & device.device_class:
            return
        event = device.live_event(cancel.issuer_event_id)
        if event is None:
            plan.answers(
                plan.reply_at, cancel, EventStatus.REJECTED_INVALID_CANCEL_UNDEFINED_EVENT
            ).append((meter, device))
            return
        self._end(plan, event, EventStatus.EVENT_CANCELLED)

    def _cancel_all(
        self, plan: _Plan, meter: SimMeter, device: SimDevice, _: CancelAllLoadControlEvents
    ) -> None:
        for event in device.events:
            if event.state in ("scheduled", "running"):
                self._end(plan, event, EventStatus.EVENT_CANCELLED)

    def _display(
        self, plan: _Plan, meter: SimMeter, device: SimDevice, message: DisplayMessage
    ) -> None:
        if device.kind not in _DISPLAYS:
            return
        if device.messages is None:
            device.messages = {}
        device.messages[message.message_id] = message
        if message.confirmation_required:
            at = plan.now + self.config.confirm_delay_s
            plan.answers(at, plan.confirmation(message), None).append((meter, device))

    def _cancel_message(self, meter: SimMeter, device: SimDevice, cancel: CancelMessage) -> None:
        if device.messages is not None:
            device.messages.pop(cancel.message_id, None)

    # -- what leaves --------------------------------------------------------------------------

    def _at(self, at: float, entry: _Entry) -> None:
        """Run ``entry`` at ``at``, with everything else due then, in one delayed call."""
        due = self._due.get(at)
        if due is None:
            delay = max(at - self._clock.seconds(), 0.0)
            due = self._due[at] = _Due(self._clock.callLater(delay, self._run, at))
        due.entries.append(entry)

    def _run(self, at: float) -> None:
        due = self._due.pop(at, None)
        if due is None:
            return
        now = self._clock.seconds()
        out: list[Out] = []
        with _collector_paused():
            self._encoded.clear()
            for entry in due.entries:
                entry.run(self, now, out)
            self._encoded.clear()
        if out:
            self._emit(out)

    def stop(self) -> None:
        """Cancel every answer still to come (the head-end stopped)."""
        due, self._due = self._due, {}
        for moment in due.values():
            if moment.call.active():
                moment.call.cancel()

    def _zcl(self, subject: Any, status: int | None, now: float) -> bytes:
        """The encoded answer about ``subject``; made once per moment (one TSN for all)."""
        key = (id(subject), status)
        found = self._encoded.get(key)
        if found is not None and found[0] is subject:
            return found[1]
        self._tsn = (self._tsn + 1) & 0xFF
        zcl = sep1.encode(_answer(subject, status, now), self._tsn)
        self._encoded[key] = (subject, zcl)
        return zcl

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
        """The meter's register at ``at`` in Wh: its base plus every whole quarter-hour of its
        load profile since 1970 (``simulators.usage``), the same the LSE files it writes add up."""
        return meter.base_wh + usage.cumulative_wh(meter.esiid, int(at // usage.INTERVAL_S))

    def _read(self, meter: SimMeter, attribute_ids: tuple[int, ...]) -> MeterReading:
        """Read Attributes from the profile: summation in Wh and demand in W, said precisely by
        the formatting attributes (unit kWh, multiplier 1, divisor 1000)."""
        now = self._clock.seconds()
        values = {
            0x0000: self.summation_wh(meter, now),
            0x0001: 0,
            0x0200: 0,
            0x0300: 0,  # kWh (and kW for demand)
            0x0301: 1,
            0x0302: 1000,  # so a raw value is Wh (summation) or W (demand)
            0x0303: 0x33,
            0x0306: 0,  # electric metering
            0x0400: usage.demand_w(meter.esiid, now),
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
