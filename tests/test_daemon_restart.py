"""hangwd as a process: killed mid-provisioning and started again, its devices still get added."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hangw.client import Client, Identity
from hangw.config import load
from tests.gateway_harness import E_OWN, INSTALL_CODE, TDSP, prepare_state

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "hangw.toml"
    path.write_text(f"""
[gateway]
state_dir = "{tmp_path / "state"}"
[api]
port = {free_port()}
ops_port = {free_port()}
[provisioning]
timer_interval_s = 0.2
[logging]
format = "json"
level = "debug"
[adapters.{TDSP}]
kind = "simulator"
ack_delay_s = 0.1
pending_delay_s = 0.5
meter_ready_delay_s = 1.0
join_delay_s = 1.5
""")
    return path


def start(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    config = load(config_path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hangw.daemon", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{config.api.ops_port}/healthz", timeout=1
            ):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("hangwd did not start: " + log_path.read_text())


def run_until_exit(config_path: Path) -> subprocess.CompletedProcess[str]:
    """hangwd run in the foreground until it exits by itself (as it should when it cannot start)."""
    return subprocess.run(
        [sys.executable, "-m", "hangw.daemon", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_kill_mid_provisioning_then_restart(tmp_path: Path) -> None:
    """After kill -9 mid-provisioning and a restart, every device reaches Device Added once."""
    config_path = write_config(tmp_path)
    config = load(config_path)
    prepare_state(config)
    log_path = tmp_path / "hangwd.log"
    process = start(config_path, log_path)
    certs = config.cert_dir
    identity = Identity(certs / "demo-rep-a.pem", certs / "demo-rep-a-key.pem", certs / "ca.pem")
    client = Client(f"https://localhost:{config.api.port}", identity)
    ids = []
    for n in range(3):
        body = {
            "mac": f"000D6F00000010{n:02X}",
            "install_code": INSTALL_CODE,
            "device_type": "thermostat",
        }
        ids.append(client.post(f"/v1/esiids/{E_OWN}/han-devices", body)["id"])
    deadline = time.monotonic() + 10
    while client.get(f"/v1/han-devices/{ids[-1]}")["status"] == "Add Acknowledged":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    statuses = {client.get(f"/v1/han-devices/{i}")["status"] for i in ids}
    assert "Device Added" not in statuses, "killed too late to prove anything"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    client.close()

    process = start(config_path, log_path)
    try:
        client = Client(f"https://localhost:{config.api.port}", identity)
        deadline = time.monotonic() + 30
        while True:
            devices = [client.get(f"/v1/han-devices/{i}") for i in ids]
            if all(d["status"] == "Device Added" for d in devices):
                break
            assert time.monotonic() < deadline, [d["status"] for d in devices]
            time.sleep(0.1)
        for device in devices:
            statuses = [h["status"] for h in device["history"]]
            assert statuses.count("Device Added") == 1
            assert statuses.count("Meter Ready") == 1, statuses
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    log_text = log_path.read_text()
    assert INSTALL_CODE not in log_text and INSTALL_CODE.lower() not in log_text
    assert "hangwd.started" in log_text
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    accepted = [line for line in lines if line["event"] == "device.add_acknowledged"]
    request_ids = {line.get("request_id") for line in accepted}
    assert len(accepted) == 3 and len(request_ids) == 3 and None not in request_ids
    reports = [line for line in lines if line["event"] == "device.status"]
    assert reports and all("request_id" not in line for line in reports), "request ids leaked"


def test_signals_repeated_while_stopping_still_stop_hangwd_cleanly(tmp_path: Path) -> None:
    """SIGTERM, then SIGINT and SIGTERM again while hangwd stops or exits: exit code 0, each
    signal after the first only noted, no traceback and no critical line in the log."""
    config_path = write_config(tmp_path)
    prepare_state(load(config_path))
    log_path = tmp_path / "hangwd.log"
    for pause in (0.0, 0.01, 0.05):
        process = start(config_path, log_path)
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            try:
                process.send_signal(signal_number)
            except ProcessLookupError:  # it has exited already
                break
            time.sleep(pause)
        assert process.wait(timeout=20) == 0, log_path.read_text()[-3000:]
    log_text = log_path.read_text()
    assert "Traceback" not in log_text and '"critical"' not in log_text, log_text[-3000:]
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert [line["signal"] for line in lines if line["event"] == "hangwd.stopping"] == [
        "SIGTERM"
    ] * 3
    assert [line["event"] for line in lines].count("hangwd.stopped") == 3


def test_an_api_port_in_use_stops_hangwd_with_the_reason(tmp_path: Path) -> None:
    """hangwd whose API port is taken exits 1 and says why, instead of running without its API."""
    config_path = write_config(tmp_path)
    config = load(config_path)
    prepare_state(config)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", config.api.port))
        squatter.listen()
        finished = run_until_exit(config_path)
    assert finished.returncode == 1, finished.stderr
    assert "could not start" in finished.stderr and str(config.api.port) in finished.stderr
    said = finished.stdout + finished.stderr  # the services that never started are not stopped
    assert "Unhandled error" not in said and "Traceback" not in said, said


def test_a_store_that_cannot_be_reached_at_start_is_one_line(tmp_path: Path) -> None:
    """A PostgreSQL that does not answer when hangwd starts: exit 1 and one line naming the store
    without its password; no traceback from stopping services that never started."""
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://hangw:s3cret@127.0.0.1:{free_port()}/hangw"
    config_path = write_config(tmp_path)
    prepare_state(load(config_path))
    config_path.write_text(config_path.read_text() + f'[store]\nurl = "{url}"\n')
    config = load(config_path)
    config.store_key_path.write_text("ab" * 32 + "\n")  # the key guard has nothing to ask
    finished = run_until_exit(config_path)
    said = finished.stdout + finished.stderr
    assert finished.returncode == 1, said
    assert "hangwd: could not start: cannot use the store at postgresql+psycopg://hangw:***@" in (
        finished.stderr
    )
    assert "s3cret" not in said and "Unhandled error" not in said and "Traceback" not in said


def test_unusable_start_up_files_stop_hangwd_in_one_line_naming_the_key(tmp_path: Path) -> None:
    """A store key that is not hex (text or bytes), a server key that is not the certificate's,
    and a store URL that is no URL each stop hangwd with exit 2 and a line naming the key."""
    config_path = write_config(tmp_path)
    config = load(config_path)
    prepare_state(config)
    key_file = config.store_key_path
    for damage in (b"not a key\n", b"\xff\xd8\xff\xe0 a photo"):
        key_file.write_bytes(damage)
        finished = run_until_exit(config_path)
        assert finished.returncode == 2, finished.stderr
        assert f"hangwd: store.key_file: {key_file} does not hold a hex key" in finished.stderr
        assert "restore the key file from the backup" in finished.stderr
        assert "Traceback" not in finished.stderr
    key_file.unlink()  # a store without devices: a new key is made

    server_key = config.cert_dir / "server-key.pem"
    server_key.write_bytes((config.cert_dir / "demo-hsp-key.pem").read_bytes())
    finished = run_until_exit(config_path)
    assert finished.returncode == 2, finished.stderr
    assert f"hangwd: api.cert_dir: the server certificate {config.cert_dir}" in finished.stderr
    assert "key values mismatch" in finished.stderr and "hangw certs init" in finished.stderr
    assert "Traceback" not in finished.stderr

    config_path.write_text(config_path.read_text() + '[store]\nurl = "nonsense"\n')
    finished = run_until_exit(config_path)
    assert finished.returncode == 2, finished.stderr
    assert "store.url: not a database URL" in finished.stderr
    assert "Traceback" not in finished.stderr


def hangwd_refusal(config_path: Path) -> str:
    """The one line in which hangwd says why it cannot start, having exited 2 as a configuration
    error makes it."""
    finished = run_until_exit(config_path)
    said = [line for line in finished.stderr.splitlines() if line.startswith("hangwd:")]
    assert finished.returncode == 2 and len(said) == 1, finished.stderr
    assert "Traceback" not in finished.stdout + finished.stderr
    return said[0]


def test_an_unusable_webhooks_ca_file_stops_hangwd_naming_the_key(tmp_path: Path) -> None:
    """A webhooks.ca_file that is missing or holds no usable PEM certificate (a private key alone,
    a DER certificate, a file of another kind, a broken block) stops hangwd in one line naming the
    key, its contents never quoted."""
    config_path = write_config(tmp_path)
    config = load(config_path)
    prepare_state(config)
    base = config_path.read_text()
    ca_file = tmp_path / "receivers-ca.pem"
    config_path.write_text(base + f'[webhooks]\nca_file = "{ca_file}"\n')
    key_pem = (config.cert_dir / "demo-hsp-key.pem").read_bytes()
    ca = x509.load_pem_x509_certificate((config.cert_dir / "ca.pem").read_bytes())
    for contents, why in [
        (None, "does not exist"),
        (key_pem, "holds a private key and no PEM certificate"),
        (ca.public_bytes(serialization.Encoding.DER), "holds no PEM certificate"),
        (b"root:x:0:0:root:/root:/bin/bash\n", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a readable X.509"),
    ]:
        if contents is not None:
            ca_file.write_bytes(contents)
        said = hangwd_refusal(config_path)
        assert said.startswith(f"hangwd: webhooks.ca_file: {ca_file} ") and why in said, said
        assert key_pem.splitlines()[1].decode() not in said and "root:x" not in said


def test_a_drop_directory_that_cannot_be_one_stops_hangwd_naming_the_key(tmp_path: Path) -> None:
    """A [usage.drop_dirs] path that is a file, or lies under one, stops hangwd in one line naming
    the TDSP's key and the file in the way."""
    config_path = write_config(tmp_path)
    prepare_state(load(config_path))
    base = config_path.read_text()
    a_file = tmp_path / "lse-delivery.zip"
    a_file.write_bytes(b"PK")
    for drop, why in [
        (a_file, f"{a_file} is a file, not a directory"),
        (a_file / "drop", "a part of the path is a file, not a directory"),
    ]:
        config_path.write_text(base + f'[usage.drop_dirs]\n{TDSP} = "{drop}"\n')
        said = hangwd_refusal(config_path)
        assert said.startswith(f"hangwd: usage.drop_dirs.{TDSP}: ") and why in said, said


def test_a_store_key_file_that_cannot_be_one_stops_hangwd_naming_the_key(tmp_path: Path) -> None:
    """A store.key_file naming a directory, or a path under a file, stops hangwd in one line
    naming the key and what is in the way."""
    config_path = write_config(tmp_path)
    prepare_state(load(config_path))
    base = config_path.read_text()
    a_directory, a_file = tmp_path / "keys", tmp_path / "keys.txt"
    a_directory.mkdir()
    a_file.write_text("not a directory\n")
    for key_file, why in [
        (a_directory, f"{a_directory} is a directory, not a file"),
        (a_file / "store.key", f"{a_file} is a file, not a directory"),
    ]:
        config_path.write_text(base + f'[store]\nkey_file = "{key_file}"\n')
        said = hangwd_refusal(config_path)
        assert said.startswith("hangwd: store.key_file: ") and why in said, said


def test_the_logged_store_url_hides_its_password() -> None:
    """The store URL hangwd logs at start carries no password."""
    from hangw.config import safe_url

    shown = safe_url("postgresql+psycopg://hangw:s3cret-Pw@db.example/hangw")
    assert shown == "postgresql+psycopg://hangw:***@db.example/hangw"


def test_a_bad_adapter_option_stops_hangwd_naming_the_key(tmp_path: Path) -> None:
    """A wrong option in an adapter's table stops start-up with exit 2 and the key's name."""
    config_path = write_config(tmp_path)
    config_path.write_text(config_path.read_text() + 'fault = "sometimes"\n')
    prepare_state(load(config_path))
    finished = run_until_exit(config_path)
    assert finished.returncode == 2, finished.stderr
    assert f"adapters.{TDSP}.fault" in finished.stderr
    assert "Traceback" not in finished.stderr
