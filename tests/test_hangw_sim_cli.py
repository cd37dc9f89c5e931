"""hangw-sim's command line: the files it writes and reads, and the options it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from adapters.commands import MeterEventKind
from hangw.meters import parse_meter_csv
from simulators.fleet import generated_esiid
from simulators.headend import _config as options_of
from simulators.headend import main, parse_args, read_meter_events
from simulators.inprocess import SimulatedHeadEnd


def test_write_meters_makes_a_registry_the_gateway_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write-meters with --meters writes that many meters, in the gateway's meter CSV."""
    path = tmp_path / "meters.csv"
    assert main(["--write-meters", str(path), "--meters", "25", "--incompatible-rate", "0.2"]) == 0
    assert "wrote 25 meters" in capsys.readouterr().out
    meters = parse_meter_csv(path.read_text().splitlines(), str(path))
    assert [m.esiid for m in meters] == [generated_esiid(i) for i in range(25)]
    assert {m.ror_duns for m in meters} == {"0000000000001"}
    assert any(not m.han_capable for m in meters) and any(m.han_capable for m in meters)


def test_write_meters_without_a_count_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write-meters without --meters exits 2 and says what is missing."""
    assert main(["--write-meters", str(tmp_path / "m.csv")]) == 2
    assert "--meters N" in capsys.readouterr().err


def test_meter_events_are_read_and_bad_lines_named(tmp_path: Path) -> None:
    """A meter event file is read into events; a bad event name is refused with its line."""
    good = tmp_path / "events.csv"
    good.write_text(
        "esiid,event,meter_serial,firmware_version,han_capable\n"
        "10443720000000001,meter_exchanged,NEW-1,5.3.0,true\n"
        "10443720000000002,meter_removed,,,\n"
    )
    events = read_meter_events(good)
    assert [(e.esiid, e.kind, e.han_capable) for e in events] == [
        ("10443720000000001", MeterEventKind.METER_EXCHANGED, True),
        ("10443720000000002", MeterEventKind.METER_REMOVED, None),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("esiid,event\n10443720000000001,meter_exchanged\n10443720000000002,exploded\n")
    with pytest.raises(ValueError, match=r"line 3: event must be one of"):
        read_meter_events(bad)


def test_a_bad_meter_event_file_stops_hangw_sim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hangw-sim exits 2 naming the file's problem instead of starting."""
    bad = tmp_path / "bad.csv"
    bad.write_text("esiid,event\n,meter_removed\n")
    assert main(["--meter-events", str(bad), "--cert-dir", str(tmp_path)]) == 2
    assert "esiid is empty" in capsys.readouterr().err


def test_set_keeps_a_duns_and_a_path_as_text(tmp_path: Path) -> None:
    """--set tdsp_duns keeps its leading zeros and a numeric journal path stays a path."""
    args = parse_args(["--set", "tdsp_duns=0012345678901", "--set", "journal_path=2026"])
    config = options_of(args)
    assert config.tdsp_duns == "0012345678901"
    assert config.journal_path == "2026"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gateway", "localhost"], "--gateway must be HOST:PORT"),
        (["--gateway", "localhost:http"], "--gateway must be HOST:PORT"),
        (["--gateway", "localhost:70000"], "--gateway must be HOST:PORT"),
        (["--credit", "0"], "--credit must be an integer >= 1"),
        (["--devices-per-meter", "7"], "--devices-per-meter must be an integer from 0 to 5"),
        (["--offline-rate", "1.5"], "--offline-rate must be a number from 0 to 1"),
        (["--set", "ack_delay_s=-1"], "--set.ack_delay_s must be a number >= 0"),
        (["--duplicate-rate", "2"], "--duplicate-rate must be a number from 0 to 1"),
        (["--reorder-rate", "nan"], "--reorder-rate must be a number from 0 to 1"),
        (["--latency-ms", "-5"], "--latency-ms must be a number >= 0"),
        (["--drop-every", "inf"], "--drop-every must be a number >= 0"),
    ],
)
def test_bad_options_stop_hangw_sim_naming_the_flag(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value exits 2 before connecting, with a message that names the flag."""
    assert main([*argv, "--cert-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_journal_path_that_cannot_be_a_journal_stops_hangw_sim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal_path under a regular file exits 2 naming the path, instead of failing later."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    journal = blocker / "journal.sqlite"
    assert main(["--set", f"journal_path={journal}", "--cert-dir", str(tmp_path)]) == 2
    assert f"journal_path {journal}" in capsys.readouterr().err


def test_write_meters_to_a_path_that_cannot_be_written_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write-meters under a regular file exits 2 naming the file, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    target = blocker / "meters.csv"
    assert main(["--write-meters", str(target), "--meters", "3"]) == 2
    assert f"--write-meters {target}" in capsys.readouterr().err


def test_lse_created_must_be_a_real_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hangw-sim lse --created refuses 14 digits that are no time (month 13)."""
    argv = ["lse", "--out", str(tmp_path), "--from", "2026-03-01", "--meters", "1"]
    assert main([*argv, "--created", "20261399000000"]) == 2
    assert "--created must be a time YYYYMMDDHHMMSS" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_meter_csv_with_a_byte_order_mark_is_served(tmp_path: Path) -> None:
    """A meter CSV saved with a UTF-8 byte order mark serves its meters like one without."""
    path = tmp_path / "meters.csv"
    path.write_bytes(
        b"\xef\xbb\xbfesiid,firmware_version,han_capable\r\n10443720000000042,5.3.0,true\r\n"
    )
    config = options_of(parse_args(["--meters-csv", str(path)]))
    fleet = SimulatedHeadEnd(config, Clock()).fleet
    assert fleet.serves("10443720000000042")
    assert not fleet.serves("10443720000000043")


def test_a_meter_csv_without_an_esiid_column_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--meters-csv whose header has no esiid column exits 2 naming the flag and the file."""
    path = tmp_path / "meters.csv"
    path.write_text("esi_id,firmware_version\n10443720000000042,5.3.0\n")
    assert main(["--meters-csv", str(path), "--cert-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--meters-csv" in err and "has no esiid column" in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--write-meters", "{missing}/meters.csv", "--meters", "3"], "--write-meters"),
        (["lse", "--out", "{missing}/lse", "--from", "2026-03-01", "--meters", "1"], "--out"),
        (
            [
                "lse",
                "--out",
                "{tmp}/lse",
                "--from",
                "2026-03-01",
                "--meters",
                "1",
                "--reads",
                "{missing}/reads.csv",
            ],
            "--reads",
        ),
    ],
)
def test_a_path_in_a_missing_directory_is_refused_not_made(
    argv: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file or directory whose parent does not exist exits 2 naming the flag, and nothing
    is created (a mistyped path is reported, not made)."""
    missing = tmp_path / "no" / "such"
    args = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    assert f"{flag} {missing}" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not (tmp_path / "lse").exists()
