"""`bin/demo --once`: the showing a new user sees, within a minute, leaving no process behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hangw import demo
from tests.test_daemon_restart import free_port

pytestmark = pytest.mark.slow


def test_demo_once_shows_the_gateway_working_and_stops_it(tmp_path: Path) -> None:
    """The demo provisions, shows both refusals, removes a device, exits 0, stops hangwd; twice."""
    config = tmp_path / "demo.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[api]\nport = {free_port()}\nops_port = {free_port()}\n"
        '[adapters.1039940674000]\nkind = "simulator"\n'
    )
    for run in (1, 2):  # a second run on the same state starts afresh beside the first
        started = time.monotonic()
        shown = subprocess.run(
            [sys.executable, "-m", "hangw.demo", "--once", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - started
        assert shown.returncode == 0, f"run {run}: {shown.stdout}{shown.stderr}"
        assert elapsed < 60, f"run {run} of the demo took {elapsed:.0f} s"
        time.sleep(1.1)  # each run's ESI IDs and MACs are drawn from the clock's second
    out = shown.stdout
    for step in ("Add Acknowledged", "Add Pending", "Meter Ready", "Device Added"):
        assert step in out, out
    assert "cannot serve HAN devices" in out and "firmware 1.0.3" in out
    assert "All five HAN device slots are in use" in out
    assert "Device Removed" in out and "hangwd stopped." in out
    # the load control event: both meters confirm, and each thermostat starts the event
    step5 = out.split("5. The REP sends a load control event", 1)[1]
    assert step5.count("the meter         CON") == 2
    assert step5.split("The message log")[0].count("STR  event started") == 2
    assert "certificates" in out and "curl" in out
    left = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True)
    assert left.stdout == "", f"processes left running: {left.stdout}"


def test_demo_with_hangw_sim_runs_the_same_showing_over_the_adapter_protocol(
    tmp_path: Path,
) -> None:
    """With --headend sim, hangw-sim dials in over TLS and the same flow ends in the same
    statuses; both processes are stopped afterwards."""
    config = tmp_path / "demo.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[api]\nport = {free_port()}\nops_port = {free_port()}\nadapter_port = {free_port()}\n"
        '[adapters.1039940674000]\nkind = "simulator"\n'
    )
    shown = subprocess.run(
        [sys.executable, "-m", "hangw.demo", "--once", "--headend", "sim", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    out = shown.stdout
    assert shown.returncode == 0, f"{out}{shown.stderr}"
    assert "hangw-sim dials the adapter protocol" in out
    assert "Device Added" in out and "Device Removed" in out
    assert "STR  event started" in out.split("5. The REP sends a load control event", 1)[1]
    assert "hangw-sim stopped." in out and "hangwd stopped." in out
    sim_log = (tmp_path / "state" / "hangw-sim.log").read_text()
    assert "headend.welcomed" in sim_log and "simulator.accepted" in sim_log
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout == "", f"processes left running: {left.stdout}"


@pytest.mark.parametrize("headend", ["inprocess", "sim"])
def test_a_missing_configuration_is_said_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], headend: str
) -> None:
    """bin/demo --config naming no file exits 2 with the message, not a ConfigError traceback."""
    missing = tmp_path / "missing.toml"
    assert demo.main(["--once", "--headend", headend, "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"bin/demo: {missing}: no such configuration file\n"


def test_a_port_already_taken_stops_the_demo_before_it_changes_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With another program on the API port the demo exits 2 naming it, instead of showing
    that program's answers as its own gateway's; it makes no certificates or meters."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        config = tmp_path / "demo.toml"
        config.write_text(
            f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
            f"[api]\nport = {port}\nops_port = {free_port()}\n"
            '[adapters.1039940674000]\nkind = "simulator"\n'
        )
        assert demo.main(["--once", "--config", str(config)]) == 2
    finally:
        taken.close()
    assert f"already listens on 127.0.0.1:{port} (api.port)" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
