"""A messaging request body, checked and turned into the one SE 1.0 frame all its targets get.

Field ranges, sentinels and the rules between fields are sep1's (a ``FieldValueError`` becomes
an ``InvalidField`` naming the API field); the rules about time (an event that is already over,
a start given in the past) are checked here against the injected clock.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sep1
from adapters.commands import TO_ALL
from hangw.messaging.categories import Category
from hangw.problems import InvalidField
from sep1 import (
    RANDOMIZE_END,
    RANDOMIZE_START,
    UNTIL_CHANGED,
    DisplayMessage,
    LoadControlEvent,
    MessageControl,
    PublishPrice,
    utctime,
)

#: At most this many ESI IDs in one request's list (a group may be as large).
MAX_ESIIDS = 200_000
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ESIID = re.compile(r"[0-9A-Za-z]{1,64}")
IMPORTANCE = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@dataclass(frozen=True)
class MessageSpec:
    """What a PRM, LCE or STM request asks for, checked."""

    category: Category
    issuer_event_id: int
    message: sep1.Message
    start_at: float  # POSIX seconds
    end_at: float | None  # None: until changed
    fields: dict[str, Any]
    device_class: int | None = None
    enrollment_group: int | None = None
    destination: str = TO_ALL
    warnings: tuple[str, ...] = field(default=())

    @property
    def cluster(self) -> int:
        return type(self.message).CLUSTER_ID

    def fields_json(self) -> str:
        return json.dumps(self.fields, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Targets:
    """Whom a request goes to: a list of ESI IDs, or a named group of the sender's."""

    esiids: tuple[str, ...] = ()
    group: str | None = None


def targets_of(body: dict[str, Any]) -> Targets:
    has_list, has_group = "esiids" in body, "group" in body
    if has_list == has_group:
        raise InvalidField("esiids", "give either 'esiids' (a list of ESI IDs) or 'group' (a name)")
    if has_group:
        return Targets(group=group_name(body["group"]))
    return Targets(esiids=esiid_list(body["esiids"], "esiids"))


def group_name(value: Any) -> str:
    if not isinstance(value, str) or not _GROUP_NAME.fullmatch(value):
        raise InvalidField(
            "group",
            "a group name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit",
        )
    return value


def esiid_list(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidField(name, f"{name} must be a non-empty list of ESI IDs")
    if len(value) > MAX_ESIIDS:
        raise InvalidField(name, f"{name} holds {len(value)} ESI IDs; at most {MAX_ESIIDS}")
    seen: set[str] = set()
    for index, esiid in enumerate(value):
        if not isinstance(esiid, str) or not _ESIID.fullmatch(esiid):
            raise InvalidField(
                f"{name}[{index}]", f"{name}[{index}] is not an ESI ID (1 to 64 letters or digits)"
            )
        if esiid in seen:
            raise InvalidField(f"{name}[{index}]", f"{name}[{index}]: {esiid} is listed twice")
        seen.add(esiid)
    return tuple(value)


# ---- field readers -------------------------------------------------------------------------


def _int(body: dict[str, Any], name: str, default: Any = None, *, required: bool = False) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise InvalidField(name, f"{name} is required")
        return default
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(name, f"{name} must be an integer, got {json.dumps(value)[:40]}")
    return value


def _bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidField(name, f"{name} must be true or false")
    return value


def _text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise InvalidField(name, f"{name} must be a string")
    return _without_nul(name, value)


def _without_nul(name: str, value: str) -> str:
    """``value``, refused if it holds a NUL: devices (and zigpy) end a string there."""
    at = value.find("\x00")
    if at >= 0:
        raise InvalidField(
            name,
            f"{name} holds a NUL character at position {at}; devices end text there, "
            "so what follows would never show",
        )
    return value


def parse_time(value: Any, name: str) -> float | None:
    """An ISO-8601 time with a zone (or "now", None) as POSIX seconds; None means now."""
    if value is None or value == "now":
        return None
    if not isinstance(value, str):
        raise InvalidField(name, f'{name} must be an ISO-8601 time with a zone, or "now"')
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidField(
            name, f'{name}: {value[:40]!r} is not an ISO-8601 time (e.g. "2026-11-23T15:00:00Z")'
        ) from None
    if moment.tzinfo is None:
        raise InvalidField(name, f"{name} needs a zone (Z or an offset)")
    seconds = moment.timestamp()
    if not utctime.UNIX_OFFSET <= seconds < utctime.UNIX_OFFSET + 2**32 - 1:
        raise InvalidField(name, f"{name} is outside what SE 1.0 UTCTime can carry (2000..2136)")
    return seconds


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _built(factory: Any, names: dict[str, str], **values: Any) -> Any:
    """Build a sep1 message; a value it refuses is an InvalidField naming the API field."""
    try:
        return factory(**values)
    except sep1.FieldValueError as error:
        api_name = names.get(error.field, error.field)
        raise InvalidField(api_name, f"{api_name}: {error.reason}") from None


def _window(
    body: dict[str, Any],
    now: float,
    message: type[sep1.Message],
    *,
    until_changed_allowed: bool,
    shortest: int = 0,
) -> tuple[int, float, float | None, int]:
    """(wire start time, start, end, duration) of a body's start_time and duration_minutes.

    The duration is checked against ``message``'s field range before the end is reckoned from
    it: an end far outside any calendar would fail to be made or shown.
    """
    start = parse_time(body.get("start_time"), "start_time")
    if start is not None and start < now - 60:
        raise InvalidField(
            "start_time", f"start_time {iso(start)} is in the past; leave it out to start now"
        )
    default = UNTIL_CHANGED if until_changed_allowed else None
    duration = _int(body, "duration_minutes", default, required=not until_changed_allowed)
    (limits,) = [spec for spec in message.FIELDS if spec.name == "duration_in_minutes"]
    lo = max(limits.lo, shortest)
    if not lo <= duration <= limits.hi:
        until = (
            f" ({UNTIL_CHANGED}, or leaving it out: until changed)" if until_changed_allowed else ""
        )
        raise InvalidField(
            "duration_minutes",
            f"duration_minutes must be from {lo} to {limits.hi}{until}, got {_shown(duration)}",
        )
    begins = start if start is not None else now
    end = None if duration == UNTIL_CHANGED else begins + 60 * duration
    wire_start = 0 if start is None else utctime.from_unix(start)
    return wire_start, begins, end, duration


def _shown(number: int) -> str:
    """``number`` as a refusal quotes it: its first digits and how many there are, if many."""
    text = str(number)
    return text if len(text) <= 20 else f"{text[:20]}... ({len(text.lstrip('-'))} digits)"


def _issuer_id(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None:
        return secrets.randbelow(0xFFFFFFFE) + 1
    value = _int(body, name)
    if not 1 <= value <= 0xFFFFFFFF:
        raise InvalidField(name, f"{name} must be from 1 to 4294967295")
    return value


# ---- the three categories that carry something -----------------------------------------


def load_control(body: dict[str, Any], now: float) -> MessageSpec:
    issuer_event_id = _issuer_id(body, "issuer_event_id")
    wire_start, start, end, duration = _window(
        body, now, LoadControlEvent, until_changed_allowed=False, shortest=1
    )
    assert end is not None
    if end <= now:
        raise InvalidField(
            "duration_minutes", f"the event would end at {iso(end)}, which is already past"
        )
    device_class = _int(body, "device_class", required=True)
    if not 1 <= device_class <= 0x0FFF:
        raise InvalidField(
            "device_class",
            "device_class is a bit map of SE 1.0 device classes (bits 0 to 11), at least one set",
        )
    event_control = (RANDOMIZE_START if _bool(body, "randomize_start") else 0) | (
        RANDOMIZE_END if _bool(body, "randomize_end") else 0
    )
    names = {
        "duration_in_minutes": "duration_minutes",
        "criticality_level": "criticality",
        "utility_enrollment_group": "enrollment_group",
    }
    lce = _built(
        LoadControlEvent,
        names,
        issuer_event_id=issuer_event_id,
        device_class=device_class,
        utility_enrollment_group=_int(body, "enrollment_group", 0),
        start_time=wire_start,
        duration_in_minutes=duration,
        criticality_level=_int(body, "criticality", 1),
        cooling_temperature_offset=_int(body, "cooling_temperature_offset"),
        heating_temperature_offset=_int(body, "heating_temperature_offset"),
        cooling_temperature_set_point=_int(body, "cooling_temperature_set_point"),
        heating_temperature_set_point=_int(body, "heating_temperature_set_point"),
        average_load_adjustment_percentage=_int(body, "average_load_adjustment_percentage"),
        duty_cycle=_int(body, "duty_cycle"),
        event_control=event_control,
    )
    fields = {
        "issuer_event_id": issuer_event_id,
        "device_class": device_class,
        "enrollment_group": lce.utility_enrollment_group,
        "start_time": iso(start),
        "duration_minutes": duration,
        "criticality": lce.criticality_level,
        "cooling_temperature_offset": lce.cooling_temperature_offset,
        "heating_temperature_offset": lce.heating_temperature_offset,
        "cooling_temperature_set_point": lce.cooling_temperature_set_point,
        "heating_temperature_set_point": lce.heating_temperature_set_point,
        "average_load_adjustment_percentage": lce.average_load_adjustment_percentage,
        "duty_cycle": lce.duty_cycle,
        "randomize_start": bool(event_control & RANDOMIZE_START),
        "randomize_end": bool(event_control & RANDOMIZE_END),
    }
    return MessageSpec(
        Category.LOAD_CONTROL,
        issuer_event_id,
        lce,
        start,
        end,
        fields,
        device_class=device_class,
        enrollment_group=lce.utility_enrollment_group,
    )


def price(body: dict[str, Any], now: float) -> MessageSpec:
    issuer_event_id = _issuer_id(body, "issuer_event_id")
    wire_start, start, end, duration = _window(body, now, PublishPrice, until_changed_allowed=True)
    if end is not None and end <= now:
        raise InvalidField(
            "duration_minutes", f"the price would end at {iso(end)}, which is already past"
        )
    rate_label = _text(body, "rate_label").encode("utf-8")
    names = {"duration_in_minutes": "duration_minutes"}
    optional = {
        name: _int(body, name)
        for name in (
            "price_ratio",
            "generation_price",
            "generation_price_ratio",
            "alternate_cost_delivered",
        )
    }
    message = _built(
        PublishPrice,
        names,
        provider_id=_int(body, "provider_id", required=True),
        rate_label=rate_label,
        issuer_event_id=issuer_event_id,
        current_time=utctime.from_unix(now),
        unit_of_measure=_int(body, "unit_of_measure", 0),
        currency=_int(body, "currency", 840),
        price_trailing_digit=_int(body, "price_trailing_digit", 0),
        price_tier=_int(body, "price_tier", 0),
        number_of_price_tiers=_int(body, "number_of_price_tiers", 0),
        register_tier=_int(body, "register_tier", 0),
        start_time=wire_start,
        duration_in_minutes=duration,
        price=_int(body, "price", required=True),
        alternate_cost_unit=_int(body, "alternate_cost_unit", 0x01),
        alternate_cost_trailing_digit=_int(body, "alternate_cost_trailing_digit", 0),
        **optional,
    )
    fields = {
        "issuer_event_id": issuer_event_id,
        "provider_id": message.provider_id,
        "rate_label": body.get("rate_label", ""),
        "unit_of_measure": message.unit_of_measure,
        "currency": message.currency,
        "price_trailing_digit": message.price_trailing_digit,
        "price_tier": message.price_tier,
        "number_of_price_tiers": message.number_of_price_tiers,
        "register_tier": message.register_tier,
        "start_time": iso(start),
        "duration_minutes": None if end is None else duration,
        "price": message.price,
        **optional,
    }
    return MessageSpec(Category.PRICE, issuer_event_id, message, start, end, fields)


def text(body: dict[str, Any], now: float) -> MessageSpec:
    message_id = _issuer_id(body, "message_id")
    wire_start, start, end, duration = _window(
        body, now, DisplayMessage, until_changed_allowed=True
    )
    if end is not None and end <= now:
        raise InvalidField(
            "duration_minutes", f"the text would stop showing at {iso(end)}, already past"
        )
    words = body.get("message")
    if not isinstance(words, str) or not words:
        raise InvalidField("message", "message is the text to show: a non-empty string")
    _without_nul("message", words)
    size = len(words.encode("utf-8"))
    if size > DisplayMessage.MAX_TEXT_BYTES:
        raise InvalidField(
            "message",
            f"message is {size} bytes of UTF-8; a device takes at most "
            f"{DisplayMessage.MAX_TEXT_BYTES}",
        )
    importance = body.get("importance")
    if importance is None:  # left out or null: the default
        importance = "low"
    if not isinstance(importance, str) or importance not in IMPORTANCE:
        raise InvalidField("importance", f"importance must be one of {', '.join(IMPORTANCE)}")
    confirm = _bool(body, "confirmation_required")
    control = MessageControl.make(0, IMPORTANCE[importance], confirm)
    message = _built(
        DisplayMessage,
        {"duration_in_minutes": "duration_minutes"},
        message_id=message_id,
        message_control=control,
        start_time=wire_start,
        duration_in_minutes=duration,
        message=words,
    )
    warnings: tuple[str, ...] = ()
    if not message.fits_one_frame:
        warnings = (
            f"the text is {size} bytes; only {DisplayMessage.UNFRAGMENTED_TEXT_BYTES} fit one "
            "unfragmented frame, and devices without APS fragmentation may not show it",
        )
    fields = {
        "message_id": message_id,
        "message": words,
        "importance": importance,
        "confirmation_required": confirm,
        "start_time": iso(start),
        "duration_minutes": None if end is None else duration,
    }
    return MessageSpec(Category.TEXT, message_id, message, start, end, fields, warnings=warnings)


_TARGETS = {"category", "esiids", "group"}
#: The fields each category takes; any other is refused (a misspelt field must not be ignored).
FIELDS = {
    Category.LOAD_CONTROL: _TARGETS
    | {
        "issuer_event_id",
        "device_class",
        "enrollment_group",
        "start_time",
        "duration_minutes",
        "criticality",
        "cooling_temperature_offset",
        "heating_temperature_offset",
        "cooling_temperature_set_point",
        "heating_temperature_set_point",
        "average_load_adjustment_percentage",
        "duty_cycle",
        "randomize_start",
        "randomize_end",
    },
    Category.PRICE: _TARGETS
    | {
        "issuer_event_id",
        "provider_id",
        "rate_label",
        "unit_of_measure",
        "currency",
        "price_trailing_digit",
        "price_tier",
        "number_of_price_tiers",
        "register_tier",
        "start_time",
        "duration_minutes",
        "price",
        "price_ratio",
        "generation_price",
        "generation_price_ratio",
        "alternate_cost_delivered",
        "alternate_cost_unit",
        "alternate_cost_trailing_digit",
    },
    Category.TEXT: _TARGETS
    | {
        "message_id",
        "message",
        "importance",
        "confirmation_required",
        "start_time",
        "duration_minutes",
    },
}

#: The fields a cancellation (CLE, CSM) takes, and a cancel-all (CAL).
CANCEL_FIELDS = frozenset({"effective_time", "randomize_end"})
CANCEL_ALL_FIELDS = frozenset({"randomize_end"})


def only_fields(body: dict[str, Any], fields: frozenset[str], what: str) -> None:
    """Refuse a field of ``body`` that is not one of ``fields``: a misspelt one is not ignored."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidField(
            unknown[0],
            f"{what} does not take the field(s) {', '.join(unknown)}; "
            f"it takes {' and '.join(sorted(fields))}",
        )


SPEC_BUILDERS = {
    Category.LOAD_CONTROL: load_control,
    Category.PRICE: price,
    Category.TEXT: text,
}


def message_spec(body: dict[str, Any], now: float) -> MessageSpec:
    """The spec of a POST /v1/messages body (its targets are read by ``targets_of``)."""
    category = body.get("category")
    try:
        kind = Category(str(category))
        builder = SPEC_BUILDERS[kind]
    except (ValueError, KeyError):
        raise InvalidField(
            "category",
            "category must be PRM (price), LCE (load control) or STM (text); cancellations "
            "have their own paths (POST /v1/messages/{request_id}/cancel, "
            "POST /v1/esiids/{esiid}/load-control/cancel-all)",
        ) from None
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise InvalidField(unknown[0], f"{kind} does not take the field(s) {', '.join(unknown)}")
    return builder(body, now)
