"""hangw-sim: a simulated TDSP head-end that dials the gateway over the adapter protocol.

It is the in-process simulator's head-end model (``simulators.inprocess.SimulatedHeadEnd``: the
same steps, delays, faults, journal and fleet of meters with SE 1.0 devices) behind the adapter
protocol's client library, so QA can drive a gateway exactly as a utility's head-end would,
across a real TLS link. Every command the gateway sends is carried out, ``fan_out`` included
(one frame to many meters); the delivery statuses and device frames the fleet produces go back
through the client's ``delivery_statuses`` and ``inbound_frames``, which send them as batch
messages. Link-level faults come on top: the connection dropped every N seconds, messages sent
twice or out of order, and latency before each message goes out.

    hangw-sim --write-meters meters.csv --meters 200000        # the registry for the gateway
    hangw meters import meters.csv
    hangw-sim --meters 200000 --devices-per-meter 5 --opt-out-rate 0.1 --offline-rate 0.01 \
        --drop-every 30 --duplicate-rate 0.01

``hangw-sim lse`` writes, without connecting, the 15-minute interval data the same meters have
used (ERCOT LSE files, as the TDSP delivers them) and, with ``--reads``, their midnight register
reads; a meter read through the gateway answers from the same load profile:

    hangw-sim lse --out drop/ --from 2026-03-01 --to 2026-04-19 --meters 5000 --reads reads.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import random
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import structlog
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from adapters.commands import Command, MeterEvent, MeterEventKind, Query, QueryResult
from adapters.wire.headend import HeadEndClient, IHeadEndApplication, _Link
from simulators import usage
from simulators.fleet import iter_generated, write_meter_csv
from simulators.inprocess import SimulatedHeadEnd, SimulatorConfig, SimulatorConfigError

log = structlog.get_logger(__name__)

__all__ = ["LinkFaults", "SimulatedHeadEndClient", "main", "tls_endpoint"]


class LinkFaults:
    """Faults of the link itself, drawn from a seeded generator so a run can be repeated."""

    def __init__(
        self,
        *,
        duplicate_rate: float = 0.0,
        reorder_rate: float = 0.0,
        latency_s: float = 0.0,
        drop_every_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        for name, rate in (("duplicate_rate", duplicate_rate), ("reorder_rate", reorder_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}: {rate} is not a probability (0 to 1)")
        if latency_s < 0 or drop_every_s < 0:
            raise ValueError("latency and drop interval cannot be negative")
        self.duplicate_rate = duplicate_rate
        self.reorder_rate = reorder_rate
        self.latency_s = latency_s
        self.drop_every_s = drop_every_s
        self.random = random.Random(seed)


@implementer(IHeadEndApplication)
class _Bridge:
    """Hands the gateway's commands to the head-end model."""

    def __init__(self, headend: SimulatedHeadEnd) -> None:
        self.headend = headend

    def command(self, command: Command) -> Deferred[None]:
        return self.headend.send(command)

    def query(self, query: Query) -> Deferred[QueryResult]:
        return self.headend.query(query)


class SimulatedHeadEndClient(HeadEndClient):
    """A HeadEndClient whose application is a SimulatedHeadEnd, with link faults on top."""

    def __init__(
        self,
        endpoint: Any,
        headend: SimulatedHeadEnd,
        clock: IReactorTime,
        faults: LinkFaults | None = None,
        **options: Any,
    ) -> None:
        super().__init__(endpoint, _Bridge(headend), clock, software="hangw-sim", **options)
        self.headend = headend
        self.faults = faults or LinkFaults()
        self._held: dict[str, Any] | None = None
        self.drops = 0
        self._dropper: LoopingCall | None = None
        if self.faults.drop_every_s > 0:
            self._dropper = LoopingCall(self._drop)
            self._dropper.clock = clock

    def start(self) -> None:
        self.headend.start(self)
        super().start()
        if self._dropper is not None:
            self._dropper.start(self.faults.drop_every_s, now=False)

    def stop(self) -> Deferred[None]:
        if self._dropper is not None and self._dropper.running:
            self._dropper.stop()
        self.headend.stop()
        return super().stop()

    def _drop(self) -> None:
        if self.link is not None:
            self.drops += 1
            log.info("sim.drop_connection", drops=self.drops)
            self.drop_connection()

    def _transmit(self, link: _Link, message: dict[str, Any]) -> None:
        faults = self.faults
        if faults.latency_s > 0:
            self.clock.callLater(faults.latency_s, self._put, link, message)
        else:
            self._put(link, message)

    def _put(self, link: _Link, message: dict[str, Any]) -> None:
        if not link.connected:
            return  # the link went away meanwhile; the report goes again after the reconnect
        faults = self.faults
        if (
            self._held is None
            and faults.reorder_rate
            and faults.random.random() < faults.reorder_rate
        ):
            self._held = message  # sent after the next one
            self.clock.callLater(0.5, self._release, link)
            return
        link.send(message)
        if faults.duplicate_rate and faults.random.random() < faults.duplicate_rate:
            link.send(message)
        self._release(link)

    def _release(self, link: _Link) -> None:
        held, self._held = self._held, None
        if held is not None and link.connected:
            link.send(held)


def tls_endpoint(reactor: Any, host: str, port: int, cert_dir: Path, party: str) -> Any:
    """A TLS client endpoint to the gateway with ``party``'s certificate, trusting the CA there."""
    ca = ssl.Certificate.loadPEM((cert_dir / "ca.pem").read_bytes())
    client = ssl.PrivateCertificate.loadPEM(
        (cert_dir / f"{party}.pem").read_bytes() + (cert_dir / f"{party}-key.pem").read_bytes()
    )
    options = ssl.optionsForClientTLS(host, trustRoot=ca, clientCertificate=client)
    return wrapClientTLS(options, HostnameEndpoint(reactor, host, port))


def read_meter_events(path: Path) -> list[MeterEvent]:
    """Meter events from a CSV with a header: esiid, event, and optionally meter_serial,
    firmware_version, han_capable (true/false). Raises ValueError naming the line."""
    events = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            try:
                kind = MeterEventKind((row.get("event") or "").strip())
            except ValueError:
                choices = ", ".join(k.value for k in MeterEventKind)
                raise ValueError(f"{where}: event must be one of {choices}") from None
            esiid = (row.get("esiid") or "").strip()
            if not esiid:
                raise ValueError(f"{where}: esiid is empty")
            capable = (row.get("han_capable") or "").strip().lower()
            if capable not in ("", "true", "false"):
                raise ValueError(f"{where}: han_capable must be true, false or empty")
            events.append(
                MeterEvent(
                    esiid=esiid,
                    kind=kind,
                    meter_serial=(row.get("meter_serial") or "").strip(),
                    firmware_version=(row.get("firmware_version") or "").strip(),
                    han_capable=None if not capable else capable == "true",
                )
            )
    return events


#: Options whose values are text: a DUNS keeps its leading zeros, a path stays a path.
_TEXT_OPTIONS = frozenset({"tdsp_duns", "journal_path", "meters_csv", "fault"})
#: Options that have a flag of their own, named in messages by the flag.
_FLAGGED_OPTIONS = (
    "meters",
    "devices_per_meter",
    "reject_rate",
    "fail_rate",
    "offline_rate",
    "incompatible_rate",
    "opt_out_rate",
    "silent_rate",
    "seed",
)


def _settings(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SimulatorConfigError(f"--set {pair}: expected KEY=VALUE")
        value: Any = raw
        for cast in () if key.strip() in _TEXT_OPTIONS else (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hangw-sim",
        description=__doc__.splitlines()[0],
        epilog="hangw-sim lse --help: write the meters' interval data (LSE files) instead",
    )
    parser.add_argument(
        "--gateway", default="127.0.0.1:8444", help="HOST:PORT of the adapter protocol"
    )
    parser.add_argument(
        "--cert-dir", type=Path, default=Path(".state/certs"), help="ca.pem and the party's cert"
    )
    parser.add_argument(
        "--party", default="demo-tdsp", help="certificate name in --cert-dir (<party>.pem)"
    )
    parser.add_argument("--tdsp-duns", default="1039940674000")
    fleet = parser.add_argument_group("meters and devices")
    fleet.add_argument(
        "--meters", type=int, default=None, metavar="N", help="serve N generated meters"
    )
    fleet.add_argument(
        "--meters-csv", type=Path, help="serve the meters of this meter CSV (hangw meters import)"
    )
    fleet.add_argument(
        "--devices-per-meter",
        type=int,
        default=None,
        help="devices already on each meter, 0 to 5 (display, thermostat, switch, ...)",
    )
    fleet.add_argument(
        "--write-meters",
        type=Path,
        metavar="FILE",
        help="write the meter CSV of the --meters generated meters for the gateway, and exit",
    )
    fleet.add_argument(
        "--ror-duns", default="0000000000001", help="ROR of written meters (default: demo REP A)"
    )
    faults = parser.add_argument_group("faults (probabilities 0 to 1)")
    for flag, what in (
        ("reject-rate", "the TDSP rejects a provisioning request"),
        ("fail-rate", "a provisioning request fails after pending"),
        ("offline-rate", "a meter is offline"),
        ("incompatible-rate", "a meter's firmware cannot run a HAN"),
        ("opt-out-rate", "a device's user opts out of load control"),
        ("silent-rate", "a device never answers"),
    ):
        faults.add_argument(f"--{flag}", type=float, default=None, help=what)
    parser.add_argument("--seed", type=int, default=None, help="seed of every random draw")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a head-end model option (ack_delay_s, reject_rate, fail_rate, no_answer_rate, "
        "never_join_rate, seed, journal_path, ...; see simulators/inprocess.py)",
    )
    parser.add_argument(
        "--meter-events",
        type=Path,
        metavar="FILE",
        help="CSV (esiid,event,meter_serial,firmware_version,han_capable) of meter events to "
        "send once connected",
    )
    parser.add_argument(
        "--drop-every", type=float, default=0.0, metavar="S", help="cut the link every S seconds"
    )
    parser.add_argument(
        "--duplicate-rate",
        type=float,
        default=0.0,
        help="send an event twice with this probability",
    )
    parser.add_argument(
        "--reorder-rate", type=float, default=0.0, help="hold an event back behind the next one"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before each event goes out"
    )
    parser.add_argument(
        "--credit", type=int, default=256, help="commands the gateway may have unacknowledged"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="info logs every command; warning keeps a run at scale quiet",
    )
    return parser.parse_args(argv)


def parse_lse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hangw-sim lse",
        description="Write the interval data (ERCOT LSE files) the simulated meters have used, "
        "and optionally their midnight register reads; meter reads through the gateway answer "
        "from the same load profile.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where files go")
    parser.add_argument(
        "--from",
        dest="first_day",
        type=_date,
        required=True,
        metavar="YYYY-MM-DD",
        help="first operating day (America/Chicago)",
    )
    parser.add_argument(
        "--to",
        dest="last_day",
        type=_date,
        metavar="YYYY-MM-DD",
        help="last operating day, included (default: --from)",
    )
    parser.add_argument(
        "--meters", type=int, default=0, metavar="N", help="the N generated meters' ESI IDs"
    )
    parser.add_argument(
        "--meters-csv",
        type=Path,
        metavar="FILE",
        help="the ESI IDs of this meter CSV that are --tdsp-duns's (REP: each one's ror_duns)",
    )
    parser.add_argument("--tdsp-duns", default="1039940674000", help="the sending TDSP")
    parser.add_argument(
        "--rep-duns",
        default="0000000000001",
        help="REP of the generated meters (default: demo REP A)",
    )
    parser.add_argument(
        "--reads",
        type=Path,
        metavar="FILE",
        help="also write the register reads CSV (esiid,read_date,channel,reading_kwh) at every "
        "local midnight from --from to the day after --to, so every day's sum can be checked",
    )
    parser.add_argument(
        "--estimated-rate",
        type=float,
        default=0.0,
        help="share of records with a short run of intervals marked estimated (E)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the estimated runs")
    parser.add_argument(
        "--created",
        metavar="YYYYMMDDHHMMSS",
        help="creation timestamp of the files and records (default: now, Central time)",
    )
    parser.add_argument(
        "--max-records", type=int, default=50_000, help="records per file (ERCOT: 50,000 at most)"
    )
    return parser.parse_args(argv)


def _missing_parent(flag: str, path: Path | None) -> str | None:
    """Why ``path`` cannot be written: its directory does not exist (a mistyped path is said,
    not made); None when it can be tried."""
    if path is None or path.parent.is_dir():
        return None
    return f"{flag} {path}: the directory {path.parent} does not exist"


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _lse_meters(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The ESI IDs to write, grouped by their REP: the CSV's meters of the TDSP, then the
    generated ones."""
    by_rep: dict[str, list[str]] = {}
    if args.meters_csv is not None:
        with open(args.meters_csv, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                esiid = (row.get("esiid") or "").strip()
                tdsp = (row.get("tdsp_duns") or "").strip()
                if esiid and tdsp in ("", args.tdsp_duns):
                    rep = (row.get("ror_duns") or "").strip() or args.rep_duns
                    by_rep.setdefault(rep, []).append(esiid)
        if not by_rep:
            raise ValueError(f"{args.meters_csv} has no meters of TDSP {args.tdsp_duns}")
    groups = list(by_rep.items())
    if args.meters:
        groups.append((args.rep_duns, list(iter_generated(args.meters))))
    return groups


def lse_main(argv: Sequence[str]) -> int:
    """``hangw-sim lse``: write LSE files (and register reads) for the fleet's ESI IDs."""
    args = parse_lse_args(argv)
    last_day = args.last_day or args.first_day
    if args.meters < 0 or (not args.meters and args.meters_csv is None):
        print("hangw-sim lse: give --meters N and/or --meters-csv FILE", file=sys.stderr)
        return 2
    if last_day < args.first_day:
        print("hangw-sim lse: --to is before --from", file=sys.stderr)
        return 2
    created = args.created or f"{dt.datetime.now(usage.MARKET_TZ):%Y%m%d%H%M%S}"
    try:
        if len(created) != 14 or not created.isdigit():
            raise ValueError(created)
        dt.datetime.strptime(created, "%Y%m%d%H%M%S")
    except ValueError:
        print(
            f"hangw-sim lse: --created must be a time YYYYMMDDHHMMSS, got {created!r}",
            file=sys.stderr,
        )
        return 2
    for flag, path in (("--out", args.out), ("--reads", args.reads)):
        missing = _missing_parent(flag, path)
        if missing:
            print(f"hangw-sim lse: {missing}", file=sys.stderr)
            return 2
    try:
        groups = _lse_meters(args)
    except (OSError, ValueError) as error:
        print(f"hangw-sim lse: {error}", file=sys.stderr)
        return 2
    meters = sum(len(esiids) for _, esiids in groups)
    total = meters * ((last_day - args.first_day).days + 1)
    started = time.monotonic()

    def progress(done: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-9)
        print(
            f"hangw-sim lse: {done:,} of {total:,} records written ({rate:,.0f}/s)",
            file=sys.stderr,
        )

    def records() -> Iterator[str]:
        for rep, esiids in groups:
            yield from usage.profile_records(
                esiids,
                args.first_day,
                last_day,
                tdsp_duns=args.tdsp_duns,
                rep_duns=rep,
                created=created,
                estimated_rate=args.estimated_rate,
                seed=args.seed,
            )

    rows = 0
    try:
        paths = usage.write_lse_files(
            args.out,
            records(),
            tdsp_duns=args.tdsp_duns,
            created=created,
            max_records=args.max_records,
            progress=progress,
        )
        if args.reads is not None:
            esiids = itertools.chain.from_iterable(esiids for _, esiids in groups)
            rows = usage.write_register_reads(
                args.reads, esiids, args.first_day, last_day + dt.timedelta(days=1)
            )
    except (OSError, ValueError) as error:
        print(f"hangw-sim lse: {error}", file=sys.stderr)
        return 1
    print(f"wrote {total} records of {meters} meters in {len(paths)} file(s) to {args.out}")
    if args.reads is not None:
        print(f"wrote {rows} register reads to {args.reads}")
    return 0


def _gateway_address(text: str) -> tuple[str, int]:
    """HOST:PORT of --gateway; raises ValueError naming the flag."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--gateway must be HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def _config(args: argparse.Namespace) -> SimulatorConfig:
    """The head-end model's options from --set and the flags; errors name the flag given."""
    settings = _settings(args.set)
    settings.setdefault("tdsp_duns", args.tdsp_duns)
    flagged: dict[str, str] = {}
    for key in _FLAGGED_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
            flagged[key] = f"--{key.replace('_', '-')}"
    if args.meters_csv is not None:
        settings["meters_csv"] = str(args.meters_csv)
        flagged["meters_csv"] = "--meters-csv"
    try:
        return SimulatorConfig.from_mapping(settings, section="--set")
    except SimulatorConfigError as error:
        message = str(error)
        for key, flag in flagged.items():
            message = re.sub(rf"--set\.{key}\b", flag, message)
        raise SimulatorConfigError(message) from None


def _check_journal(path: str) -> None:
    """Open the journal once before connecting, so a path that cannot be one stops start-up."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA user_version").fetchone()
    except (OSError, sqlite3.Error) as error:
        raise ValueError(f"journal_path {path}: cannot be opened as a journal ({error})") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lse"]:
        return lse_main(argv[1:])
    args = parse_args(argv)
    from twisted.internet import reactor

    from hangw.logs import configure

    configure(args.log_level, "auto")
    if args.write_meters is not None:
        if not args.meters or args.meters < 0:
            print("hangw-sim: --write-meters needs --meters N", file=sys.stderr)
            return 2
        missing = _missing_parent("--write-meters", args.write_meters)
        if missing:
            print(f"hangw-sim: {missing}", file=sys.stderr)
            return 2
        try:
            count = write_meter_csv(
                args.write_meters,
                args.meters,
                tdsp_duns=args.tdsp_duns,
                ror_duns=args.ror_duns,
                seed=args.seed or 0,
                incompatible_rate=args.incompatible_rate or 0.0,
            )
        except OSError as error:
            print(f"hangw-sim: --write-meters {args.write_meters}: {error}", file=sys.stderr)
            return 2
        print(f"wrote {count} meters to {args.write_meters}")
        return 0
    try:
        host, port = _gateway_address(args.gateway)
        if args.credit < 1:
            raise ValueError(f"--credit must be an integer >= 1, got {args.credit}")
        for flag, rate in (
            ("--duplicate-rate", args.duplicate_rate),
            ("--reorder-rate", args.reorder_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{flag} must be a number from 0 to 1, got {rate:g}")
        for flag, seconds in (("--latency-ms", args.latency_ms), ("--drop-every", args.drop_every)):
            if not 0.0 <= seconds < float("inf"):
                raise ValueError(f"{flag} must be a number >= 0, got {seconds:g}")
        config = _config(args)
        if config.journal_path is not None:
            _check_journal(config.journal_path)
        meter_events = read_meter_events(args.meter_events) if args.meter_events else []
        faults = LinkFaults(
            duplicate_rate=args.duplicate_rate,
            reorder_rate=args.reorder_rate,
            latency_s=args.latency_ms / 1000,
            drop_every_s=args.drop_every,
            seed=config.seed,
        )
        endpoint = tls_endpoint(reactor, host, port, args.cert_dir, args.party)
    except (ValueError, OSError) as error:
        print(f"hangw-sim: {error}", file=sys.stderr)
        return 2
    headend = SimulatedHeadEnd(config, reactor)
    client = SimulatedHeadEndClient(endpoint, headend, reactor, faults, command_credit=args.credit)
    client.start()
    if meter_events:
        client.when_connected().addCallback(lambda _: [client.report(e) for e in meter_events])
    reactor.addSystemEventTrigger("before", "shutdown", client.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
