"""ZigBee UTCTime: unsigned 32-bit seconds since 2000-01-01T00:00:00Z."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

__all__ = [
    "EPOCH_2000",
    "UNIX_OFFSET",
    "UTC_TIME_INVALID",
    "UTC_TIME_MAX",
    "from_datetime",
    "from_unix",
    "to_datetime",
    "to_unix",
]

#: The ZigBee epoch.
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
#: Seconds from the Unix epoch to the ZigBee epoch.
UNIX_OFFSET = 946_684_800
#: ZCL's "invalid" UTCTime. No SE 1.0 command gives it another meaning, so sep1 refuses it in
#: every time field, on encode and on decode, rather than read it as a time in 2136.
UTC_TIME_INVALID = 0xFFFF_FFFF
#: The largest UTCTime (2136-02-07T06:28:14Z).
UTC_TIME_MAX = UTC_TIME_INVALID - 1


def from_datetime(moment: datetime) -> int:
    """UTCTime of an aware datetime, truncated to the second; refuses naive or out-of-range."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no defined UTC time; give it a time zone")
    seconds = (moment - EPOCH_2000) // timedelta(seconds=1)
    if not 0 <= seconds <= UTC_TIME_MAX:
        raise ValueError(f"{moment.isoformat()} is outside the UTCTime range (2000-01-01 to 2136)")
    return seconds


def to_datetime(utc_time: int) -> datetime:
    """The aware UTC datetime of a UTCTime; refuses 0xFFFFFFFF, ZCL's invalid time."""
    _check(utc_time)
    return EPOCH_2000 + timedelta(seconds=utc_time)


def from_unix(unix_seconds: float) -> int:
    """UTCTime of a Unix timestamp (as a clock's ``seconds()`` gives), truncated to the second."""
    # int() of an infinity raises OverflowError, of NaN a ValueError with another message
    if not math.isfinite(unix_seconds):
        raise ValueError(f"Unix time {unix_seconds} is outside the UTCTime range")
    seconds = int(unix_seconds) - UNIX_OFFSET
    if not 0 <= seconds <= UTC_TIME_MAX:
        raise ValueError(f"Unix time {unix_seconds} is outside the UTCTime range")
    return seconds


def to_unix(utc_time: int) -> int:
    """Unix seconds of a UTCTime; refuses 0xFFFFFFFF, ZCL's invalid time."""
    _check(utc_time)
    return utc_time + UNIX_OFFSET


def _check(utc_time: int) -> None:
    if utc_time == UTC_TIME_INVALID:
        raise ValueError("0xFFFFFFFF is ZCL's invalid UTCTime, not a time")
    if not 0 <= utc_time <= UTC_TIME_MAX:
        raise ValueError(f"{utc_time} is not a 32-bit UTCTime")
