"""The HAN device provisioning state machine, as one literal transition table.

Statuses are the market's display names (smt-han.md). An event that has no entry for the device's
current status is illegal and refused before anything is written. The two "TDSP acknowledges"
conditions keep the status (Add Acknowledged, Remove Acknowledged) but still write a history row,
so all thirteen display conditions are recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class DeviceStatus(enum.StrEnum):
    ADD_ACKNOWLEDGED = "Add Acknowledged"
    ADD_PENDING = "Add Pending"
    METER_READY = "Meter Ready"
    DEVICE_ADDED = "Device Added"
    REMOVE_ACKNOWLEDGED = "Remove Acknowledged"
    REMOVE_PENDING = "Remove Pending"
    REMOVE_FAILED = "Remove Failed"
    ADD_REJECTED = "Add Rejected"
    ADD_FAILED = "Add Failed"
    REMOVE_REJECTED = "Remove Rejected"
    DEVICE_REMOVED = "Device Removed"


class Event(enum.StrEnum):
    """What can happen to a device: a party's request, a head-end status, or a timer."""

    # requests through the API
    REMOVE_REQUESTED = "remove requested"
    # head-end statuses (adapters.commands.HeadEndStatus maps onto these)
    TDSP_ACKNOWLEDGED = "TDSP acknowledged"
    ADD_PENDING = "add pending"
    METER_READY = "meter ready"
    DEVICE_JOINED = "device joined"
    ADD_REJECTED = "add rejected"
    ADD_FAILED = "add failed"
    REMOVE_PENDING = "remove pending"
    REMOVE_REJECTED = "remove rejected"
    REMOVE_FAILED = "remove failed"
    DEVICE_REMOVED = "device removed"
    # timers
    JOIN_WINDOW_EXPIRED = "join window expired"
    COMMAND_TIMED_OUT = "command timed out"


S = DeviceStatus
E = Event

#: The status a device has when the gateway accepts its add request (the only way in).
INITIAL_STATUS = S.ADD_ACKNOWLEDGED

#: (status, event) -> new status. A missing key is an illegal transition.
TRANSITIONS: Mapping[tuple[DeviceStatus, Event], DeviceStatus] = {
    # adding
    (S.ADD_ACKNOWLEDGED, E.TDSP_ACKNOWLEDGED): S.ADD_ACKNOWLEDGED,
    (S.ADD_ACKNOWLEDGED, E.ADD_PENDING): S.ADD_PENDING,
    (S.ADD_ACKNOWLEDGED, E.METER_READY): S.METER_READY,
    (S.ADD_ACKNOWLEDGED, E.ADD_REJECTED): S.ADD_REJECTED,
    (S.ADD_ACKNOWLEDGED, E.ADD_FAILED): S.ADD_FAILED,
    (S.ADD_ACKNOWLEDGED, E.COMMAND_TIMED_OUT): S.ADD_FAILED,
    (S.ADD_ACKNOWLEDGED, E.REMOVE_REQUESTED): S.REMOVE_ACKNOWLEDGED,
    (S.ADD_PENDING, E.METER_READY): S.METER_READY,
    (S.ADD_PENDING, E.DEVICE_JOINED): S.DEVICE_ADDED,
    (S.ADD_PENDING, E.ADD_FAILED): S.ADD_FAILED,
    (S.ADD_PENDING, E.JOIN_WINDOW_EXPIRED): S.ADD_FAILED,
    (S.ADD_PENDING, E.REMOVE_REQUESTED): S.REMOVE_ACKNOWLEDGED,
    (S.METER_READY, E.DEVICE_JOINED): S.DEVICE_ADDED,
    (S.METER_READY, E.ADD_FAILED): S.ADD_FAILED,
    (S.METER_READY, E.JOIN_WINDOW_EXPIRED): S.ADD_FAILED,
    (S.METER_READY, E.REMOVE_REQUESTED): S.REMOVE_ACKNOWLEDGED,
    # on the meter
    (S.DEVICE_ADDED, E.REMOVE_REQUESTED): S.REMOVE_ACKNOWLEDGED,
    (S.DEVICE_ADDED, E.DEVICE_REMOVED): S.DEVICE_REMOVED,
    # removing
    (S.REMOVE_ACKNOWLEDGED, E.TDSP_ACKNOWLEDGED): S.REMOVE_ACKNOWLEDGED,
    (S.REMOVE_ACKNOWLEDGED, E.REMOVE_PENDING): S.REMOVE_PENDING,
    (S.REMOVE_ACKNOWLEDGED, E.REMOVE_REJECTED): S.REMOVE_REJECTED,
    (S.REMOVE_ACKNOWLEDGED, E.REMOVE_FAILED): S.REMOVE_FAILED,
    (S.REMOVE_ACKNOWLEDGED, E.COMMAND_TIMED_OUT): S.REMOVE_FAILED,
    (S.REMOVE_ACKNOWLEDGED, E.DEVICE_REMOVED): S.DEVICE_REMOVED,
    (S.REMOVE_PENDING, E.REMOVE_FAILED): S.REMOVE_FAILED,
    (S.REMOVE_PENDING, E.COMMAND_TIMED_OUT): S.REMOVE_FAILED,
    (S.REMOVE_PENDING, E.DEVICE_REMOVED): S.DEVICE_REMOVED,
    # a removal that was rejected or failed leaves the device on the meter: it may be asked again
    (S.REMOVE_REJECTED, E.REMOVE_REQUESTED): S.REMOVE_ACKNOWLEDGED,
    (S.REMOVE_FAILED, E.REMOVE_REQUESTED): S.REMOVE_ACKNOWLEDGED,
    (S.REMOVE_FAILED, E.DEVICE_REMOVED): S.DEVICE_REMOVED,
}

#: Statuses that free the device's slot on its ESI ID; every other status holds one.
SLOT_FREEING: frozenset[DeviceStatus] = frozenset({S.ADD_REJECTED, S.ADD_FAILED, S.DEVICE_REMOVED})
SLOT_HOLDING: frozenset[DeviceStatus] = frozenset(DeviceStatus) - SLOT_FREEING
#: At most this many slot-holding devices per ESI ID.
MAX_SLOTS_PER_ESIID = 5

#: Which timer, if any, runs while a device is in a status.
JOIN_WINDOW_STATUSES: frozenset[DeviceStatus] = frozenset({S.ADD_PENDING, S.METER_READY})
COMMAND_TIMEOUT_STATUSES: frozenset[DeviceStatus] = frozenset(
    {S.ADD_ACKNOWLEDGED, S.REMOVE_ACKNOWLEDGED, S.REMOVE_PENDING}
)


@dataclass(frozen=True)
class IllegalTransition(Exception):
    """The event is not legal in the device's current status."""

    status: DeviceStatus
    event: Event

    def __str__(self) -> str:
        return (
            f"a device in status {self.status.value!r} cannot take the event {self.event.value!r}"
        )


def next_status(status: DeviceStatus, event: Event) -> DeviceStatus:
    """The status after ``event``; raises IllegalTransition when the table has no entry."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


def legal_events(status: DeviceStatus) -> list[Event]:
    """The events the table accepts in ``status``, in table order."""
    return [event for (source, event) in TRANSITIONS if source is status]


def to_mermaid() -> str:
    """The transition table drawn as a Mermaid state diagram (docs/provisioning-states.md)."""

    def node(status: DeviceStatus) -> str:
        return status.name

    lines = ["stateDiagram-v2"]
    for status in DeviceStatus:
        lines.append(f'    state "{status.value}" as {node(status)}')
    lines.append(f"    [*] --> {node(INITIAL_STATUS)}: add requested")
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {node(source)} --> {node(target)}: {event.value}")
    return "\n".join(lines) + "\n"
