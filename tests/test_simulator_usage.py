"""The simulated meters' load profile, the LSE files written from it and their register reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from simulators import headend, usage
from simulators.fleet import generated_esiid

TDSP = "1039940674000"
REP = "0000000000001"
ESIID = generated_esiid(3)
SPRING = dt.date(2026, 3, 8)  # clocks go forward: 23 hours
FALL = dt.date(2026, 11, 1)  # clocks go back: 25 hours
CREATED = "20260420061500"


def detail_rows(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("1")]


def split_records(text: str) -> list[list[str]]:
    records: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("00000001,"):
            records.append([])
        records[-1].append(line)
    return records


def intervals(record: list[str]) -> list[tuple[str, str]]:
    """(value, status) of each interval in a record's detail rows."""
    found = []
    for row in detail_rows(record):
        fields = row.split(",")[1:]
        found += [(fields[at], fields[at + 1]) for at in range(0, len(fields) - 1, 3)]
    return found


def test_a_hand_written_record_is_written_exactly() -> None:
    """format_record writes the headers, kWh with three decimals, E, a blank missing interval,
    and a short last row, exactly as the LSE layout has them."""
    lines = usage.format_record(
        "1000000000000000",
        dt.date(2008, 5, 10),
        [68290, 69170, None, 67990, 66810, 1],
        estimated=[False, False, False, False, True, True],
        tdsp_duns="666666666",
        rep_duns="111111111",
        created="20080519112825",
        transaction_id="UNIQUETRANID0123456789",
    )
    assert lines == [
        "00000001,1000000000000000,4,20080510000000,20080510235900,Y,N",
        "00000002,0,0,0,,0,,900,01,1,-1,0.0,0.0,CST",
        "00000003,UNIQUETRANID0123456789",
        "00000004,20080519112825,M",
        "00000030,ATTRIBUTE_VALUE_PAIRS,MRE=666666666,Sender=666666666,Receiver=183529049,"
        "REP=111111111",
        "10000000,68.290,A,,69.170,A,,,,,67.990,A,,",
        "10000001,66.810,E,,0.001,E,,",
    ]


def test_invalid_flag_channel_and_mre_are_written_as_given() -> None:
    """An invalid record says Y last on 00000001; channel and MRE are the ones given."""
    lines = usage.format_record(
        "E1",
        dt.date(2026, 1, 2),
        [0] * 4,
        tdsp_duns="7",
        rep_duns="8",
        created=dt.datetime(2026, 1, 3, 4, 5, 6),
        transaction_id="T1",
        channel=1,
        invalid=True,
        mre_duns="9",
    )
    assert lines[0] == "00000001,E1,1,20260102000000,20260102235900,Y,Y"
    assert lines[3] == "00000004,20260103040506,M"
    assert lines[4] == "00000030,ATTRIBUTE_VALUE_PAIRS,MRE=9,Sender=7,Receiver=183529049,REP=8"
    assert lines[5] == "10000000,0.000,A,,0.000,A,,0.000,A,,0.000,A,,"


@pytest.mark.parametrize(
    ("day", "count", "rows"),
    [(SPRING, 92, 23), (FALL, 100, 25), (dt.date(2026, 7, 14), 96, 24)],
)
def test_dst_days_have_92_and_100_intervals(day: dt.date, count: int, rows: int) -> None:
    """The spring DST day has 92 intervals in 23 detail rows, the fall one 100 in 25."""
    k0, length = usage.day_start(day)
    assert length == count
    midnight = dt.datetime.combine(day, dt.time(), usage.MARKET_TZ)
    assert k0 * 900 == midnight.timestamp()
    (text,) = usage.profile_records(
        [ESIID], day, day, tdsp_duns=TDSP, rep_duns=REP, created=CREATED
    )
    (record,) = split_records(text)
    assert len(detail_rows(record)) == rows
    assert detail_rows(record)[-1].startswith(f"{10_000_000 + rows - 1},")
    assert len(intervals(record)) == count


def test_profile_records_are_format_record_of_the_profile() -> None:
    """Each record profile_records writes is what format_record writes for the profile's values
    of that local day, DST days included."""
    days = (SPRING - dt.timedelta(days=1), FALL + dt.timedelta(days=1))
    esiids = [generated_esiid(i) for i in range(12)]
    for first in days:
        last = first + dt.timedelta(days=2)
        text = "".join(
            usage.profile_records(
                esiids, first, last, tdsp_duns=TDSP, rep_duns=REP, created=CREATED
            )
        )
        expected = []
        for esiid in esiids:
            for n in range(3):
                day = first + dt.timedelta(days=n)
                k0, count = usage.day_start(day)
                values = [usage.interval_wh(esiid, k0 + q) for q in range(count)]
                lines = usage.format_record(
                    esiid,
                    day,
                    values,
                    tdsp_duns=TDSP,
                    rep_duns=REP,
                    created=CREATED,
                    transaction_id=f"SIM{day:%Y%m%d}{esiid}",
                )
                expected.append("\n".join(lines) + "\n")
        assert text == "".join(expected)


def test_estimated_runs_mark_a_few_consecutive_intervals_and_keep_values() -> None:
    """With estimated_rate 1 every record has one run of 2 to 8 intervals marked E, with the
    same values as without it."""
    day = dt.date(2026, 5, 5)
    esiids = [generated_esiid(i) for i in range(20)]

    def records(rate: float) -> list[list[str]]:
        made = usage.profile_records(
            esiids, day, day, tdsp_duns=TDSP, rep_duns=REP, created=CREATED, estimated_rate=rate
        )
        return split_records("".join(made))

    plain, marked = records(0.0), records(1.0)
    for actual, estimated in zip(plain, marked, strict=True):
        statuses = "".join(status for _, status in intervals(estimated))
        run = statuses.strip("A")
        assert set(run) == {"E"} and 2 <= len(run) <= 8
        assert [v for v, _ in intervals(actual)] == [v for v, _ in intervals(estimated)]


def test_cumulative_is_the_sum_of_the_intervals() -> None:
    """cumulative_wh(b) - cumulative_wh(a) is the sum of interval_wh over [a, b), across weeks,
    from quarter-hour 0, and for negative indexes."""
    for esiid in (ESIID, "1008901000140050014100", "X"):
        for a, b in ((0, 2000), (1_987_000, 1_989_100), (-700, 30), (5, 5)):
            total = 0
            for k in range(a, b):
                total += usage.interval_wh(esiid, k)
            assert usage.cumulative_wh(esiid, b) - usage.cumulative_wh(esiid, a) == total
        assert usage.cumulative_wh(esiid, 0) == 0


def test_register_and_demand_follow_whole_intervals() -> None:
    """The register adds an interval when it ends; demand is the current interval's Wh x 4."""
    k = 1_990_000
    t = k * 900.0
    assert usage.register_wh(ESIID, t) == usage.base_wh(ESIID) + usage.cumulative_wh(ESIID, k)
    assert usage.register_wh(ESIID, t + 899.9) == usage.register_wh(ESIID, t)
    later = usage.register_wh(ESIID, t + 900)
    assert later - usage.register_wh(ESIID, t) == usage.interval_wh(ESIID, k)
    assert usage.demand_w(ESIID, t + 450) == 4 * usage.interval_wh(ESIID, k) > 0


def test_profiles_look_like_households_and_differ_per_esiid() -> None:
    """A day uses 10 to 80 kWh with no zero interval and no spike (the top interval at most
    1.5 times the third), and ESI IDs differ."""
    k0, count = usage.day_start(dt.date(2026, 8, 4))
    days = []
    for i in range(50):
        values = [usage.interval_wh(generated_esiid(i), k0 + q) for q in range(count)]
        top = sorted(values, reverse=True)
        assert min(values) > 0 and top[0] <= 1.5 * top[2]
        assert 10_000 <= sum(values) <= 80_000
        days.append(tuple(values))
    assert len(set(days)) == 50


def test_register_reads_are_the_register_at_local_midnight(tmp_path: Path) -> None:
    """Each read is base + cumulative at that local day's midnight, in kWh with 3 decimals, and
    consecutive reads differ by the day's intervals in the LSE records."""
    path = tmp_path / "reads.csv"
    esiids = [generated_esiid(i) for i in range(3)]
    first, last = SPRING - dt.timedelta(days=1), SPRING + dt.timedelta(days=1)
    assert usage.write_register_reads(path, esiids, first, last) == 9
    lines = path.read_text().splitlines()
    assert lines[0] == "esiid,read_date,channel,reading_kwh"
    reads: dict[tuple[str, str], int] = {}
    for line in lines[1:]:
        esiid, read_date, channel, kwh = line.split(",")
        assert channel == "4" and len(kwh.split(".")[1]) == 3
        day = dt.date.fromisoformat(read_date)
        midnight = dt.datetime.combine(day, dt.time(), usage.MARKET_TZ).timestamp()
        expected = usage.base_wh(esiid) + usage.cumulative_wh(esiid, int(midnight) // 900)
        assert int(kwh.replace(".", "")) == expected
        reads[esiid, read_date] = expected
    text = "".join(
        usage.profile_records(esiids, first, last, tdsp_duns=TDSP, rep_duns=REP, created=CREATED)
    )
    for record in split_records(text):
        esiid, ymd = record[0].split(",")[1], record[0].split(",")[3][:8]
        day = dt.date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:]))
        if day == last:
            continue
        total = sum(int(value.replace(".", "")) for value, _ in intervals(record))
        after = reads[esiid, f"{day + dt.timedelta(days=1)}"]
        assert after - reads[esiid, f"{day}"] == total


def test_write_lse_files_splits_at_max_records_and_names_files(tmp_path: Path) -> None:
    """Five records at most two a file make three files named <DUNS>IntervalData<stamp><nnn>.lse,
    holding every record in order."""
    esiids = [generated_esiid(i) for i in range(5)]
    day = dt.date(2026, 4, 1)
    records = list(
        usage.profile_records(esiids, day, day, tdsp_duns=TDSP, rep_duns=REP, created=CREATED)
    )
    done: list[int] = []
    paths = usage.write_lse_files(
        tmp_path / "out",
        iter(records),
        tdsp_duns=TDSP,
        created=dt.datetime(2026, 4, 20, 6, 15),
        max_records=2,
        progress=done.append,
    )
    assert [p.name for p in paths] == [
        f"{TDSP}IntervalData20260420061500001.lse",
        f"{TDSP}IntervalData20260420061500002.lse",
        f"{TDSP}IntervalData20260420061500003.lse",
    ]
    texts = [p.read_text() for p in paths]
    assert [len(split_records(t)) for t in texts] == [2, 2, 1]
    assert "".join(texts) == "".join(records)
    assert done == [2, 4, 5]
    lines = usage.format_record(
        ESIID, day, [1] * 96, tdsp_duns=TDSP, rep_duns=REP, created=CREATED, transaction_id="X"
    )
    (single,) = usage.write_lse_files(tmp_path / "one", [lines], tdsp_duns=TDSP, created=CREATED)
    assert single.read_text() == "\n".join(lines) + "\n"
    assert usage.write_lse_files(tmp_path / "none", [], tdsp_duns=TDSP, created=CREATED) == []


def test_hangw_sim_lse_writes_the_generated_meters_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hangw-sim lse --meters 3` writes each generated meter's days, reads to the day after
    --to, and progress on stderr; without meters it exits 2 saying what to give."""
    argv = ["lse", "--out", str(tmp_path / "out"), "--from", "2026-03-07", "--to", "2026-03-08"]
    reads = tmp_path / "reads.csv"
    assert headend.main([*argv, "--meters", "3", "--reads", str(reads), "--created", CREATED]) == 0
    (path,) = (tmp_path / "out").iterdir()
    assert path.name == f"{TDSP}IntervalData{CREATED}001.lse"
    records = split_records(path.read_text())
    assert [(r[0].split(",")[1], len(intervals(r))) for r in records] == [
        (generated_esiid(i), count) for i in range(3) for count in (96, 92)
    ]
    assert len(reads.read_text().splitlines()) == 1 + 3 * 3
    out, err = capsys.readouterr()
    assert "wrote 6 records of 3 meters in 1 file(s)" in out and "6 of 6 records" in err
    assert headend.main(argv) == 2
    assert "give --meters N" in capsys.readouterr().err
