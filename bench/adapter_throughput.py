"""Commands per second from the outbox through the wire adapter to hangw-sim and acknowledged back.

Measured path: ``--count`` provisioning commands wait in the outbox (unretired rows) before the
head-end connects. From the moment hangw-sim says hello, the router drains them to the wire
adapter, which sends them over mutual TLS to hangw-sim within its credit; hangw-sim acknowledges
each one, the acknowledgement fires the adapter's ``send`` Deferred and the router retires the
row. The clock starts at the hello and stops when the store holds no unretired row; every row
must have been retired by an acknowledgement. The rate is commands retired per second.

The outbox is filled through ``DeviceService.add_device``, the API's code path (one transaction
per add: device, history and outbox rows), many adds at once so the store group-commits them,
before the gateway starts; the fill is timed on its own and is not part of the result. The
gateway then runs in this process as hangwd runs it: the asyncio reactor, the whole service tree
of ``hangw.gateway.Gateway``, SQLite in WAL mode, and the TDSP configured with ``kind = "wire"``
and the adapter's default options (``--profile`` profiles its reactor and store threads). Until
the head-end connects the router finds no head-end, as in a gateway restarted with a backlog;
the send failures it logs then are counted apart, and its first drain may still be running when
the head-end connects (its remaining rows then go out).

hangw-sim runs as in production, as a separate process (``python -m simulators.headend``)
dialling the adapter port with the TDSP's certificate and its default credit of 256: that is what
a deployment has (the head-end is another system), it keeps the head-end's work off the
gateway's reactor and GIL, and it gets the second core. Its model acknowledges at once
(``ack_delay_s=0``) and its later steps (pending, meter ready, joined) are an hour away, so only
the acknowledgement is measured. Like every TDSP acknowledgement, it also reports the
"acknowledged" provisioning status, which the gateway records (device history) while the
commands flow; the clock does not wait for the last of those. hangw-sim logs to a file.

Baseline, in the same run: the same JSON command messages (``protocol.command_message`` of
equivalent ProvisionDevice commands), length-prefixed with Int32StringReceiver, sent by this
process over a bare Twisted TLS loopback connection with the same certificates to a separate
process that answers each with ``{"type":"ack","ref":id}``, at most 256 unacknowledged at a time
like hangw-sim's credit. Rate: messages acknowledged per second, from that process's first frame
to the last acknowledgement.

Each part prints the CPU time its threads and processes used, and what other programs on the
machine used meanwhile (from /proc); on a shared machine, compare runs only when that is near 0.
A --count below some 20,000 is for a quick check: short runs mostly measure warming up.

    .venv/bin/python bench/adapter_throughput.py [--count 100000] [--profile FILE]

Last line: RESULT adapter_throughput <cmd/s> cmd/s baseline=<cmd/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# hangwd installs the asyncio reactor before anything imports Twisted's reactor; so does the bench.
from twisted.internet import asyncioreactor  # noqa: E402

asyncio.set_event_loop(asyncio.new_event_loop())
asyncioreactor.install(asyncio.get_event_loop())

import sqlalchemy as sa  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.internet.endpoints import SSL4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.internet.task import deferLater, react  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from adapters.commands import ProvisionDevice  # noqa: E402
from adapters.wire import protocol  # noqa: E402
from bench.measure import CpuMeter, Progress, free_port, start_hangw_sim, wait_exit  # noqa: E402
from hangw import certs, logs  # noqa: E402
from hangw.api.listener import PinnedClientContextFactory  # noqa: E402
from hangw.config import Config, from_mapping  # noqa: E402
from hangw.devices import AddDeviceRequest, DeviceService  # noqa: E402
from hangw.domain import Meter, Party, Role  # noqa: E402
from hangw.installcodes import derive_link_key, parse_install_code  # noqa: E402
from hangw.meters import upsert_meters_thd  # noqa: E402
from hangw.parties import register_party_thd  # noqa: E402
from hangw.secrets import SecretBox, load_or_create_key  # noqa: E402
from hangw.store import schema  # noqa: E402
from hangw.store.db import Store  # noqa: E402
from hangw.store.model import outbox  # noqa: E402

TDSP = "1039940674000"  # demo-tdsp
REP = "0000000000001"  # demo-rep-a, the ROR of every bench meter
INSTALL_CODE = "83FED3407A939723A5C639B26916D505C3B5"
#: hangw-sim's default --credit: commands the gateway may have unacknowledged.
WINDOW = 256
#: add_device calls in flight at once while filling the outbox.
FILL_CONCURRENCY = 2000
_CLOSED = Failure(ConnectionError("connection closed"))

ACKNOWLEDGER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import Int32StringReceiver
    from simulators.headend import tls_endpoint

    class Acknowledger(Int32StringReceiver):
        MAX_LENGTH = 1 << 20

        def connectionMade(self):
            self.sendString(b'{"type":"hello"}')

        def stringReceived(self, body):
            ref = json.loads(body)["id"]
            answer = {"type": "ack", "ref": ref}
            self.sendString(json.dumps(answer, separators=(",", ":")).encode())

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    port, cert_dir = int(sys.argv[1]), Path(sys.argv[2])
    endpoint = tls_endpoint(reactor, "127.0.0.1", port, cert_dir, "demo-tdsp")
    endpoint.connect(Factory.forProtocol(Acknowledger)).addErrback(
        lambda failure: (print(failure, file=sys.stderr), reactor.stop())
    )
    reactor.run()
    """
)


# -- the baseline: the same messages over a bare TLS connection ----------------------------------


def sample_commands(count: int) -> list[ProvisionDevice]:
    """ProvisionDevice commands shaped like the ones the gateway sends (ids, ESI IDs, keys)."""
    code = parse_install_code(INSTALL_CODE)
    key = derive_link_key(code)
    return [
        ProvisionDevice(
            command_id=f"pro-dev_{n:016x}-{n & 0xFFFFFFFF:08x}",
            esiid=f"1044372{n // 5:010d}",
            device_id=f"dev_{n:016x}",
            mac=f"000D6F{n:010X}",
            install_code=code,
            link_key=key,
            join_window_s=3600,
        )
        for n in range(count)
    ]


class BareSender(Int32StringReceiver):
    """Sends every message, at most ``WINDOW`` unacknowledged, and counts the acknowledgements."""

    MAX_LENGTH = protocol.MAX_FRAME_BYTES

    def __init__(
        self,
        messages: list[dict[str, Any]],
        finished: Deferred[tuple[float, str]],
        meter: Callable[[], CpuMeter],
    ) -> None:
        self.messages = messages
        self.finished = finished
        self.meter = meter
        self.cpu: CpuMeter | None = None
        self.outstanding: set[str] = set()
        self.next = 0
        self.acknowledged = 0
        self.started = 0.0
        self.progress = Progress("baseline: acknowledged", len(messages))

    def stringReceived(self, body: bytes) -> None:
        message = json.loads(body)
        if message["type"] == "hello":
            self.started = time.perf_counter()
            self.cpu = self.meter()
            self.pump()
            return
        self.outstanding.remove(message["ref"])  # KeyError: an ack for nothing sent
        self.acknowledged += 1
        self.progress.update(self.acknowledged)
        if self.acknowledged == len(self.messages):
            elapsed = time.perf_counter() - self.started
            assert self.cpu is not None
            cpu = self.cpu.report()
            self.transport.loseConnection()  # type: ignore[union-attr]
            self.finished.callback((elapsed, cpu))
            return
        self.pump()

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        if not self.finished.called:
            self.finished.errback(
                ConnectionError(f"the acknowledger left early: {reason.getErrorMessage()}")
            )

    def pump(self) -> None:
        while len(self.outstanding) < WINDOW and self.next < len(self.messages):
            message = self.messages[self.next]
            self.next += 1
            self.outstanding.add(message["id"])
            self.sendString(protocol.encode(message))


async def baseline(
    cert_dir: Path, fingerprints: set[str], count: int, env: dict[str, str]
) -> float:
    """Messages acknowledged per second over a bare TLS connection to a separate process."""
    messages = [protocol.command_message(c) for c in sample_commands(count)]
    finished: Deferred[tuple[float, str]] = Deferred()
    tls = PinnedClientContextFactory(
        cert_dir / "server.pem", cert_dir / "server-key.pem", fingerprints.__contains__
    )
    endpoint = SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
    children: list[subprocess.Popen[bytes]] = []

    def meter() -> CpuMeter:
        acknowledger = f"/proc/{children[0].pid}/stat"
        return CpuMeter(
            {"sender (this process)": "/proc/self/stat", "acknowledger": acknowledger},
            ["/proc/self/stat", acknowledger],
        )

    port = await endpoint.listen(Factory.forProtocol(lambda: BareSender(messages, finished, meter)))
    children.append(
        subprocess.Popen(
            [sys.executable, "-c", ACKNOWLEDGER, str(port.getHost().port), str(cert_dir)],
            env=env,
        )
    )
    try:
        elapsed, cpu = await finished
    finally:
        await port.stopListening()
        await wait_exit(children[0])
    print(cpu)
    return count / elapsed


# -- hangw: outbox -> router -> wire adapter -> hangw-sim -> ack -> retired ------------------------


def make_config(state_dir: Path, adapter_port: int) -> Config:
    return from_mapping(
        {
            "gateway": {"state_dir": str(state_dir)},
            "api": {"host": "127.0.0.1", "port": 0, "ops_port": 0, "adapter_port": adapter_port},
            # Commands wait in the outbox while it is filled: no timer may give up on them.
            "provisioning": {"join_window_s": 3600, "command_timeout_s": 3600},
            "logging": {"level": "warning", "format": "json"},
            "adapters": {TDSP: {"kind": "wire"}},
        },
        source="bench",
    )


def prepare_state(config: Config, count: int) -> tuple[set[str], list[str]]:
    """Certificates, the demo parties, and one meter per five devices; returns (fingerprints,
    ESI IDs)."""
    now = time.time()
    issued = certs.init_dev_identity(config.cert_dir, now=now)
    engine = schema.make_engine(config.store_url)
    schema.upgrade(engine)
    store = Store(engine, reactor=None)  # type: ignore[arg-type]
    for demo in issued:
        party = Party(demo.party_id, Role(demo.role), demo.name, demo.fingerprint)
        store.transaction(register_party_thd, party, now)
    esiids = [f"1044372{n:010d}" for n in range((count + 4) // 5)]
    meters = [
        Meter(e, f"B{n}", TDSP, REP, None, "GE", "5.2.1", True, True) for n, e in enumerate(esiids)
    ]
    for start in range(0, len(meters), 5000):
        store.transaction(upsert_meters_thd, meters[start : start + 5000])
    engine.dispose()
    return {demo.fingerprint for demo in issued}, esiids


async def fill_outbox(config: Config, esiids: list[str], count: int) -> float:
    """``count`` adds through DeviceService.add_device, many at once; returns adds per second."""
    store = Store(schema.make_engine(config.store_url), reactor)  # type: ignore[arg-type]
    store.start()
    devices = DeviceService(
        store, SecretBox(load_or_create_key(config.store_key_path)), reactor, config.provisioning
    )
    rep = Party(REP, Role.REP, "demo-rep-a", "")
    progress = Progress("fill: added", count)
    started = time.perf_counter()
    try:
        for first in range(0, count, FILL_CONCURRENCY):
            adds = [
                Deferred.fromCoroutine(
                    devices.add_device(
                        rep,
                        esiids[n // 5],
                        AddDeviceRequest(f"000D6F{n:010X}", INSTALL_CODE, "thermostat"),
                    )
                )
                for n in range(first, min(first + FILL_CONCURRENCY, count))
            ]
            await gatherResults(adds)
            progress.update(min(first + FILL_CONCURRENCY, count))
        elapsed = time.perf_counter() - started
    finally:
        store.stop()
    return count / elapsed


def unretired_thd(conn: sa.Connection) -> int:
    """Unretired outbox rows of the TDSP (read on ix_outbox_pending, not by a table scan)."""
    query = sa.select(sa.func.count()).select_from(outbox)
    query = query.where(outbox.c.tdsp_duns == TDSP, outbox.c.retired_at.is_(None))
    return int(conn.execute(query).scalar_one())


def attempts_thd(conn: sa.Connection) -> tuple[int, int]:
    """(rows retired by an acknowledgement, rows retired without one)."""
    rows = conn.execute(
        sa.select(outbox.c.attempts, sa.func.count()).group_by(outbox.c.attempts)
    ).all()
    by_attempts: dict[int, int] = {attempts: n for attempts, n in rows}
    return sum(n for a, n in by_attempts.items() if a > 0), by_attempts.get(0, 0)


async def measure_adapter(config: Config, count: int, tmp: Path, profile: str | None) -> float:
    from hangw.gateway import Gateway

    gateway = Gateway(config, reactor)
    adapter: Any = gateway.adapters[TDSP]
    link_up = adapter.on_connected
    connected: Deferred[float] = Deferred()
    connects: list[float] = []
    log_offset: list[int] = []  # where the gateway's log stood when the head-end connected

    def on_connected(tdsp_duns: str) -> None:
        if not connects:
            log_offset.append((tmp / "gateway.log").stat().st_size)
        connects.append(time.perf_counter())
        if not connected.called:
            connected.callback(connects[0])
        link_up(tdsp_duns)

    adapter.on_connected = on_connected
    gc.collect()  # as hangwd does before it starts (hangw/daemon.py)
    gc.freeze()
    gateway.startService()
    sim = start_hangw_sim(
        config.api.adapter_port,
        config.cert_dir,
        TDSP,
        tmp / "hangw-sim.log",
        "--credit",
        str(WINDOW),
        "--set",
        "ack_delay_s=0",
        "--set",
        "pending_delay_s=3600",
    )
    # cProfile profiles the thread that enables it: one profiler for the reactor thread, one
    # enabled and disabled by jobs on the store's writer thread
    profilers = (cProfile.Profile(), cProfile.Profile()) if profile else None
    try:
        # hangw-sim dials within a second or two; a minute means it failed (see its log)
        connected.addTimeout(60, reactor)
        try:
            started = await connected
        except Exception:  # twisted.internet.defer.TimeoutError
            raise SystemExit(
                "hangw-sim did not connect within 60 s; its log:\n"
                + (tmp / "hangw-sim.log").read_text()[-3000:]
            ) from None
        if profilers is not None:
            profilers[0].enable()
            await gateway.store.run(lambda _conn: profilers[1].enable())
        threads = {t.name: t.native_id for t in threading.enumerate()}
        cpu = CpuMeter(
            {
                "gateway reactor thread": f"/proc/self/task/{threads['MainThread']}/stat",
                "store writer thread": f"/proc/self/task/{threads['hangw-store-0']}/stat",
                "hangw-sim": f"/proc/{sim.pid}/stat",
            },
            ["/proc/self/stat", f"/proc/{sim.pid}/stat"],
        )
        progress = Progress("adapter: retired", count)
        while True:
            remaining = await gateway.store.run(unretired_thd)
            progress.update(count - remaining, f" after {time.perf_counter() - started:.1f} s")
            if remaining == 0:
                break
            # a count of unretired rows costs the store more the more there are: look often only
            # near the end, where it decides when the clock stops
            await deferLater(reactor, 0.02 if remaining <= max(2 * WINDOW, count // 50) else 0.2)
        elapsed = time.perf_counter() - started
        cpu_used = cpu.report()
        if profilers is not None:
            profilers[0].disable()
            await gateway.store.run(lambda _conn: profilers[1].disable())
        acknowledged, abandoned = await gateway.store.run(attempts_thd)
    finally:
        await gateway.stopService()
        sim.send_signal(signal.SIGTERM)
        await wait_exit(sim)

    if acknowledged != count or abandoned:
        raise SystemExit(f"{acknowledged} rows retired by an ack, {abandoned} without one")
    print(cpu_used)
    if len(connects) > 1:
        print(f"  hangw-sim connected {len(connects)} times (the link was lost meanwhile)")
    report_logs(tmp, log_offset[0])
    if profilers is not None and profile is not None:
        for profiler, thread, path in zip(
            profilers, ("reactor", "store writer"), (profile, f"{profile}.store"), strict=True
        ):
            profiler.dump_stats(path)
            print(f"\n--- cProfile of the gateway's {thread} thread ({path}) ---")
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
    return count / elapsed


def report_logs(tmp: Path, connected_at: int) -> None:
    """What the gateway logged before and after the head-end connected, and what hangw-sim did."""
    text = (tmp / "gateway.log").read_bytes()
    for when, part in (("before", text[:connected_at]), ("after", text[connected_at:])):
        events: collections.Counter[str] = collections.Counter()
        for line in part.decode().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                events["(not JSON)"] += 1
                continue
            events[f"{record.get('level')} {record.get('event')}"] += 1
        if events:
            summary = ", ".join(f"{event} x{n}" for event, n in events.most_common(5))
            print(f"  gateway log {when} the head-end connected: {summary}")
    sim: collections.Counter[str] = collections.Counter()
    for line in (tmp / "hangw-sim.log").read_text().splitlines():
        try:
            sim[json.loads(line).get("event")] += 1
        except json.JSONDecodeError:
            sim["(not JSON)"] += 1
    print(
        f"  hangw-sim logged simulator.accepted x{sim['simulator.accepted']:,}, "
        f"simulator.duplicate x{sim['simulator.duplicate']:,}"
    )


async def run(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = make_config(tmp / "state", free_port())
        fingerprints, esiids = prepare_state(config, args.count)
        gateway_log = open(tmp / "gateway.log", "w")
        logs.configure(config.logging.level, config.logging.format, stream=gateway_log)

        print(f"baseline: {args.count:,} command messages over bare TLS, window {WINDOW}")
        base = await baseline(config.cert_dir, fingerprints, args.count, env)
        print(f"baseline: {base:,.0f} msg/s")

        print(f"filling the outbox: {args.count:,} adds through DeviceService.add_device")
        fill_rate = await fill_outbox(config, esiids, args.count)
        print(f"filled: {fill_rate:,.0f} adds/s (not part of the result)")

        print(f"adapter: {args.count:,} commands, outbox -> wire adapter -> hangw-sim -> retired")
        rate = await measure_adapter(config, args.count, tmp, args.profile)
        gateway_log.close()
        print(f"adapter: {rate:,.0f} cmd/s")

    print(
        f"RESULT adapter_throughput {rate:.0f} cmd/s baseline={base:.0f} cmd/s "
        f"ratio={rate / base:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="commands (default 100000)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the gateway's reactor thread (FILE) and store writer thread (FILE.store) "
        "while measured, and print the top entries",
    )
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    react(lambda _reactor: Deferred.fromCoroutine(run(args)))


if __name__ == "__main__":
    main()
