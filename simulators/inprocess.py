"""An in-process simulated TDSP head-end with simulated meters and fault injection.

``SimulatedHeadEnd`` answers provisioning commands the way a TDSP head-end does: it acknowledges
the command, then reports pending, meter ready and device joined (or, when removing, pending and
device removed), each step a configured delay after the previous one, on the clock it is given.

Faults (``Fault``) may be set for the whole simulator, per MAC address and per ESI ID, or drawn
with configured probabilities from a seeded random generator:

- ``reject``: the TDSP rejects the request (Add Rejected / Remove Rejected) instead of pending;
- ``fail``: the request fails after pending (Add Failed / Remove Failed);
- ``no_answer``: acknowledged, then silence, so the gateway's command timeout fires;
- ``never_join``: the meter is ready but the device never joins (adds only; a removal is normal);
- ``unreachable``: ``send`` fails with ``HeadEndUnreachable`` (a ``ConnectionError``).

The meters themselves are a ``simulators.fleet.Fleet``: frames sent with ``SendFrames`` (one
meter) or ``FanOutFrame`` (the same frame to many meters) are decoded and answered by simulated
SE 1.0 devices, pings and meter reads are answered by ``query``, and the fleet's meters can be
offline (provisioning fails) or run firmware that cannot run a HAN (provisioning is rejected).
Delivery statuses and inbound frames go to the gateway in batches: what the fleet emits in one
reactor turn is handed to ``delivery_statuses`` and ``inbound_frames`` in lists of at most
``event_batch_max``; a batch the gateway could not record is sent again like a report (the
batches made meanwhile wait behind it, so no status overtakes an earlier one), and the items it
refused are logged at debug level. (An event sink without those methods gets one
``delivery_status`` or ``inbound_frame`` call per item.)

Commands are deduplicated by ``command_id``: a command sent again is acknowledged again and
applied once. With a journal (a small SQLite file) the head-end survives a gateway restart:
accepted commands, the step each reached and the devices they joined to or removed from each
meter are recorded, and ``start`` puts the devices back and resumes unfinished commands.
The journal never holds install codes or link keys; the simulator never logs them. The fleet's
meters, their devices and what they are doing live in memory: what they still had to answer
when the head-end stops (a confirmation not yet given, an event not yet started) is not answered
after a restart, and the gateway fails those deliveries at their deadline (FLR, "no confirmation
in time"), as it would for a head-end that lost them.

Configuration comes from the ``[adapters.<tdsp_duns>]`` table (``kind = "simulator"``) through
``SimulatorConfig.from_mapping``; every key and its default is a field of ``SimulatorConfig``.
"""

from __future__ import annotations

import csv
import enum
import math
import random
import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import structlog
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from adapters.commands import (
    Command,
    DeliveryStatus,
    DeprovisionDevice,
    FanOutFrame,
    HeadEndStatus,
    InboundFrame,
    OutboundFrame,
    ProvisionDevice,
    ProvisioningReport,
    Query,
    QueryFailed,
    QueryResult,
    ReportRefused,
    SendFrames,
)
from adapters.interfaces import IAdapterEvents, IHeadEndAdapter
from simulators.fleet import Fleet, FleetConfig

__all__ = [
    "Fault",
    "HeadEndUnreachable",
    "SimulatedHeadEnd",
    "SimulatorConfig",
    "SimulatorConfigError",
    "Step",
    "normalize_mac",
    "planned_steps",
]

log = structlog.get_logger(__name__)


class Fault(enum.StrEnum):
    """What goes wrong with a command (``none``: nothing)."""

    NONE = "none"
    REJECT = "reject"
    FAIL = "fail"
    NO_ANSWER = "no_answer"
    NEVER_JOIN = "never_join"
    UNREACHABLE = "unreachable"
    #: Set by the fleet, not configured: the meter's firmware cannot run a HAN (rejected), and
    #: the meter is offline (the add or removal fails).
    HAN_INCOMPATIBLE = "han_incompatible"
    METER_OFFLINE = "meter_offline"
    #: Set by the head-end, not configured: the ESI ID is not one of its meters, and the
    #: command's MAC address is not an EUI-64 (both rejected).
    NOT_SERVED = "not_served"
    NOT_EUI64 = "not_eui64"


class SimulatorConfigError(ValueError):
    """A simulator option is unknown or has a bad value; the message names the key."""


class HeadEndUnreachable(ConnectionError):
    """The simulated head-end cannot be reached: the command was not accepted."""


_DELAYS = (
    "ack_delay_s",
    "pending_delay_s",
    "meter_ready_delay_s",
    "join_delay_s",
    "remove_delay_s",
    "report_retry_delay_s",
    "answer_delay_s",
    "confirm_delay_s",
    "offline_give_up_s",
)
#: Fleet probabilities, each 0 to 1 on its own.
_FLEET_RATES = ("offline_rate", "incompatible_rate", "opt_out_rate", "silent_rate")
#: Probabilities of the faults that shape an accepted command; their sum is at most 1.
_COMMAND_RATES = {
    "reject_rate": Fault.REJECT,
    "fail_rate": Fault.FAIL,
    "no_answer_rate": Fault.NO_ANSWER,
    "never_join_rate": Fault.NEVER_JOIN,
}


def normalize_mac(mac: str) -> str:
    """A MAC address (EUI-64) as 16 upper-case hex digits, separators removed."""
    return mac.replace(":", "").replace("-", "").replace(" ", "").upper()


def _is_mac(mac: str) -> bool:
    return len(mac) == 16 and all(c in "0123456789ABCDEF" for c in mac)


@dataclass(frozen=True)
class SimulatorConfig:
    """The options of one simulated head-end; the defaults make a demo finish within seconds."""

    #: The DUNS number of the simulated TDSP.
    tdsp_duns: str
    #: Seconds from ``send`` to the TDSP acknowledgement (``send``'s Deferred fires).
    ack_delay_s: float = 0.2
    #: Seconds from the acknowledgement to Add Pending / Remove Pending (or the rejection).
    pending_delay_s: float = 0.5
    #: Seconds from Add Pending to Meter Ready (or the failure).
    meter_ready_delay_s: float = 0.5
    #: Seconds from Meter Ready to the device joining.
    join_delay_s: float = 1.0
    #: Seconds from Remove Pending to Device Removed (or the failure).
    remove_delay_s: float = 0.5
    #: The fault of every command not matched by the tables below (``none``: draw by the rates).
    fault: Fault = Fault.NONE
    #: Faults by device MAC address (16 hex digits; separators allowed); wins over the ESI ID.
    faults_by_mac: Mapping[str, Fault] = field(default_factory=dict, hash=False)
    #: Faults by ESI ID.
    faults_by_esiid: Mapping[str, Fault] = field(default_factory=dict, hash=False)
    #: Probabilities (0 to 1) of each fault for commands without a configured one.
    reject_rate: float = 0.0
    fail_rate: float = 0.0
    no_answer_rate: float = 0.0
    never_join_rate: float = 0.0
    #: Probability that one ``send`` finds the head-end down (drawn on every send).
    unreachable_rate: float = 0.0
    #: Seed of the random generator behind the rates, so a QA run can be repeated.
    seed: int = 0
    #: SQLite journal; unset: ``<state_dir>/simulator-<tdsp_duns>.sqlite`` when the gateway gives
    #: a state directory, else in memory.
    journal_path: str | None = None
    #: When the gateway fails to record a report: wait this long, at most this many times.
    report_retry_delay_s: float = 1.0
    report_max_retries: int = 5
    #: The meters served (see simulators/fleet.py): generated ones, a meter CSV, or (neither
    #: set) every ESI ID asked about.
    meters: int = 0
    meters_csv: str | None = None
    #: Devices already joined to each listed meter (0 to 5: display, thermostat, switch, ...).
    devices_per_meter: int = 0
    #: Probability that a meter is offline, and that its firmware cannot run a HAN.
    offline_rate: float = 0.0
    incompatible_rate: float = 0.0
    #: Probability that a device's user opts out of load control, and that it never answers.
    opt_out_rate: float = 0.0
    silent_rate: float = 0.0
    #: Seconds from a frame to the device's answer; to a user's confirmation of a text.
    answer_delay_s: float = 0.05
    confirm_delay_s: float = 0.5
    #: Seconds a delivery to an offline meter stays pending before it fails.
    offline_give_up_s: float = 300.0

    def fleet_config(self) -> FleetConfig:
        """The fleet's options, which are this configuration's fields of the same names."""
        return FleetConfig(**{f.name: getattr(self, f.name) for f in fields(FleetConfig)})

    def __post_init__(self) -> None:
        checked = _check("simulator", {f.name: getattr(self, f.name) for f in fields(self)})
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, section: str = "simulator"
    ) -> SimulatorConfig:
        """Validate options (e.g. a parsed TOML table); errors name ``<section>.<key>``."""
        if not isinstance(mapping, Mapping):
            raise SimulatorConfigError(f"{section} must be a table, got {mapping!r}")
        names = {f.name for f in fields(cls)}
        values = dict(mapping)
        kind = values.pop("kind", "simulator")
        if kind != "simulator":
            raise SimulatorConfigError(f"{section}.kind must be 'simulator', got {kind!r}")
        for key in values:
            if key not in names:
                raise SimulatorConfigError(
                    f"{section}.{key} is not a simulator option (known: {', '.join(sorted(names))})"
                )
        if "tdsp_duns" not in values:
            raise SimulatorConfigError(f"{section}.tdsp_duns is required")
        return cls(**_check(section, values))


def _check(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Checked and normalized values for the given keys; raises SimulatorConfigError."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{section}.{key}"
        if key == "tdsp_duns":
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                value = str(value)
            if not isinstance(value, str) or not value.isdigit():
                raise SimulatorConfigError(
                    f"{name} must be the TDSP's DUNS number (digits), got {value!r}"
                )
        elif key in _DELAYS:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise SimulatorConfigError(f"{name} must be a number >= 0, got {value!r}")
            value = float(value)
        elif key in _COMMAND_RATES or key in _FLEET_RATES or key == "unreachable_rate":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise SimulatorConfigError(f"{name} must be a number from 0 to 1, got {value!r}")
            value = float(value)
        elif key == "fault":
            value = _fault(name, value)
        elif key in ("faults_by_mac", "faults_by_esiid"):
            value = _fault_table(name, value, macs=key == "faults_by_mac")
        elif key == "devices_per_meter":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
                raise SimulatorConfigError(f"{name} must be an integer from 0 to 5, got {value!r}")
        elif key in ("seed", "report_max_retries", "meters"):
            low = -(2**63) if key == "seed" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                wanted = "an integer >= 0" if low == 0 else "an integer"
                raise SimulatorConfigError(f"{name} must be {wanted}, got {value!r}")
        elif key == "journal_path":
            if value is not None and (not isinstance(value, str) or not value):
                raise SimulatorConfigError(f"{name} must be a file path, got {value!r}")
        elif key == "meters_csv":
            if value is not None:
                _check_meter_csv(name, value)
        out[key] = value
    rates = [float(out.get(key, values.get(key, 0.0)) or 0.0) for key in _COMMAND_RATES]
    if sum(rates) > 1.0 + 1e-9:
        raise SimulatorConfigError(
            f"{section}.reject_rate + fail_rate + no_answer_rate + never_join_rate "
            f"must be at most 1, got {sum(rates):g}"
        )
    return out


def _check_meter_csv(name: str, value: Any) -> None:
    """A meter CSV the fleet can serve: a readable file whose header names an esiid column."""
    if not isinstance(value, str) or not Path(value).is_file():
        raise SimulatorConfigError(f"{name} must be a meter CSV file, got {value!r}")
    try:
        with open(value, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SimulatorConfigError(f"{name}: {value} cannot be read ({error})") from None
    if "esiid" not in (column.strip() for column in header):
        raise SimulatorConfigError(
            f"{name}: {value} has no esiid column in its header line (hangw meters import's CSV)"
        )


def _fault(name: str, value: Any) -> Fault:
    try:
        return Fault(value)
    except ValueError:
        choices = ", ".join(f.value for f in Fault)
        raise SimulatorConfigError(f"{name} must be one of {choices}, got {value!r}") from None


def _fault_table(name: str, value: Any, *, macs: bool) -> Mapping[str, Fault]:
    if not isinstance(value, Mapping):
        raise SimulatorConfigError(f"{name} must be a table, got {value!r}")
    table: dict[str, Fault] = {}
    for key, fault in value.items():
        if not isinstance(key, str) or not key:
            raise SimulatorConfigError(f"{name} has a bad key {key!r}")
        if macs:
            mac = normalize_mac(key)
            if not _is_mac(mac):
                raise SimulatorConfigError(f"{name}: {key!r} is not a MAC address (16 hex digits)")
            key = mac
        table[key] = _fault(f"{name}.{key}", fault)
    return MappingProxyType(table)


@dataclass(frozen=True)
class Step:
    """One report the head-end makes, ``delay_s`` after the previous step."""

    status: HeadEndStatus
    delay_s: float
    reason: str = ""


ADD = "add"
REMOVE = "remove"

_REASONS = {
    (ADD, Fault.REJECT): "simulated: the TDSP rejected the provisioning request",
    (ADD, Fault.FAIL): "simulated: the meter did not accept the install code",
    (REMOVE, Fault.REJECT): "simulated: the TDSP rejected the de-provisioning request",
    (REMOVE, Fault.FAIL): "simulated: the meter did not remove the device",
    (ADD, Fault.HAN_INCOMPATIBLE): "the meter's firmware is not HAN-capable (simulated)",
    (ADD, Fault.METER_OFFLINE): "the meter is offline: the install code was not loaded (simulated)",
    (REMOVE, Fault.METER_OFFLINE): "the meter is offline: the device was not removed (simulated)",
    (ADD, Fault.NOT_SERVED): "the ESI ID is not served by this head-end (simulated)",
    (REMOVE, Fault.NOT_SERVED): "the ESI ID is not served by this head-end (simulated)",
    (ADD, Fault.NOT_EUI64): "the MAC address is not an EUI-64 of 16 hex digits (simulated)",
    (REMOVE, Fault.NOT_EUI64): "the MAC address is not an EUI-64 of 16 hex digits (simulated)",
}
FRAMES = "frames"


def planned_steps(action: str, fault: Fault, config: SimulatorConfig) -> tuple[Step, ...]:
    """The reports a command makes (``action``: ``"add"`` or ``"remove"``); the first is the ack."""
    ack = Step(HeadEndStatus.ACKNOWLEDGED, config.ack_delay_s)
    if fault is Fault.NO_ANSWER or action == FRAMES:
        return (ack,)
    reason = _REASONS.get((action, fault), "")
    if fault in (Fault.HAN_INCOMPATIBLE, Fault.NOT_SERVED, Fault.NOT_EUI64):
        fault = Fault.REJECT
    elif fault is Fault.METER_OFFLINE:
        fault = Fault.FAIL
    if action == ADD:
        pending = Step(HeadEndStatus.ADD_PENDING, config.pending_delay_s)
        ready = Step(HeadEndStatus.METER_READY, config.meter_ready_delay_s)
        if fault is Fault.REJECT:
            return ack, Step(HeadEndStatus.ADD_REJECTED, config.pending_delay_s, reason)
        if fault is Fault.FAIL:
            return ack, pending, Step(HeadEndStatus.ADD_FAILED, config.meter_ready_delay_s, reason)
        if fault is Fault.NEVER_JOIN:
            return ack, pending, ready
        return ack, pending, ready, Step(HeadEndStatus.DEVICE_JOINED, config.join_delay_s)
    pending = Step(HeadEndStatus.REMOVE_PENDING, config.pending_delay_s)
    if fault is Fault.REJECT:
        return ack, Step(HeadEndStatus.REMOVE_REJECTED, config.pending_delay_s, reason)
    if fault is Fault.FAIL:
        return ack, pending, Step(HeadEndStatus.REMOVE_FAILED, config.remove_delay_s, reason)
    return ack, pending, Step(HeadEndStatus.DEVICE_REMOVED, config.remove_delay_s)


@dataclass(eq=False)
class _Job:
    """One accepted command on its way through its steps (no secrets kept)."""

    command_id: str
    action: str
    esiid: str
    device_id: str
    mac: str
    fault: Fault
    next_step: int = 0
    #: When the previous step finished (or the command was accepted), on the simulator's clock.
    step_at: float = 0.0
    #: The retry of a report the gateway did not take.
    call: IDelayedCall | None = None
    #: The tick of ``_StepTimers`` the next step waits for.
    tick: int | None = None
    delivering: bool = False
    #: ``send`` Deferreds waiting for the acknowledgement step.
    waiting: list[Deferred[None]] = field(default_factory=list)
    #: The frames of a SendFrames command (kept in memory only), delivered after the ack.
    frames: tuple[OutboundFrame, ...] = ()
    #: A FanOutFrame command (kept in memory only), delivered after the ack.
    fan_out: FanOutFrame | None = None
    #: An add that a removal of its device ended: no step after the acknowledgement is made.
    ended: bool = False
    #: What the device of an add is (ProvisionDevice.device_type): how it behaves once joined.
    device_type: str = ""


class _StepTimers:
    """The jobs' next steps, on one delayed call for each tick of ``resolution_s`` with steps due.

    A busy head-end has thousands of commands between two steps; a delayed call each would keep
    the reactor's timer heap that deep, and Twisted orders that heap in Python. Steps due in the
    same tick fire together, in the order they were scheduled, at most half a tick off.
    """

    def __init__(
        self, clock: IReactorTime, fire: Callable[[_Job], None], resolution_s: float
    ) -> None:
        self._clock = clock
        self._fire = fire
        self._resolution_s = resolution_s
        self._ticks: dict[int, tuple[IDelayedCall, list[_Job]]] = {}

    def schedule(self, job: _Job, delay_s: float) -> None:
        now = self._clock.seconds()
        tick = round((now + delay_s) / self._resolution_s)
        entry = self._ticks.get(tick)
        if entry is None:
            wait = max(0.0, tick * self._resolution_s - now)
            entry = self._ticks[tick] = (self._clock.callLater(wait, self._run, tick), [])
        entry[1].append(job)
        job.tick = tick

    def _run(self, tick: int) -> None:
        _, jobs = self._ticks.pop(tick)
        for job in jobs:
            if job.tick == tick:
                job.tick = None
                self._fire(job)

    def cancel_all(self) -> None:
        for call, jobs in self._ticks.values():
            if call.active():
                call.cancel()
            for job in jobs:
                job.tick = None
        self._ticks.clear()


class _Journal:
    """Accepted commands and the step each reached, in a small SQLite file.

    Writes are collected and committed together at most ``flush_after_s`` after the first of
    them (one transaction for all a busy head-end made meanwhile), and a command's record always
    before its acknowledgement is given: a command the gateway was told was accepted is on disk,
    so a restart cannot lose it. A crash may lose the steps reached in its last ``flush_after_s``:
    after the restart each is reported again, as a head-end resends what it does not know was
    taken, and the gateway does not apply a copy of a step its device has moved past.
    """

    #: How long a write may wait in memory for others to share its transaction.
    flush_after_s = 0.05

    def __init__(self, path: Path, clock: IReactorTime) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS commands ("
            " command_id TEXT PRIMARY KEY, action TEXT NOT NULL, esiid TEXT NOT NULL,"
            " device_id TEXT NOT NULL, mac TEXT NOT NULL, fault TEXT NOT NULL,"
            " next_step INTEGER NOT NULL, step_at REAL NOT NULL, finished INTEGER NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(commands)")}
        if "device_type" not in columns:  # a journal from before devices had a type
            self._db.execute("ALTER TABLE commands ADD COLUMN device_type TEXT NOT NULL DEFAULT ''")
        # the devices that commands joined to a meter (1) or removed from it (0), so a
        # restarted head-end's meters hold what they held before
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS devices (esiid TEXT NOT NULL, mac TEXT NOT NULL,"
            " joined INTEGER NOT NULL, device_type TEXT NOT NULL DEFAULT '',"
            " PRIMARY KEY (esiid, mac))"
        )
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._recorded: set[str] = set()  # commands recorded since the file was opened
        self._unflushed: set[str] = set()  # of those, the ones not committed yet
        # an empty journal has nothing from an earlier run to look up, command by command
        self._from_earlier_runs = self._db.execute("SELECT 1 FROM commands LIMIT 1").fetchone()
        self._flush_call: IDelayedCall | None = None

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        self._pending.append((sql, params))
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self.flush_after_s, self.flush)

    def make_durable(self, command_id: str) -> None:
        """Commit now if the command's record is still waiting (before it is acknowledged)."""
        if command_id in self._unflushed:
            self.flush()

    def flush(self) -> None:
        """Commit every write made so far, in one transaction."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._unflushed.clear()
        self._db.execute("BEGIN")
        try:
            for sql, params in pending:
                self._db.execute(sql, params)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def known(self, command_id: str) -> bool:
        if command_id in self._recorded:
            return True
        if self._from_earlier_runs is None:
            return False
        row = self._db.execute(
            "SELECT 1 FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return row is not None

    def record(self, job: _Job, finished: bool = False) -> None:
        self._recorded.add(job.command_id)
        self._unflushed.add(job.command_id)
        self._write(
            "INSERT OR IGNORE INTO commands (command_id, action, esiid, device_id, mac, fault,"
            " next_step, step_at, finished, device_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.command_id,
                job.action,
                job.esiid,
                job.device_id,
                job.mac,
                job.fault.value,
                job.next_step,
                job.step_at,
                int(finished),
                job.device_type,
            ),
        )

    def advance(self, job: _Job, finished: bool) -> None:
        self._write(
            "UPDATE commands SET next_step = ?, step_at = ?, finished = ? WHERE command_id = ?",
            (job.next_step, job.step_at, int(finished), job.command_id),
        )

    def device(self, esiid: str, mac: str, *, joined: bool, device_type: str = "") -> None:
        """The device joined the meter's HAN, or was removed from it."""
        self._write(
            "INSERT OR REPLACE INTO devices (esiid, mac, joined, device_type) VALUES (?, ?, ?, ?)",
            (esiid, mac, int(joined), device_type),
        )

    def devices(self) -> list[tuple[str, str, bool, str]]:
        """(esiid, mac, joined, device_type) of every device a command joined or removed."""
        self.flush()
        rows = self._db.execute(
            "SELECT esiid, mac, joined, device_type FROM devices ORDER BY rowid"
        )
        return [(esiid, mac, bool(joined), kind) for esiid, mac, joined, kind in rows]

    def unfinished(self) -> list[_Job]:
        self.flush()
        rows = self._db.execute(
            "SELECT command_id, action, esiid, device_id, mac, fault, next_step, step_at,"
            " device_type FROM commands WHERE finished = 0 ORDER BY rowid"
        ).fetchall()
        jobs = []
        for cid, action, esiid, device_id, mac, fault, next_step, step_at, kind in rows:
            job = _Job(cid, action, esiid, device_id, mac, Fault(fault), next_step, step_at)
            job.device_type = kind
            jobs.append(job)
        return jobs

    def close(self) -> None:
        self.flush()
        self._db.close()


class _AdapterConfigLike(Protocol):
    """What the gateway hands an adapter factory (hangw.config.AdapterConfig)."""

    @property
    def tdsp_duns(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


@implementer(IHeadEndAdapter)
class SimulatedHeadEnd:
    """A TDSP head-end with simulated meters, in the gateway's process.

    ``config`` is a ``SimulatorConfig`` or the gateway's adapter configuration (its ``options``
    are read with ``SimulatorConfig.from_mapping``). ``state_dir``, when given and no
    ``journal_path`` is configured, holds the journal ``simulator-<tdsp_duns>.sqlite``.
    """

    #: The most delivery statuses, or inbound frames, handed to the gateway in one call.
    event_batch_max = 10_000
    #: Steps due within this many seconds of each other fire together (see ``_StepTimers``).
    step_resolution_s = 0.01

    def __init__(
        self,
        config: SimulatorConfig | _AdapterConfigLike,
        clock: IReactorTime,
        state_dir: Path | str | None = None,
    ) -> None:
        if not isinstance(config, SimulatorConfig):
            config = _from_adapter_config(config)
        self.config = config
        self.tdsp_duns = config.tdsp_duns
        self._clock = clock
        if config.journal_path is not None:
            self.journal_path: Path | None = Path(config.journal_path)
        elif state_dir is not None:
            self.journal_path = Path(state_dir) / f"simulator-{config.tdsp_duns}.sqlite"
        else:
            self.journal_path = None
        self._random = random.Random(config.seed)
        self._fault = config.fault
        self._faults_by_mac = dict(config.faults_by_mac)
        self._faults_by_esiid = dict(config.faults_by_esiid)
        self._events: IAdapterEvents | None = None
        self._running = False
        self._journal: _Journal | None = None
        self._jobs: dict[str, _Job] = {}  # unfinished, by command id
        self._adding: dict[tuple[str, str], list[_Job]] = {}  # unfinished adds, by device
        self._steps_due = _StepTimers(clock, self._fire, self.step_resolution_s)
        self._plans: dict[tuple[str, Fault], tuple[Step, ...]] = {}
        self._seen: set[str] = set()  # every command id accepted while this object lived
        self._acks: dict[Deferred[None], IDelayedCall] = {}  # acknowledgements of duplicates
        self._answers: dict[Deferred[QueryResult], IDelayedCall] = {}  # queries' answers due
        self._sent: Counter[str] = Counter()
        self._applied: Counter[str] = Counter()
        #: Every command accepted by this simulator, each ``command_id`` once, in order.
        self.received: list[Command] = []
        #: The meters and devices this head-end serves.
        self.fleet = Fleet(config.fleet_config(), clock, self._collect)
        #: Fleet events collected this reactor turn, and the call that sends them.
        self._statuses: list[DeliveryStatus] = []
        self._frames: list[InboundFrame] = []
        self._flush_call: IDelayedCall | None = None
        #: Batches (or, to a sink without batch methods, events) waiting to be sent again.
        self._resends: set[IDelayedCall] = set()
        #: The kinds of batch with one waiting to be sent again, and the batches behind it.
        self._stalled: set[str] = set()
        self._held: dict[str, deque[Sequence[DeliveryStatus | InboundFrame]]] = {}
        self._log = log.bind(tdsp_duns=config.tdsp_duns)

    # -- what tests and QA read and set --------------------------------------------------------

    def applied_count(self, command_id: str) -> int:
        """How many times the command was applied (accepted and started on its steps)."""
        return self._applied[command_id]

    def send_count(self, command_id: str) -> int:
        """How many times the command was handed to ``send`` (duplicates included)."""
        return self._sent[command_id]

    @property
    def unfinished(self) -> list[str]:
        """Command ids that have steps still to report."""
        return list(self._jobs)

    def set_fault(
        self, fault: Fault | str, *, mac: str | None = None, esiid: str | None = None
    ) -> None:
        """Change a fault while running, for the simulator, one MAC address or one ESI ID.

        Applies to commands sent from now on; ``unreachable`` for the whole simulator takes the
        head-end down, ``none`` brings it back.
        """
        value = _fault("fault", fault)
        if mac is not None:
            self._faults_by_mac[normalize_mac(mac)] = value
        elif esiid is not None:
            self._faults_by_esiid[esiid] = value
        else:
            self._fault = value

    # -- IHeadEndAdapter ----------------------------------------------------------------------

    def start(self, events: IAdapterEvents) -> Deferred[None]:
        """Keep ``events``, open the journal and resume every unfinished command."""
        self._events = events
        if self._running:
            return succeed(None)
        self._running = True
        if self.journal_path is not None and self._journal is None:
            self._journal = _Journal(self.journal_path, self._clock)
        resumed = 0
        if self._journal is not None:
            for esiid, mac, joined, device_type in self._journal.devices():
                if joined:
                    self.fleet.join(esiid, mac, device_type)
                else:
                    self.fleet.leave(esiid, mac)
            for job in self._journal.unfinished():  # in the order they were accepted
                if job.command_id not in self._jobs and job.command_id not in self._seen:
                    if job.action == REMOVE:
                        # an add it ended before the add's acknowledgement is still unfinished
                        self._end_adds(job, self._log)
                    self._jobs[job.command_id] = job
                    self._track(job)
                    self._seen.add(job.command_id)
                    self._applied[job.command_id] = max(1, self._applied[job.command_id])
        for job in self._jobs.values():
            if job.call is None and job.tick is None and not job.delivering:
                self._schedule(job)
                resumed += 1
        self._log.info(
            "simulator.started",
            journal=str(self.journal_path) if self.journal_path else None,
            resumed=resumed,
        )
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Cancel every delayed call; ``send`` Deferreds still waiting fail as unreachable."""
        self._running = False
        stopped = HeadEndUnreachable(f"the simulated head-end of TDSP {self.tdsp_duns} stopped")
        waiting: list[Deferred[None]] = []
        self._steps_due.cancel_all()
        for job in self._jobs.values():
            if job.call is not None:
                if job.call.active():
                    job.call.cancel()
                job.call = None
            waiting.extend(job.waiting)
            job.waiting = []
        acks, self._acks = self._acks, {}
        for d, call in acks.items():
            if call.active():
                call.cancel()
            waiting.append(d)
        for d in waiting:
            d.errback(Failure(stopped))
        answers, self._answers = self._answers, {}
        for answer, call in answers.items():
            if call.active():
                call.cancel()
            answer.errback(
                Failure(QueryFailed(f"the simulated head-end of TDSP {self.tdsp_duns} stopped"))
            )
        self.fleet.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._statuses, self._frames = [], []
        resends, self._resends = self._resends, set()
        self._stalled.clear()
        self._held.clear()
        for call in resends:
            if call.active():
                call.cancel()
        self._close_journal_when_idle()
        if self._journal is not None:
            # a report still awaits the gateway: the journal closes after it, and what the
            # steps wrote so far is committed now, not at a flush that may never come
            self._journal.flush()
        self._log.info("simulator.stopped", unfinished=len(self._jobs))
        return succeed(None)

    def send(self, command: Command) -> Deferred[None]:
        """Accept a command: the Deferred fires at the acknowledgement, or fails if unreachable."""
        self._sent[command.command_id] += 1
        bound = self._log.bind(
            command_id=command.command_id,
            esiid=getattr(command, "esiid", None),
            device_id=getattr(command, "device_id", None),
            mac=getattr(command, "mac", None),
        )
        if not self._running:
            bound.warning("simulator.unreachable", why="not running")
            return fail(
                HeadEndUnreachable(
                    f"the simulated head-end of TDSP {self.tdsp_duns} is not running"
                )
            )
        configured = self._configured_fault(command)
        if configured is Fault.UNREACHABLE or (
            configured is None
            and self.config.unreachable_rate > 0
            and self._random.random() < self.config.unreachable_rate
        ):
            bound.warning("simulator.unreachable", why="fault")
            return fail(
                HeadEndUnreachable(f"the simulated head-end of TDSP {self.tdsp_duns} is down")
            )
        if self._known(command.command_id):
            bound.info("simulator.duplicate", sends=self._sent[command.command_id])
            return self._acknowledge_again()
        frames: tuple[OutboundFrame, ...] = ()
        fan_out: FanOutFrame | None = None
        esiid = ""
        if isinstance(command, ProvisionDevice):
            action, esiid = ADD, command.esiid
        elif isinstance(command, DeprovisionDevice):
            action, esiid = REMOVE, command.esiid
        elif isinstance(command, SendFrames):
            action, esiid, frames = FRAMES, command.esiid, command.frames
        elif isinstance(command, FanOutFrame):
            action, fan_out = FRAMES, command
        else:
            return fail(TypeError(f"the simulated head-end cannot carry {type(command).__name__}"))
        if action == FRAMES:
            fault = Fault.NONE
        else:
            mac_ok = _is_mac(normalize_mac(getattr(command, "mac", "")))
            fault = (
                (None if mac_ok else Fault.NOT_EUI64)
                or self._meter_fault(action, esiid)
                or (configured if configured is not None else self._draw_fault())
            )
        job = _Job(
            command.command_id,
            action,
            esiid,
            getattr(command, "device_id", ""),
            normalize_mac(getattr(command, "mac", "")),
            fault,
            step_at=self._clock.seconds(),
            frames=frames,
            fan_out=fan_out,
            device_type=getattr(command, "device_type", ""),
        )
        if self._journal is not None and action != FRAMES:
            # (frames live in memory only: their command is recorded when they are delivered,
            # so one that a stop cut short is taken afresh when the gateway sends it again)
            self._journal.record(job)
        if action == REMOVE:
            self._end_adds(job, bound)
        self._jobs[job.command_id] = job
        self._track(job)
        self._seen.add(job.command_id)
        self._applied[job.command_id] += 1
        self.received.append(command)
        bound.info(
            "simulator.accepted",
            action=action,
            fault=fault.value,
            targets=len(fan_out.targets) if fan_out is not None else None,
        )
        acknowledged: Deferred[None] = Deferred()
        job.waiting.append(acknowledged)
        self._schedule(job)
        return acknowledged

    def query(self, query: Query) -> Deferred[QueryResult]:
        """Ping the ESI or a device, or read the meter, from the fleet.

        Fails with ``QueryFailed`` when the head-end is down (stopped, or ``unreachable`` for
        the whole simulator or the ESI ID), and when it stops before the answer is due.
        """
        down = self._fault is Fault.UNREACHABLE or (
            self._faults_by_esiid.get(query.esiid) is Fault.UNREACHABLE
        )
        if not self._running or down:
            return fail(QueryFailed(f"the simulated head-end of TDSP {self.tdsp_duns} is down"))
        try:
            result = self.fleet.query(query)
        except QueryFailed as refusal:
            return fail(refusal)
        answer: Deferred[QueryResult] = Deferred()

        def fire() -> None:
            del self._answers[answer]
            answer.callback(result)

        self._answers[answer] = self._clock.callLater(self.config.answer_delay_s, fire)
        return answer

    # -- inside --------------------------------------------------------------------------------

    def _steps(self, job: _Job) -> tuple[Step, ...]:
        """The job's plan; the configuration is frozen, so each plan is made once."""
        key = (job.action, job.fault)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = planned_steps(job.action, job.fault, self.config)
        return plan

    def _configured_fault(self, command: Command) -> Fault | None:
        """The fault set for this command's MAC, ESI ID or the simulator; None: use the rates."""
        mac = normalize_mac(getattr(command, "mac", ""))
        if mac in self._faults_by_mac:
            return self._faults_by_mac[mac]
        esiid = getattr(command, "esiid", None)
        if esiid is not None and esiid in self._faults_by_esiid:
            return self._faults_by_esiid[esiid]
        if self._fault is not Fault.NONE:
            return self._fault
        return None

    def _meter_fault(self, action: str, esiid: str) -> Fault | None:
        """What the fleet's meter makes of a provisioning command: rejected, failed or fine."""
        if not self.fleet.serves(esiid):
            return Fault.NOT_SERVED
        refusal = self.fleet.provisioning_refusal(esiid)
        if refusal is None:
            return None
        how, _ = refusal
        if how == "fail":
            return Fault.METER_OFFLINE
        return Fault.HAN_INCOMPATIBLE if action == ADD else None

    def _draw_fault(self) -> Fault:
        config = self.config
        if not any(getattr(config, key) for key in _COMMAND_RATES):
            return Fault.NONE
        draw = self._random.random()
        for key, fault in _COMMAND_RATES.items():
            draw -= getattr(config, key)
            if draw < 0:
                return fault
        return Fault.NONE

    def _known(self, command_id: str) -> bool:
        if command_id in self._seen:
            return True
        if self._journal is not None and self._journal.known(command_id):
            self._seen.add(command_id)
            return True
        return False

    def _acknowledge_again(self) -> Deferred[None]:
        acknowledged: Deferred[None] = Deferred()

        def fire() -> None:
            self._acks.pop(acknowledged, None)
            acknowledged.callback(None)

        self._acks[acknowledged] = self._clock.callLater(self.config.ack_delay_s, fire)
        return acknowledged

    def _schedule(self, job: _Job) -> None:
        """Call the next step its delay after the previous one (less any time already gone)."""
        step = self._steps(job)[job.next_step]
        remaining = job.step_at + step.delay_s - self._clock.seconds()
        self._steps_due.schedule(job, min(step.delay_s, max(0.0, remaining)))

    def _fire(self, job: _Job) -> None:
        step = self._steps(job)[job.next_step]
        if job.next_step == 0:
            if self._journal is not None:
                if job.action == FRAMES:  # delivered now, in this step: done with it
                    self._journal.record(job, finished=True)
                # the command is on disk before it is acknowledged
                self._journal.make_durable(job.command_id)
            waiting, job.waiting = job.waiting, []
            for d in waiting:
                d.callback(None)
            if job.action == FRAMES:
                frames, job.frames = job.frames, ()
                for frame in frames:
                    self.fleet.deliver(job.esiid, frame)
                fan_out, job.fan_out = job.fan_out, None
                if fan_out is not None:
                    self.fleet.deliver_many(fan_out)
                self._advance(job)
                return
        report = ProvisioningReport(
            job.command_id, job.esiid, job.device_id, step.status, step.reason
        )
        self._deliver(job, report, 1)

    def _deliver(self, job: _Job, report: ProvisioningReport, attempt: int) -> None:
        job.call = None
        job.delivering = True
        if self._events is None:
            d: Deferred[Any] = fail(RuntimeError("no event sink: the simulator was never started"))
        else:
            d = maybeDeferred(self._events.provisioning_report, report)
        d.addCallbacks(
            self._delivered,
            self._not_delivered,
            callbackArgs=(job, report),
            errbackArgs=(job, report, attempt),
        )

    def _delivered(self, _: object, job: _Job, report: ProvisioningReport) -> None:
        job.delivering = False
        if report.status is HeadEndStatus.DEVICE_JOINED:
            self.fleet.join(job.esiid, job.mac, job.device_type)
            if self._journal is not None:
                self._journal.device(job.esiid, job.mac, joined=True, device_type=job.device_type)
        elif report.status is HeadEndStatus.DEVICE_REMOVED:
            self.fleet.leave(job.esiid, job.mac)
            if self._journal is not None:
                self._journal.device(job.esiid, job.mac, joined=False)
        self._log.debug(
            "simulator.reported",
            command_id=job.command_id,
            esiid=job.esiid,
            device_id=job.device_id,
            status=report.status.value,
            reason=report.reason or None,
        )
        self._advance(job)

    def _not_delivered(
        self, failure: Failure, job: _Job, report: ProvisioningReport, attempt: int
    ) -> None:
        job.delivering = False
        context = {
            "command_id": job.command_id,
            "esiid": job.esiid,
            "device_id": job.device_id,
            "status": report.status.value,
            "attempt": attempt,
            "error": failure.getErrorMessage(),
        }
        if failure.check(ReportRefused):
            # the gateway will never take this one; sending it again would not change that
            self._log.warning("simulator.report_refused", **context)
            self._advance(job)
            return
        if attempt > self.config.report_max_retries:
            self._log.error("simulator.report_abandoned", **context)
            self._advance(job)
            return
        self._log.warning(
            "simulator.report_failed", retry_in_s=self.config.report_retry_delay_s, **context
        )
        if self._running:
            job.call = self._clock.callLater(
                self.config.report_retry_delay_s, self._deliver, job, report, attempt + 1
            )
        else:
            self._close_journal_when_idle()

    def _end_adds(self, removal: _Job, bound: Any) -> None:
        """A removal withdraws its device's unfinished add: the meter forgets the install code,
        so the add makes no further step (an unacknowledged one is still acknowledged)."""
        for job in self._adding.pop((removal.esiid, removal.device_id), ()):
            job.ended = True
            bound.info("simulator.add_ended", add_command_id=job.command_id)
            if job.next_step == 0 or job.delivering:
                continue  # the acknowledgement, or the report on its way, finishes it
            job.tick = None
            if job.call is not None:
                if job.call.active():
                    job.call.cancel()
                job.call = None
            if self._journal is not None:
                self._journal.advance(job, True)
            self._jobs.pop(job.command_id, None)

    def _track(self, job: _Job) -> None:
        """Keep an unfinished add where a removal of its device finds it."""
        if job.action == ADD:
            self._adding.setdefault((job.esiid, job.device_id), []).append(job)

    def _untrack(self, job: _Job) -> None:
        if job.action != ADD:
            return
        key = (job.esiid, job.device_id)
        adds = self._adding.get(key)
        if adds is not None and job in adds:
            adds.remove(job)
            if not adds:
                del self._adding[key]

    def _advance(self, job: _Job) -> None:
        job.next_step += 1
        job.step_at = self._clock.seconds()
        finished = job.ended or job.next_step >= len(self._steps(job))
        if self._journal is not None:
            self._journal.advance(job, finished)
        if finished:
            self._jobs.pop(job.command_id, None)
            self._untrack(job)
        elif self._running:
            self._schedule(job)
        if not self._running:
            self._close_journal_when_idle()

    def _collect(self, events: list[DeliveryStatus | InboundFrame]) -> None:
        """Keep what the fleet emits; everything kept in one reactor turn leaves together."""
        if self._events is None or not self._running:
            return
        for event in events:
            if isinstance(event, DeliveryStatus):
                self._statuses.append(event)
            else:
                self._frames.append(event)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        statuses, self._statuses = self._statuses, []
        frames, self._frames = self._frames, []
        size = max(1, self.event_batch_max)
        for batch in (statuses, frames):
            for at in range(0, len(batch), size):
                self._send_batch(batch[at : at + size], 1)

    def _send_batch(
        self, batch: Sequence[DeliveryStatus | InboundFrame], attempt: int, *, held: bool = False
    ) -> None:
        """Hand a batch of statuses or frames to the gateway; sent again when not recorded.

        While a batch waits to be sent again, the later batches of its kind wait behind it
        (``held``: one of those, sent now) and go one at a time, each after the one before was
        recorded or dropped, so the gateway gets a meter's statuses in the order they happened.
        """
        if self._events is None or not self._running:
            return
        name = "delivery_statuses" if isinstance(batch[0], DeliveryStatus) else "inbound_frames"
        record = getattr(self._events, name, None)
        if record is None:
            for event in batch:
                self._emit(event)
            return
        if attempt == 1 and not held and name in self._stalled:
            self._held.setdefault(name, deque()).append(batch)
            return
        first_in_line = attempt > 1 or held
        d: Deferred[Any] = maybeDeferred(record, batch)

        def recorded(results: list[str | None] | None) -> None:
            for event, reason in zip(batch, results or (), strict=False):
                if reason is not None:
                    self._log.debug("simulator.event_refused", esiid=event.esiid, why=reason)
            if first_in_line:
                self._send_next_held(name)

        def not_recorded(failure: Failure) -> None:
            why = failure.getErrorMessage()
            if failure.check(ReportRefused) or attempt > self.config.report_max_retries:
                self._log.warning(
                    "simulator.events_dropped",
                    kind=name,
                    count=len(batch),
                    attempt=attempt,
                    why=why,
                )
                if first_in_line:
                    self._send_next_held(name)
                return
            self._stalled.add(name)
            self._log.warning(
                "simulator.events_failed",
                kind=name,
                count=len(batch),
                attempt=attempt,
                retry_in_s=self.config.report_retry_delay_s,
                why=why,
            )
            self._later(self.config.report_retry_delay_s, self._send_batch, batch, attempt + 1)

        d.addCallbacks(recorded, not_recorded)

    def _send_next_held(self, name: str) -> None:
        """The batch first in line went through (or was dropped): send the next one waiting."""
        waiting = self._held.get(name)
        if waiting:
            self._send_batch(waiting.popleft(), 1, held=True)
        else:
            self._stalled.discard(name)

    def _emit(self, event: DeliveryStatus | InboundFrame, attempt: int = 1) -> None:
        """Send one fleet event to a sink without batch methods; retried like reports."""
        if self._events is None or not self._running:
            return
        if isinstance(event, DeliveryStatus):
            d: Deferred[Any] = maybeDeferred(self._events.delivery_status, event)
        else:
            d = maybeDeferred(self._events.inbound_frame, event)

        def not_recorded(failure: Failure) -> None:
            why = failure.getErrorMessage()
            if failure.check(ReportRefused) or attempt > self.config.report_max_retries:
                self._log.warning("simulator.event_dropped", esiid=event.esiid, why=why)
                return
            self._later(self.config.report_retry_delay_s, self._emit, event, attempt + 1)

        d.addErrback(not_recorded)

    def _later(self, delay: float, f: Any, *args: Any) -> None:
        """Call ``f`` later unless the head-end stops first."""
        if not self._running:
            return
        holder: list[IDelayedCall] = []

        def run() -> None:
            self._resends.discard(holder[0])
            f(*args)

        holder.append(self._clock.callLater(delay, run))
        self._resends.add(holder[0])

    def _close_journal_when_idle(self) -> None:
        """Close the journal once stopped and no report is still on its way."""
        if self._running or self._journal is None:
            return
        if any(job.delivering for job in self._jobs.values()):
            return
        self._journal.close()
        self._journal = None


def _from_adapter_config(adapter_config: _AdapterConfigLike) -> SimulatorConfig:
    section = f"adapters.{adapter_config.tdsp_duns}"
    options = dict(adapter_config.options)
    duns = options.setdefault("tdsp_duns", adapter_config.tdsp_duns)
    if str(duns) != str(adapter_config.tdsp_duns):
        raise SimulatorConfigError(
            f"{section}.tdsp_duns must be the table's DUNS {adapter_config.tdsp_duns}, got {duns!r}"
        )
    return SimulatorConfig.from_mapping(options, section=section)
