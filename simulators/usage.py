"""What the simulated meters consume, and the ERCOT LSE interval files and register reads of it.

Every simulated meter follows a load profile of its own: ``interval_wh(esiid, k)`` is the energy
in Wh of UTC quarter-hour ``k`` (``k = floor(t / 900)``, POSIX seconds). The shape is a
household's: a night floor, a morning peak, a long afternoon air-conditioning hump and an evening
peak on weekdays, a late morning and a busy midday at weekends. It repeats every week
(``PERIOD`` quarter-hours), and differs per ESI ID in its archetype, scale, standby load and a
shift of up to an hour either way, all drawn from ``zlib.crc32`` of the ESI ID, so every
process and every run agrees on it. Because it repeats, the sum of any span of intervals has a
closed form: ``cumulative_wh(esiid, k)`` is the sum of intervals ``0 .. k - 1`` in O(1), and the
meter's register at ``t`` is ``base_wh(esiid) + cumulative_wh(esiid, k)`` (``register_wh``).

The LSE writer follows ERCOT's Interval Data LSE file layout: ``format_record`` writes any
record, right or deliberately wrong, and ``write_lse_files`` puts records in files of at most
50,000, named as TDSPs name them. ``profile_records`` makes the fleet's records from the
profile, and ``write_register_reads`` the midnight register reads that agree with them.
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

__all__ = [
    "ERCOT_DUNS",
    "INTERVAL_S",
    "MARKET_TZ",
    "PERIOD",
    "Record",
    "base_wh",
    "cumulative_wh",
    "day_start",
    "demand_w",
    "format_record",
    "format_wh",
    "interval_wh",
    "profile_records",
    "register_wh",
    "write_lse_files",
    "write_register_reads",
]

MARKET_TZ = ZoneInfo("America/Chicago")
INTERVAL_S = 900
#: The profile repeats every week: 7 days of 96 quarter-hours.
PERIOD = 7 * 96
#: ERCOT, the receiver of every LSE file.
ERCOT_DUNS = "183529049"
#: Quarter-hour 0 (1970-01-01 00:00 UTC) is Wednesday 18:00 CST; adding this makes Monday
#: 00:00 CST position 0 of the week.
_MONDAY = 3 * 96 - 24

#: A record as ``write_lse_files`` takes it: its lines (``format_record``), or its text with a
#: newline after every line (``profile_records``).
Record = str | Sequence[str]


# -- the load profile -----------------------------------------------------------------------


def _bump(i: int, centre: int, half_width: int, height: int) -> int:
    """A parabola ``height`` high at quarter-hour ``centre`` of the day, 0 from ``half_width``
    away (around midnight too); integers only, so every platform gets the same table."""
    d = abs(i - centre) % 96
    d = min(d, 96 - d)
    if d >= half_width:
        return 0
    return height * (half_width * half_width - d * d) // (half_width * half_width)


#: Household archetypes: heights of the morning, afternoon (air conditioning) and evening peaks
#: and of the weekend midday, and how many quarter-hours later than usual the household rises.
_ARCHETYPES = (
    (60, 180, 60, 50, 0),
    (40, 240, 50, 60, 2),
    (80, 140, 90, 40, -2),
    (50, 200, 70, 80, 4),
    (70, 120, 110, 50, 0),
    (30, 260, 40, 30, 6),
    (90, 160, 60, 70, -4),
    (45, 210, 80, 60, 1),
)


@lru_cache(maxsize=len(_ARCHETYPES))
def _week(archetype: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """The archetype's week (position 0: Monday 00:00 CST), its prefix sums and its total."""
    morning, afternoon, evening, midday, late = _ARCHETYPES[archetype]
    values = []
    for j in range(PERIOD):
        day, i = divmod(j, 96)
        weekend = day >= 5
        value = 20
        value += _bump(i, 26 + late + (8 if weekend else 0), 8, morning)
        value += _bump(i, 68, 22, afternoon)
        value += _bump(i, 79 + late // 2, 10, evening)
        if weekend:
            value += _bump(i, 50, 16, midday)
        # a little unevenness, the same every week: -6 .. +6
        noise = ((j + 1) * 2654435761 + archetype * 40503) >> 7 & 0xFFFF
        values.append(max(value + noise % 13 - 6, 5))
    prefix = [0]
    for value in values:
        prefix.append(prefix[-1] + value)
    return tuple(values), tuple(prefix[:PERIOD]), prefix[PERIOD]


@lru_cache(maxsize=65536)
def _profile(esiid: str) -> tuple[int, int, int, int]:
    """(archetype, scale, standby Wh per interval, offset into the week) of the ESI ID."""
    h = zlib.crc32(esiid.encode())
    archetype = h % len(_ARCHETYPES)
    scale = 2 + (h >> 3) % 3  # 2 .. 4
    standby = 30 + (h >> 5) % 61  # 30 .. 90 Wh a quarter-hour
    shift = (h >> 11) % 9 - 4  # up to an hour earlier or later
    return archetype, scale, standby, _MONDAY + shift


def base_wh(esiid: str) -> int:
    """The meter's register at quarter-hour 0 (1970-01-01 00:00 UTC), in Wh."""
    return 1_000_000 + zlib.crc32(b"register:" + esiid.encode()) % 89_000_000


def interval_wh(esiid: str, k: int) -> int:
    """The Wh the ESI ID uses in UTC quarter-hour ``k`` (``[900 k, 900 (k + 1))``), always > 0."""
    archetype, scale, standby, offset = _profile(esiid)
    return standby + scale * _week(archetype)[0][(k + offset) % PERIOD]


def cumulative_wh(esiid: str, k: int) -> int:
    """The sum of ``interval_wh(esiid, q)`` for ``0 <= q < k`` (minus the sum over ``k <= q < 0``
    for a negative ``k``), in O(1)."""
    archetype, scale, standby, offset = _profile(esiid)
    _, prefix, total = _week(archetype)

    def upto(n: int) -> int:  # the week's values summed over positions 0 .. n - 1, unwrapped
        weeks, rest = divmod(n, PERIOD)
        return weeks * total + prefix[rest]

    return standby * k + scale * (upto(k + offset) - upto(offset))


def register_wh(esiid: str, t: float) -> int:
    """The meter's register (current summation delivered) at POSIX time ``t``, in Wh.

    It counts whole intervals: the quarter-hour that ``t`` falls in is added when it ends, so the
    register at a local midnight plus the day's intervals is the register at the next one.
    """
    return base_wh(esiid) + cumulative_wh(esiid, int(t // INTERVAL_S))


def demand_w(esiid: str, t: float) -> int:
    """Instantaneous demand at ``t`` in W: the current interval's Wh times 4."""
    return 4 * interval_wh(esiid, int(t // INTERVAL_S))


# -- operating days --------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def day_start(day: dt.date) -> tuple[int, int]:
    """``(k0, intervals)``: the UTC quarter-hour of local midnight (America/Chicago) starting
    operating day ``day``, and how many quarter-hours the day has (92, 96 or 100)."""
    start = dt.datetime.combine(day, dt.time(), MARKET_TZ).timestamp()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), MARKET_TZ).timestamp()
    return int(start) // INTERVAL_S, int(end - start) // INTERVAL_S


def _days(first_day: dt.date, last_day: dt.date) -> list[dt.date]:
    return [first_day + dt.timedelta(days=n) for n in range((last_day - first_day).days + 1)]


# -- LSE records -----------------------------------------------------------------------------

#: Formatted kWh of 0 .. 9999 Wh (three decimals, so Wh survives exactly).
_KWH = tuple(f"{wh // 1000}.{wh % 1000:03d}" for wh in range(10_000))
_STATUS = {False: "A", True: "E"}
_HEADER_2 = "00000002,0,0,0,,0,,900,01,1,-1,0.0,0.0,CST"


def format_wh(wh: int) -> str:
    """Wh as kWh with three decimals (``1234`` -> ``"1.234"``, ``-5`` -> ``"-0.005"``)."""
    if 0 <= wh < 10_000:
        return _KWH[wh]
    sign = "-" if wh < 0 else ""
    wh = abs(wh)
    return f"{sign}{wh // 1000}.{wh % 1000:03d}"


def _triplet(wh: int | None, estimated: bool) -> str:
    """One interval as its value, status and (empty) interval time, with the comma after it."""
    if wh is None:
        return ",,,"
    return f"{format_wh(wh)},{_STATUS[estimated]},,"


@lru_cache(maxsize=256)
def _label(row: int) -> str:
    return f"{10_000_000 + row},"


def _detail_rows(triplets: Sequence[str]) -> list[str]:
    """Detail rows 10000000, 10000001, ... of four triplets each; the last has the remainder."""
    return [
        _label(row) + "".join(triplets[at : at + 4])
        for row, at in enumerate(range(0, len(triplets), 4))
    ]


def _timestamp(when: str | dt.datetime) -> str:
    return when if isinstance(when, str) else when.strftime("%Y%m%d%H%M%S")


def _header(
    esiid: str,
    day: dt.date,
    *,
    channel: int,
    invalid: bool,
    transaction_id: str,
    created: str,
    tdsp_duns: str,
    rep_duns: str,
    mre_duns: str,
) -> list[str]:
    ymd = f"{day.year:04d}{day.month:02d}{day.day:02d}"
    return [
        f"00000001,{esiid},{channel},{ymd}000000,{ymd}235900,Y,{'Y' if invalid else 'N'}",
        _HEADER_2,
        f"00000003,{transaction_id}",
        f"00000004,{created},M",
        f"00000030,ATTRIBUTE_VALUE_PAIRS,MRE={mre_duns},Sender={tdsp_duns},"
        f"Receiver={ERCOT_DUNS},REP={rep_duns}",
    ]


def format_record(
    esiid: str,
    day: dt.date,
    values: Sequence[int | None],
    *,
    tdsp_duns: str,
    rep_duns: str,
    created: str | dt.datetime,
    transaction_id: str,
    estimated: Sequence[bool] | None = None,
    channel: int = 4,
    invalid: bool = False,
    mre_duns: str | None = None,
) -> list[str]:
    """The lines of one LSE record (no newlines): ESI ID ``esiid`` on operating day ``day``.

    ``values`` are the intervals in Wh, written as kWh with three decimals; None is a missing
    interval (blank value and status). ``estimated[i]`` marks interval ``i`` E (else A). Nothing
    is checked against the day's length, so a test may write a wrong count on purpose; the
    right count is ``day_start(day)[1]``. ``created`` is the creation timestamp (row 00000004,
    ``YYYYMMDDHHMMSS`` or a datetime written so); the MRE is the TDSP unless ``mre_duns`` is given.
    """
    flags = estimated if estimated is not None else (False,) * len(values)
    if len(flags) != len(values):
        raise ValueError(f"{len(flags)} estimated flags for {len(values)} values")
    lines = _header(
        esiid,
        day,
        channel=channel,
        invalid=invalid,
        transaction_id=transaction_id,
        created=_timestamp(created),
        tdsp_duns=tdsp_duns,
        rep_duns=rep_duns,
        mre_duns=mre_duns or tdsp_duns,
    )
    lines += _detail_rows([_triplet(v, e) for v, e in zip(values, flags, strict=True)])
    return lines


def write_lse_files(
    directory: Path,
    records_iter: Iterable[Record],
    *,
    tdsp_duns: str,
    created: str | dt.datetime,
    max_records: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write the records into LSE files of at most ``max_records`` each; returns their paths.

    Files are named ``<DUNS>IntervalData<ccyymmddhhmmss><counter>.lse`` with ``created`` as the
    timestamp and a three-digit counter from 001; no records, no file. ``progress`` is called
    with the number of records written so far after each file.
    """
    if max_records < 1:
        raise ValueError("max_records must be at least 1")
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _timestamp(created)
    paths: list[Path] = []
    done = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal done
        if len(paths) == 999:
            raise ValueError("more than 999 files for one timestamp; raise max_records")
        path = directory / f"{tdsp_duns}IntervalData{stamp}{len(paths) + 1:03d}.lse"
        with open(path, "w", encoding="ascii", newline="\n") as f:
            f.write("".join(batch))
        paths.append(path)
        done += len(batch)
        batch.clear()
        if progress is not None:
            progress(done)

    for record in records_iter:
        batch.append(record if isinstance(record, str) else "\n".join(record) + "\n")
        if len(batch) >= max_records:
            flush()
    if batch:
        flush()
    return paths


def profile_records(
    esiids: Iterable[str],
    first_day: dt.date,
    last_day: dt.date,
    *,
    tdsp_duns: str,
    rep_duns: str,
    created: str | dt.datetime,
    estimated_rate: float = 0.0,
    seed: int = 0,
) -> Iterator[str]:
    """The fleet's LSE records, channel 4, from ``first_day`` to ``last_day`` (both included):
    every day of the first ESI ID, then every day of the next, each as its text.

    The intervals of local day D are the UTC quarter-hours from its local midnight to the next
    one, with ``interval_wh`` as values, all actual. With ``estimated_rate``, that share of the
    records has a run of 2 to 8 consecutive intervals marked E (values unchanged), drawn from
    ``seed``. The transaction id is ``SIM<YYYYMMDD><ESI ID>``.
    """
    if not 0.0 <= estimated_rate <= 1.0:
        raise ValueError(f"estimated_rate {estimated_rate} is not a probability (0 to 1)")
    stamp = _timestamp(created)
    days = [(f"{day:%Y%m%d}", *day_start(day)) for day in _days(first_day, last_day)]
    parties = (
        f",M\n00000030,ATTRIBUTE_VALUE_PAIRS,MRE={tdsp_duns},Sender={tdsp_duns},"
        f"Receiver={ERCOT_DUNS},REP={rep_duns}\n"
    )
    draw = random.Random(seed)
    for esiid in esiids:
        archetype, scale, standby, offset = _profile(esiid)
        week = [standby + scale * v for v in _week(archetype)[0]]
        # Local midnights are whole hours, so every day of this ESI ID starts at the same place
        # in a group of four quarter-hours: its detail rows are groups of the week, made once,
        # and a day that starts where an earlier one did has the same rows.
        lead = offset % 4
        ring = [_KWH[wh] + ",A,," if wh < 10_000 else _triplet(wh, False) for wh in week]
        ring = ring[lead:] + ring[:lead]
        quads = ["".join(ring[at : at + 4]) for at in range(0, PERIOD, 4)]
        blocks: dict[tuple[int, int], str] = {}
        for ymd, k0, count in days:
            start = (k0 + offset) % PERIOD
            if estimated_rate and draw.random() < estimated_rate:
                run = draw.randint(2, 8)
                first = draw.randrange(count - run + 1)
                values = [week[(start + q) % PERIOD] for q in range(count)]
                triplets = [_triplet(v, first <= q < first + run) for q, v in enumerate(values)]
                detail = "\n".join(_detail_rows(triplets))
            elif (start - lead) % 4:  # a midnight off the hour (never in America/Chicago)
                values = [week[(start + q) % PERIOD] for q in range(count)]
                detail = "\n".join(_detail_rows([_triplet(v, False) for v in values]))
            else:
                detail = blocks.get((start, count), "")
                if not detail:
                    at = start // 4
                    detail = blocks[start, count] = "\n".join(
                        [_label(r) + quads[(at + r) % len(quads)] for r in range((count + 3) // 4)]
                    )
            yield (
                f"00000001,{esiid},4,{ymd}000000,{ymd}235900,Y,N\n{_HEADER_2}\n"
                f"00000003,SIM{ymd}{esiid}\n00000004,{stamp}{parties}{detail}\n"
            )


# -- register reads ----------------------------------------------------------------------------


def write_register_reads(
    path: Path, esiids: Iterable[str], first_day: dt.date, last_day: dt.date
) -> int:
    """Write the midnight register reads (channel 4) of every ESI ID and day as CSV:
    ``esiid,read_date,channel,reading_kwh``, the register at the start of local day
    ``read_date`` in kWh with three decimals. Returns the number of rows."""
    days = [(f"{day:%Y-%m-%d}", day_start(day)[0]) for day in _days(first_day, last_day)]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("esiid,read_date,channel,reading_kwh\n")
        for esiid in esiids:
            base = base_wh(esiid)
            f.write(
                "".join(
                    [
                        f"{esiid},{date},4,{format_wh(base + cumulative_wh(esiid, k0))}\n"
                        for date, k0 in days
                    ]
                )
            )
            rows += len(days)
    return rows
