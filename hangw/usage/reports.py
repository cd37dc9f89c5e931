"""Usage reports: interval, daily and monthly usage of ESI IDs, as JSON rows or SMT-like CSV.

A report covers local operating days ``first`` to ``last`` (inclusive) of one channel (4
consumption, 1 generation). Who may read which ESI ID is the HAN access rule (hangw.authz: the
REP of record, the TDSP of the meter, the customer, an HSP with a live grant); how far back is
the role's, as Smart Meter Texas had it (``MONTHS_BACK``). A request that reaches further back is
refused, never clipped.

Reading happens on connections and threads of its own (``Reader``), never on the store's
writer (SQLite has one, and it must not wait seconds behind a report). Reports are computed for
chunks of ESI IDs at a time with one query each: daily totals come from the stored day totals,
monthly ones are summed by the database, and interval values are unpacked with numpy from the
packed days; nothing loops over intervals in Python. For a bulk job of 50,000 ESI IDs the daily
query hands the columns back as one comma-separated text each (``group_concat`` on SQLite,
``string_agg`` on PostgreSQL): parsing that with numpy costs far less than a Python row each.

CSV columns (kWh with three decimals; times local with their UTC offset):

- interval: ESIID, USAGE_DATE, USAGE_START_TIME, USAGE_END_TIME, USAGE_KWH, ESTIMATED_ACTUAL
  (E or A, blank when the interval is missing, as is USAGE_KWH), CONSUMPTION_SURPLUSGENERATION
  (``Consumption`` for channel 4, ``Surplus Generation`` for channel 1);
- daily: ESIID, USAGE_DATE, START_READING, END_READING (the midnight register reads that open and
  close the day, blank when not delivered), USAGE_KWH, INTERVALS, MISSING, ESTIMATED, FLAGS (VEE
  flag names joined by ``|``);
- monthly: ESIID, MONTH (YYYY-MM), USAGE_KWH, DAYS (days with data), DAYS_FLAGGED.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import operator
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from hangw import authz
from hangw.domain import Meter, Party, Role
from hangw.problems import Forbidden, InvalidField, NotFound
from hangw.store.model import grants, meters
from hangw.usage import vee
from hangw.usage.days import INTERVAL_S, MARKET_TZ, date_of, day_bounds, day_of

T = TypeVar("T")

REPORTS = ("interval", "daily", "monthly")
#: Channels and what the CSV calls them.
CHANNELS = {4: "Consumption", 1: "Surplus Generation"}
DEFAULT_CHANNEL = 4

#: How many months back from today each role may read each report. The customer and the HAN
#: service providers it granted access ("friends") see 13 months of intervals and days; the REP
#: of record and the TDSP 48; everyone 24 months of monthly totals.
MONTHS_BACK: Mapping[Role, Mapping[str, int]] = {
    Role.CUSTOMER: {"interval": 13, "daily": 13, "monthly": 24},
    Role.HSP: {"interval": 13, "daily": 13, "monthly": 24},
    Role.REP: {"interval": 48, "daily": 48, "monthly": 24},
    Role.TDSP: {"interval": 48, "daily": 48, "monthly": 24},
}
ROLE_PLURALS = {
    Role.CUSTOMER: "customers",
    Role.HSP: "HAN service providers",
    Role.REP: "REPs",
    Role.TDSP: "TDSPs",
}

CSV_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "interval": (
        "ESIID",
        "USAGE_DATE",
        "USAGE_START_TIME",
        "USAGE_END_TIME",
        "USAGE_KWH",
        "ESTIMATED_ACTUAL",
        "CONSUMPTION_SURPLUSGENERATION",
    ),
    "daily": (
        "ESIID",
        "USAGE_DATE",
        "START_READING",
        "END_READING",
        "USAGE_KWH",
        "INTERVALS",
        "MISSING",
        "ESTIMATED",
        "FLAGS",
    ),
    "monthly": ("ESIID", "MONTH", "USAGE_KWH", "DAYS", "DAYS_FLAGGED"),
}

#: Rows a chunk of a report aims at (ESI ID-days for daily and monthly reports; the interval
#: report's chunks are smaller, each ESI ID-day making 92 to 100 lines).
CHUNK_DAYS = 40_000
INTERVAL_CHUNK_DAYS = 2_000
MAX_CHUNK_ESIIDS = 1000
#: Days per piece when one ESI ID's interval report is streamed.
INTERVAL_WINDOW_DAYS = 31

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: A channel given as text (a query parameter): ASCII digits, no more than a channel has.
_CHANNEL = re.compile(r"[0-9]{1,2}")
_ESIID = re.compile(r"[0-9A-Za-z]{1,64}")
#: Bits enough for the mask of the longest day (100 intervals), in whole bytes.
_MASK_BYTES = 13
_FRACTIONS = np.array([f".{n:03d}" for n in range(1000)], dtype=object)


@dataclass(frozen=True)
class ReportSpec:
    """What a report covers: local operating days ``first`` to ``last`` of one channel."""

    report: str
    first: dt.date
    last: dt.date
    channel: int = DEFAULT_CHANNEL

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def json(self) -> dict[str, Any]:
        return {
            "report": self.report,
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "channel": self.channel,
        }


# ---- what a request asks for ---------------------------------------------------------------


def parse_date(value: object, name: str) -> dt.date:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        shown = value if isinstance(value, str) else type(value).__name__
        raise InvalidField(name, f"{name} must be a date YYYY-MM-DD, got {str(shown)[:40]!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidField(name, f"{name}: {value} is not a day of the calendar") from None


def parse_channel(value: object) -> int:
    if value is None or value == "":
        return DEFAULT_CHANNEL
    if isinstance(value, str) and _CHANNEL.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in CHANNELS:
        raise InvalidField(
            "channel", f"channel must be 4 (consumption) or 1 (generation), got {str(value)[:20]}"
        )
    assert isinstance(value, int)
    return value


def make_spec(report: str, first: object, last: object, channel: object = None) -> ReportSpec:
    """A report spec from request values, or InvalidField naming the one at fault."""
    if report not in REPORTS:
        raise InvalidField("report", f"report must be one of {', '.join(REPORTS)}")
    if first is None:
        raise InvalidField("from", "from is required (YYYY-MM-DD, the first local day)")
    if last is None:
        raise InvalidField("to", "to is required (YYYY-MM-DD, the last local day, included)")
    spec = ReportSpec(
        report, parse_date(first, "from"), parse_date(last, "to"), parse_channel(channel)
    )
    if spec.last < spec.first:
        raise InvalidField("to", f"to ({spec.last}) is before from ({spec.first})")
    return spec


def check_esiid(esiid: object, name: str = "esiid") -> str:
    if not isinstance(esiid, str) or not _ESIID.fullmatch(esiid):
        raise InvalidField(name, f"{name} must be an ESI ID (1 to 64 letters and digits)")
    return esiid


def today_of(clock: IReactorTime) -> dt.date:
    """Today's operating day (the local date in America/Chicago) by ``clock``."""
    return dt.datetime.fromtimestamp(clock.seconds(), MARKET_TZ).date()


def months_before(day: dt.date, months: int) -> dt.date:
    """The same day of the month ``months`` earlier (the month's last day when it is shorter)."""
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    month += 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def earliest_day(role: Role, report: str, today: dt.date) -> dt.date:
    """The first day ``role`` may read ``report`` data of; monthly reports start on a 1st."""
    first = months_before(today, MONTHS_BACK[role][report])
    return first.replace(day=1) if report == "monthly" else first


def check_reach(party: Party, spec: ReportSpec, today: dt.date) -> None:
    """Refuse a spec that ends after today or starts before the role's earliest day."""
    if spec.last > today:
        raise InvalidField(
            "to",
            f"to ({spec.last}) is after today ({today}, in the market's time zone "
            "America/Chicago); usage exists up to today",
        )
    earliest = earliest_day(party.role, spec.report, today)
    if spec.first < earliest:
        months = MONTHS_BACK[party.role][spec.report]
        raise Forbidden(
            f"{ROLE_PLURALS[party.role]} may read {spec.report} data from {earliest} "
            f"({months} months)",
            earliest=earliest.isoformat(),
            months=months,
        )


def chunk_size(spec: ReportSpec) -> int:
    """ESI IDs per chunk: the more days a report covers, the fewer."""
    aim = INTERVAL_CHUNK_DAYS if spec.report == "interval" else CHUNK_DAYS
    return max(1, min(MAX_CHUNK_ESIIDS, aim // spec.days))


def windows(spec: ReportSpec) -> Iterator[tuple[dt.date, dt.date]]:
    """The day ranges one ESI ID's report is streamed in (interval reports: a month each)."""
    if spec.report != "interval":
        yield spec.first, spec.last
        return
    start = spec.first
    while start <= spec.last:
        end = min(spec.last, start + dt.timedelta(days=INTERVAL_WINDOW_DAYS - 1))
        yield start, end
        start = end + dt.timedelta(days=1)


# ---- who may read what ---------------------------------------------------------------------


def entitlement_thd(
    conn: sa.Connection, party: Party, esiids: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(unknown, refused)``: the ESI IDs not in the meter registry, and those ``party`` has no
    HAN access to (hangw.authz), each in the order given."""
    columns = [meters.c[field.name] for field in dataclasses.fields(Meter)]
    known: dict[str, Meter] = {}
    granted: set[str] = set()
    for start in range(0, len(esiids), MAX_CHUNK_ESIIDS):
        chunk = list(esiids[start : start + MAX_CHUNK_ESIIDS])
        for row in conn.execute(sa.select(*columns).where(meters.c.esiid.in_(chunk))):
            known[row.esiid] = Meter(*row)
        if party.role is Role.HSP:
            granted.update(
                conn.execute(
                    sa.select(grants.c.esiid).where(
                        grants.c.hsp_party_id == party.party_id,
                        grants.c.revoked_at.is_(None),
                        grants.c.esiid.in_(chunk),
                    )
                ).scalars()
            )
    unknown = [esiid for esiid in esiids if esiid not in known]
    refused = [
        esiid
        for esiid in esiids
        if esiid in known
        and not authz.has_han_access(party, known[esiid], live_grant=esiid in granted)
    ]
    return unknown, refused


def no_access(party: Party, esiid: str) -> Forbidden:
    return Forbidden(
        f"{party.role.value} {party.party_id} may not read the usage of ESI ID {esiid}"
        + (
            " (the customer has not granted you HAN access, or revoked it)"
            if party.role is Role.HSP
            else ""
        )
    )


# ---- reading on threads of their own -------------------------------------------------------


class Reader:
    """Runs read-only queries on the engine's other connections, on threads of its own.

    SQLite in WAL mode lets these read while the store's writer writes; PostgreSQL just does.
    """

    def __init__(self, engine: sa.Engine, reactor: Any, threads: int = 2) -> None:
        self.engine = engine
        self._reactor = reactor
        self._pool = ThreadPool(0, threads, name="hangw-usage-read")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def read(self, thd: Callable[..., T], *args: Any) -> T:
        """``thd(conn, *args)`` on a connection of its own, on the calling thread."""
        with self.engine.connect() as conn:
            return thd(conn, *args)

    def run(self, thd: Callable[..., T], *args: Any) -> Deferred[T]:
        """``thd(conn, *args)`` on one of the reader's threads."""
        return deferToThreadPool(self._reactor, self._pool, self.read, thd, *args)


# ---- fetching chunks -----------------------------------------------------------------------


@dataclass
class Frame:
    """One chunk of a report: its ESI IDs and the columns read for them (numpy arrays; ``idx``
    is the position of each row's ESI ID in ``esiids``), rows ordered by ESI ID then day.

    A daily frame's ``start_read`` and ``end_read`` are positions in ``reads`` (the register
    reads in Wh), -1 where there is none: each read opens one day and closes the one before.
    """

    spec: ReportSpec
    esiids: Sequence[str]
    columns: dict[str, np.ndarray]
    reads: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.columns["idx"])


@lru_cache(maxsize=64)
def _statement(kind: str, dialect: str, size: int) -> sa.TextClause:
    """The query of ``kind`` for ``size`` ESI IDs, given as a VALUES list numbering them."""
    numbered = ", ".join(f"({n}, :e{n})" for n in range(size))
    chunk = f"WITH c(i, esiid) AS (VALUES {numbered}) "

    def agg(expression: str) -> str:
        if dialect == "sqlite":
            return f"group_concat({expression})"
        return f"string_agg(CAST({expression} AS TEXT), ',')"

    days = "u.channel = :channel AND u.day BETWEEN :first AND :last"
    if kind == "daily":
        names = ("i", "day", "total_wh", "intervals", "missing_count", "estimated_count", "flags")
        listed = ", ".join(agg("c.i" if name == "i" else f"u.{name}") for name in names)
        sql = f"SELECT {listed} FROM c JOIN usage_days u ON u.esiid = c.esiid WHERE {days}"
    elif kind == "reads":
        listed = ", ".join(agg(column) for column in ("c.i", "r.day", "r.reading_wh"))
        sql = (
            f"SELECT {listed} FROM c JOIN register_reads r ON r.esiid = c.esiid "
            "WHERE r.channel = :channel AND r.day BETWEEN :first AND :last"
        )
    elif kind == "monthly":
        sql = (
            "SELECT c.i, u.day / 100 AS month, CAST(SUM(u.total_wh) AS BIGINT), COUNT(*), "
            "SUM(CASE WHEN u.flags <> 0 THEN 1 ELSE 0 END) "
            f"FROM c JOIN usage_days u ON u.esiid = c.esiid WHERE {days} "
            "GROUP BY c.i, u.day / 100 ORDER BY c.i, month"
        )
    else:
        sql = (
            "SELECT c.i, u.day, u.intervals, u.wh, u.missing, u.estimated "
            f"FROM c JOIN usage_days u ON u.esiid = c.esiid WHERE {days} ORDER BY c.i, u.day"
        )
    return sa.text(chunk + sql)


def _execute(
    conn: sa.Connection, kind: str, esiids: Sequence[str], **params: Any
) -> sa.CursorResult[Any]:
    statement = _statement(kind, conn.dialect.name, len(esiids))
    bound = {f"e{n}": esiid for n, esiid in enumerate(esiids)}
    return conn.execute(statement, {**bound, **params})


def _ints(text: str | None) -> np.ndarray:
    if not text:
        return np.zeros(0, dtype=np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")


def _next_days(days: np.ndarray) -> np.ndarray:
    """The operating day after each of ``days`` (YYYYMMDD)."""
    unique, inverse = np.unique(days, return_inverse=True)
    following = [day_of(date_of(int(day)) + dt.timedelta(days=1)) for day in unique.tolist()]
    return np.array(following, dtype=np.int64)[inverse]


def fetch_thd(
    conn: sa.Connection,
    spec: ReportSpec,
    esiids: Sequence[str],
    first: dt.date | None = None,
    last: dt.date | None = None,
) -> Frame:
    """The report's rows for ``esiids`` (days ``first`` to ``last``, the spec's by default)."""
    start, end = day_of(first or spec.first), day_of(last or spec.last)
    params = {"channel": spec.channel, "first": start, "last": end}
    if spec.report == "daily":
        return _daily(conn, spec, esiids, params)
    if spec.report == "monthly":
        rows = [tuple(row) for row in _execute(conn, "monthly", esiids, **params)]
        names = ("idx", "month", "total_wh", "days", "flagged")
        data = np.array(rows, dtype=np.int64).reshape(-1, len(names))
        return Frame(spec, esiids, {name: data[:, k] for k, name in enumerate(names)})
    return _interval(spec, esiids, _execute(conn, "interval", esiids, **params).all())


def _daily(
    conn: sa.Connection, spec: ReportSpec, esiids: Sequence[str], params: dict[str, Any]
) -> Frame:
    names = ("idx", "day", "total_wh", "intervals", "missing", "estimated", "flags")
    texts = _execute(conn, "daily", esiids, **params).one()
    columns = dict(zip(names, (_ints(text) for text in texts), strict=True))
    order = np.lexsort((columns["day"], columns["idx"]))
    columns = {name: values[order] for name, values in columns.items()}
    # the reads that open each day and the one after it, matched by (ESI ID, day)
    after = day_of(date_of(params["last"]) + dt.timedelta(days=1))
    reads = _execute(conn, "reads", esiids, **{**params, "last": after}).one()
    read_idx, read_day, reading = (_ints(text) for text in reads)
    keys = read_idx * 100_000_000 + read_day
    order = np.argsort(keys)
    keys, reading = keys[order], reading[order]
    row_key = columns["idx"] * 100_000_000
    for name, day in (("start", columns["day"]), ("end", _next_days(columns["day"]))):
        at = np.full(len(row_key), -1, dtype=np.int64)
        if len(keys):
            wanted = row_key + day
            near = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            at = np.where(keys[near] == wanted, near, -1)
        columns[f"{name}_read"] = at
    return Frame(spec, esiids, columns, reading)


def _masks(masks: Sequence[bytes | None], counts: np.ndarray) -> np.ndarray:
    """The packed bitmasks of several days as one flat boolean array, day after day."""
    if all(mask is None for mask in masks):
        return np.zeros(int(counts.sum()), dtype=bool)
    packed = b"".join((mask or b"")[:_MASK_BYTES].ljust(_MASK_BYTES, b"\0") for mask in masks)
    bits = np.unpackbits(
        np.frombuffer(packed, dtype=np.uint8).reshape(-1, _MASK_BYTES), axis=1, bitorder="little"
    )
    present = np.arange(_MASK_BYTES * 8) < counts[:, None]
    return bits[present].astype(bool)


def _interval(spec: ReportSpec, esiids: Sequence[str], rows: Sequence[Any]) -> Frame:
    counts = np.array([row.intervals for row in rows], dtype=np.int64)
    wh = np.frombuffer(b"".join(row.wh for row in rows), dtype="<i4").astype(np.int64)
    if len(wh) != int(counts.sum()):
        raise ValueError("a stored day's values do not match its interval count")
    return Frame(
        spec,
        esiids,
        {
            "idx": np.array([row.i for row in rows], dtype=np.int64),
            "day": np.array([row.day for row in rows], dtype=np.int64),
            "intervals": counts,
            "wh": wh,
            "missing": _masks([row.missing for row in rows], counts),
            "estimated": _masks([row.estimated for row in rows], counts),
        },
    )


# ---- rendering -----------------------------------------------------------------------------


def kwh_text(wh: np.ndarray) -> list[str]:
    """Wh as kWh with three decimals (``1234`` -> ``"1.234"``), exactly."""
    magnitude = np.abs(wh)
    text = list(
        map(
            operator.add,
            map(str, (magnitude // 1000).tolist()),
            _FRACTIONS[magnitude % 1000].tolist(),
        )
    )
    for k in np.flatnonzero(wh < 0).tolist():
        text[k] = "-" + text[k]
    return text


def _iso_utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _DayTimes:
    date: str
    utc_start: list[str]
    utc_end: list[str]
    local_start: list[str]
    local_end: list[str]
    csv: np.ndarray  # "USAGE_DATE,USAGE_START_TIME,USAGE_END_TIME" per interval


@lru_cache(maxsize=2048)
def _day_times(day: int) -> _DayTimes:
    """The interval boundaries of one operating day, as every report writes them."""
    start_utc, count = day_bounds(day)
    edges = [start_utc + INTERVAL_S * k for k in range(count + 1)]
    local = [dt.datetime.fromtimestamp(edge, MARKET_TZ).isoformat() for edge in edges]
    utc = [_iso_utc(edge) for edge in edges]
    date = date_of(day).isoformat()
    csv = np.array([f"{date},{local[k]},{local[k + 1]}" for k in range(count)], dtype=object)
    return _DayTimes(date, utc[:-1], utc[1:], local[:-1], local[1:], csv)


def _date_texts(days: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(days, return_inverse=True)
    texts = np.array([date_of(int(day)).isoformat() for day in unique.tolist()], dtype=object)
    return texts[inverse]


def csv_header(spec: ReportSpec) -> str:
    return ",".join(CSV_COLUMNS[spec.report]) + "\r\n"


def csv_text(frame: Frame) -> str:
    """The frame's rows as CSV lines (CRLF, no header); no value ever needs quoting."""
    if not len(frame):
        return ""
    columns = frame.columns
    esiids = np.array(frame.esiids, dtype=object)
    lines: Iterator[str]
    report = frame.spec.report
    if report == "daily":
        # each read is written once, whether it opens a day or closes one; -1 picks the blank
        readings = np.array([*kwh_text(frame.reads), ""], dtype=object)
        # the few distinct (intervals, missing, estimated, flags) are written once each
        counts = columns["intervals"] + 128 * (
            columns["missing"] + 128 * (columns["estimated"] + 128 * columns["flags"])
        )
        unique, inverse = np.unique(counts, return_inverse=True)
        tails = np.array(
            [
                f"{n & 127},{n >> 7 & 127},{n >> 14 & 127},{'|'.join(vee.names(n >> 21))}"
                for n in unique.tolist()
            ],
            dtype=object,
        )[inverse]
        lines = map(
            ",".join,
            zip(
                esiids[columns["idx"]].tolist(),
                _date_texts(columns["day"]).tolist(),
                readings[columns["start_read"]].tolist(),
                readings[columns["end_read"]].tolist(),
                kwh_text(columns["total_wh"]),
                tails.tolist(),
                strict=True,
            ),
        )
    elif report == "monthly":
        months = [f"{month // 100:04d}-{month % 100:02d}" for month in columns["month"].tolist()]
        lines = map(
            ",".join,
            zip(
                esiids[columns["idx"]].tolist(),
                months,
                kwh_text(columns["total_wh"]),
                map(str, columns["days"].tolist()),
                map(str, columns["flagged"].tolist()),
                strict=True,
            ),
        )
    else:
        kind = CHANNELS[frame.spec.channel]
        missing, estimated = columns["missing"], columns["estimated"]
        values = np.array(kwh_text(columns["wh"]), dtype=object)
        values[missing] = ""
        quality = np.where(missing, "," + kind, np.where(estimated, "E," + kind, "A," + kind))
        times = np.concatenate([_day_times(day).csv for day in columns["day"].tolist()])
        lines = map(
            ",".join,
            zip(
                np.repeat(esiids[columns["idx"]], columns["intervals"]).tolist(),
                times.tolist(),
                values.tolist(),
                quality.tolist(),
                strict=True,
            ),
        )
    return "\r\n".join(lines) + "\r\n"


def csv_rows(frame: Frame) -> int:
    """How many CSV lines ``csv_text`` makes of the frame."""
    if frame.spec.report == "interval":
        return int(frame.columns["intervals"].sum())
    return len(frame)


def json_rows(frame: Frame) -> list[dict[str, Any]]:
    """The frame's rows as the JSON answer lists them (values in Wh)."""
    columns = frame.columns
    report = frame.spec.report
    if report == "daily":
        listed = {name: values.tolist() for name, values in columns.items()}
        reads = [*frame.reads.tolist(), None]  # -1: no read
        dates = _date_texts(columns["day"]).tolist()
        return [
            {
                "date": dates[k],
                "wh": listed["total_wh"][k],
                "intervals": listed["intervals"][k],
                "missing": listed["missing"][k],
                "estimated": listed["estimated"][k],
                "flags": vee.names(listed["flags"][k]),
                "start_reading_wh": reads[listed["start_read"][k]],
                "end_reading_wh": reads[listed["end_read"][k]],
            }
            for k in range(len(dates))
        ]
    if report == "monthly":
        return [
            {
                "month": f"{month // 100:04d}-{month % 100:02d}",
                "wh": wh,
                "days": days,
                "days_flagged": flagged,
            }
            for month, wh, days, flagged in zip(
                columns["month"].tolist(),
                columns["total_wh"].tolist(),
                columns["days"].tolist(),
                columns["flagged"].tolist(),
                strict=True,
            )
        ]
    statuses = np.where(
        columns["missing"], "missing", np.where(columns["estimated"], "estimated", "actual")
    ).tolist()
    values = columns["wh"].tolist()
    rows: list[dict[str, Any]] = []
    at = 0
    for day, count in zip(columns["day"].tolist(), columns["intervals"].tolist(), strict=True):
        times = _day_times(day)
        rows.extend(
            {
                "date": date,
                "start": start,
                "end": end,
                "local_start": local_start,
                "wh": None if status == "missing" else wh,
                "status": status,
            }
            for date, start, end, local_start, wh, status in zip(
                repeat(times.date, count),
                times.utc_start,
                times.utc_end,
                times.local_start,
                values[at : at + count],
                statuses[at : at + count],
                strict=True,
            )
        )
        at += count
    return rows


#: The key of each report's rows in its JSON answer.
JSON_ROWS = {"interval": "intervals", "daily": "days", "monthly": "months"}


# ---- the service ---------------------------------------------------------------------------


class ReportService:
    """Reports for one ESI ID at a time, as the API asks for them."""

    def __init__(self, reader: Reader, clock: IReactorTime) -> None:
        self.reader = reader
        self._clock = clock

    def spec(self, report: str, args: Mapping[str, str]) -> tuple[str, ReportSpec]:
        """The ESI ID and spec of a query (``esiid``, ``from``, ``to``, ``channel``)."""
        esiid = args.get("esiid")
        if not esiid:
            raise InvalidField("esiid", "esiid is required")
        spec = make_spec(report, args.get("from"), args.get("to"), args.get("channel"))
        return check_esiid(esiid), spec

    async def authorize(self, party: Party, esiid: str, spec: ReportSpec) -> None:
        """Refuse unless ``party`` may read this report of ``esiid`` back to its first day."""
        check_reach(party, spec, today_of(self._clock))
        unknown, refused = await self.reader.run(entitlement_thd, party, [esiid])
        if unknown:
            raise NotFound(f"ESI ID {esiid} is not in the meter registry")
        if refused:
            raise no_access(party, esiid)

    async def report_json(self, party: Party, report: str, args: Mapping[str, str]) -> Any:
        esiid, spec = self.spec(report, args)
        await self.authorize(party, esiid, spec)
        frame = await self.reader.run(fetch_thd, spec, [esiid])
        return {
            "esiid": esiid,
            **spec.json(),
            "unit": "Wh",
            JSON_ROWS[report]: json_rows(frame),
        }

    async def csv_pieces(self, spec: ReportSpec, esiid: str) -> AsyncIterator[bytes]:
        """The CSV of an authorized report, piece by piece (an async iterator of bytes)."""
        yield csv_header(spec).encode()
        for first, last in windows(spec):
            frame = await self.reader.run(fetch_thd, spec, [esiid], first, last)
            if len(frame):
                yield csv_text(frame).encode()
