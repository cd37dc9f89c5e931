"""hangw-sim's command line: the meter file it writes, and meter events it refuses to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.commands import MeterEventKind
from hangw.meters import parse_meter_csv
from simulators.fleet import generated_esiid
from simulators.headend import main, read_meter_events


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
