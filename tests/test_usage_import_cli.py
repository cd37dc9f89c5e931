"""`hangw usage import` of files, zips and PGP; a killed import leaves the store as it was."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from hangw import cli
from hangw.store import schema
from hangw.store.model import usage_days, usage_files
from hangw.usage.pgp import UsageKey, encrypt_for
from simulators.fleet import generated_esiid
from simulators.usage import profile_records, write_lse_files, write_register_reads

TDSP = "1039940674000"
REP = "0000000000001"


def config_for(tmp_path: Path, name: str = "state") -> Path:
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[gateway]\nstate_dir = "{state}"\n')
    return config


def engine_of(config: Path) -> sa.Engine:
    return schema.make_engine(f"sqlite:///{config.with_suffix('')}/hangw.sqlite")


def dump(config: Path) -> list[tuple[object, ...]]:
    with engine_of(config).connect() as conn:
        columns = [c for c in usage_days.c if c.name != "file_id"]
        return [tuple(r) for r in conn.execute(sa.select(*columns).order_by("esiid", "day"))]


def lse_files(directory: Path, esiids: int, first: dt.date, days: int, created: str) -> list[Path]:
    ids = [generated_esiid(n) for n in range(esiids)]
    records = profile_records(
        ids,
        first,
        first + dt.timedelta(days=days - 1),
        tdsp_duns=TDSP,
        rep_duns=REP,
        created=created,
        estimated_rate=0.05,
    )
    return write_lse_files(directory, records, tdsp_duns=TDSP, created=created)


def test_import_reports_outcome_and_files_lists_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints a file's outcome; `usage files --show` repeats it, rejections included."""
    config = config_for(tmp_path)
    [path] = lse_files(tmp_path / "in", 20, dt.date(2026, 3, 7), 3, "20260310000000")
    text = path.read_text().replace("00000004,", "garbage\n00000004,", 1)
    path.write_text(text)
    assert cli.main(["--config", str(config), "usage", "import", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path.name}: 60 records: 59 loaded" in out and "1 rejected" in out
    assert "line 4: not an LSE row" in out
    assert cli.main(["--config", str(config), "usage", "files", "--show", "1"]) == 0
    shown = capsys.readouterr().out
    assert "59 loaded" in shown and "line 4: not an LSE row" in shown


def test_zip_and_pgp_deliveries_load_and_a_wrong_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pgp(zip(lse)) for the gateway's key loads; one for another key is refused and exits 1."""
    config = config_for(tmp_path)
    assert cli.main(["--config", str(config), "usage", "key", "init"]) == 0
    public = config.with_suffix("") / "gnupg" / "usage-key.asc"
    capsys.readouterr()
    [path] = lse_files(tmp_path / "in", 10, dt.date(2026, 5, 1), 2, "20260510000000")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, path.name)
    good = tmp_path / "day.zip.pgp"
    good.write_bytes(encrypt_for(public.read_text(), buffer.getvalue()))
    with UsageKey(tmp_path / "other-home") as other:
        other.init("someone else")
        wrong = tmp_path / "wrong.zip.pgp"
        wrong.write_bytes(encrypt_for(other.export_public(), buffer.getvalue()))
    assert cli.main(["--config", str(config), "usage", "import", str(good)]) == 0
    assert "20 records: 20 loaded" in capsys.readouterr().out
    before = dump(config)
    assert cli.main(["--config", str(config), "usage", "import", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert "wrong.zip.pgp: rejected:" in out and "not for this gateway's usage key" in out
    assert dump(config) == before


def test_import_reads_flags_days_that_disagree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Register reads from the simulator agree with its intervals; a changed read flags its days."""
    config = config_for(tmp_path)
    [path] = lse_files(tmp_path / "in", 5, dt.date(2026, 3, 7), 3, "20260310000000")
    reads = tmp_path / "reads.csv"
    ids = [generated_esiid(n) for n in range(5)]
    write_register_reads(reads, ids, dt.date(2026, 3, 7), dt.date(2026, 3, 10))
    lines = reads.read_text().splitlines()
    esiid, date, channel, kwh = lines[2].split(",")  # the first ESI ID's 2026-03-08 read
    lines[2] = f"{esiid},{date},{channel},{float(kwh) + 5:.3f}"
    reads.write_text("\n".join(lines) + "\n")
    assert cli.main(["--config", str(config), "usage", "import", str(path)]) == 0
    assert cli.main(["--config", str(config), "usage", "import-reads", str(reads)]) == 0
    assert "20 register read(s) loaded, 0 rejected" in capsys.readouterr().out
    with engine_of(config).connect() as conn:
        flagged = conn.execute(
            sa.select(usage_days.c.esiid, usage_days.c.day).where(usage_days.c.flags != 0)
        ).all()
    # the changed read ends 2026-03-07 and starts 2026-03-08: both days disagree, nothing else
    assert sorted(tuple(r) for r in flagged) == [(esiid, 20260307), (esiid, 20260308)]


@pytest.mark.slow
def test_killed_import_then_reimport_equals_one_clean_import(tmp_path: Path) -> None:
    """kill -9 in the middle of a file's import, import again: the store equals a clean import."""
    directory = tmp_path / "in"
    paths = [
        *lse_files(directory / "a", 3000, dt.date(2026, 3, 1), 5, "20260310000000"),
        *lse_files(directory / "b", 3000, dt.date(2026, 3, 6), 5, "20260311000000"),
        *lse_files(directory / "c", 3000, dt.date(2026, 3, 4), 5, "20260312000000"),
    ]
    crashed = config_for(tmp_path, "crashed")
    command = [sys.executable, "-m", "hangw.cli", "--config", str(crashed), "usage", "import"]
    process = subprocess.Popen(
        [*command, "--workers", "1", *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    second = paths[1].name
    for line in process.stderr:
        if line.startswith(second):  # the second file's first progress line
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    with engine_of(crashed).connect() as conn:
        files = conn.execute(sa.select(usage_files.c.name, usage_files.c.file_id)).all()
        assert [f.name for f in files] == [paths[0].name]
        owners = conn.execute(sa.select(usage_days.c.file_id).distinct()).scalars().all()
    assert owners == [files[0].file_id]  # nothing of the killed file is in the store
    again = subprocess.run(
        [*command, *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "already loaded" in again.stdout
    clean = config_for(tmp_path, "clean")
    once = subprocess.run(
        [
            sys.executable,
            "-m",
            "hangw.cli",
            "--config",
            str(clean),
            "usage",
            "import",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert once.returncode == 0, once.stderr
    crashed_rows, clean_rows = dump(crashed), dump(clean)
    assert len(clean_rows) == 3000 * 10  # 1 to 10 March: the files overlap, newest wins
    assert crashed_rows == clean_rows


def test_a_store_failing_mid_load_is_said_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store error raised by the driver's cursor while the usage is written (a failing disk,
    here a trigger on a table that is gone) is one line naming the driver's error, exit 1, and
    the store is left as it was."""
    config = config_for(tmp_path)
    engine = engine_of(config)
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE gone (x INTEGER)")
        conn.exec_driver_sql(
            "CREATE TRIGGER failing AFTER INSERT ON usage_days BEGIN INSERT INTO gone VALUES (1); "
            "END"
        )
        conn.exec_driver_sql("DROP TABLE gone")
    engine.dispose()
    [path] = lse_files(tmp_path / "in", 5, dt.date(2026, 3, 7), 1, "20260310000000")
    assert cli.main(["--config", str(config), "usage", "import", str(path)]) == 1
    err = capsys.readouterr().err
    assert "a file was not loaded and nothing after it" in err, err
    assert "OperationalError: no such table: main.gone" in err and "Traceback" not in err
    assert dump(config) == []
