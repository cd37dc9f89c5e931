"""The ERCOT LSE interval file format: a strict, sans-I/O parser (reference/lse-format.md).

``parse(text)`` turns the text of one LSE file (or a piece of one cut at a record boundary) into
rows ready for the store and a list of rejections, each with its line and reason. A record is
one ESI ID, operating day and channel: header rows ``00000001`` (ESI ID, channel, start and stop
time, DST flag, invalid flag), ``00000002`` (seconds per interval, unit), ``00000003``
(transaction id), ``00000004`` (creation timestamp), optionally ``00000030`` (attribute/value
pairs: Sender is the TDSP's DUNS) and any other ``0000xxxx`` row (skipped), then detail rows
``10000000``, ``10000001``, ... each with value,status,time triplets (a blank value is missing).

A record is rejected whole (with the line that is wrong) when its interval count is not the
local day's (92, 96 or 100 in America/Chicago), its detail sort codes are not contiguous, a value
is not a finite number or does not fit, a status is not A or E, or a required header row is
missing or malformed, a time is not in the years 2000 to 2199, or it was created after
``latest_created`` (in the future). Everything else about a record is kept and judged by VEE
(``hangw.usage.vee``), which flags and never changes a value.

The per-record work is a handful of string splits; numbers are converted and judged with numpy
for a whole piece at once. Nothing here does I/O, logs or knows the database.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter

import numpy as np

from hangw.usage.days import DAY_LENGTHS, INTERVAL_S, day_bounds
from hangw.usage.vee import Flag

#: The ESI ID as LSE allows it: letters and digits, at most 64.
_ESIID = re.compile(r"[A-Za-z0-9]{1,64}")
_TIMESTAMP = re.compile(r"\d{14}")
_SORT_CODE = re.compile(r"\d{8}")
#: A value as the numbers are written (what numpy reads): ASCII digits, a point, an exponent, or
#: nan and inf (rejected later as not finite), with ASCII spaces or tabs around it at most; no
#: underscores or other scripts' digits.
_NUMBER = re.compile(
    r"[ \t]*"
    r"(?:[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity))"
    r"[ \t]*",
    re.IGNORECASE,
)
#: The longest transaction id and Sender the store keeps (its version is VARCHAR(96), the
#: creation timestamp and ':' take 15; its tdsp_duns is VARCHAR(16)).
MAX_TRANSACTION = 81
MAX_SENDER = 16
#: Detail sort codes as they start a row, by position in the record.
_DETAIL_CODES = tuple(f"{10000000 + k}," for k in range(32))
_DETAIL_CODE_LISTS = [list(_DETAIL_CODES[:n]) for n in range(32)]
_MAX_ROWS = 25  # 100 intervals at 4 per row
_ROWS_OF = {length: length // 4 for length in DAY_LENGTHS}
_INT32 = 2**31 - 1
_STATUSES = frozenset(("A", "E"))
_KNOWN_HEADERS = frozenset(("00000002,", "00000003,", "00000004,", "00000030,"))
#: The years an operating day or a creation timestamp may be in (Texas retail choice began 2002).
FIRST_YEAR, LAST_YEAR = 2000, 2199
#: Spike check: a day whose third-highest interval is below this many Wh is compared to it.
SPIKE_FLOOR_WH = 50

#: Columns of a parsed row, in order (``usage_days`` without ``file_id``, plus the line).
ROW_COLUMNS = (
    "esiid",
    "day",
    "channel",
    "tdsp_duns",
    "start_utc",
    "intervals",
    "wh",
    "missing",
    "estimated",
    "total_wh",
    "missing_count",
    "estimated_count",
    "flags",
    "version",
    "line",
)
Row = tuple[
    str, int, int, str, int, int, bytes, bytes | None, bytes | None, int, int, int, int, str, int
]


@dataclass(frozen=True)
class VeeSettings:
    spike_ratio: float = 1.5
    zero_run: int = 12


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str
    esiid: str = ""
    day: int | None = None


@dataclass
class Parsed:
    """What one piece of a file gave: the records found, rows to store, and rejections."""

    records: int = 0
    rows: list[Row] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class _Reject(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _excerpt(text: str, limit: int = 40) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def _is_sort_code(line: str) -> bool:
    return len(line) >= 9 and line[8] == "," and _SORT_CODE.fullmatch(line[:8]) is not None


@lru_cache(maxsize=1 << 16)
def _stamp_problem(stamp: str) -> str:
    """Why ``stamp`` is not a time YYYYMMDDHHMMSS from FIRST_YEAR to LAST_YEAR ('' when it is)."""
    if not _TIMESTAMP.fullmatch(stamp):
        return "is not a time YYYYMMDDHHMMSS"
    if not FIRST_YEAR <= int(stamp[:4]) <= LAST_YEAR:
        return f"is not in the years {FIRST_YEAR} to {LAST_YEAR}"
    try:
        dt.datetime(
            int(stamp[:4]),
            int(stamp[4:6]),
            int(stamp[6:8]),
            int(stamp[8:10]),
            int(stamp[10:12]),
            int(stamp[12:14]),
        )
    except ValueError:
        return "is not a real date and time"
    return ""


def _day_of(stamp: str, line: int, what: str) -> int:
    problem = _stamp_problem(stamp)
    if problem:
        raise _Reject(line, f"{what} {_excerpt(stamp)} {problem}")
    return int(stamp[:8])


@lru_cache(maxsize=4096)
def _next_midnight(day: int) -> str:
    following = dt.date(day // 10000, day // 100 % 100, day % 100) + dt.timedelta(days=1)
    return following.strftime("%Y%m%d") + "000000"


class _Record:
    """One record's header facts and the raw texts of its intervals (before numbers)."""

    __slots__ = (
        "channel",
        "day",
        "detail_line",
        "detail_start",
        "esiid",
        "estimated",
        "invalid",
        "line",
        "lines",
        "missing",
        "tdsp_duns",
        "text",
        "values",
        "version",
    )
    channel: int
    day: int
    detail_line: int
    #: Where its detail rows begin in ``lines`` (the piece's rows), to find an interval's line.
    detail_start: int
    lines: list[str]
    esiid: str
    estimated: list[bool] | None
    invalid: bool
    line: int
    missing: bool
    tdsp_duns: str
    #: The usual record's values, comma-separated and ending with a comma; else None.
    text: str | None
    #: Any other record's value texts one by one ("" when missing); else None.
    values: list[str] | None
    version: str


class _Seen:
    """Header rows already judged in this piece (most files repeat them record after record)."""

    def __init__(self, latest_created: str | None) -> None:
        self.second: set[str] = set()
        self.senders: dict[str, str] = {}
        #: The latest creation timestamp believed (YYYYMMDDHHMMSS); None: no limit.
        self.latest_created = latest_created


def _header(
    lines: list[str], first: int, start: int, end: int, tdsp_duns: str | None, seen: _Seen
) -> tuple[_Record, int]:
    """Read the header rows of the record whose 00000001 row is ``lines[start]``.

    Returns the record and the index of its first detail row.
    """
    record = _Record()
    line_no = first + start
    record.line = line_no
    f = lines[start].split(",")
    if len(f) < 7:
        raise _Reject(line_no, f"row 00000001 has {len(f)} fields; it needs 7")
    esiid = f[1]
    if not _ESIID.fullmatch(esiid):
        raise _Reject(line_no, f"ESI ID {_excerpt(esiid)} is not 1 to 64 letters and digits")
    record.esiid = esiid
    channel = f[2]
    if channel != "4" and channel != "1":
        raise _Reject(
            line_no, f"channel {_excerpt(channel)} is neither 4 (load) nor 1 (generation)"
        )
    record.channel = int(channel)
    start_time, stop = f[3], f[4]
    day = _day_of(start_time, line_no, "start time")
    if start_time[8:] != "000000":
        raise _Reject(line_no, f"start time {start_time} is not the local midnight of its day")
    if stop[:8] != start_time[:8] and stop != _next_midnight(day):
        raise _Reject(line_no, f"stop time {_excerpt(stop)} is not on the operating day {day}")
    _day_of(stop, line_no, "stop time")
    record.day = day
    record.invalid = f[6].strip().upper() == "Y"
    record.tdsp_duns = tdsp_duns or ""
    rows: dict[str, int] = {}
    index = start + 1
    while index < end and lines[index][:4] == "0000" and lines[index][:9] != "00000001,":
        row = lines[index]
        if row[:9] not in _KNOWN_HEADERS and not _is_sort_code(row):
            raise _Reject(first + index, f"not an LSE row: {_excerpt(row)}")
        rows[row[:8]] = index
        index += 1
    if index < end and lines[index][:1] != "1" and lines[index][:9] != "00000001,":
        raise _Reject(first + index, f"not an LSE row: {_excerpt(lines[index])}")
    at = rows.get("00000002")
    if at is None:
        raise _Reject(line_no, "the record has no 00000002 row (seconds per interval, unit)")
    if lines[at] not in seen.second:
        g = lines[at].split(",")
        if len(g) < 9:
            raise _Reject(first + at, f"row 00000002 has {len(g)} fields; it needs at least 9")
        if g[7].strip() != str(INTERVAL_S):
            raise _Reject(
                first + at,
                f"seconds per interval is {_excerpt(g[7])}; LSE data is 900 (15 minutes)",
            )
        if g[8].strip() != "01":
            raise _Reject(first + at, f"unit of measure {_excerpt(g[8])} is not 01 (kWh)")
        seen.second.add(lines[at])
    at = rows.get("00000003")
    transaction = lines[at][9:].partition(",")[0].strip() if at is not None else ""
    if not transaction:
        raise _Reject(line_no, "the record has no transaction id (row 00000003)")
    if len(transaction) > MAX_TRANSACTION:
        raise _Reject(
            first + (at or 0),
            f"transaction id {_excerpt(transaction)} is longer than {MAX_TRANSACTION} characters",
        )
    if not transaction.isprintable():  # a NUL, which PostgreSQL cannot store, or a control
        raise _Reject(
            first + (at or 0),
            f"transaction id {_excerpt(transaction)} has a character that is not printable",
        )
    at = rows.get("00000004")
    if at is None:
        raise _Reject(line_no, "the record has no creation timestamp (row 00000004)")
    created = lines[at][9:].partition(",")[0].strip()
    _day_of(created, first + at, "creation timestamp (row 00000004)")
    if seen.latest_created is not None and created > seen.latest_created:
        # it would outrank every correction that follows it, as they all are older
        raise _Reject(
            first + at,
            f"creation timestamp (row 00000004) {created} is in the future "
            f"(later than {seen.latest_created})",
        )
    record.version = f"{created}:{transaction}"
    at = rows.get("00000030")
    if at is not None:
        pairs = lines[at]
        sender = seen.senders.get(pairs)
        if sender is None:
            sender = ""
            for pair in pairs.split(",")[2:]:
                key, _, value = pair.partition("=")
                if key.strip() == "Sender":
                    sender = value.strip()
            seen.senders[pairs] = sender
        if sender:
            if len(sender) > MAX_SENDER:
                raise _Reject(
                    first + at, f"Sender {_excerpt(sender)} is longer than {MAX_SENDER} characters"
                )
            if not sender.isprintable():
                raise _Reject(
                    first + at, f"Sender {_excerpt(sender)} has a character that is not printable"
                )
            if tdsp_duns and sender != tdsp_duns:
                raise _Reject(
                    first + at,
                    f"the record's Sender is {_excerpt(sender)}, "
                    f"but it was delivered for TDSP {tdsp_duns}",
                )
            record.tdsp_duns = sender
    return record, index


def _details(lines: list[str], first: int, record: _Record, start: int, stop: int) -> None:
    """Check the detail rows ``lines[start:stop]`` and keep their value and status texts.

    The usual record (every triplet ``value,A,,`` or ``value,E,,``) keeps one text of its values
    for numpy to read with the rest of the file; any other keeps its fields one by one.
    """
    _, expected = day_bounds(record.day)
    record.detail_line = first + start
    record.detail_start = start
    record.lines = lines
    rows = stop - start
    if rows == 0:
        raise _Reject(record.line, "the record has no detail rows (10000000 ...)")
    if rows > _MAX_ROWS:
        raise _Reject(first + start + _MAX_ROWS, f"the record has {rows} detail rows; at most 25")
    block = lines[start:stop]
    if [row[:9] for row in block] != _DETAIL_CODE_LISTS[rows]:
        for k, row in enumerate(block):
            if not row.startswith(_DETAIL_CODES[k]):
                code = row[:8] if _is_sort_code(row) else _excerpt(row)
                raise _Reject(
                    first + start + k, f"detail sort code {code} where {10000000 + k} was expected"
                )
    joined = "".join([row[9:] for row in block])
    actual = joined.count(",A,,")
    estimated = joined.count(",E,,")
    if (
        actual + estimated == expected
        and joined.count(",") == 3 * expected
        and ",,A" not in joined
        and ",,E" not in joined
        and ",,," not in joined
        and joined[:1] != ","
        and " " not in joined
        and "\t" not in joined
        and all([row[-2:] == ",," for row in block])
    ):
        # Every triplet is value,A|E,(no time),: the values alone, comma-separated (not a
        # blank first value, which is missing, nor padded ones, no numbers: numpy takes both).
        # Exactly so: no ",,A" or ",,E" means no two status markers share a comma (a value left
        # out before its status), three commas a marker leave no room for a stray field between
        # them, and a row ending in ",," does not run on into the next row's first value.
        record.text = joined.replace(",A,,", ",").replace(",E,,", ",")
        if estimated:
            statuses = joined.split(",")[1::3]
            record.estimated = [status == "E" for status in statuses]
        else:
            record.estimated = None
        record.values = None
        record.missing = False
        return
    fields = _triplets(lines, first, start, stop)  # row by row: none runs on into the next
    count = len(fields) // 3
    if count != expected:
        raise _Reject(
            record.line,
            f"the record has {count} intervals; {record.day} has {expected} in America/Chicago",
        )
    values = fields[0::3]
    statuses = fields[1::3]
    if statuses.count("A") + statuses.count("E") != count:
        for k, status in enumerate(statuses):
            if status in _STATUSES or (status == "" and values[k] == ""):
                continue
            line = _line_of(record, k)
            if status == "" and values[k] in _STATUSES:
                raise _Reject(
                    line,
                    f"interval {k + 1} has its status {values[k]} where its value belongs: "
                    "a field left out (a missing value is an empty field)",
                )
            if status == "":
                raise _Reject(line, f"interval {k + 1} has a value but no status (A or E)")
            raise _Reject(line, f"interval {k + 1} has status {_excerpt(status)}; A or E expected")
    record.text = None
    record.values = values
    record.missing = "" in values
    record.estimated = [s == "E" for s in statuses] if "E" in statuses else None


def _line_of(record: _Record, interval: int) -> int:
    """The line of the detail row holding ``interval`` (from 0): rows need not hold four."""
    lines, start = record.lines, record.detail_start
    seen = 0
    for offset in range(min(_MAX_ROWS, len(lines) - start)):
        # value,status,time triplets; a row ending in a comma has one more (empty) field
        seen += len(lines[start + offset][9:].split(",")) // 3
        if interval < seen:
            return record.detail_line + offset
    return record.line


def _triplets(lines: list[str], first: int, start: int, stop: int) -> list[str]:
    """The value,status,time fields of rows that do not all end with a comma, row by row."""
    fields: list[str] = []
    for i in range(start, stop):
        parts = lines[i][9:].split(",")
        if len(parts) % 3 == 1 and parts[-1] == "":
            del parts[-1]
        if len(parts) % 3:
            raise _Reject(
                first + i,
                f"detail row has {len(parts)} fields after its sort code; "
                "they come in value,status,time triplets",
            )
        fields.extend(parts)
    return fields


def parse(
    text: str,
    *,
    first_line: int = 1,
    tdsp_duns: str | None = None,
    vee: VeeSettings = VeeSettings(),
    latest_created: str | None = None,
) -> Parsed:
    """Parse LSE text whose first line is line ``first_line`` of its file.

    A record created after ``latest_created`` (YYYYMMDDHHMMSS, local time) is rejected.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    end = len(lines)
    if lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    parsed = Parsed()
    records: list[_Record] = []
    seen = _Seen(latest_created)
    i = 0
    while i < end:
        line = lines[i]
        if not line.startswith("00000001,"):
            if line.strip():
                parsed.rejections.append(
                    Rejection(
                        first_line + i, f"not an LSE row (outside any record): {_excerpt(line)}"
                    )
                )
            i += 1
            continue
        parsed.records += 1
        start = i
        esiid, day = "", None
        try:
            record, d0 = _header(lines, first_line, start, end, tdsp_duns, seen)
            esiid, day = record.esiid, record.day
            d1 = d0 + _ROWS_OF[day_bounds(day)[1]]
            if not (d1 <= end and lines[d1 - 1][:1] == "1" and (d1 == end or lines[d1][:1] != "1")):
                d1 = d0
                while d1 < end and lines[d1][:1] == "1":
                    d1 += 1
            try:
                _details(lines, first_line, record, d0, d1)
            except _Reject:
                # details cut short by a line that is no LSE row: that line is the fault
                after = lines[d1] if d1 < end else ""
                if after.strip() and not after.startswith("00000001,"):
                    raise _Reject(first_line + d1, f"not an LSE row: {_excerpt(after)}") from None
                raise
            i = d1
        except _Reject as reject:
            parsed.rejections.append(Rejection(reject.line, reject.reason, esiid, day))
            i = start + 1
            while i < end and not lines[i].startswith("00000001,"):
                i += 1
            continue
        records.append(record)
    _to_rows(records, parsed, vee)
    return parsed


def _to_rows(records: list[_Record], parsed: Parsed, vee: VeeSettings) -> None:
    """Convert the values to Wh, judge them (VEE) and make the rows, one day length at a time."""
    for length in DAY_LENGTHS:
        group = [r for r in records if day_bounds(r.day)[1] == length]
        if group:
            _rows_of(group, length, parsed, vee)
    parsed.rows.sort(key=itemgetter(-1))


def _numbers(
    group: list[_Record], length: int, parsed: Parsed
) -> tuple[list[_Record], np.ndarray, np.ndarray]:
    """The kWh values of the group as floats (missing as 0) and the missing mask.

    The usual records are read by numpy in one go; the others (and all of them when one value in
    the group is not a number) one by one, where a record with a value that is not a number is
    rejected with the line of that value.
    """
    usual = [r for r in group if r.text is not None]
    if len(usual) == len(group):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                kwh = np.fromstring("".join([r.text or "" for r in usual]), sep=",")
        except ValueError:
            pass
        else:
            if kwh.size == len(usual) * length:
                return (
                    usual,
                    kwh.reshape(len(usual), length),
                    np.zeros(kwh.shape, dtype=bool).reshape(len(usual), length),
                )
    flat: list[float] = []
    kept: list[_Record] = []
    missing_rows: list[int] = []
    for record in group:
        values = record.values if record.values is not None else record.text.split(",")[:-1]  # type: ignore[union-attr]
        if len(values) != length:  # _details counted them; never one record's into another's
            parsed.rejections.append(
                Rejection(
                    record.line,
                    f"the record has {len(values)} intervals; its day has {length}",
                    record.esiid,
                    record.day,
                )
            )
            continue
        if record.missing:
            values = ["0" if v == "" else v for v in values]
            missing_rows.append(len(kept))
        bad = next((k for k, v in enumerate(values) if not _NUMBER.fullmatch(v)), None)
        if bad is None:
            flat.extend(map(float, values))
        else:
            if record.missing:
                missing_rows.pop()
            parsed.rejections.append(
                Rejection(
                    _line_of(record, bad),
                    f"interval {bad + 1} value {_excerpt(values[bad])} is not a number",
                    record.esiid,
                    record.day,
                )
            )
            continue
        kept.append(record)
    kwh = np.array(flat, dtype=np.float64).reshape(len(kept), length)
    missing = np.zeros((len(kept), length), dtype=bool)
    for row in missing_rows:
        missing[row] = [v == "" for v in kept[row].values]  # type: ignore[union-attr]
    return kept, kwh, missing


def _rows_of(group: list[_Record], length: int, parsed: Parsed, vee: VeeSettings) -> None:
    kept, kwh, missing = _numbers(group, length, parsed)
    if not kept:
        return
    wh_float = np.rint(kwh * 1000.0)
    bad = ~np.isfinite(wh_float).all(axis=1) | (np.abs(np.nan_to_num(wh_float)) > _INT32).any(
        axis=1
    )
    if bad.any():
        for position in np.flatnonzero(bad):
            record = kept[int(position)]
            row = wh_float[position]
            at = int(np.flatnonzero(~np.isfinite(row) | (np.abs(np.nan_to_num(row)) > _INT32))[0])
            parsed.rejections.append(
                Rejection(
                    _line_of(record, at),
                    f"interval {at + 1} value is not finite or larger than 2,147,483 kWh",
                    record.esiid,
                    record.day,
                )
            )
        keep = ~bad
        kept = [r for r, k in zip(kept, keep, strict=True) if k]
        wh_float, missing = wh_float[keep], missing[keep]
        if not kept:
            return
    wh = wh_float.astype("<i4")
    totals = wh.sum(axis=1, dtype=np.int64).tolist()
    missing_counts = missing.sum(axis=1).tolist()
    flags = np.where(missing.any(axis=1), int(Flag.MISSING), 0)
    channels = np.array([r.channel for r in kept])
    flags |= np.where((channels == 4) & (wh < 0).any(axis=1), int(Flag.NEGATIVE), 0)
    top = np.partition(wh, length - 3, axis=1)
    highest = top[:, length - 1 :].max(axis=1)
    third = top[:, length - 3]
    flags |= np.where(
        highest > vee.spike_ratio * np.maximum(third, SPIKE_FLOOR_WH), int(Flag.SPIKE), 0
    )
    zeros = (wh == 0) & ~missing
    run = vee.zero_run
    counts = np.zeros((len(kept), length + 1), dtype=np.int32)
    np.cumsum(zeros, axis=1, out=counts[:, 1:])
    flags |= np.where((counts[:, run:] - counts[:, :-run] == run).any(axis=1), int(Flag.ZEROS), 0)
    invalid = np.array([r.invalid for r in kept])
    flags |= np.where(invalid, int(Flag.INVALID), 0)
    packed = wh.tobytes()
    size = length * 4
    n = len(kept)
    packbits = np.packbits
    estimated_masks: list[bytes | None] = [None] * n
    estimated_counts: list[int] = [0] * n
    missing_masks: list[bytes | None] = [None] * n
    for index, record in enumerate(kept):
        if record.estimated:
            estimated_masks[index] = packbits(record.estimated, bitorder="little").tobytes()
            estimated_counts[index] = record.estimated.count(True)
        if missing_counts[index]:
            missing_masks[index] = packbits(missing[index], bitorder="little").tobytes()
    days = [r.day for r in kept]
    parsed.rows.extend(
        zip(
            [r.esiid for r in kept],
            days,
            [r.channel for r in kept],
            [r.tdsp_duns for r in kept],
            [day_bounds(day)[0] for day in days],
            [length] * n,
            [packed[i * size : (i + 1) * size] for i in range(n)],
            missing_masks,
            estimated_masks,
            totals,
            missing_counts,
            estimated_counts,
            flags.tolist(),
            [r.version for r in kept],
            [r.line for r in kept],
            strict=True,
        )
    )


def split_records(data: bytes, pieces: int) -> list[bytes]:
    """Cut LSE bytes into about ``pieces`` pieces at record boundaries.

    Each piece but the first starts at a ``00000001`` row and every piece but the last ends with
    a newline, so parsing the pieces apart (line numbers running on by the newlines of the
    pieces before) gives what parsing the whole would.
    """
    if pieces <= 1 or len(data) < 1 << 16:
        return [data]
    size = math.ceil(len(data) / pieces)
    out: list[bytes] = []
    begin = 0
    while begin < len(data):
        cut = data.find(b"\n00000001,", begin + size)
        end = len(data) if cut < 0 else cut + 1
        out.append(data[begin:end])
        begin = end
    return out


def parse_piece(
    data: bytes, tdsp_duns: str | None, vee: VeeSettings, latest_created: str | None = None
) -> tuple[Parsed, int]:
    """Parse one piece of an LSE file's bytes; also returns how many newlines it holds.

    Lines are numbered from 1 within the piece. Bytes that are not UTF-8 become U+FFFD, so the
    lines they are on are rejected, not the file.
    """
    text = data.decode("utf-8", errors="replace")
    parsed = parse(text, tdsp_duns=tdsp_duns, vee=vee, latest_created=latest_created)
    return parsed, data.count(b"\n")
