"""SE 1.0 value ranges are enforced when a message is made, naming the field; not used is None."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sep1
from sep1 import utctime


def lce(**fields: object) -> sep1.LoadControlEvent:
    return sep1.LoadControlEvent(issuer_event_id=1, device_class=1, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("duration_in_minutes", 1441, 1440),
        ("criticality_level", 0, 1),
        ("criticality_level", 16, 15),
        ("average_load_adjustment_percentage", -101, -100),
        ("average_load_adjustment_percentage", 101, 100),
        ("duty_cycle", 101, 100),
        ("cooling_temperature_set_point", -27316, -27315),
        ("utility_enrollment_group", 256, 255),
        ("start_time", -1, 0),
        ("start_time", 0xFFFFFFFF, 0xFFFFFFFE),
    ],
)
def test_load_control_event_limits(field: str, bad: int, good: int) -> None:
    """A Load Control Event refuses each value just past its SE 1.0 limit and accepts the limit."""
    with pytest.raises(sep1.FieldValueError) as caught:
        lce(**{field: bad})
    assert caught.value.field == field and field in str(caught.value)
    assert getattr(lce(**{field: good}), field) == good


def test_field_value_error_survives_copy_and_pickle() -> None:
    """A FieldValueError copies and pickles with its message type, field, reason and text."""
    with pytest.raises(sep1.FieldValueError) as caught:
        lce(duty_cycle=101)
    error = caught.value
    for clone in (copy.copy(error), copy.deepcopy(error), pickle.loads(pickle.dumps(error))):
        assert type(clone) is sep1.FieldValueError
        assert (clone.message_type, clone.field, clone.reason) == (
            "LoadControlEvent",
            "duty_cycle",
            "101 is outside 0..100",
        )
        assert str(clone) == "LoadControlEvent.duty_cycle: 101 is outside 0..100"


@pytest.mark.parametrize(
    ("field", "sentinel"),
    [
        ("cooling_temperature_offset", 0xFF),
        ("heating_temperature_offset", 0xFF),
        ("cooling_temperature_set_point", -0x8000),
        ("heating_temperature_set_point", -0x8000),
        ("duty_cycle", 0xFF),
    ],
)
def test_not_used_is_none_not_the_sentinel(field: str, sentinel: int) -> None:
    """Not used is None; passing the wire sentinel itself is refused with a pointer to None."""
    with pytest.raises(sep1.FieldValueError, match="None"):
        lce(**{field: sentinel})
    assert getattr(lce(**{field: None}), field) is None


def test_required_fields_have_no_none() -> None:
    """Fields without a not-used value refuse None and non-integers."""
    with pytest.raises(sep1.FieldValueError, match="required"):
        lce(criticality_level=None)
    with pytest.raises(sep1.FieldValueError, match="integer"):
        lce(duration_in_minutes="60")
    with pytest.raises(sep1.FieldValueError, match="integer"):
        lce(event_control=True)


def test_rate_label_is_at_most_twelve_bytes() -> None:
    """A Publish Price rate label of 13 bytes is refused; 12 is accepted."""
    with pytest.raises(sep1.FieldValueError) as caught:
        sep1.PublishPrice(1, b"x" * 13, 2, 3)
    assert caught.value.field == "rate_label" and "12" in str(caught.value)
    assert sep1.PublishPrice(1, b"x" * 12, 2, 3).rate_label == b"x" * 12


def test_price_nibbles_are_four_bits() -> None:
    """Price trailing digit, tier, number of tiers and register tier are nibbles (0..15)."""
    for field in ("price_trailing_digit", "price_tier", "number_of_price_tiers", "register_tier"):
        with pytest.raises(sep1.FieldValueError, match=field):
            sep1.PublishPrice(1, b"", 2, 3, **{field: 16})  # type: ignore[arg-type]


def test_text_must_be_utf8_and_fit_a_zcl_string() -> None:
    """Display Message text that is not UTF-8 or over 254 bytes is refused naming the field."""
    with pytest.raises(sep1.FieldValueError, match=r"message.*UTF-8"):
        sep1.DisplayMessage(1, message="bad \udcff")
    with pytest.raises(sep1.FieldValueError, match="254"):
        sep1.DisplayMessage(1, message="é" * 128)
    assert sep1.DisplayMessage(1, message="é" * 127).message == "é" * 127


def test_long_text_is_truncated_on_a_character_boundary_only_when_asked() -> None:
    """Long text is kept whole until truncated(), which cuts between UTF-8 characters."""
    text = "Alerta: " + "é" * 40  # 8 + 80 bytes
    message = sep1.DisplayMessage(1, message=text)
    assert message.message == text and not message.fits_one_frame
    short = message.truncated()
    assert short.fits_one_frame and text.startswith(short.message)
    encoded = short.message.encode("utf-8")
    assert len(encoded) == 58  # 59 would split an "é"
    assert len(message.truncated(9).message.encode()) == 8
    assert sep1.DisplayMessage.UNFRAGMENTED_TEXT_BYTES == 59


def test_truncation_refuses_a_limit_that_is_not_a_byte_count() -> None:
    """A negative or non-integer limit is refused, not taken as bytes to drop from the end."""
    message = sep1.DisplayMessage(message_id=1, message="Hello world")
    for limit in (-3, -1, 2.5, 100.0, "5", True):
        with pytest.raises(ValueError, match="max_bytes"):
            message.truncated(limit)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_bytes"):
            sep1.truncate_utf8("Hello", limit)  # type: ignore[arg-type]
    assert message.truncated(0).message == "" and sep1.truncate_utf8("Hello", 0) == ""
    assert message.truncated(5).message == "Hello"


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=80), limit=st.integers(0, 120))
def test_truncate_utf8_is_the_longest_fitting_prefix(text: str, limit: int) -> None:
    """truncate_utf8 returns the longest character prefix whose UTF-8 fits the limit."""
    cut = sep1.truncate_utf8(text, limit)
    assert text.startswith(cut) and len(cut.encode()) <= limit
    if cut != text:
        assert len(text[: len(cut) + 1].encode()) > limit


def test_message_control_bits() -> None:
    """Message Control packs transmission (bits 0-1), importance (2-3) and confirmation (7)."""
    control = sep1.MessageControl.make(transmission=2, importance=3, confirmation_required=True)
    assert control == 0b1000_1110
    message = sep1.DisplayMessage(1, message_control=control)
    assert message.confirmation_required and message.importance == 3
    with pytest.raises(ValueError):
        sep1.MessageControl.make(transmission=3)


def test_report_event_status_signature_is_42_bytes() -> None:
    """The Report Event Status signature is exactly 42 bytes and its type is 0 or 1."""
    with pytest.raises(sep1.FieldValueError, match="42"):
        sep1.ReportEventStatus(1, 2, 3, 1, signature=bytes(41))
    with pytest.raises(sep1.FieldValueError, match="signature_type"):
        sep1.ReportEventStatus(1, 2, 3, 1, signature_type=2)
    assert sep1.ReportEventStatus(1, sep1.EventStatus.REJECTED, 3, 1).rejected


def test_attribute_records_match_their_types() -> None:
    """A successful record needs a value in its attribute's type; a failure record has none."""
    with pytest.raises(sep1.FieldValueError, match="uint48"):
        sep1.AttributeRecord(0x0000, 0, 1 << 48)
    with pytest.raises(sep1.FieldValueError, match="int24"):
        sep1.AttributeRecord(0x0400, 0, 1 << 23)
    with pytest.raises(sep1.FieldValueError, match="no value"):
        sep1.AttributeRecord(0x0000, 0x86, 5)
    with pytest.raises(sep1.FieldValueError, match="0x0999"):
        sep1.AttributeRecord(0x0999, 0, 5)


def test_publish_price_fields_not_sent_keep_defaults() -> None:
    """A Publish Price may not carry values in the optional fields it leaves off the wire."""
    with pytest.raises(sep1.FieldValueError, match="generation_price"):
        sep1.PublishPrice(1, b"", 2, 3, generation_price=9, optional_fields=1)
    assert sep1.PublishPrice(1, b"", 2, 3, price_ratio=9, optional_fields=1).price_ratio == 9


def test_messages_are_frozen() -> None:
    """Messages cannot be changed after they are made."""
    message = lce()
    with pytest.raises(AttributeError):
        message.duration_in_minutes = 5  # type: ignore[misc]


# Every UTCTime field of sep1-wire.md; none of them gives 0xFFFFFFFF a meaning of its own.
UTC_TIME_FIELDS = [
    (sep1.GetScheduledPrices, "start_time", {}),
    (
        sep1.PublishPrice,
        "current_time",
        {"provider_id": 1, "rate_label": b"", "issuer_event_id": 2},
    ),
    (
        sep1.PublishPrice,
        "start_time",
        {"provider_id": 1, "rate_label": b"", "issuer_event_id": 2, "current_time": 3},
    ),
    (sep1.LoadControlEvent, "start_time", {"issuer_event_id": 1, "device_class": 1}),
    (sep1.CancelLoadControlEvent, "effective_time", {"issuer_event_id": 1, "device_class": 1}),
    (
        sep1.ReportEventStatus,
        "event_status_time",
        {"issuer_event_id": 1, "event_status": 1, "criticality_level_applied": 1},
    ),
    (sep1.GetScheduledEvents, "start_time", {}),
    (sep1.GetProfile, "end_time", {"interval_channel": 0, "number_of_periods": 1}),
    (sep1.GetProfileResponse, "end_time", {"status": 0, "profile_interval_period": 3}),
    (sep1.DisplayMessage, "start_time", {"message_id": 1}),
    (sep1.MessageConfirmation, "confirmation_time", {"message_id": 1}),
]


@pytest.mark.parametrize(("cls", "field", "others"), UTC_TIME_FIELDS)
def test_utc_time_0xffffffff_is_refused_as_invalid(
    cls: type[sep1.Message], field: str, others: dict[str, object]
) -> None:
    """Every UTCTime field refuses 0xFFFFFFFF, ZCL's invalid time, and takes 0xFFFFFFFE."""
    with pytest.raises(sep1.FieldValueError) as caught:
        cls(**others, **{field: 0xFFFFFFFF})
    assert caught.value.field == field and "invalid" in caught.value.reason
    assert getattr(cls(**others, **{field: 0xFFFFFFFE}), field) == 0xFFFFFFFE


def test_utc_time_conversions_stop_at_the_last_valid_time() -> None:
    """to_datetime takes 0xFFFFFFFE (2136-02-07 06:28:14) and refuses 0xFFFFFFFF as invalid."""
    last = utctime.to_datetime(0xFFFFFFFE)
    assert last == datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=2**32 - 2)
    assert last == datetime(2136, 2, 7, 6, 28, 14, tzinfo=UTC)
    assert utctime.from_datetime(last) == 0xFFFFFFFE
    with pytest.raises(ValueError, match="invalid"):
        utctime.to_datetime(0xFFFFFFFF)


def test_unix_conversions_refuse_what_is_not_a_utc_time() -> None:
    """from_unix refuses infinity and NaN with its range error; to_unix takes only 0..0xFFFFFFFE."""
    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="outside the UTCTime range"):
            utctime.from_unix(bad)
    for utc_time in (-5, -1, 0xFFFFFFFF, 2**32):
        with pytest.raises(ValueError, match="UTCTime"):
            utctime.to_unix(utc_time)
    assert utctime.to_unix(0xFFFFFFFE) == 946_684_800 + 4_294_967_294
    assert utctime.from_unix(946_684_800 + 4_294_967_294) == 0xFFFFFFFE


def test_utc_time_is_seconds_since_2000() -> None:
    """UTCTime counts seconds from 2000-01-01T00:00:00Z (Unix 946684800), in either direction."""
    assert utctime.from_datetime(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert utctime.from_unix(946_684_800 + 86_400) == 86_400
    assert utctime.to_unix(0) == 946_684_800
    moment = datetime(2026, 11, 22, 18, 30, 5, tzinfo=timezone(timedelta(hours=-6)))
    assert utctime.to_datetime(utctime.from_datetime(moment)) == moment
    assert utctime.from_datetime(moment) == int(moment.timestamp()) - 946_684_800
    with pytest.raises(ValueError, match="naive"):
        utctime.from_datetime(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="range"):
        utctime.from_datetime(datetime(1999, 12, 31, tzinfo=UTC))
