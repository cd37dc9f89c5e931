"""Usage reports: interval, daily and monthly usage of an ESI ID, checked against intervals the
test generates (DST days, missing and estimated intervals, register reads), the roles' reach back
in time, refusals, and the CSV columns, on the service and over the real mutual-TLS API."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread

from hangw.config import Config, from_mapping
from hangw.domain import Meter, Party, Role
from hangw.meters import parse_meter_csv, upsert_meters_thd
from hangw.problems import Forbidden, InvalidField, NotFound
from hangw.store import schema
from hangw.store.db import Store
from hangw.store.model import grants, metadata, register_reads, usage_days, usage_jobs
from hangw.usage.days import pack_mask, pack_wh
from hangw.usage.jobs import UsageReports
from tests.gateway_harness import (
    CUSTOMER,
    DATA,
    E_OTHER,
    E_OTHER_TDSP,
    E_OWN,
    HSP,
    REP_A,
    REP_B,
    TDSP,
    Harness,
)

MARKET = ZoneInfo("America/Chicago")
#: 2026-11-23 12:00 in Texas (CST): the injected clock's now.
NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.UTC).timestamp()
SPRING = dt.date(2026, 3, 8)  # 23 hours: 92 intervals
FALL = dt.date(2026, 11, 1)  # 25 hours: 100 intervals
MISSING_FLAG, SPIKE_FLAG = 1, 4

PARTIES = {
    "customer": Party(CUSTOMER, Role.CUSTOMER, "demo-customer", "c" * 64),
    "rep": Party(REP_A, Role.REP, "demo-rep-a", "a" * 64),
    "other-rep": Party(REP_B, Role.REP, "demo-rep-b", "b" * 64),
    "tdsp": Party(TDSP, Role.TDSP, "demo-tdsp", "d" * 64),
    "hsp": Party(HSP, Role.HSP, "demo-hsp", "e" * 64),
}
INTERVAL_COLUMNS = [
    "ESIID",
    "USAGE_DATE",
    "USAGE_START_TIME",
    "USAGE_END_TIME",
    "USAGE_KWH",
    "ESTIMATED_ACTUAL",
    "CONSUMPTION_SURPLUSGENERATION",
]
DAILY_COLUMNS = [
    "ESIID",
    "USAGE_DATE",
    "START_READING",
    "END_READING",
    "USAGE_KWH",
    "INTERVALS",
    "MISSING",
    "ESTIMATED",
    "FLAGS",
]
MONTHLY_COLUMNS = ["ESIID", "MONTH", "USAGE_KWH", "DAYS", "DAYS_FLAGGED"]


# ---- generated usage -------------------------------------------------------------------------


def local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), MARKET).astimezone(dt.UTC)


def interval_count(day: dt.date) -> int:
    length = local_midnight(day + dt.timedelta(days=1)) - local_midnight(day)
    return int(length.total_seconds()) // 900


@dataclass
class GeneratedDay:
    """One ESI ID-day as a TDSP delivers it: values in Wh, None where missing."""

    esiid: str
    day: dt.date
    values: list[int | None]
    estimated: list[bool]
    channel: int = 4
    flags: int = 0

    @property
    def total(self) -> int:
        return sum(v for v in self.values if v is not None)

    @property
    def missing(self) -> int:
        return sum(v is None for v in self.values)

    @property
    def estimated_count(self) -> int:
        return sum(self.estimated)

    def row(self) -> dict[str, Any]:
        """The usage_days row the ingest would store for it."""
        return {
            "esiid": self.esiid,
            "day": self.day.year * 10000 + self.day.month * 100 + self.day.day,
            "channel": self.channel,
            "tdsp_duns": TDSP,
            "start_utc": int(local_midnight(self.day).timestamp()),
            "intervals": len(self.values),
            "wh": pack_wh(self.values),
            "missing": pack_mask(v is None for v in self.values),
            "estimated": pack_mask(self.estimated),
            "total_wh": self.total,
            "missing_count": self.missing,
            "estimated_count": self.estimated_count,
            "flags": self.flags,
            "version": "20261122000000:T1",
            "file_id": 1,
        }


def generate(
    rng: np.random.Generator,
    esiid: str,
    day: dt.date,
    *,
    missing: int = 0,
    estimated: int = 0,
    channel: int = 4,
    spike: bool = False,
) -> GeneratedDay:
    count = interval_count(day)
    values: list[int | None] = [int(v) for v in rng.integers(0, 2500, count)]
    for k in rng.choice(count, missing, replace=False).tolist():
        values[k] = None
    present = [k for k in range(count) if values[k] is not None]
    chosen = set(rng.choice(present, estimated, replace=False).tolist())
    flags = (MISSING_FLAG if missing else 0) | (SPIKE_FLAG if spike else 0)
    return GeneratedDay(
        esiid, day, values, [k in chosen for k in range(count)], channel=channel, flags=flags
    )


def days_from(first: dt.date, count: int) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range(count)]


def store_days_thd(conn: sa.Connection, days: Sequence[GeneratedDay]) -> None:
    conn.execute(usage_days.insert(), [d.row() for d in days])


def store_reads_thd(
    conn: sa.Connection, reads: Sequence[tuple[str, dt.date, int]], channel: int = 4
) -> None:
    conn.execute(
        register_reads.insert(),
        [
            {
                "esiid": esiid,
                "day": day.year * 10000 + day.month * 100 + day.day,
                "channel": channel,
                "reading_wh": reading,
                "loaded_at": 0.0,
            }
            for esiid, day, reading in reads
        ],
    )


def grant_thd(conn: sa.Connection, esiid: str, hsp: str) -> None:
    conn.execute(
        grants.insert().values(
            grant_id=f"g-{esiid}", esiid=esiid, hsp_party_id=hsp, granted_by=CUSTOMER,
            granted_at=0.0, revoked_at=None,
        )
    )  # fmt: skip


def kwh(wh: int) -> str:
    """Wh as the CSV writes kWh, by integer arithmetic."""
    sign = "-" if wh < 0 else ""
    return f"{sign}{abs(wh) // 1000}.{abs(wh) % 1000:03d}"


def monthly_expected(days: Sequence[GeneratedDay]) -> dict[str, tuple[int, int, int]]:
    """month -> (total Wh, days, days flagged), summed from the generated intervals."""
    months: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for d in days:
        entry = months[f"{d.day.year:04d}-{d.day.month:02d}"]
        entry[0] += sum(v for v in d.values if v is not None)
        entry[1] += 1
        entry[2] += 1 if d.flags else 0
    return {month: (t, n, f) for month, (t, n, f) in months.items()}


# ---- the service on its own, with an injected clock ---------------------------------------------


@dataclass
class Setup:
    store: Store
    usage: UsageReports
    clock: MemoryReactorClock
    config: Config
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))


def wipe(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


@asynccontextmanager
async def usage_service(
    tmp_path: Path,
    *,
    url: str | None = None,
    start: bool = True,
    extra_meters: Sequence[Meter] = (),
    **usage: Any,
) -> AsyncIterator[Setup]:
    """The usage reports and jobs on a real store (SQLite unless ``url`` names another, which
    is emptied first and last), with a memory clock at NOW."""
    engine = schema.make_engine(url or f"sqlite:///{tmp_path / 'store.sqlite'}")
    if url is not None:
        wipe(engine)
    schema.upgrade(engine)
    store = Store(engine, reactor)
    store.start()
    with open(DATA / "meters.csv", newline="") as handle:
        await store.run(upsert_meters_thd, [*parse_meter_csv(handle), *extra_meters])
    clock = MemoryReactorClock()
    clock.advance(NOW)
    config = from_mapping(
        {"gateway": {"state_dir": str(tmp_path / "state")}, "usage": usage}, source="test"
    )
    service = UsageReports(store, config, reactor, clock)
    if start:
        service.startService()
    try:
        yield Setup(store, service, clock, config)
    finally:
        if service.running:
            await service.stopService()
        store.stop()
        if url is not None:
            wipe(engine)
        engine.dispose()


def query(esiid: str, first: dt.date, last: dt.date, **extra: str) -> dict[str, str]:
    return {"esiid": esiid, "from": first.isoformat(), "to": last.isoformat(), **extra}


@pytest_twisted.ensureDeferred
async def test_daily_and_monthly_totals_equal_the_sums_of_the_intervals(tmp_path: Path) -> None:
    """Day and month totals equal the generated intervals' sums, DST days and gaps included."""
    async with usage_service(tmp_path) as setup:
        rng = setup.rng
        generated = [
            generate(rng, E_OWN, day, missing=n % 3, estimated=(n * 5) % 7, spike=n == 4)
            for n, day in enumerate(
                days_from(SPRING - dt.timedelta(days=2), 4)
                + days_from(dt.date(2026, 10, 30), 5)  # October into November, FALL included
            )
        ]
        await setup.store.run(store_days_thd, generated)
        service = setup.usage.reports
        rep = PARTIES["rep"]

        daily = await service.report_json(
            rep, "daily", query(E_OWN, dt.date(2026, 3, 1), dt.date(2026, 11, 20))
        )
        assert [d["date"] for d in daily["days"]] == [g.day.isoformat() for g in generated]
        for row, g in zip(daily["days"], generated, strict=True):
            assert row["wh"] == sum(v for v in g.values if v is not None)
            assert row["intervals"] == len(g.values)
            assert row["missing"] == sum(v is None for v in g.values)
            assert row["estimated"] == sum(g.estimated)
            expected_flags = ["MISSING"] * bool(g.flags & 1) + ["SPIKE"] * bool(g.flags & 4)
            assert row["flags"] == expected_flags
        by_date = {d["date"]: d for d in daily["days"]}
        assert by_date[SPRING.isoformat()]["intervals"] == 92
        assert by_date[FALL.isoformat()]["intervals"] == 100

        monthly = await service.report_json(
            rep, "monthly", query(E_OWN, dt.date(2026, 1, 1), dt.date(2026, 11, 20))
        )
        expected = monthly_expected(generated)
        assert {m["month"]: (m["wh"], m["days"], m["days_flagged"]) for m in monthly["months"]} == (
            expected
        )
        assert [m["month"] for m in monthly["months"]] == ["2026-03", "2026-10", "2026-11"]

        interval = await service.report_json(rep, "interval", query(E_OWN, SPRING, SPRING))
        spring = next(g for g in generated if g.day == SPRING)
        assert [i["wh"] for i in interval["intervals"]] == spring.values
        assert [i["status"] for i in interval["intervals"]] == [
            "missing" if v is None else "estimated" if e else "actual"
            for v, e in zip(spring.values, spring.estimated, strict=True)
        ]


@pytest_twisted.ensureDeferred
async def test_interval_report_utc_boundaries_on_dst_days(tmp_path: Path) -> None:
    """DST days have 92 and 100 intervals with the right UTC bounds and local offsets."""
    async with usage_service(tmp_path) as setup:
        days = [generate(setup.rng, E_OWN, day) for day in (SPRING, FALL)]
        await setup.store.run(store_days_thd, days)
        service = setup.usage.reports
        spring = (
            await service.report_json(PARTIES["customer"], "interval", query(E_OWN, SPRING, SPRING))
        )["intervals"]
        assert len(spring) == 92
        assert spring[0]["start"] == "2026-03-08T06:00:00Z"
        assert spring[0]["local_start"] == "2026-03-08T00:00:00-06:00"
        assert spring[-1]["end"] == "2026-03-09T05:00:00Z"
        assert spring[8]["start"] == "2026-03-08T08:00:00Z"
        assert spring[8]["local_start"] == "2026-03-08T03:00:00-05:00"
        assert not any("T02:" in i["local_start"] for i in spring)

        fall = (
            await service.report_json(PARTIES["customer"], "interval", query(E_OWN, FALL, FALL))
        )["intervals"]
        assert len(fall) == 100
        assert fall[0]["start"] == "2026-11-01T05:00:00Z"
        assert fall[-1]["end"] == "2026-11-02T06:00:00Z"
        one_am = [i["local_start"] for i in fall if "T01:00:00" in i["local_start"]]
        assert one_am == ["2026-11-01T01:00:00-05:00", "2026-11-01T01:00:00-06:00"]
        for report in (spring, fall):  # contiguous 15-minute intervals, each end the next start
            starts = [dt.datetime.fromisoformat(i["start"]) for i in report]
            assert all(b - a == dt.timedelta(minutes=15) for a, b in itertools.pairwise(starts))
            assert all(a["end"] == b["start"] for a, b in itertools.pairwise(report))


@pytest_twisted.ensureDeferred
async def test_daily_report_carries_the_midnight_register_reads(tmp_path: Path) -> None:
    """A day opens with its own midnight read and closes with the next day's; absent is null."""
    async with usage_service(tmp_path) as setup:
        days = days_from(dt.date(2026, 10, 29), 4)  # Oct 29 .. Nov 1
        await setup.store.run(store_days_thd, [generate(setup.rng, E_OWN, d) for d in days])
        reads = {
            dt.date(2026, 10, 29): 1_000_000,
            dt.date(2026, 10, 30): 1_021_345,
            # no read at the midnight that opens Oct 31
            dt.date(2026, 11, 1): 1_070_001,
            dt.date(2026, 11, 2): 1_093_999,
        }
        await setup.store.run(store_reads_thd, [(E_OWN, d, r) for d, r in reads.items()])
        await setup.store.run(store_reads_thd, [(E_OWN, dt.date(2026, 10, 31), 5)], 1)
        daily = await setup.usage.reports.report_json(
            PARTIES["tdsp"], "daily", query(E_OWN, days[0], days[-1])
        )
        got = [(d["start_reading_wh"], d["end_reading_wh"]) for d in daily["days"]]
        assert got == [
            (1_000_000, 1_021_345),
            (1_021_345, None),
            (None, 1_070_001),  # the generation channel's read does not count for channel 4
            (1_070_001, 1_093_999),
        ]


@pytest_twisted.ensureDeferred
async def test_each_role_reaches_back_as_far_as_smt_allowed(tmp_path: Path) -> None:
    """Each role reads back 13/48 months (24 monthly) and one day more is refused with why."""
    async with usage_service(tmp_path) as setup:
        await setup.store.run(grant_thd, E_OWN, HSP)
        service = setup.usage.reports
        today = dt.date(2026, 11, 23)
        earliest = {
            ("customer", "interval"): dt.date(2025, 10, 23),
            ("customer", "daily"): dt.date(2025, 10, 23),
            ("customer", "monthly"): dt.date(2024, 11, 1),
            ("hsp", "interval"): dt.date(2025, 10, 23),
            ("hsp", "monthly"): dt.date(2024, 11, 1),
            ("rep", "interval"): dt.date(2022, 11, 23),
            ("rep", "daily"): dt.date(2022, 11, 23),
            ("rep", "monthly"): dt.date(2024, 11, 1),
            ("tdsp", "daily"): dt.date(2022, 11, 23),
            ("tdsp", "monthly"): dt.date(2024, 11, 1),
        }
        plural = {
            "customer": "customers",
            "hsp": "HAN service providers",
            "rep": "REPs",
            "tdsp": "TDSPs",
        }
        months = {"interval": {"customer": 13, "hsp": 13, "rep": 48, "tdsp": 48}}
        months["daily"] = months["interval"]
        months["monthly"] = dict.fromkeys(plural, 24)
        for (who, report), first in earliest.items():
            party = PARTIES[who]
            answer = await service.report_json(party, report, query(E_OWN, first, today))
            assert answer["from"] == first.isoformat()
            with pytest.raises(Forbidden) as refused:
                await service.report_json(
                    party, report, query(E_OWN, first - dt.timedelta(days=1), today)
                )
            assert refused.value.detail.startswith(
                f"{plural[who]} may read {report} data from {first} ({months[report][who]} months)"
            )
            assert refused.value.extensions == {
                "earliest": first.isoformat(),
                "months": months[report][who],
            }


@pytest_twisted.ensureDeferred
async def test_bad_requests_are_refused_with_the_field_at_fault(tmp_path: Path) -> None:
    """Bad dates, channels and ESI IDs are 422 naming the field; an unknown ESI ID is 404."""
    async with usage_service(tmp_path) as setup:
        service = setup.usage.reports
        rep = PARTIES["rep"]
        cases = {
            "from": [{"from": "2026/10/01"}, {"from": "2026-02-30"}, {"from": None}],
            "to": [
                {"to": "2026-10-01", "from": "2026-10-02"},
                {"to": "2026-11-24"},  # tomorrow in Texas
                {"to": "yesterday"},
            ],
            "channel": [{"channel": "2"}, {"channel": "x"}],
            "esiid": [{"esiid": None}, {"esiid": "1044-3720"}],
        }
        for fieldname, changes in cases.items():
            for change in changes:
                args = {"esiid": E_OWN, "from": "2026-10-01", "to": "2026-10-31", **change}
                args = {k: v for k, v in args.items() if v is not None}
                with pytest.raises(InvalidField) as refused:
                    await service.report_json(rep, "daily", args)
                assert refused.value.extensions["field"] == fieldname, change
        with pytest.raises(NotFound, match="not in the meter registry"):
            await service.report_json(
                rep, "daily", query("10443720000009999", dt.date(2026, 10, 1), dt.date(2026, 10, 2))
            )


POSTGRES_URL = os.environ.get("HANGW_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL, reason="HANGW_TEST_POSTGRES_URL is not set")
@pytest_twisted.ensureDeferred
async def test_reports_and_a_job_on_postgresql(tmp_path: Path) -> None:
    """On PostgreSQL the reports and a daily job give the generated intervals' sums."""
    async with usage_service(tmp_path, url=POSTGRES_URL) as setup:
        days = days_from(dt.date(2026, 10, 30), 4)  # FALL included
        generated = [
            generate(setup.rng, esiid, day, missing=n % 2, estimated=n % 3)
            for esiid in (E_OWN, E_OTHER_TDSP)
            for n, day in enumerate(days)
        ]
        await setup.store.run(store_days_thd, generated)
        reads = [(E_OWN, d, 5_000_000 + n) for n, d in enumerate(days_from(days[0], 5))]
        await setup.store.run(store_reads_thd, reads)
        rep = PARTIES["rep"]
        service = setup.usage.reports
        daily = await service.report_json(rep, "daily", query(E_OWN, days[0], days[-1]))
        assert [
            (d["date"], d["wh"], d["start_reading_wh"], d["end_reading_wh"])
            for d in (daily["days"])
        ] == [
            (g.day.isoformat(), g.total, 5_000_000 + n, 5_000_001 + n)
            for n, g in enumerate(generated[:4])
        ]
        monthly = await service.report_json(rep, "monthly", query(E_OWN, days[0], days[-1]))
        assert {m["month"]: (m["wh"], m["days"], m["days_flagged"]) for m in monthly["months"]} == (
            monthly_expected(generated[:4])
        )
        interval = await service.report_json(rep, "interval", query(E_OWN, FALL, FALL))
        assert [i["wh"] for i in interval["intervals"]] == generated[2].values
        job = await setup.usage.jobs.submit(
            rep,
            {"report": "daily", "esiids": [E_OTHER_TDSP, E_OWN], "from": str(days[0]),
             "to": str(days[-1])},
        )  # fmt: skip
        for _ in range(500):
            job = await setup.usage.jobs.get(rep, job.job_id)
            if job.state == "done":
                break
            await deferLater(reactor, 0.02, lambda: None)
        _, path = await setup.usage.jobs.result(rep, job.job_id)
        rows = list(csv.reader(io.StringIO(path.read_bytes().decode())))
        assert [(r[0], r[1], r[4]) for r in rows[1:]] == [
            (g.esiid, g.day.isoformat(), kwh(g.total)) for g in [*generated[4:], *generated[:4]]
        ]


# ---- over the API ------------------------------------------------------------------------------


def texas_today() -> dt.date:
    return dt.datetime.now(MARKET).date()


def months_back(day: dt.date, months: int) -> dt.date:
    """The same day ``months`` earlier, or that month's last day (worked out independently)."""
    year, month = day.year, day.month - months
    while month < 1:
        year, month = year - 1, month + 12
    number = day.day
    while True:
        try:
            return dt.date(year, month, number)
        except ValueError:  # a shorter month
            number -= 1


async def download(harness: Harness, caller: str, path: str, accept: str = "text/csv") -> str:
    buffer = io.BytesIO()
    client = harness.caller(caller).client
    await deferToThread(client.download, path, buffer, accept)
    return buffer.getvalue().decode()


def path_of(report: str, esiid: str, first: dt.date, last: dt.date, **extra: str) -> str:
    extra_query = "".join(f"&{k}={v}" for k, v in extra.items())
    return f"/v1/usage/{report}?esiid={esiid}&from={first}&to={last}{extra_query}"


@pytest_twisted.ensureDeferred
async def test_reports_over_the_api_follow_roles_and_grants(harness: Harness) -> None:
    """Over the API: customer, REP, TDSP and a granted HSP read; others get 403 and no data."""
    today = texas_today()
    first = today - dt.timedelta(days=5)
    generated = [generate(np.random.default_rng(3), E_OWN, d) for d in days_from(first, 3)]
    await harness.gateway.store.run(store_days_thd, generated)
    path = path_of("daily", E_OWN, first, today)
    totals = [g.total for g in generated]
    for name in ("demo-customer", "demo-rep-a", "demo-tdsp"):
        status, body = await harness.caller(name).call("GET", path)
        assert status == 200, (name, body)
        assert [d["wh"] for d in body["days"]] == totals

    status, body = await harness.caller("demo-rep-b").call("GET", path)
    assert status == 403 and body["type"].endswith("/forbidden")
    assert not any(str(t) in str(body) for t in totals)
    assert "days" not in body

    hsp, customer = harness.caller("demo-hsp"), harness.caller("demo-customer")
    assert (await hsp.call("GET", path))[0] == 403
    status, _ = await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    assert status == 201
    status, body = await hsp.call("GET", path)
    assert status == 200 and [d["wh"] for d in body["days"]] == totals
    assert (await customer.call("DELETE", f"/v1/esiids/{E_OWN}/grants/{HSP}"))[0] == 200
    assert (await hsp.call("GET", path))[0] == 403

    earliest = months_back(today, 13)
    too_early = path_of("interval", E_OWN, earliest - dt.timedelta(days=1), earliest)
    status, body = await customer.call("GET", too_early)
    assert status == 403
    assert f"customers may read interval data from {earliest} (13 months)" in body["detail"]
    assert (await customer.call("GET", path_of("interval", E_OWN, earliest, earliest)))[0] == 200
    rep_earliest = months_back(today, 48)
    rep = harness.caller("demo-rep-a")
    assert (await rep.call("GET", path_of("daily", E_OWN, rep_earliest, today)))[0] == 200
    status, body = await rep.call(
        "GET", path_of("daily", E_OWN, rep_earliest - dt.timedelta(days=1), today)
    )
    assert (
        status == 403
        and f"REPs may read daily data from {rep_earliest} (48 months)" in (body["detail"])
    )
    assert (await rep.call("GET", path_of("daily", "10443720000009999", first, today)))[0] == 404
    status, body = await rep.call("GET", path_of("daily", E_OWN, today, first))
    assert status == 422 and body["field"] == "to"
    status, body = await rep.call("GET", path_of("daily", E_OWN, first, today, channel="7"))
    assert status == 422 and body["field"] == "channel"
    tdsp = harness.caller("demo-tdsp")  # the TDSP of another meter's ESI ID
    assert (await tdsp.call("GET", path_of("daily", E_OTHER_TDSP, first, today)))[0] == 403


@pytest_twisted.ensureDeferred
async def test_a_channel_that_is_not_ascii_digits_is_refused_naming_it(harness: Harness) -> None:
    """A channel of non-ASCII digits, too many digits or no number at all (a list) is a 422."""
    today = texas_today()
    rep = harness.caller("demo-rep-a")
    before = await harness.gateway.store.run(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(usage_jobs)).scalar_one()
    )
    for channel in ("\u00b2", "\u0664", "4" * 5000):
        status, body = await rep.call(
            "GET", path_of("daily", E_OWN, today, today, channel=quote(channel))
        )
        assert status == 422 and body["field"] == "channel", body
        job = {"report": "daily", "esiids": [E_OWN], "from": str(today), "to": str(today)}
        status, body = await rep.call("POST", "/v1/usage/jobs", {**job, "channel": channel})
        assert status == 422 and body["field"] == "channel", body
    for not_a_number in ([4], {"channel": 4}, 4.0, True):
        job = {"report": "daily", "esiids": [E_OWN], "from": str(today), "to": str(today)}
        status, body = await rep.call("POST", "/v1/usage/jobs", {**job, "channel": not_a_number})
        assert status == 422 and body["field"] == "channel", (not_a_number, body)
    after = await harness.gateway.store.run(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(usage_jobs)).scalar_one()
    )
    assert after == before


@pytest_twisted.ensureDeferred
async def test_csv_reports_have_the_smt_columns(harness: Harness) -> None:
    """The CSV reports carry the documented columns, kWh to three decimals, E/A and reads."""
    today = texas_today()
    first = today - dt.timedelta(days=3)
    rng = np.random.default_rng(11)
    generated = [
        generate(rng, E_OTHER, first, missing=2, estimated=3),
        generate(rng, E_OTHER, first + dt.timedelta(days=1), spike=True),
    ]
    generation = generate(rng, E_OTHER, first, channel=1)
    await harness.gateway.store.run(store_days_thd, [*generated, generation])
    await harness.gateway.store.run(
        store_reads_thd,
        [(E_OTHER, first, 7_000_123), (E_OTHER, first + dt.timedelta(days=1), 7_045_000)],
    )
    last = first + dt.timedelta(days=1)

    text = await download(harness, "demo-rep-b", path_of("interval", E_OTHER, first, first))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == INTERVAL_COLUMNS
    day = generated[0]
    midnight = local_midnight(first)
    assert len(rows) - 1 == len(day.values)
    for k, (row, value, estimated) in enumerate(
        zip(rows[1:], day.values, day.estimated, strict=True)
    ):
        start = (midnight + dt.timedelta(minutes=15 * k)).astimezone(MARKET)
        end = (midnight + dt.timedelta(minutes=15 * (k + 1))).astimezone(MARKET)
        assert row[:4] == [E_OTHER, first.isoformat(), start.isoformat(), end.isoformat()]
        assert row[4] == ("" if value is None else kwh(value))
        assert row[5] == ("" if value is None else "E" if estimated else "A")
        assert row[6] == "Consumption"
    text = await download(
        harness, "demo-rep-b", path_of("interval", E_OTHER, first, first, channel="1")
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert {r[6] for r in rows[1:]} == {"Surplus Generation"}
    assert [r[4] for r in rows[1:]] == [kwh(v) for v in generation.values if v is not None]

    text = await download(
        harness, "demo-rep-b", path_of("daily", E_OTHER, first, last, format="csv"), "*/*"
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == DAILY_COLUMNS
    assert rows[1:] == [
        [E_OTHER, first.isoformat(), "7000.123", "7045.000", kwh(generated[0].total),
         str(len(generated[0].values)), "2", "3", "MISSING"],
        [E_OTHER, last.isoformat(), "7045.000", "", kwh(generated[1].total),
         str(len(generated[1].values)), "0", "0", "SPIKE"],
    ]  # fmt: skip

    text = await download(harness, "demo-rep-b", path_of("monthly", E_OTHER, first, last))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == MONTHLY_COLUMNS
    expected = monthly_expected(generated)
    assert rows[1:] == [
        [E_OTHER, month, kwh(total), str(days), str(flagged)]
        for month, (total, days, flagged) in sorted(expected.items())
    ]
    status, _ = await harness.caller("demo-rep-a").call(
        "GET", path_of("daily", E_OTHER, first, last, format="csv")
    )
    assert status == 403  # refused before any CSV is written
