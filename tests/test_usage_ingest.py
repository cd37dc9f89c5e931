"""Loading LSE deliveries: versions, outcomes, duplicates, malformed files, the sum check."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from hangw.store import schema
from hangw.store.model import meters, register_reads, usage_days, usage_files, usage_rejections
from hangw.usage.ingest import Ingest
from hangw.usage.reads import load_reads_thd, parse_reads
from hangw.usage.vee import Flag
from tests.test_messaging_store import _wipe
from tests.test_usage_lse import record

POSTGRES_URL = os.environ.get("HANGW_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """The same statements on a SQLite file and on the throwaway PostgreSQL bin/test starts."""
    if request.param == "postgresql":
        if not POSTGRES_URL:
            pytest.skip("HANGW_TEST_POSTGRES_URL is not set (a throwaway PostgreSQL database)")
        engine = schema.make_engine(POSTGRES_URL)
        _wipe(engine)
    else:
        engine = schema.make_engine(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    schema.upgrade(engine)
    yield engine
    if request.param == "postgresql":
        _wipe(engine)
    engine.dispose()


@pytest.fixture
def ingest() -> Ingest:
    return Ingest(workers=1)


def lse_text(*records: list[str]) -> bytes:
    return ("\n".join(line for r in records for line in r) + "\n").encode()


def stored(engine: sa.Engine) -> dict[tuple[str, int, int], tuple[int, str, bytes | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                usage_days.c.esiid,
                usage_days.c.day,
                usage_days.c.channel,
                usage_days.c.total_wh,
                usage_days.c.version,
                usage_days.c.estimated,
            )
        )
        return {(r.esiid, r.day, r.channel): (r.total_wh, r.version, r.estimated) for r in rows}


def test_estimated_then_actual_replaces(engine: sa.Engine, ingest: Ingest) -> None:
    """A later delivery of actuals replaces the earlier estimated day, mask and total included."""
    estimated = record(
        "E1", "20260510", ["1.000"] * 96, ["E"] * 96, tran="T1", created="20260511010000"
    )
    actual = record("E1", "20260510", ["2.000"] * 96, tran="T2", created="20260512010000")
    first = ingest.import_bytes(engine, "e.lse", lse_text(estimated), source="test")
    assert (first.loaded, first.replaced) == (1, 0)
    assert stored(engine)[("E1", 20260510, 4)][0] == 96 * 1000
    assert stored(engine)[("E1", 20260510, 4)][2] == b"\xff" * 12
    second = ingest.import_bytes(engine, "a.lse", lse_text(actual), source="test")
    assert (second.loaded, second.replaced, second.unchanged) == (0, 1, 0)
    assert stored(engine)[("E1", 20260510, 4)] == (96 * 2000, "20260512010000:T2", None)


def test_older_file_arriving_late_does_not_overwrite(engine: sa.Engine, ingest: Ingest) -> None:
    """A delivery created earlier than what is stored leaves the stored day alone."""
    newer = record("E1", "20260510", ["3.000"] * 96, tran="T9", created="20260515000000")
    older = record("E1", "20260510", ["1.000"] * 96, tran="T1", created="20260511000000")
    other = record("E2", "20260510", ["1.000"] * 96, tran="T1", created="20260511000000")
    ingest.import_bytes(engine, "new.lse", lse_text(newer), source="test")
    late = ingest.import_bytes(engine, "old.lse", lse_text(older, other), source="test")
    assert (late.loaded, late.replaced, late.unchanged) == (1, 0, 1)
    assert stored(engine)[("E1", 20260510, 4)][:2] == (96 * 3000, "20260515000000:T9")


def test_same_timestamp_orders_by_transaction_id(engine: sa.Engine, ingest: Ingest) -> None:
    """Two deliveries created the same second are ordered by their transaction ids."""
    b = record("E1", "20260510", ["2.000"] * 96, tran="B", created="20260511000000")
    a = record("E1", "20260510", ["1.000"] * 96, tran="A", created="20260511000000")
    ingest.import_bytes(engine, "b.lse", lse_text(b), source="test")
    ingest.import_bytes(engine, "a.lse", lse_text(a), source="test")
    assert stored(engine)[("E1", 20260510, 4)][1] == "20260511000000:B"


def test_outcome_records_rejections_with_lines(engine: sa.Engine, ingest: Ingest) -> None:
    """Good records load; bad ones are reported with line and reason, in the outcome and store."""
    good = record("E1", "20260510", ["1.000"] * 96)
    short = record("E2", "20260510", ["1.000"] * 92)
    text = lse_text(good, ["garbage line"], short)
    outcome = ingest.import_bytes(engine, "mixed.lse", text, source="test")
    assert (outcome.records, outcome.loaded, outcome.rejected) == (2, 1, 2)
    with engine.connect() as conn:
        file = conn.execute(sa.select(usage_files)).one()
        rejections = conn.execute(
            sa.select(usage_rejections.c.line, usage_rejections.c.reason).order_by("line")
        ).all()
    assert (file.state, file.loaded, file.rejected, file.records) == ("loaded", 1, 2, 2)
    assert [r.line for r in rejections] == [len(good) + 1, len(good) + 2]
    assert "not an LSE row" in rejections[0].reason and "92 intervals" in rejections[1].reason
    assert set(stored(engine)) == {("E1", 20260510, 4)}


def test_duplicate_esiid_day_in_one_file_loads_neither(engine: sa.Engine, ingest: Ingest) -> None:
    """An ESI ID-day twice in one file: both copies rejected with their lines, the rest loads."""
    one = record("E1", "20260510", ["1.000"] * 96)
    two = record("E1", "20260510", ["2.000"] * 96, tran="T2")
    other = record("E2", "20260510", ["1.000"] * 96)
    outcome = ingest.import_bytes(engine, "dup.lse", lse_text(one, other, two), source="test")
    assert (outcome.loaded, outcome.rejected) == (1, 2)
    assert sorted(r.line for r in outcome.rejections) == [1, 1 + 2 * len(one)]
    assert all(
        "more than once" in r.reason or "already in this delivery" in r.reason
        for r in outcome.rejections
    )
    assert set(stored(engine)) == {("E2", 20260510, 4)}


def test_truncated_zip_is_rejected_and_changes_nothing(engine: sa.Engine, ingest: Ingest) -> None:
    """A truncated zip is rejected whole with its reason; the stored days are as they were."""
    ingest.import_bytes(
        engine, "base.lse", lse_text(record("E0", "20260509", ["1.0"] * 96)), source="test"
    )
    before = stored(engine)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "day.lse", lse_text(*[record(f"E{n}", "20260510", ["1.0"] * 96) for n in range(50)])
        )
    data = buffer.getvalue()
    outcome = ingest.import_bytes(engine, "day.zip", data[: len(data) // 2], source="test")
    assert outcome.state == "rejected"
    assert "zip" in outcome.reason
    assert stored(engine) == before
    with engine.connect() as conn:
        states = conn.execute(
            sa.select(usage_files.c.name, usage_files.c.state, usage_files.c.reason)
        ).all()
    assert [(s.name, s.state) for s in states] == [("base.lse", "loaded"), ("day.zip", "rejected")]
    assert states[1].reason == outcome.reason


def test_same_bytes_twice_is_noticed(engine: sa.Engine, ingest: Ingest) -> None:
    """Importing the very same file again changes nothing and says it was already loaded."""
    text = lse_text(record("E1", "20260510", ["1.0"] * 96))
    ingest.import_bytes(engine, "a.lse", text, source="test")
    again = ingest.import_bytes(engine, "a-copy.lse", text, source="test")
    assert again.state == "duplicate" and "a.lse" in again.reason
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(usage_files)).scalar() == 1


def test_zip_of_members_loads_each(engine: sa.Engine, ingest: Ingest) -> None:
    """Every .lse member of a zip loads; rejections name the member they are in."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.lse", lse_text(record("E1", "20260510", ["1.0"] * 96)))
        archive.writestr("b.lse", lse_text(record("E2", "20260510", ["1.0"] * 95)))
    outcome = ingest.import_bytes(engine, "two.zip", buffer.getvalue(), source="test")
    assert (outcome.loaded, outcome.rejected) == (1, 1)
    assert (
        outcome.rejections[0].reason.startswith("two.zip!b.lse: ")
        or "b.lse" in outcome.rejections[0].reason
    )


def _with_sender(lines: list[str], sender: str) -> list[str]:
    return [line.replace("Sender=666666666", f"Sender={sender}") for line in lines]


def _register(engine: sa.Engine, esiid: str, tdsp_duns: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            meters.insert().values(
                esiid=esiid,
                meter_serial="M1",
                tdsp_duns=tdsp_duns,
                ror_duns="0000000000001",
                hardware_version="h",
                firmware_version="f",
                han_capable=True,
                active=True,
            )
        )


def test_tdsp_cannot_deliver_another_tdsps_meters(engine: sa.Engine, ingest: Ingest) -> None:
    """A TDSP's delivery for another TDSP's meter is rejected with its line; its own loads."""
    _register(engine, "E1", "111")
    _register(engine, "E2", "222")
    own = _with_sender(
        record("E1", "20260510", ["1.000"] * 96, tran="T1", created="20260511010000"), "111"
    )
    ingest.import_bytes(engine, "own.lse", lse_text(own), source="drop:111", tdsp_duns="111")
    theirs = [
        _with_sender(
            record(e, "20260510", ["9.000"] * 96, tran="X", created="20260512010000"), "222"
        )
        for e in ("E1", "E2")
    ]
    out = ingest.import_bytes(
        engine, "other.lse", lse_text(*theirs), source="drop:222", tdsp_duns="222"
    )
    assert (out.loaded, out.replaced, out.rejected) == (1, 0, 1)
    [rejection] = out.rejections
    assert (rejection.line, rejection.esiid, rejection.day) == (1, "E1", 20260510)
    assert "TDSP 111's" in rejection.reason
    assert stored(engine)[("E1", 20260510, 4)][0] == 96 * 1000
    assert stored(engine)[("E2", 20260510, 4)][0] == 96 * 9000


def test_unregistered_esiid_keeps_its_first_tdsp(engine: sa.Engine, ingest: Ingest) -> None:
    """An ESI ID not in the registry loads; another TDSP's later delivery of its day does not."""
    first = _with_sender(record("U1", "20260510", ["1.000"] * 96, created="20260511010000"), "111")
    loaded = ingest.import_bytes(
        engine, "a.lse", lse_text(first), source="drop:111", tdsp_duns="111"
    )
    assert (loaded.loaded, loaded.rejected) == (1, 0)
    later = _with_sender(record("U1", "20260510", ["9.000"] * 96, created="20260512010000"), "222")
    out = ingest.import_bytes(engine, "b.lse", lse_text(later), source="drop:222", tdsp_duns="222")
    assert (out.replaced, out.rejected) == (0, 1)
    assert "not in the meter registry" in out.rejections[0].reason
    assert stored(engine)[("U1", 20260510, 4)][0] == 96 * 1000


def test_last_calendar_day_is_rejected_not_fatal(engine: sa.Engine, ingest: Ingest) -> None:
    """A record dated 9999-12-31 is rejected with its line; the delivery's other records load."""
    good = record("E1", "20260510", ["1.000"] * 96)
    bad = record("E2", "99991231", ["1.000"] * 96)
    outcome = ingest.import_bytes(engine, "x.lse", lse_text(good, bad), source="test")
    assert (outcome.state, outcome.loaded, outcome.rejected) == ("loaded", 1, 1)
    assert outcome.rejections[0].line == len(good) + 1
    assert set(stored(engine)) == {("E1", 20260510, 4)}


def test_future_creation_timestamp_cannot_freeze_a_day(engine: sa.Engine) -> None:
    """A record created more than a day ahead of the clock is rejected; the next actuals load."""
    now = dt.datetime(2026, 5, 12, 12, tzinfo=dt.UTC).timestamp()
    ingest = Ingest(workers=1, clock=lambda: now)
    typo = record("E1", "20260510", ["1.0"] * 96, ["E"] * 96, tran="T1", created="20990101000000")
    ahead = ingest.import_bytes(engine, "e.lse", lse_text(typo), source="test")
    assert (ahead.loaded, ahead.rejected) == (0, 1)
    assert "in the future" in ahead.rejections[0].reason
    fix = record("E1", "20260510", ["2.0"] * 96, tran="T2", created="20260513050000")
    out = ingest.import_bytes(engine, "a.lse", lse_text(fix), source="test")
    assert (out.loaded, out.rejected) == (1, 0)
    assert stored(engine)[("E1", 20260510, 4)][0] == 96 * 2000


def test_a_dead_parse_worker_is_replaced(tmp_path: Path) -> None:
    """After a parse worker dies, the next big deliveries load on a new pool of workers."""
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    schema.upgrade(engine)

    def big(first: int) -> bytes:
        data = lse_text(*[record(f"E{first + n}", "20260510", ["1.234"] * 96) for n in range(800)])
        assert len(data) > 1 << 20  # parsed on the workers
        return data

    with Ingest(workers=2) as ingest:
        assert ingest.import_bytes(engine, "a.lse", big(0), source="test").loaded == 800
        assert ingest._pool is not None
        os.kill(next(iter(ingest._pool._processes)), signal.SIGKILL)  # the OOM killer, say
        for n, name in enumerate(("b.lse", "c.lse"), 1):
            assert ingest.import_bytes(engine, name, big(1000 * n), source="test").loaded == 800
    assert len(stored(engine)) == 3 * 800
    engine.dispose()


def test_sum_check_against_register_reads_either_order(engine: sa.Engine, ingest: Ingest) -> None:
    """Days off their midnight reads' difference are flagged, whichever of the two loads first."""
    ok = record("OK", "20260510", ["1.000"] * 96)  # 96,000 Wh
    off = record("OFF", "20260510", ["1.000"] * 96)
    reads_csv = [
        "esiid,read_date,channel,reading_kwh",
        "OK,2026-05-10,4,1000.000",
        "OK,2026-05-11,4,1096.000",
        "OFF,2026-05-10,4,1000.000",
        "OFF,2026-05-11,4,1100.000",
        "LATE,2026-05-10,4,5.000",
        "LATE,2026-05-11,,101.500",
    ]
    reads, rejected = parse_reads(reads_csv, "reads.csv")
    assert rejected == []
    ingest.import_bytes(engine, "d.lse", lse_text(ok, off), source="test")
    with engine.begin() as conn:
        load_reads_thd(conn, reads, 0.0, tolerance_wh=10)
    # reads already there when the day arrives
    late = record("LATE", "20260510", ["1.000"] * 96)
    ingest.import_bytes(engine, "late.lse", lse_text(late), source="test")
    with engine.connect() as conn:
        flags = dict(conn.execute(sa.select(usage_days.c.esiid, usage_days.c.flags)).all())
        assert conn.execute(sa.select(sa.func.count()).select_from(register_reads)).scalar() == 6
    assert flags == {"OK": 0, "OFF": Flag.SUM_CHECK, "LATE": Flag.SUM_CHECK}


def test_reads_csv_rejections_have_lines() -> None:
    """Bad rows of a reads CSV are rejected with their line; good rows are kept."""
    reads, rejected = parse_reads(
        [
            "esiid,read_date,channel,reading_kwh",
            "E1,2026-05-10,4,1.5",
            "E1,2026-13-10,4,1.5",
            "E1,2026-05-11,9,1.5",
            "E1,2026-05-12,4,lots",
            "E1,2026-05-10,4,2.0",
            "E1,0001-01-01,4,1.0",
            "E1,9999-12-31,4,1.0",
        ],
        "r.csv",
    )
    assert reads == [("E1", 20260510, 4, 1500)]
    assert [line for line, _ in rejected] == [3, 4, 5, 6, 7, 8]
    assert "second read" in rejected[3][1]
    assert "read_date 0001-01-01 is not in the years 2000 to 2199" in rejected[4][1]
