"""Operating days and how one ESI ID-day's intervals are packed in the store.

An operating day is a local calendar day in America/Chicago, written YYYYMMDD. Its intervals are
15 minutes long and start at local midnight, taken as a UTC instant: 92 of them on the spring
DST day, 100 on the fall one, 96 on every other. Interval k covers
``[start_utc + 900 k, start_utc + 900 (k + 1))``, so the repeated fall-back hour is never ambiguous.

The store keeps the values as little-endian int32 Wh (``wh``) and two bitmasks (bit k of byte
k // 8 is interval k): the missing intervals (packed as 0) and the estimated ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

MARKET_TZ = ZoneInfo("America/Chicago")
INTERVAL_S = 900
#: The interval counts an operating day may have.
DAY_LENGTHS = (92, 96, 100)


@lru_cache(maxsize=8192)
def day_bounds(day: int) -> tuple[int, int]:
    """``(start_utc, intervals)`` of operating day ``day`` (YYYYMMDD); ValueError if no such day
    (or it is the calendar's last)."""
    date = dt.date(day // 10000, day // 100 % 100, day % 100)
    if date == dt.date.max:
        raise ValueError(f"{day} is the last day of the calendar; it has no end")
    start = dt.datetime.combine(date, dt.time(), MARKET_TZ)
    end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), MARKET_TZ)
    start_utc = int(start.timestamp())
    return start_utc, (int(end.timestamp()) - start_utc) // INTERVAL_S


def day_of(date: dt.date) -> int:
    return date.year * 10000 + date.month * 100 + date.day


def date_of(day: int) -> dt.date:
    return dt.date(day // 10000, day // 100 % 100, day % 100)


def days_between(first: int, last: int) -> list[int]:
    """Every operating day from ``first`` to ``last``, both included."""
    start, end = date_of(first), date_of(last)
    return [day_of(start + dt.timedelta(days=n)) for n in range((end - start).days + 1)]


def pack_mask(flags: Iterable[bool]) -> bytes | None:
    """Bit k of byte k // 8 set for each true flag; None when none is."""
    bits = np.fromiter(flags, dtype=bool)
    if not bits.any():
        return None
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_mask(mask: bytes | None, intervals: int) -> np.ndarray:
    """The boolean array of a packed mask (all false for None)."""
    if mask is None:
        return np.zeros(intervals, dtype=bool)
    bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")
    return bits[:intervals].astype(bool)


def pack_wh(values: Sequence[int | None]) -> bytes:
    """Little-endian int32 Wh; a missing interval (None) packs as 0."""
    return np.array([0 if v is None else v for v in values], dtype="<i4").tobytes()


def unpack_wh(wh: bytes) -> np.ndarray:
    return np.frombuffer(wh, dtype="<i4")
