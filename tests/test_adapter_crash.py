"""Crash: hangwd killed with SIGKILL while adds flow to hangw-sim over the adapter protocol, then
started again; every command reaches its final state, none is lost and none is applied twice."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hangw.client import ApiError, Client, Identity
from hangw.config import Config, load
from hangw.domain import Meter
from hangw.meters import upsert_meters_thd
from hangw.store import schema
from hangw.store.db import Store
from tests.gateway_harness import INSTALL_CODE, REP_A, TDSP, prepare_state
from tests.test_daemon_restart import free_port
from tests.test_daemon_restart import start as start_hangwd

pytestmark = pytest.mark.slow

METERS = 200
DEVICES = 1000  # five per meter, the slots an ESI ID has
KILL_AFTER = 600  # adds the API has answered when hangwd is killed
WORKERS = 6
#: A device's history when its add went through once: the request, then the four reports.
ADDED_ONCE = [
    ("Add Acknowledged", "add requested"),
    ("Add Acknowledged", "TDSP acknowledged"),
    ("Add Pending", "add pending"),
    ("Meter Ready", "meter ready"),
    ("Device Added", "device joined"),
]
FINAL = ("Device Added", "Add Failed", "Add Rejected")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "hangw.toml"
    path.write_text(f"""
[gateway]
state_dir = "{tmp_path / "state"}"
[api]
port = {free_port()}
ops_port = {free_port()}
adapter_port = {free_port()}
[provisioning]
timer_interval_s = 0.2
join_window_s = 600
command_timeout_s = 600
[logging]
format = "json"
level = "info"
[adapters.{TDSP}]
kind = "wire"
ack_timeout_s = 5
heartbeat_s = 2
""")
    return path


def seed_meters(config: Config) -> list[str]:
    """Put METERS han-capable meters of the TDSP, all REP A's, into the store; their ESI IDs."""
    meters = [
        Meter(f"1099{i:013d}", f"KC{i}", TDSP, REP_A, None, "GE-I210+c", "5.2.1", True, True)
        for i in range(METERS)
    ]
    engine = schema.make_engine(config.store_url)
    Store(engine, reactor=None).transaction(upsert_meters_thd, meters)  # type: ignore[arg-type]
    engine.dispose()
    return [meter.esiid for meter in meters]


def start_sim(config: Config, journal: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """hangw-sim dialling hangwd's adapter port, its steps slow enough to be cut by the kill."""
    settings = {
        "journal_path": journal,
        "ack_delay_s": 0.05,
        "pending_delay_s": 0.1,
        "meter_ready_delay_s": 0.1,
        "join_delay_s": 0.2,
    }
    argv = [sys.executable, "-m", "simulators.headend"]
    argv += [
        "--gateway",
        f"127.0.0.1:{config.api.adapter_port}",
        "--cert-dir",
        str(config.cert_dir),
    ]
    argv += ["--party", "demo-tdsp", "--tdsp-duns", TDSP]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def log_events(log_path: Path) -> list[dict[str, Any]]:
    lines = log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_until(check: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.1)


def query(store_url: str, sql: str) -> list[Any]:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


class Adds:
    """Add requests sent by worker threads; what the API answered, and what it never answered."""

    def __init__(self, config: Config, esiids: list[str]) -> None:
        certs = config.cert_dir
        self.url = f"https://localhost:{config.api.port}"
        self.identity = Identity(
            certs / "demo-rep-a.pem", certs / "demo-rep-a-key.pem", certs / "ca.pem"
        )
        self.todo: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        for i in range(DEVICES):
            self.todo.put((esiids[i % METERS], f"000D6F{i:010X}"))
        self.answered: dict[str, str] = {}  # MAC -> device id, from a 2xx answer
        self.unanswered: list[str] = []  # MACs whose request died with hangwd
        self.refused: list[str] = []  # adds the API answered with an error (none expected)
        self.stop = threading.Event()

    def run(self) -> list[threading.Thread]:
        self.stop.clear()
        threads = [threading.Thread(target=self._work) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        return threads

    def _work(self) -> None:
        client = Client(self.url, self.identity, timeout=10)
        try:
            while not self.stop.is_set():
                try:
                    esiid, mac = self.todo.get_nowait()
                except queue.Empty:
                    return
                body = {"mac": mac, "install_code": INSTALL_CODE, "device_type": "thermostat"}
                try:
                    device = client.post(f"/v1/esiids/{esiid}/han-devices", body)
                except ApiError as error:
                    self.refused.append(f"{mac}: {error}")
                except (OSError, http.client.HTTPException):
                    self.unanswered.append(mac)
                    return
                else:
                    self.answered[mac] = device["id"]
        finally:
            client.close()


def test_kill_hangwd_while_commands_flow_over_the_wire(tmp_path: Path) -> None:
    """After kill -9 mid-flow and a restart, every add sent reaches Device Added, applied once."""
    config_path = write_config(tmp_path)
    config = load(config_path)
    prepare_state(config)
    esiids = seed_meters(config)
    hangwd_log, sim_log = tmp_path / "hangwd.log", tmp_path / "sim.log"
    journal = tmp_path / "sim-journal.sqlite"
    adds = Adds(config, esiids)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        hangwd = start_hangwd(config_path, hangwd_log)
        processes.append(hangwd)
        sim = start_sim(config, journal, sim_log)
        processes.append(sim)

        def welcomed() -> int:
            return sum(e["event"] == "headend.welcomed" for e in log_events(sim_log))

        wait_until(lambda: welcomed() == 1, 20, "hangw-sim to connect")

        threads = adds.run()
        wait_until(lambda: len(adds.answered) >= KILL_AFTER, 30, f"{KILL_AFTER} answered adds")
        os.kill(hangwd.pid, signal.SIGKILL)
        hangwd.wait()
        adds.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        at_kill = dict(
            query(config.store_url, "SELECT status, count(*) FROM han_devices GROUP BY 1")
        )
        unfinished = sum(n for status, n in at_kill.items() if status != "Device Added")
        mid_flow = at_kill.keys() - {"Add Acknowledged", "Device Added"}
        assert unfinished and mid_flow, f"not killed mid-flow: {at_kill}"

        hangwd = start_hangwd(config_path, hangwd_log)
        processes.append(hangwd)
        wait_until(lambda: welcomed() >= 2, 30, "hangw-sim to reconnect")
        for thread in adds.run():  # the adds never sent go to the restarted hangwd
            thread.join(timeout=60)

        def still_open() -> dict[str, int]:
            """Devices by status short of a final one, and the commands not retired."""
            open_devices = query(
                config.store_url,
                f"SELECT status, count(*) FROM han_devices WHERE status NOT IN {FINAL} GROUP BY 1",
            )
            open_commands = query(
                config.store_url, "SELECT count(*) FROM outbox WHERE retired_at IS NULL"
            )[0][0]
            return {**dict(open_devices), "unretired commands": open_commands}

        wait_until(
            lambda: not any(still_open().values()),
            60,
            lambda: f"every device final and every command retired: still {still_open()}",
        )
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=20) == 0, sim_log.read_text()[-2000:]
        hangwd.send_signal(signal.SIGTERM)
        assert hangwd.wait(timeout=20) == 0, hangwd_log.read_text()[-2000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert adds.refused == [], adds.refused[:5]
    assert adds.todo.empty() and len(adds.answered) + len(adds.unanswered) == DEVICES
    devices = {
        mac: (device_id, status)
        for device_id, mac, status in query(
            config.store_url, "SELECT device_id, mac, status FROM han_devices"
        )
    }
    for mac, device_id in adds.answered.items():
        assert devices.get(mac) == (device_id, "Device Added"), (mac, device_id)
    assert set(devices) <= set(adds.answered) | set(adds.unanswered)
    assert {status for _, status in devices.values()} == {"Device Added"}

    history: dict[str, list[tuple[str, str]]] = {}
    for device_id, status, event in query(
        config.store_url,
        "SELECT device_id, status, event FROM device_history ORDER BY history_id",
    ):
        history.setdefault(device_id, []).append((status, event))
    not_once = {d: h for d, h in history.items() if h != ADDED_ONCE}
    assert not not_once, f"{len(not_once)} devices not added exactly once, e.g. {not_once}"
    assert set(history) == {device_id for device_id, _ in devices.values()}

    outbox = query(config.store_url, "SELECT command_id, device_id, kind FROM outbox")
    assert sorted(device_id for _, device_id, _ in outbox) == sorted(history)
    assert {kind for _, _, kind in outbox} == {"provision"}
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        journaled = db.execute(
            "SELECT command_id, device_id, action, next_step, finished FROM commands"
        ).fetchall()
    assert sorted(journaled) == sorted((c, d, "add", 4, 1) for c, d, _ in outbox)

    sim_events = log_events(sim_log)
    accepted = Counter(e["command_id"] for e in sim_events if e["event"] == "simulator.accepted")
    assert accepted == Counter({command_id: 1 for command_id, _, _ in outbox})
    assert not [e for e in sim_events if e["event"] == "simulator.report_abandoned"]
    duplicates = sum(e["event"] == "simulator.duplicate" for e in sim_events)
    assert duplicates, "no command was cut in flight: nothing was sent again after the restart"
    print(
        f"{len(devices)} devices ({len(adds.answered)} answered, {len(adds.unanswered)} cut off); "
        f"at the kill: {at_kill}; {duplicates} commands sent again after the restart"
    )
