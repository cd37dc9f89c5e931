"""The showing behind `bin/demo`: a gateway on its embedded defaults, used by a REP over HTTPS.

It creates the development certificates, loads a few demo meters (fresh ESI IDs each run, as a
TDSP would), starts hangwd with the in-process simulated head-end, then as a REP: provisions
devices and prints their statuses as they change, shows a refusal for meter firmware and one for
a sixth device, removes a device, and says where the API and the certificates are.

With ``--headend sim`` the demo TDSP is reached over the adapter protocol instead: hangwd listens
on ``api.adapter_port`` and ``hangw-sim``, started as its own process, dials in over mutual TLS
with the demo TDSP's certificate and serves the demo meters.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from hangw import config as config_module
from hangw.client import ApiError, Client, Identity, default_api_url

TDSP = "1039940674000"
REP_A = "0000000000001"


def install_code(body: bytes) -> str:
    from sep1 import installcode

    return (body + installcode.crc16_x25(body).to_bytes(2, "little")).hex().upper()


def say(text: str = "") -> None:
    print(text, flush=True)


def demo_meters(state_dir: Path) -> tuple[Path, list[str]]:
    stamp = time.strftime("%y%m%d%H%M%S")
    esiids = [f"10443720{stamp}{n}" for n in range(1, 5)]
    rows = [
        "esiid,meter_serial,tdsp_duns,ror_duns,customer_id,hardware_version,firmware_version,han_capable,active",
        f"{esiids[0]},D{stamp}1,{TDSP},{REP_A},CUST-0001,GE-I210+c,5.2.1,true,true",
        f"{esiids[1]},D{stamp}2,{TDSP},{REP_A},,GE-I210+c,5.2.1,true,true",
        f"{esiids[2]},D{stamp}3,{TDSP},{REP_A},,L+G-E350,4.1.0,true,true",
        f"{esiids[3]},D{stamp}4,{TDSP},{REP_A},,GE-I210,1.0.3,false,true",
    ]
    path = state_dir / f"demo-meters-{stamp}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path, esiids


def listening(host: str, port: int) -> bool:
    """Does something accept connections on host:port (so a hangwd started there would fail,
    and the health check would be answered by the other program)?"""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: hangwd exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: hangwd did not become healthy within {timeout:.0f} s; see {log_path}")


def follow(
    client: Client, device_ids: list[str], final: set[str], timeout: float = 20
) -> dict[str, str]:
    """Print each device's status whenever it changes, until all are in a status of ``final``."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for device_id in device_ids:
            device = client.get(f"/v1/han-devices/{device_id}")
            if seen.get(device_id) != device["status"]:
                seen[device_id] = device["status"]
                reason = f"  ({device['reason']})" if device["reason"] else ""
                say(f"    {device_id}  {device['esiid']}  {device['status']}{reason}")
        if all(status in final for status in seen.values()) and len(seen) == len(device_ids):
            return seen
        time.sleep(0.1)
    say(f"    (still waiting after {timeout:.0f} s; the gateway keeps working in the background)")
    return seen


def demo_mac(run: int, n: int) -> str:
    """A MAC for this run's device ``n``: each run's devices are new, as its ESI IDs are."""
    raw = f"000D6F{run & 0xFFFFFF:06X}{n:04X}"
    return ":".join(raw[i : i + 2] for i in range(0, 16, 2))


def show_refusal(client: Client, esiid: str, mac: str, code: str) -> None:
    """Ask for a thermostat that the gateway will refuse, and print the problem it answers."""
    body = {"mac": mac, "install_code": code, "device_type": "thermostat"}
    try:
        client.post(f"/v1/esiids/{esiid}/han-devices", body)
        say("    unexpectedly accepted")
    except ApiError as refusal:
        say(f"    {refusal.status} {refusal.problem['title']}: {refusal.problem['detail']}")


def show(client: Client, esiids: list[str]) -> None:
    run = int(time.time())
    four = esiids
    say("\n1. A REP provisions five devices on one ESI ID and one on another")
    ids = []
    for n in range(5):
        body = {
            "mac": demo_mac(run, n),
            "install_code": install_code(bytes([n + 1] * 8)),
            # the kinds the simulated head-end gives these MACs (by their last byte)
            "device_type": [
                "in_home_display",
                "thermostat",
                "load_control",
                "thermostat",
                "load_control",
            ][n],
            "description": f"demo device {n + 1}",
        }
        ids.append(client.post(f"/v1/esiids/{four[0]}/han-devices", body, str(uuid.uuid4()))["id"])
    body = {
        "mac": demo_mac(run, 0x100),
        "install_code": install_code(b"\x11" * 16),
        "device_type": "in_home_display",
    }
    ids.append(client.post(f"/v1/esiids/{four[1]}/han-devices", body, str(uuid.uuid4()))["id"])
    follow(client, ids, {"Device Added", "Add Failed", "Add Rejected"})

    say(f"\n2. A device for ESI ID {four[3]}, whose meter firmware cannot serve a HAN, is refused")
    show_refusal(client, four[3], demo_mac(run, 0x200), install_code(b"\x22" * 8))

    say(f"\n3. A sixth device on ESI ID {four[0]} is refused by the five-slot rule")
    show_refusal(client, four[0], demo_mac(run, 0x300), install_code(b"\x33" * 8))

    say(f"\n4. The REP removes {ids[0]}")
    client.delete(f"/v1/han-devices/{ids[0]}?reason=customer+moved")
    follow(client, [ids[0]], {"Device Removed", "Remove Failed", "Remove Rejected"})
    say(f"\n   Its history (GET /v1/han-devices/{ids[0]}):")
    for entry in client.get(f"/v1/han-devices/{ids[0]}")["history"]:
        say(f"    {entry['at']}  {entry['status']:<20} {entry['event']:<18} by {entry['actor']}")

    show_messaging(client, four[:2])


def show_messaging(client: Client, esiids: list[str]) -> None:
    """A load control event to two ESI IDs, followed to each device's answer, and the log."""
    say(f"\n5. The REP sends a load control event (HVAC, 30 minutes) to {', '.join(esiids)}")
    body = {
        "category": "LCE",
        "esiids": esiids,
        "device_class": 1,
        "duration_minutes": 30,
        "criticality": 3,
        "cooling_temperature_offset": 20,
    }
    summary = client.post("/v1/messages", body, str(uuid.uuid4()))
    request_id = summary["request_id"]
    say(f"   202: request {request_id}, {summary['deliveries']} deliveries (the meters and the")
    say("   thermostats the registry knows); each device's answer settles its own delivery")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        summary = client.get(f"/v1/messages/{request_id}")
        if summary["complete"] and summary["statuses"]["STR"]:
            break
        time.sleep(0.2)
    for d in summary["delivery_list"]:
        target = d["mac"] or "the meter"
        say(f"    {d['esiid']}  {target:<16}  {d['status']}  {d['status_desc']}")
    say(f"\n   The message log (GET /v1/message-log?request_id={request_id}):")
    page = client.get(f"/v1/message-log?request_id={request_id}")
    for e in page["entries"]:
        say(
            f"    {e['StatusTimestamp']}  {e['MessageStatusID']:>4}  {e['ESIID']}  "
            f"{e['DeviceMACAddr'] or '-':<16}  {e['EventCategoryID']}  {e['StatusCode']}  "
            f"{e['StatusDesc']}"
        )


SIM_STEPS = {
    "ack_delay_s": 0.2,
    "pending_delay_s": 0.5,
    "meter_ready_delay_s": 0.5,
    "join_delay_s": 1.0,
}


def wire_config(base: str | None, state_dir: Path) -> Path:
    """A copy of the configuration whose demo TDSP is reached over the adapter protocol."""
    path = Path(base) if base else config_module.DEFAULT_CONFIG_PATH
    text = path.read_text(encoding="utf-8")
    section = re.compile(rf"^\[adapters\.{TDSP}\][^\[]*", re.MULTILINE)
    wire = f'[adapters.{TDSP}]\nkind = "wire"                   # hangw-sim dials in\n'
    text = section.sub(wire, text) if section.search(text) else text + "\n" + wire
    out = state_dir / "demo-wire.toml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)  # relative paths are taken from the working directory, as before
    return out


def start_sim(
    config: config_module.Config, meters_csv: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    steps = [f"--set={key}={value}" for key, value in SIM_STEPS.items()]
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulators.headend",
                "--gateway",
                f"{config.api.host}:{config.api.adapter_port}",
                "--cert-dir",
                str(config.cert_dir),
                "--party",
                "demo-tdsp",
                "--tdsp-duns",
                TDSP,
                "--meters-csv",
                str(meters_csv),
                "--set",
                f"journal_path={config.state_dir / 'hangw-sim.sqlite'}",
                *steps,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop the gateway after the showing")
    parser.add_argument("--config", help="configuration (default: config/hangw.toml)")
    parser.add_argument(
        "--headend",
        choices=("inprocess", "sim"),
        default="inprocess",
        help="the demo TDSP's head-end: the in-process simulator (default), or hangw-sim "
        "dialling in over the adapter protocol",
    )
    args = parser.parse_args(argv)
    once = args.once or not sys.stdout.isatty()

    config_path = args.config
    try:
        if args.headend == "sim":
            config_path = str(wire_config(args.config, config_module.load(args.config).state_dir))
        config = config_module.load(config_path)
    except config_module.ConfigError as error:
        print(f"bin/demo: {error}", file=sys.stderr)
        return 2
    ports = {"api.port": config.api.port, "api.ops_port": config.api.ops_port}
    if args.headend == "sim":
        ports["api.adapter_port"] = config.api.adapter_port
    for key, port in ports.items():
        if port and listening(config.api.host, port):
            print(
                f"bin/demo: something already listens on {config.api.host}:{port} ({key}): "
                "another hangwd? Stop it, or give this one other ports in a --config file",
                file=sys.stderr,
            )
            return 2
    state_dir = config.state_dir
    from hangw import cli

    say(f"hangw demo: state in {state_dir.resolve()}")
    config_args = ["--config", config_path] if config_path else []
    if cli.main([*config_args, "certs", "init"]) != 0:
        return 1
    meters_csv, esiids = demo_meters(state_dir)
    if cli.main([*config_args, "meters", "import", str(meters_csv)]) != 0:
        return 1

    log_path = state_dir / "hangwd.log"
    say(f"starting hangwd (log: {log_path})")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "hangw.daemon", *config_args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sim: subprocess.Popen[bytes] | None = None
    try:
        wait_healthy(f"http://{config.api.host}:{config.api.ops_port}/healthz", process, log_path)
        if args.headend == "sim":
            sim_log = state_dir / "hangw-sim.log"
            sim = start_sim(config, meters_csv, sim_log)
            say(
                f"hangw-sim dials the adapter protocol on {config.api.host}:"
                f"{config.api.adapter_port} as TDSP {TDSP} (log: {sim_log})"
            )
        cert_dir = config.cert_dir
        identity = Identity(
            cert_dir / "demo-rep-a.pem", cert_dir / "demo-rep-a-key.pem", cert_dir / "ca.pem"
        )
        api = default_api_url(config.api.host, config.api.port)
        say(
            f"hangwd is up: API {api} (mutual TLS), health and metrics on "
            f"http://{config.api.host}:{config.api.ops_port}"
        )
        client = Client(api, identity)
        started = time.monotonic()
        show(client, esiids)
        client.close()
        say(f"\nshown in {time.monotonic() - started:.1f} s.")
        say("\nGo on yourself:")
        say(f"  API          {api}   (OpenAPI document: {api}/v1/openapi.json)")
        say(
            f"  certificates {cert_dir.resolve()}"
            "   (demo-rep-a, demo-rep-b, demo-tdsp, demo-hsp, demo-customer)"
        )
        config_flag = f"--config {config_path} " if config_path else ""
        say(f"  CLI          .venv/bin/hangw {config_flag}list {esiids[0]} --as demo-rep-a")
        say(
            f"  curl         curl --cacert {cert_dir}/ca.pem --cert {cert_dir}/demo-rep-a.pem "
            f"--key {cert_dir}/demo-rep-a-key.pem {api}/v1/esiids/{esiids[0]}/han-devices"
        )
        if once:
            return 0
        say("\nThe gateway keeps running; press Ctrl-C to stop it.")
        try:
            process.wait()
        except KeyboardInterrupt:
            say("")
        return 0
    finally:
        if sim is not None:
            stop(sim)
            say("hangw-sim stopped.")
        stop(process)
        say("hangwd stopped.")


if __name__ == "__main__":
    sys.exit(main())
