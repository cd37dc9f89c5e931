"""The `hangw usage` report commands over the real API: tables, CSV files, a bulk job with its
progress bar, and the daily usage chart (a PNG), or exit 2 without matplotlib."""

from __future__ import annotations

import csv
import datetime as dt
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from hangw import cli
from tests.gateway_harness import E_OTHER_TDSP, E_OWN, Harness
from tests.test_cli import assert_refused_offline, cli_config, offline_cli, run_cli
from tests.test_usage_reports import (
    DAILY_COLUMNS,
    GeneratedDay,
    days_from,
    generate,
    kwh,
    store_days_thd,
    store_reads_thd,
    texas_today,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def api_options(harness: Harness, party: str = "demo-rep-a") -> list[str]:
    return ["--api", f"https://localhost:{harness.api_port}", "--as", party]


async def stored_days(
    harness: Harness, esiids: list[str], days: int = 3
) -> tuple[dt.date, dt.date, list[GeneratedDay]]:
    """Generated usage for the last ``days`` days before today, with one estimated day."""
    last = texas_today() - dt.timedelta(days=1)
    first = last - dt.timedelta(days=days - 1)
    rng = np.random.default_rng(21)
    generated = [
        generate(rng, esiid, day, estimated=2 if n == 1 else 0, spike=n == 2)
        for esiid in esiids
        for n, day in enumerate(days_from(first, days))
    ]
    await harness.gateway.store.run(store_days_thd, generated)
    return first, last, generated


@pytest_twisted.ensureDeferred
async def test_report_commands_print_tables_and_write_csv(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """usage daily, monthly and interval print tables with kWh; --csv writes the CSV."""
    first, last, generated = await stored_days(harness, [E_OWN])
    await harness.gateway.store.run(store_reads_thd, [(E_OWN, first, 12_345_678)])
    config = str(cli_config(harness, tmp_path))
    dates = ["--from", str(first), "--to", str(last)]
    customer = api_options(harness, "demo-customer")

    assert await run_cli("--config", config, "usage", "daily", E_OWN, *dates, *customer) == 0
    out = capsys.readouterr().out
    for g in generated:
        line = next(x for x in out.splitlines() if x.startswith(g.day.isoformat()))
        assert kwh(g.total) in line and f" {len(g.values)} " in line
    assert "12345.678" in out and "SPIKE" in out

    assert await run_cli("--config", config, "usage", "monthly", E_OWN, *dates, *customer) == 0
    out = capsys.readouterr().out
    months = {f"{g.day:%Y-%m}" for g in generated}
    for month in months:
        total = sum(g.total for g in generated if f"{g.day:%Y-%m}" == month)
        assert re.search(rf"^{month}\s+{re.escape(kwh(total))}\s", out, re.MULTILINE)

    one_day = ["--from", str(last), "--to", str(last)]
    assert await run_cli("--config", config, "usage", "interval", E_OWN, *one_day, *customer) == 0
    out = capsys.readouterr().out
    assert sum(" actual" in line for line in out.splitlines()) == len(generated[-1].values)

    target = tmp_path / "daily.csv"
    code = await run_cli(
        "--config", config, "usage", "daily", E_OWN, *dates, "--csv", str(target), *customer
    )
    assert code == 0
    rows = list(csv.reader(target.open(newline="")))
    assert rows[0] == DAILY_COLUMNS
    assert [(r[1], r[4]) for r in rows[1:]] == [
        (g.day.isoformat(), kwh(g.total)) for g in generated
    ]

    other = api_options(harness, "demo-rep-b")
    assert await run_cli("--config", config, "usage", "daily", E_OWN, *dates, *other) == 1
    assert "403" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_job_commands_submit_wait_status_and_fetch(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """usage job submit --wait shows progress to 100%; status and fetch give the job's CSV."""
    first, last, generated = await stored_days(harness, [E_OWN, E_OTHER_TDSP])
    config = str(cli_config(harness, tmp_path))
    listed = tmp_path / "esiids.txt"
    listed.write_text(f"# two meters\n{E_OWN}\n{E_OTHER_TDSP}\n")
    code = await run_cli(
        "--config", config, "usage", "job", "submit", "daily", "--esiids-file", str(listed),
        "--from", str(first), "--to", str(last), "--wait", *api_options(harness),
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "100.0%  2/2" in captured.err
    job_id = re.search(r"report job (J[0-9A-F]{12}): done", captured.out)
    assert job_id is not None, captured.out
    code = await run_cli(
        "--config", config, "usage", "job", "status", job_id.group(1), *api_options(harness)
    )
    assert code == 0 and f"{job_id.group(1)}: done" in capsys.readouterr().out
    target = tmp_path / "job.csv"
    code = await run_cli(
        "--config", config, "usage", "job", "fetch", job_id.group(1), "-o", str(target),
        *api_options(harness),
    )  # fmt: skip
    assert code == 0
    rows = list(csv.reader(target.open(newline="")))
    assert rows[0] == DAILY_COLUMNS
    assert [(r[0], r[1], r[4]) for r in rows[1:]] == [
        (g.esiid, g.day.isoformat(), kwh(g.total)) for g in generated
    ]


@pytest_twisted.ensureDeferred
async def test_plot_draws_the_daily_usage_into_a_png(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """usage plot writes a PNG chart of the days asked for."""
    first, last, _ = await stored_days(harness, [E_OWN], days=10)
    config = str(cli_config(harness, tmp_path))
    chart = tmp_path / "chart.png"
    code = await run_cli(
        "--config", config, "usage", "plot", E_OWN, "--from", str(first), "--to", str(last),
        "-o", str(chart), *api_options(harness, "demo-customer"),
    )  # fmt: skip
    assert code == 0
    data = chart.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (650, 450)
    assert len(data) > 10_000
    assert f"wrote {chart}: 10 days" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_plot_without_matplotlib_exits_2(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Without matplotlib usage plot says to install hangw[plot] and exits 2."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    config = str(cli_config(harness, tmp_path))
    chart = tmp_path / "chart.png"
    argv = [
        "--config", config, "usage", "plot", E_OWN, "--from", "2026-01-01", "--to", "2026-01-31",
        "-o", str(chart), *api_options(harness),
    ]  # fmt: skip

    def main() -> object:
        try:
            return cli.main(argv)
        except SystemExit as stop:
            return stop.code

    assert await deferToThread(main) == 2
    assert "install hangw[plot] to draw charts" in capsys.readouterr().err
    assert not chart.exists()


def test_local_files_are_read_and_opened_before_the_api_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing ESI ID file, or a CSV or chart that cannot be written, is said as such (exit 1)
    before the API is asked: not as an API that cannot be reached."""
    config, api = offline_cli(tmp_path)
    dates = ["--from", "2026-01-01", "--to", "2026-01-31"]
    missing = tmp_path / "nofile"
    cases = [
        (["usage", "daily", E_OWN, *dates, "--csv", "/nonexistent/d.csv"],
         "hangw: cannot write /nonexistent/d.csv: No such file or directory"),
        (["usage", "job", "submit", "daily", "--esiids-file", str(missing), *dates],
         f"hangw: cannot read {missing}: No such file or directory"),
        (["usage", "job", "fetch", "J000000000000", "-o", str(tmp_path)],
         f"hangw: cannot write {tmp_path}: Is a directory"),
        (["usage", "plot", E_OWN, *dates, "-o", "/bad/dir/chart.png"],
         "hangw: cannot write /bad/dir/chart.png: No such file or directory"),
    ]  # fmt: skip
    assert_refused_offline(capsys, config, api, cases)


@pytest_twisted.ensureDeferred
async def test_a_refused_report_leaves_no_csv_file_behind(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CSV file opened before asking is removed when the API refuses: no empty report."""
    config = str(cli_config(harness, tmp_path))
    target = tmp_path / "daily.csv"
    code = await run_cli(
        "--config", config, "usage", "daily", E_OWN, "--from", "2026-01-01", "--to", "2026-01-31",
        "--csv", str(target), *api_options(harness, "demo-rep-b"),
    )  # fmt: skip
    assert code == 1 and "403" in capsys.readouterr().err
    assert not target.exists()
