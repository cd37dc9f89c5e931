"""The SMT messaging vocabulary (smt-han.md) and how SE 1.0 answers map onto it."""

from __future__ import annotations

import enum

from sep1 import EventStatus


class Category(enum.StrEnum):
    PRICE = "PRM"
    LOAD_CONTROL = "LCE"
    CANCEL_LOAD_CONTROL = "CLE"
    CANCEL_ALL_LOAD_CONTROL = "CAL"
    TEXT = "STM"
    CANCEL_TEXT = "CSM"


#: Categories a sender issues with an id of its own (issuer event id, message id).
ISSUED = frozenset({Category.PRICE, Category.LOAD_CONTROL, Category.TEXT})
CANCELLATIONS = frozenset(
    {Category.CANCEL_LOAD_CONTROL, Category.CANCEL_ALL_LOAD_CONTROL, Category.CANCEL_TEXT}
)


class StatusCode(enum.StrEnum):
    ACCEPTED = "RQA"  # request accepted and queued for the TDSP
    ACKNOWLEDGED = "ACK"  # the head-end acknowledged it
    PENDING = "PEN"  # the meter is offline, or the event starts later
    STARTED = "STR"  # the device reports the event started
    CONFIRMED = "CON"  # confirmed delivery
    OPTED_OUT = "OPT"
    FAILED = "FLR"


#: Statuses that settle a delivery: the device (or ESI) answered, or it failed.
SETTLED = frozenset(
    {StatusCode.STARTED, StatusCode.CONFIRMED, StatusCode.OPTED_OUT, StatusCode.FAILED}
)
#: How far along each status is; a late ACK never replaces a CON.
RANK = {
    StatusCode.ACCEPTED: 0,
    StatusCode.ACKNOWLEDGED: 1,
    StatusCode.PENDING: 2,
    StatusCode.STARTED: 3,
    StatusCode.CONFIRMED: 3,
    StatusCode.OPTED_OUT: 3,
    StatusCode.FAILED: 3,
}

#: Report Event Status codes (sep1-wire.md) -> (status code, description), for the delivery of
#: the event the report names.
EVENT_STATUS: dict[int, tuple[StatusCode, str]] = {
    EventStatus.COMMAND_RECEIVED: (StatusCode.CONFIRMED, "command received by the device"),
    EventStatus.EVENT_STARTED: (StatusCode.STARTED, "event started"),
    EventStatus.EVENT_COMPLETED: (StatusCode.CONFIRMED, "event completed"),
    EventStatus.USER_OPTED_OUT: (StatusCode.OPTED_OUT, "user opted out"),
    EventStatus.USER_OPTED_IN: (StatusCode.STARTED, "user opted in"),
    EventStatus.EVENT_CANCELLED: (StatusCode.CONFIRMED, "event cancelled"),
    EventStatus.EVENT_SUPERSEDED: (StatusCode.CONFIRMED, "event superseded"),
    EventStatus.PARTIALLY_COMPLETED_WITH_OPT_OUT: (
        StatusCode.OPTED_OUT,
        "event partially completed with user opt-out",
    ),
    EventStatus.PARTIALLY_COMPLETED_DUE_TO_OPT_IN: (
        StatusCode.CONFIRMED,
        "event partially completed due to user opt-in",
    ),
    EventStatus.COMPLETED_NO_USER_PARTICIPATION: (
        StatusCode.OPTED_OUT,
        "event completed, no user participation (previous opt-out)",
    ),
    EventStatus.REJECTED_INVALID_CANCEL_COMMAND: (
        StatusCode.FAILED,
        "rejected: invalid cancel command (0xF8)",
    ),
    EventStatus.REJECTED_INVALID_CANCEL_EFFECTIVE_TIME: (
        StatusCode.FAILED,
        "rejected: invalid cancel command, invalid effective time (0xF9)",
    ),
    EventStatus.REJECTED_EVENT_EXPIRED: (
        StatusCode.FAILED,
        "rejected: event received after it had expired (0xFB)",
    ),
    EventStatus.REJECTED_INVALID_CANCEL_UNDEFINED_EVENT: (
        StatusCode.FAILED,
        "rejected: invalid cancel command, undefined event (0xFD)",
    ),
    EventStatus.REJECTED: (
        StatusCode.FAILED,
        "rejected: load control event command rejected (0xFE)",
    ),
}
#: Answers that belong to a cancellation (CLE, CAL) rather than to the event itself.
CANCEL_ANSWERS = frozenset(
    {
        EventStatus.EVENT_CANCELLED,
        EventStatus.REJECTED_INVALID_CANCEL_COMMAND,
        EventStatus.REJECTED_INVALID_CANCEL_EFFECTIVE_TIME,
        EventStatus.REJECTED_INVALID_CANCEL_UNDEFINED_EVENT,
    }
)


def event_status(code: int) -> tuple[StatusCode, str]:
    """The delivery status a Report Event Status code means (unknown codes fail it, saying so)."""
    found = EVENT_STATUS.get(code)
    if found is not None:
        return found
    if 0xF8 <= code <= 0xFE:
        return StatusCode.FAILED, f"rejected by the device (event status 0x{code:02X})"
    return StatusCode.CONFIRMED, f"event status 0x{code:02X} reported by the device"
