"""LSE ingest: 250,000 ESI ID-day records into the usage store, against a bare parse+executemany.

Generated data: ``--esiids`` simulated ESI IDs (5,000) over ``--days`` operating days (50): half
of them around the spring DST change (a 92-interval day) and half around the fall one (a
100-interval day), 2% of the records with a run of estimated intervals, written by the simulated
head-end's LSE writer as files of at most 50,000 records, as TDSPs deliver them.

Measured, each on a fresh SQLite file made by hangw's migrations (WAL, synchronous NORMAL):

- hangw: ``Ingest.import_bytes`` for every file, as ``hangw usage import`` does: strict parse
  with every rejection check, VEE flags, the merge by version into ``usage_days``, the file's
  outcome, one transaction per file; the parse on parallel worker processes (one per core).
  Also printed with one worker, for reference.
- baseline: the fastest plain approach: one process reads each file, splits it into lines, takes
  the ESI ID, day, channel and version from the header rows and the values by joining the detail
  rows and letting numpy read the numbers of a whole file at once, packs the same Wh blobs,
  estimated masks and totals, and inserts the same rows with the sqlite3 module's executemany in
  one transaction per file. No validation, no VEE, no versions, no bookkeeping.

Then daily totals: ``--report-esiids`` (50,000) ESI IDs x 30 days are put straight into a store
(the day rows, not through the parser) and the daily report for all of them is written as CSV by
the bulk-report path, timed (target under 5 s).

    .venv/bin/python bench/lse_ingest.py

Last line: RESULT lse_ingest <records/s> records/s baseline=<records/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import sqlite3
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from hangw.store import schema
from hangw.usage.days import day_bounds
from hangw.usage.ingest import Ingest
from simulators.fleet import generated_esiid
from simulators.usage import profile_records, write_lse_files

TDSP = "1039940674000"
REP = "0000000000001"


def generate(directory: Path, esiids: int, days: int) -> tuple[list[Path], int]:
    ids = [generated_esiid(n) for n in range(esiids)]
    half = days // 2
    spring = dt.date(2026, 3, 8) - dt.timedelta(days=half // 2)
    fall = dt.date(2026, 11, 1) - dt.timedelta(days=(days - half) // 2)
    paths: list[Path] = []
    for n, (first, count) in enumerate(((spring, half), (fall, days - half))):
        records = profile_records(
            ids,
            first,
            first + dt.timedelta(days=count - 1),
            tdsp_duns=TDSP,
            rep_duns=REP,
            created=f"2026111{n + 4}010000",
            estimated_rate=0.02,
            seed=n,
        )
        paths += write_lse_files(
            directory / f"part{n}", records, tdsp_duns=TDSP, created=f"2026111{n + 4}010000"
        )
    return paths, esiids * days


def fresh_store(path: Path) -> str:
    url = f"sqlite:///{path}"
    schema.upgrade(schema.make_engine(url))
    return url


def run_hangw(paths: list[Path], url: str, workers: int) -> tuple[float, int]:
    engine = schema.make_engine(url)
    with Ingest(workers=workers) as ingest:
        if workers > 1:
            ingest._workers().submit(int, 0).result()  # start the pool before the clock
        started = time.perf_counter()
        loaded = 0
        deliveries = ((path.name, path.read_bytes()) for path in paths)
        for outcome in ingest.import_many(engine, deliveries, source="bench"):
            if outcome.rejected or outcome.state != "loaded":
                raise SystemExit(f"{outcome.summary()} {outcome.rejections[:3]}")
            loaded += outcome.loaded
        elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, loaded


_COLUMNS = (
    "esiid, day, channel, tdsp_duns, start_utc, intervals, wh, missing, estimated, total_wh, "
    "missing_count, estimated_count, flags, version, file_id"
)


def baseline_file(text: str) -> list[tuple[object, ...]]:
    """Rows of one LSE file, the plain way (trusting the file)."""
    lines = text.split("\n")
    heads: list[tuple[str, int, int, str]] = []
    texts: list[str] = []
    estimated: list[bytes | None] = []
    i, end = 0, len(lines)
    while i < end:
        line = lines[i]
        if not line.startswith("00000001,"):
            i += 1
            continue
        f = line.split(",")
        created = lines[i + 3][9:23]
        tran = lines[i + 2][9:]
        j = i + 1
        while j < end and lines[j][:1] == "0":
            j += 1
        k = j
        while k < end and lines[k][:1] == "1":
            k += 1
        joined = "".join([row[9:] for row in lines[j:k]])
        if ",E,," in joined:
            flags = [s == "E" for s in joined.split(",")[1::3]]
            estimated.append(np.packbits(flags, bitorder="little").tobytes())
        else:
            estimated.append(None)
        texts.append(joined.replace(",A,,", ",").replace(",E,,", ","))
        heads.append((f[1], int(f[3][:8]), int(f[2]), f"{created}:{tran}"))
        i = k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        kwh = np.fromstring("".join(texts), sep=",")
    wh = np.rint(kwh * 1000).astype("<i4")
    rows = []
    at = 0
    packed = wh.tobytes()
    for (esiid, day, channel, version), mask in zip(heads, estimated, strict=True):
        start_utc, count = day_bounds(day)
        total = int(wh[at : at + count].sum())
        rows.append(
            (
                esiid,
                day,
                channel,
                TDSP,
                start_utc,
                count,
                packed[at * 4 : (at + count) * 4],
                None,
                mask,
                total,
                0,
                0 if mask is None else -1,
                0,
                version,
                1,
            )
        )
        at += count
    return rows


def run_baseline(paths: list[Path], path: Path) -> tuple[float, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO usage_days ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
    started = time.perf_counter()
    loaded = 0
    for file in paths:
        rows = baseline_file(file.read_bytes().decode())
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        loaded += len(rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, loaded


def daily_totals(directory: Path, esiids: int, days: int) -> float:
    """Time the daily report of ``esiids`` ESI IDs over ``days`` days (rows put in directly)."""
    from hangw.usage import jobs, reports

    path = directory / "report.sqlite"
    url = fresh_store(path)
    first = dt.date(2026, 10, 1)
    ids = [generated_esiid(n) for n in range(esiids)]
    print(f"daily totals: putting {esiids:,} ESI IDs x {days} days into a store ...", flush=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO usage_days ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
    draw = np.random.default_rng(7)
    conn.execute("BEGIN")
    for n in range(days):
        date = first + dt.timedelta(days=n)
        day = date.year * 10000 + date.month * 100 + date.day
        start_utc, count = day_bounds(day)
        wh = draw.integers(100, 900, size=(esiids, count), dtype="<i4")
        totals = wh.sum(axis=1).tolist()
        packed = wh.tobytes()
        size = count * 4
        conn.executemany(
            insert,
            [
                (
                    esiid,
                    day,
                    4,
                    TDSP,
                    start_utc,
                    count,
                    packed[i * size : (i + 1) * size],
                    None,
                    None,
                    totals[i],
                    0,
                    0,
                    0,
                    "20261201000000:T",
                    1,
                )
                for i, esiid in enumerate(ids)
            ],
        )
    conn.execute("COMMIT")
    conn.close()
    engine = schema.make_engine(url)
    reader = reports.Reader(engine, None)
    spec = reports.ReportSpec("daily", first, first + dt.timedelta(days=days - 1))
    started = time.perf_counter()
    rows = jobs.write_report(reader, spec, ids, directory / "daily.csv", progress=lambda d, r: None)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert rows == esiids * days, (rows, esiids * days)
    print(
        f"daily totals for {esiids:,} ESI IDs x {days} days ({rows:,} rows, CSV as a bulk job "
        f"writes it): {elapsed:.2f} s (target under 5 s)",
        flush=True,
    )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--esiids", type=int, default=5000)
    parser.add_argument("--days", type=int, default=50)
    parser.add_argument("--report-esiids", type=int, default=50_000)
    parser.add_argument("--report-days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hangw-bench-lse-") as tmp:
        work = Path(tmp)
        print(f"generating {args.esiids:,} ESI IDs x {args.days} days as LSE files ...", flush=True)
        started = time.perf_counter()
        paths, records = generate(work / "files", args.esiids, args.days)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"  {records:,} records in {len(paths)} files, {size / 1e6:,.0f} MB, "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        gc.collect()
        base_s, base_n = run_baseline(paths, Path(fresh_store(work / "baseline.sqlite")[10:]))
        assert base_n == records, (base_n, records)
        print(
            f"baseline (plain parse + executemany): {base_s:.2f} s, "
            f"{records / base_s:,.0f} records/s",
            flush=True,
        )
        gc.collect()
        one_s, one_n = run_hangw(paths, fresh_store(work / "hangw1.sqlite"), 1)
        assert one_n == records, (one_n, records)
        print(
            f"hangw, 1 parsing process: {one_s:.2f} s, {records / one_s:,.0f} records/s", flush=True
        )
        gc.collect()
        ours_s, ours_n = run_hangw(paths, fresh_store(work / "hangw.sqlite"), args.workers)
        assert ours_n == records, (ours_n, records)
        print(
            f"hangw, {args.workers} parsing processes: {ours_s:.2f} s, "
            f"{records / ours_s:,.0f} records/s",
            flush=True,
        )
        if args.report_esiids:
            daily_totals(work, args.report_esiids, args.report_days)
        rate, base_rate = records / ours_s, records / base_s
        print(
            f"RESULT lse_ingest {rate:.0f} records/s baseline={base_rate:.0f} records/s "
            f"ratio={rate / base_rate:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
