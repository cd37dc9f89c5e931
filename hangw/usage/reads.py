"""Midnight register reads: the documented CSV ``hangw usage import-reads`` loads.

The file has a header row and one row per ESI ID, day and channel::

    esiid,read_date,channel,reading_kwh
    10443720000000001,2026-03-01,4,12345.678

``read_date`` is the local (America/Chicago) day whose midnight the read was taken at;
``channel`` is 4 (consumption, the default when the column is absent or blank) or 1
(generation); ``reading_kwh`` is the meter's cumulative register in kWh (at most 3 decimals
are kept: the store holds Wh). A later file's read of the same ESI ID, day and channel replaces
the earlier. Loading reads judges the sum check of every stored day they bound (VEE flag
SUM_CHECK): the day's total must equal the difference of the reads at its midnight and the next.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from hangw.usage.days import day_of
from hangw.usage.ingest import apply_sum_check, placeholder, prepare_sum_keys
from hangw.usage.lse import FIRST_YEAR, LAST_YEAR

_ESIID = re.compile(r"[A-Za-z0-9]{1,64}")
REQUIRED = ("esiid", "read_date", "reading_kwh")


class ReadsFileError(ValueError):
    """The file cannot be loaded at all (no header, wrong columns); nothing was stored."""


@dataclass(frozen=True)
class ReadsOutcome:
    rows: int
    loaded: int
    rejected: list[tuple[int, str]]  # (line, reason)


def parse_reads(
    lines: Iterable[str], name: str
) -> tuple[list[tuple[str, int, int, int]], list[tuple[int, str]]]:
    """The reads ``(esiid, day, channel, reading_wh)`` of a CSV and its rejected lines."""
    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ReadsFileError(
            f"{name}: the file is empty; it needs the header {','.join(REQUIRED)}"
        ) from None
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise ReadsFileError(
            f"{name} line 1: the header lacks {', '.join(missing)} "
            f"(expected esiid,read_date,channel,reading_kwh)"
        )
    at = {column: header.index(column) for column in header}
    reads: list[tuple[str, int, int, int]] = []
    rejected: list[tuple[int, str]] = []
    seen: dict[tuple[str, int, int], int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            rejected.append((line, f"{len(row)} fields where the header has {len(header)}"))
            continue
        esiid = row[at["esiid"]].strip()
        if not _ESIID.fullmatch(esiid):
            rejected.append((line, f"ESI ID {esiid[:40]!r} is not 1 to 64 letters and digits"))
            continue
        try:
            date = dt.date.fromisoformat(row[at["read_date"]].strip())
        except ValueError:
            rejected.append(
                (line, f"read_date {row[at['read_date']][:20]!r} is not a date YYYY-MM-DD")
            )
            continue
        if not FIRST_YEAR <= date.year <= LAST_YEAR:  # as the interval data's days are
            rejected.append(
                (line, f"read_date {date} is not in the years {FIRST_YEAR} to {LAST_YEAR}")
            )
            continue
        day = day_of(date)
        channel_text = row[at["channel"]].strip() if "channel" in at else ""
        if channel_text not in ("", "1", "4"):
            rejected.append((line, f"channel {channel_text[:10]!r} is neither 4 nor 1"))
            continue
        channel = int(channel_text or 4)
        try:
            kwh = Decimal(row[at["reading_kwh"]].strip())
        except InvalidOperation:
            rejected.append((line, f"reading_kwh {row[at['reading_kwh']][:20]!r} is not a number"))
            continue
        if not kwh.is_finite() or kwh < 0 or kwh >= 10**12:
            rejected.append((line, f"reading_kwh {kwh} is not a meter register (0 or more kWh)"))
            continue
        key = (esiid, day, channel)
        if key in seen:
            rejected.append(
                (line, f"a second read of {esiid} on {day} (first at line {seen[key]})")
            )
            continue
        seen[key] = line
        reads.append((esiid, day, channel, int((kwh * 1000).to_integral_value())))
    return reads, rejected


def load_reads_thd(
    conn: sa.Connection, reads: list[tuple[str, int, int, int]], now: float, tolerance_wh: int
) -> int:
    """Upsert the reads and judge the sum check of the days they bound; returns reads stored."""
    dialect = conn.dialect
    mark = placeholder(dialect)
    raw: Any = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        cursor.executemany(
            f"INSERT INTO register_reads (esiid, day, channel, reading_wh, loaded_at) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) "
            "ON CONFLICT (esiid, day, channel) DO UPDATE SET "
            "reading_wh = excluded.reading_wh, loaded_at = excluded.loaded_at",
            [(*read, now) for read in reads],
        )
        # a read at day D's midnight bounds day D (its start) and the day before (its end)
        days = sorted({day for _, day, _, _ in reads} | {_before(day) for _, day, _, _ in reads})
        prepare_sum_keys(cursor, dialect, days)
        keys = {(esiid, day, channel) for esiid, day, channel, _ in reads}
        keys |= {(esiid, _before(day), channel) for esiid, day, channel, _ in reads}
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS read_keys "
            "(esiid VARCHAR(64), day INTEGER, channel SMALLINT)"
        )
        cursor.execute("DELETE FROM read_keys")
        cursor.executemany(f"INSERT INTO read_keys VALUES ({mark}, {mark}, {mark})", sorted(keys))
        cursor.execute(
            "INSERT INTO sum_keys SELECT k.esiid, k.day, k.channel, d.next_day "
            "FROM read_keys k JOIN sum_days d ON d.day = k.day"
        )
        cursor.execute("DELETE FROM read_keys")
        apply_sum_check(cursor, dialect, tolerance_wh)
    finally:
        cursor.close()
    return len(reads)


def _before(day: int) -> int:
    date = dt.date(day // 10000, day // 100 % 100, day % 100)
    return day_of(date - dt.timedelta(days=1))
