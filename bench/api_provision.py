"""Provisioning requests per second over HTTPS keep-alive, against a bare Twisted TLS endpoint.

Both servers run as separate processes on loopback with the same server certificate and the same
mutual-TLS check; the same load generator (N keep-alive client connections, one thread each)
drives them. The bare endpoint answers every POST with a constant JSON body; hangw does the whole
provisioning request (authorization, validation, one transaction, outbox), with the simulated
head-end answering in the background.

In the same run, a third server built from hangwd's own parts (bench/stack_floor_server.py:
the asyncio reactor, the mutual-TLS listener, a Klein route, the store's writer) answers each
POST after inserting one row and nothing else: the floor its stack puts under any request that
writes, printed as ``floor`` with its own ratio to the bare endpoint.

After the requests are answered it waits for the simulated head-end to bring every device to
Device Added, and prints how long that took and hangwd's CPU per device with that work included:
the share of a short run's head-end work still to come when the last request is answered is
larger, and the tables smaller, so the request rate flatters short runs: the default of 20000
requests shows the rate hangwd sustains.

hangwd runs on its defaults, its threads on one CPU (``--cpu off`` leaves that to the kernel),
except that it logs at ``warning``: at its default ``info`` each request writes five lines (the add
and four status changes), about 100 us more a request.
With ``--idempotency-keys`` every POST carries a key of its own, as a REP's program that retries
safely sends them: hangw then also claims the key (one more store job) and keeps the answer
in the add's own transaction.

    .venv/bin/python bench/api_provision.py [--requests 20000] [--clients 8] [--cpu auto]
        [--idempotency-keys]

Last line: RESULT api_provision <req/s> req/s baseline=<req/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import CpuMeter  # noqa: E402
from hangw.config import load  # noqa: E402
from tests.gateway_harness import INSTALL_CODE, REP_A, TDSP, prepare_state  # noqa: E402

BARE_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from hangw.api.listener import PinnedClientContextFactory

    cert_dir, port, registered = Path(sys.argv[1]), int(sys.argv[2]), set(sys.argv[3].split(","))
    BODY = b'{"id":"dev_0000000000000000","status":"Add Acknowledged"}'

    class Constant(Resource):
        isLeaf = True
        def render(self, request):
            request.content.read()
            request.setResponseCode(202)
            request.setHeader(b"content-type", b"application/json")
            return BODY

    tls = PinnedClientContextFactory(
        cert_dir / "server.pem", cert_dir / "server-key.pem", registered.__contains__
    )
    SSL4ServerEndpoint(reactor, port, tls, interface="127.0.0.1").listen(
        Site(Constant(), parsePOSTFormSubmission=False)
    )
    reactor.run()
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(port: int, path: str | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            else:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def load_test(
    port: int,
    cert_dir: Path,
    bodies: list[tuple[str, bytes]],
    clients: int,
    idempotency_keys: bool = False,
) -> float:
    """Send every (path, body) POST over ``clients`` keep-alive connections; return requests/s.

    ``idempotency_keys``: each POST carries an Idempotency-Key of its own.
    """
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.pem"))
    context.load_cert_chain(str(cert_dir / "demo-rep-a.pem"), str(cert_dir / "demo-rep-a-key.pem"))
    shares = [bodies[i::clients] for i in range(clients)]
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(share: list[tuple[str, bytes]]) -> None:
        connection = http.client.HTTPSConnection("localhost", port, context=context)
        connection.connect()
        barrier.wait()
        for path, body in share:
            headers = {"content-type": "application/json"}
            if idempotency_keys:
                headers["idempotency-key"] = os.urandom(16).hex()
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 202:
                failures.append(f"{response.status} {payload[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return len(bodies) / elapsed


def wait_for_added(ops_port: int, count: int, timeout: float = 300) -> int:
    """Wait until ``count`` devices have reached Device Added (hangwd's /metrics); how many did."""
    wanted = 'hangw_device_transitions_total{status="Device Added"}'
    deadline = time.monotonic() + timeout
    added = 0
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(wanted):
                    added = int(float(line.rsplit(" ", 1)[1]))
        if added >= count or time.monotonic() > deadline:
            return added
        time.sleep(0.2)


def meters_csv(path: Path, count: int) -> list[str]:
    esiids = [f"1044372{n:010d}" for n in range(count)]
    lines = [
        "esiid,meter_serial,tdsp_duns,ror_duns,hardware_version,firmware_version,han_capable,active"
    ]
    lines += [f"{e},B{n},{TDSP},{REP_A},GE,5.2.1,true,true" for n, e in enumerate(esiids)]
    path.write_text("\n".join(lines) + "\n")
    return esiids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--cpu", default="auto", help='hangwd\'s gateway.cpu: "auto" (its default), "off" or a CPU'
    )
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="every POST carries an Idempotency-Key of its own, as a REP's program that retries "
        "safely sends them (the bare endpoint and the floor get the header too)",
    )
    args = parser.parse_args()
    keyed = args.idempotency_keys

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        api_port, ops_port = free_port(), free_port()
        config_path = tmp_path / "hangw.toml"
        config_path.write_text(
            f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
            f"cpu = {args.cpu if args.cpu.isdigit() else json.dumps(args.cpu)}\n"
            f"[api]\nport = {api_port}\nops_port = {ops_port}\n"
            f'[logging]\nlevel = "warning"\nformat = "json"\n'
            f'[adapters.{TDSP}]\nkind = "simulator"\n'
        )
        config = load(config_path)
        issued = prepare_state(config)
        from hangw import cli

        esiids = meters_csv(tmp_path / "m.csv", (args.requests + 4) // 5)
        assert (
            cli.main(["--config", str(config_path), "meters", "import", str(tmp_path / "m.csv")])
            == 0
        )
        bodies = [
            (
                f"/v1/esiids/{esiids[n // 5]}/han-devices",
                json.dumps(
                    {
                        "mac": f"000D6F{n:010X}",
                        "install_code": INSTALL_CODE,
                        "device_type": "thermostat",
                    }
                ).encode(),
            )
            for n in range(args.requests)
        ]
        fingerprints = ",".join(p.fingerprint for p in issued.values())
        bare_port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        processes = []
        try:
            bare = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    BARE_SERVER,
                    str(config.cert_dir),
                    str(bare_port),
                    fingerprints,
                ],
                env=env,
            )
            processes.append(bare)
            hangwd = subprocess.Popen(
                [sys.executable, "-m", "hangw.daemon", "--config", str(config_path)],
                env=env,
                stderr=open(tmp_path / "hangwd.log", "wb"),
            )
            processes.append(hangwd)
            floor_port = free_port()
            floor = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "stack_floor_server.py"),
                    str(config.cert_dir),
                    str(floor_port),
                    fingerprints,
                    str(tmp_path / "floor.sqlite"),
                ],
                env=env,
            )
            processes.append(floor)
            wait_for(bare_port)
            wait_for(floor_port)
            wait_for(ops_port, "/healthz")
            # warm each up, then measure the baseline first, the floor next and hangw last
            load_test(bare_port, config.cert_dir, bodies[:200], args.clients, keyed)
            ours = ["/proc/self/stat", *(f"/proc/{p.pid}/stat" for p in processes)]
            meter = CpuMeter({"bare endpoint": f"/proc/{bare.pid}/stat"}, ours)
            baseline = load_test(bare_port, config.cert_dir, bodies, args.clients, keyed)
            bare_cpu = meter.used()["bare endpoint"]
            print(meter.report())
            load_test(floor_port, config.cert_dir, bodies[:200], args.clients, keyed)
            meter = CpuMeter({"stack floor": f"/proc/{floor.pid}/stat"}, ours)
            floor_rate = load_test(floor_port, config.cert_dir, bodies, args.clients, keyed)
            floor_cpu = meter.used()["stack floor"]
            print(meter.report())
            meter = CpuMeter({"hangwd": f"/proc/{hangwd.pid}/stat"}, ours)
            started = time.perf_counter()
            rate = load_test(api_port, config.cert_dir, bodies, args.clients, keyed)
            answered_at = time.perf_counter()
            hangwd_cpu = meter.used()["hangwd"]
            print(meter.report())
            added = wait_for_added(ops_port, args.requests)
            all_added_at = time.perf_counter()
            hangwd_cpu_all = meter.used()["hangwd"]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
    print(
        f"bare Twisted TLS endpoint: {baseline:.0f} req/s; hangw provisioning: {rate:.0f} req/s "
        f"({args.requests} requests, {args.clients} keep-alive clients"
        f"{', each request with an Idempotency-Key' if keyed else ''})"
    )
    print(
        f"stack floor (one row inserted, nothing else): {floor_rate:.0f} req/s, "
        f"ratio={floor_rate / baseline:.2f}; the most any request that writes can reach here"
    )
    print(
        f"CPU per request: bare endpoint {bare_cpu / args.requests * 1e6:.0f} us, "
        f"stack floor {floor_cpu / args.requests * 1e6:.0f} us, hangwd "
        f"{hangwd_cpu / args.requests * 1e6:.0f} us (its head-end work still running at the "
        "end is not counted)"
    )
    tail = all_added_at - answered_at
    if added < args.requests:
        print(f"only {added} of {args.requests} devices reached Device Added within {tail:.0f} s")
    print(
        f"head-end answers: every device Device Added {tail:.1f} s after the last request was "
        f"answered; {args.requests / (all_added_at - started):.0f} devices/s from the first "
        f"request to the last Device Added; hangwd CPU per device, its head-end work included, "
        f"{hangwd_cpu_all / args.requests * 1e6:.0f} us"
    )
    ratio = rate / baseline
    print(f"RESULT api_provision {rate:.0f} req/s baseline={baseline:.0f} req/s ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
