"""Request bodies become the SE 1.0 frame every target gets, or a problem naming the field."""

from __future__ import annotations

import pytest

import sep1
from hangw.messaging import requests as specs
from hangw.messaging.categories import Category, StatusCode, event_status
from hangw.problems import InvalidField
from sep1 import EventStatus

NOW = 1_790_000_000.0  # 2026-09-21, a fixed clock


def test_load_control_body_builds_the_lce_devices_decode() -> None:
    """Every LCE field reaches the frame; not-given optional fields are SE 1.0 sentinels."""
    spec = specs.message_spec(
        {
            "category": "LCE",
            "issuer_event_id": 99,
            "device_class": 0x0005,
            "enrollment_group": 3,
            "duration_minutes": 90,
            "criticality": 4,
            "cooling_temperature_set_point": 2650,
            "randomize_end": True,
        },
        NOW,
    )
    assert spec.category is Category.LOAD_CONTROL
    frame = sep1.encode(spec.message, 7)
    lce = sep1.decode(sep1.DRLC, frame)
    assert isinstance(lce, sep1.LoadControlEvent)
    assert (lce.issuer_event_id, lce.device_class, lce.utility_enrollment_group) == (99, 5, 3)
    assert (lce.start_time, lce.duration_in_minutes, lce.criticality_level) == (0, 90, 4)
    assert lce.cooling_temperature_set_point == 2650
    assert lce.heating_temperature_set_point is None and lce.duty_cycle is None
    assert lce.event_control == sep1.RANDOMIZE_END
    assert (spec.start_at, spec.end_at) == (NOW, NOW + 90 * 60)
    # the bytes carry the sentinels for what was not given (zigpy-independent check)
    assert frame[-3] == 0x80 and frame[-2] == 0xFF  # average load adjustment, duty cycle


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"duration_minutes": 1441}, "duration_minutes"),
        ({"criticality": 16}, "criticality"),
        ({"duty_cycle": 101}, "duty_cycle"),
        ({"cooling_temperature_set_point": -32768}, "cooling_temperature_set_point"),
        ({"device_class": 0x1000}, "device_class"),
        ({"issuer_event_id": 0}, "issuer_event_id"),
        ({"start_time": "2026-09-21T10:00:00"}, "start_time"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"randomize_start": "yes"}, "randomize_start"),
        ({"duty_cylce": 50}, "duty_cylce"),
        ({"message": "hello"}, "message"),
    ],
)
def test_out_of_range_lce_fields_are_named(fields: dict[str, object], field: str) -> None:
    """A value SE 1.0 does not allow is refused with the API field's name."""
    body = {"category": "LCE", "device_class": 1, "duration_minutes": 30, **fields}
    with pytest.raises(InvalidField) as refused:
        specs.message_spec(body, NOW)
    assert field in str(refused.value)


def test_an_event_that_is_already_over_is_refused() -> None:
    """An LCE whose start plus duration is not in the future is refused before anything is sent."""
    start = specs.iso(NOW - 60)  # a start a minute ago is taken, but this event ends at NOW
    with pytest.raises(InvalidField, match="already past"):
        specs.message_spec(
            {"category": "LCE", "device_class": 1, "duration_minutes": 1, "start_time": start},
            NOW,
        )


def test_a_load_control_event_of_no_minutes_is_refused_naming_the_range() -> None:
    """An LCE lasts 1 to 1440 minutes: 0 is refused saying so, not as an event already past."""
    with pytest.raises(InvalidField, match="duration_minutes must be from 1 to 1440, got 0"):
        specs.message_spec({"category": "LCE", "device_class": 1, "duration_minutes": 0}, NOW)


@pytest.mark.parametrize(
    "body",
    [
        {"category": "LCE", "device_class": 1},
        {"category": "PRM", "provider_id": 1, "price": 100},
        {"category": "STM", "message": "hello"},
    ],
)
@pytest.mark.parametrize(
    "duration", [-1_000_000_000_000, 10**400, -1, 65536], ids=["-10**12", "10**400", "-1", "65536"]
)
def test_a_duration_outside_its_range_is_named_before_the_end_is_reckoned(
    body: dict[str, object], duration: int
) -> None:
    """A duration far outside its SE 1.0 range is refused naming the range, before any end."""
    with pytest.raises(InvalidField) as refused:
        specs.message_spec({**body, "duration_minutes": duration}, NOW)
    assert refused.value.extensions["field"] == "duration_minutes"
    lowest = 1 if body["category"] == "LCE" else 0
    assert f"duration_minutes must be from {lowest} to " in refused.value.detail
    assert len(refused.value.detail) < 200, refused.value.detail  # not all 401 digits


def test_text_message_control_and_long_text_warning() -> None:
    """Importance and confirmation become Message Control bits; text over one frame warns."""
    spec = specs.message_spec(
        {
            "category": "STM",
            "message": "Ä" * 40,  # 80 bytes of UTF-8
            "importance": "critical",
            "confirmation_required": True,
            "message_id": 5,
        },
        NOW,
    )
    message = spec.message
    assert isinstance(message, sep1.DisplayMessage)
    assert message.message_control == 0x80 | (3 << 2)
    assert spec.end_at is None  # until changed
    assert spec.warnings and "80 bytes" in spec.warnings[0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"category": "STM", "message": "Peak\x00 at 5 pm"}, "message"),
        ({"category": "PRM", "provider_id": 7, "price": 1, "rate_label": "TOU\x00"}, "rate_label"),
    ],
)
def test_text_with_a_nul_is_refused_where_it_is(body: dict[str, object], field: str) -> None:
    """A NUL in shown text is refused with its field and position: devices stop reading there."""
    with pytest.raises(InvalidField) as refused:
        specs.message_spec(body, NOW)
    assert refused.value.extensions == {"field": field}
    assert f"NUL character at position {str(body[field]).index(chr(0))}" in str(refused.value)


@pytest.mark.parametrize("importance", [["low"], {"level": "low"}, 2, "urgent"])
def test_an_importance_that_is_not_one_of_the_four_names_is_named(importance: object) -> None:
    """An importance that is none of the four names (a list, an object, a number) is a 422."""
    with pytest.raises(InvalidField) as refused:
        specs.message_spec({"category": "STM", "message": "hi", "importance": importance}, NOW)
    assert refused.value.extensions == {"field": "importance"}
    assert "low, medium, high, critical" in str(refused.value)


def test_a_null_importance_is_the_default_low() -> None:
    """An importance sent as null is left out: low (Message Control importance bits 0)."""
    spec = specs.message_spec({"category": "STM", "message": "hi", "importance": None}, NOW)
    assert isinstance(spec.message, sep1.DisplayMessage)
    assert spec.message.message_control & 0x0C == 0


def test_price_body_sets_current_time_from_the_clock() -> None:
    """Publish Price carries the gateway's time and the given tier, digits and price."""
    spec = specs.message_spec(
        {"category": "PRM", "provider_id": 7, "price": 1234, "price_trailing_digit": 3}, NOW
    )
    price = spec.message
    assert isinstance(price, sep1.PublishPrice)
    assert sep1.utctime.to_unix(price.current_time) == int(NOW)
    assert (price.price, price.price_trailing_digit, price.provider_id) == (1234, 3, 7)


def test_targets_are_a_list_or_a_group_not_both() -> None:
    """Exactly one of esiids and group; a group name is checked."""
    with pytest.raises(InvalidField):
        specs.targets_of({"esiids": ["1"], "group": "g"})
    with pytest.raises(InvalidField):
        specs.targets_of({})
    with pytest.raises(InvalidField):
        specs.targets_of({"group": "../etc"})
    assert specs.targets_of({"group": "dr-2026"}).group == "dr-2026"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (EventStatus.COMMAND_RECEIVED, StatusCode.CONFIRMED),
        (EventStatus.EVENT_STARTED, StatusCode.STARTED),
        (EventStatus.USER_OPTED_OUT, StatusCode.OPTED_OUT),
        (EventStatus.COMPLETED_NO_USER_PARTICIPATION, StatusCode.OPTED_OUT),
        (0xF8, StatusCode.FAILED),
        (0xF9, StatusCode.FAILED),
        (0xFB, StatusCode.FAILED),
        (0xFC, StatusCode.FAILED),
        (0xFD, StatusCode.FAILED),
        (0xFE, StatusCode.FAILED),
    ],
)
def test_report_event_status_codes_map_to_smt_statuses(code: int, status: StatusCode) -> None:
    """Device answers become CON, STR, OPT or FLR; every rejection 0xF8-0xFE is a failure."""
    assert event_status(code)[0] is status
