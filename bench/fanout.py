"""One load control event to every device of 200,000 ESI IDs, until every delivery is settled.

Measured path: a REP's ``POST /v1/messages`` (an LCE to its group of ``--meters`` ESI IDs) over
mutual TLS to the gateway, which accepts it in one transaction (request, one delivery per ESI ID,
RQA statuses, fan-out commands in the outbox) and answers 202; the router hands the fan-out
commands (``--chunk`` ESI IDs each) to the wire adapter, which sends them over TLS to hangw-sim;
hangw-sim acknowledges them (ACK, then PEN: the event starts in ten minutes, as demand response
is announced ahead), reports each meter's delivery (CON), and every load-control device on each
HAN answers Report Event Status "command received", which the gateway decodes with sep1, matches
to the request and records as a CON delivery of that device. The clock starts before the POST
and stops when every delivery is settled: ``--meters`` deliveries to the meters and one per
device that takes the event's device classes. With five devices per meter (display, thermostat,
switch, thermostat, switch) and HVAC, water-heater and pool-pump classes, four of the five answer
(a display takes no load control), so 200,000 meters make 1,000,000 deliveries.

The gateway runs in this process as hangwd runs it (asyncio reactor, the whole service tree,
SQLite in WAL mode, the TDSP with ``kind = "wire"``); hangw-sim runs as a separate process, as a
head-end would, with its fleet generated from the same seed as the meter registry.

Baseline, in the same run: the storage floor. The same number of delivery rows and status rows
as the run wrote, inserted with the sqlite3 module's executemany into a fresh SQLite file with the
same tables and indexes (WAL, synchronous NORMAL, as the gateway's store), in one transaction.

    .venv/bin/python bench/fanout.py [--meters 200000]

Last line: RESULT fanout <seconds> s baseline=<seconds> ratio=<fanout/baseline>
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import asyncioreactor  # noqa: E402

asyncio.set_event_loop(asyncio.new_event_loop())
asyncioreactor.install(asyncio.get_event_loop())

import sqlalchemy as sa  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import deferLater, react  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from bench.measure import CpuMeter, free_port, start_hangw_sim, wait_exit  # noqa: E402
from hangw import affinity, certs, logs  # noqa: E402
from hangw.client import Client, Identity  # noqa: E402
from hangw.config import Config, from_mapping  # noqa: E402
from hangw.domain import Party, Role  # noqa: E402
from hangw.meters import parse_meter_csv, upsert_meters_thd  # noqa: E402
from hangw.parties import register_party_thd  # noqa: E402
from hangw.store import schema  # noqa: E402
from hangw.store.db import Store  # noqa: E402
from hangw.store.model import deliveries, delivery_statuses, metadata  # noqa: E402
from simulators.fleet import generated_esiid, write_meter_csv  # noqa: E402

TDSP = "1039940674000"  # demo-tdsp
REP = "0000000000001"  # demo-rep-a, the ROR of every meter
#: HVAC compressor or furnace (thermostats), water heater and pool pump (load switches).
DEVICE_CLASS = 0x0001 | 0x0004 | 0x0008
#: Of the five devices hangw-sim puts on a meter, those that take these classes.
ANSWERING_PER_METER = 4


def make_config(state_dir: Path, adapter_port: int, chunk: int) -> Config:
    return from_mapping(
        {
            "gateway": {"state_dir": str(state_dir)},
            "api": {"host": "127.0.0.1", "port": 0, "ops_port": 0, "adapter_port": adapter_port},
            "messaging": {"settle_timeout_s": 3600, "fan_out_chunk": chunk},
            "logging": {"level": "warning", "format": "json"},
            "adapters": {TDSP: {"kind": "wire"}},
        },
        source="bench",
    )


def prepare_state(config: Config, meters: int, tmp: Path) -> None:
    """Certificates, the demo parties, and the registry of hangw-sim's generated meters."""
    now = time.time()
    issued = certs.init_dev_identity(config.cert_dir, now=now)
    engine = schema.make_engine(config.store_url)
    schema.upgrade(engine)
    store = Store(engine, reactor=None)  # type: ignore[arg-type]
    for demo in issued:
        party = Party(demo.party_id, Role(demo.role), demo.name, demo.fingerprint)
        store.transaction(register_party_thd, party, now)
    csv_path = tmp / "meters.csv"
    write_meter_csv(csv_path, meters, tdsp_duns=TDSP, ror_duns=REP)
    with open(csv_path, newline="") as handle:
        rows = parse_meter_csv(handle, str(csv_path))
    for start in range(0, len(rows), 20_000):
        store.transaction(upsert_meters_thd, rows[start : start + 20_000])
    engine.dispose()


def settled_thd(conn: sa.Connection, request_id: str) -> tuple[int, int]:
    """(deliveries of the request, settled ones)."""
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.count(deliveries.c.settled_at)).where(
            deliveries.c.request_id == request_id
        )
    ).one()
    return int(row[0]), int(row[1])


def census_thd(conn: sa.Connection, request_id: str) -> tuple[dict[str, int], int, int]:
    """(deliveries by status code, status rows of the request, status rows in all)."""
    by_status = dict(
        conn.execute(
            sa.select(deliveries.c.status, sa.func.count())
            .where(deliveries.c.request_id == request_id)
            .group_by(deliveries.c.status)
        ).all()
    )
    rows = conn.execute(
        sa.select(sa.func.count())
        .select_from(delivery_statuses)
        .where(delivery_statuses.c.request_id == request_id)
    ).scalar_one()
    everything = conn.execute(
        sa.select(sa.func.count()).select_from(delivery_statuses)
    ).scalar_one()
    return by_status, int(rows), int(everything)


def storage_floor(path: Path, delivery_rows: int, status_rows: int) -> float:
    """Seconds for sqlite3 executemany of the same rows into the same tables, one transaction."""
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine, tables=[deliveries, delivery_statuses])
    engine.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    now = time.time()
    delivery_values = [
        (
            "RBASELINE0001",
            generated_esiid(n // 5),
            "" if n % 5 == 0 else f"000D6F{n:010X}",
            TDSP,
            n // 10_000,
            "CON",
            "command received by the device",
            now,
            now,
            None,
        )
        for n in range(delivery_rows)
    ]
    status_values = [
        ("RBASELINE0001", generated_esiid(n // 8), "", "CON", "command received by the device", now)
        for n in range(status_rows)
    ]
    started = time.perf_counter()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO deliveries (request_id, esiid, mac, tdsp_duns, chunk, status, status_desc, "
        "status_at, settled_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        delivery_values,
    )
    db.executemany(
        "INSERT INTO delivery_statuses (request_id, esiid, mac, code, description, at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        status_values,
    )
    db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


async def measure(args: argparse.Namespace, config: Config, tmp: Path) -> tuple[float, int, int]:
    from hangw.gateway import Gateway

    cpu = affinity.pin(config.gateway.cpu)  # as hangwd does: the gateway's threads on one CPU
    print(f"gateway threads on CPU {cpu}" if cpu is not None else "gateway threads on any CPU")
    gateway = Gateway(config, reactor)
    adapter: Any = gateway.adapters[TDSP]
    link_up = adapter.on_connected
    connected: Deferred[None] = Deferred()

    def on_connected(tdsp_duns: str) -> None:
        if not connected.called:
            connected.callback(None)
        link_up(tdsp_duns)

    adapter.on_connected = on_connected
    gc.collect()
    gc.freeze()
    gateway.startService()
    api_port = (await gateway.api_service._waitingForPort).getHost().port
    await gateway.registry.refresh()
    sim = start_hangw_sim(
        config.api.adapter_port,
        config.cert_dir,
        TDSP,
        tmp / "hangw-sim.log",
        "--meters",
        str(args.meters),
        "--devices-per-meter",
        "5",
        "--set",
        "ack_delay_s=0",
        "--log-level",
        "warning",
    )
    affinity.release(sim.pid)  # the head-end is another machine's work: not on the gateway's CPU
    cert_dir = config.cert_dir
    client = Client(
        f"https://localhost:{api_port}",
        Identity(cert_dir / "demo-rep-a.pem", cert_dir / "demo-rep-a-key.pem", cert_dir / "ca.pem"),
        timeout=600,
    )
    try:
        connected.addTimeout(60, reactor)
        try:
            await connected
        except Exception:
            raise SystemExit(
                "hangw-sim did not connect within 60 s; its log:\n"
                + (tmp / "hangw-sim.log").read_text()[-3000:]
            ) from None
        esiids = [generated_esiid(n) for n in range(args.meters)]
        started = time.perf_counter()
        _, group = await deferToThread(
            client.request, "PUT", "/v1/groups/bench", {"esiids": esiids}
        )
        print(
            f"group of {group['size']:,} ESI IDs made in {time.perf_counter() - started:.1f} s "
            "(not part of the result)"
        )
        expected = args.meters * (1 + ANSWERING_PER_METER)
        start_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
        body = {
            "category": "LCE",
            "group": "bench",
            "issuer_event_id": 4242,
            "device_class": DEVICE_CLASS,
            "start_time": start_time,
            "duration_minutes": 60,
            "criticality": 3,
            "cooling_temperature_offset": 20,
        }
        threads = {t.name: t.native_id for t in threading.enumerate()}
        cpu = CpuMeter(
            {
                "gateway reactor thread": f"/proc/self/task/{threads['MainThread']}/stat",
                "store writer thread": f"/proc/self/task/{threads['hangw-store-0']}/stat",
                "hangw-sim": f"/proc/{sim.pid}/stat",
            },
            ["/proc/self/stat", f"/proc/{sim.pid}/stat"],
        )
        started = time.perf_counter()
        _, summary = await deferToThread(client.request, "POST", "/v1/messages", body)
        accepted = time.perf_counter() - started
        request_id = summary["request_id"]
        print(
            f"accepted: 202 for {request_id} after {accepted:.1f} s "
            f"({summary['targets']:,} ESI IDs, {summary['fan_out']['commands']} fan-out commands)"
        )
        tenth = 1
        while True:
            total, settled = await gateway.store.run(settled_thd, request_id)
            elapsed = time.perf_counter() - started
            if settled * 10 >= tenth * expected:
                tenth = settled * 10 // expected + 1
                print(f"  settled {settled:,} of {expected:,} after {elapsed:.1f} s", flush=True)
            if settled >= expected:
                break
            if elapsed > args.give_up_s:
                raise SystemExit(f"gave up after {elapsed:.0f} s: {settled:,} of {expected:,}")
            await deferLater(reactor, 0.25)
        elapsed = time.perf_counter() - started
        print(cpu.report())
        by_status, status_rows, all_status_rows = await gateway.store.run(census_thd, request_id)
    finally:
        client.close()
        await gateway.stopService()
        sim.send_signal(signal.SIGTERM)
        await wait_exit(sim)
    print(f"  deliveries by status: {by_status}; status rows {status_rows:,}")
    if total != expected or sum(by_status.values()) != expected:
        raise SystemExit(f"{total:,} deliveries, expected {expected:,}")
    return elapsed, total, all_status_rows


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = make_config(tmp / "state", free_port(), args.chunk)
        print(f"preparing: certificates, parties, {args.meters:,} meters")
        prepare_state(config, args.meters, tmp)
        log_file = open(tmp / "gateway.log", "w")
        logs.configure(config.logging.level, config.logging.format, stream=log_file)
        print(f"fan-out: one LCE to {args.meters:,} ESI IDs x 5 devices over wire + hangw-sim")
        seconds, delivery_rows, status_rows = await measure(args, config, tmp)
        log_file.close()
        print(f"fan-out: {delivery_rows:,} deliveries settled in {seconds:.1f} s")
        print(
            f"baseline: executemany of {delivery_rows:,} delivery and {status_rows:,} status rows"
        )
        base = storage_floor(tmp / "floor.sqlite", delivery_rows, status_rows)
        print(f"baseline: {base:.1f} s")
    print(f"RESULT fanout {seconds:.1f} s baseline={base:.1f} s ratio={seconds / base:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=200_000, help="ESI IDs (default 200000)")
    parser.add_argument("--chunk", type=int, default=2000, help="ESI IDs per fan-out command")
    parser.add_argument("--give-up-s", type=float, default=600.0)
    args = parser.parse_args()
    react(lambda _reactor: Deferred.fromCoroutine(run(args)))


if __name__ == "__main__":
    main()
