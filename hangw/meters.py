"""The meter registry: loading it from a TDSP's CSV file, and the TDSP's meter events.

Columns (header row required, order free): esiid, meter_serial, tdsp_duns, ror_duns,
hardware_version, firmware_version, han_capable, active, and optionally customer_id.
A file with any bad line is refused whole, with every bad line named; nothing is half-loaded.
A file without customer_id leaves the customers the store has as they are. A known ESI ID whose
customer changes (a move-in, or no customer any more) loses the HAN access its former customer
granted: those grants are revoked in the same transaction.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from adapters.commands import MeterEvent, MeterEventKind
from hangw import head_end_events
from hangw.domain import DUNS, Meter
from hangw.store.model import grants, meters

REQUIRED = (
    "esiid",
    "meter_serial",
    "tdsp_duns",
    "ror_duns",
    "hardware_version",
    "firmware_version",
    "han_capable",
    "active",
)
OPTIONAL = ("customer_id",)
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}
_ESIID = re.compile(r"[0-9A-Za-z]{1,64}")
#: ESI IDs per IN list: PostgreSQL's driver takes at most 65,535 parameters a statement.
_LOOKUP = 10_000


class MeterFileError(Exception):
    """The file cannot be loaded; ``problems`` lists (line number, message) for each bad line."""

    def __init__(self, path: str, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "\n".join(f"  line {line}: {message}" for line, message in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path}: {len(problems)} problem(s), nothing loaded:\n{shown}{more}")


@dataclass(frozen=True)
class MeterImport:
    """A parsed registry file: its meters, and whether it has the ``customer_id`` column (a file
    without it leaves the customers the store has as they are)."""

    meters: list[Meter]
    customers: bool


def parse_meter_csv(lines: Iterable[str], path: str = "<csv>") -> list[Meter]:
    """The meters of a registry file (see parse_meter_file)."""
    return parse_meter_file(lines, path).meters


def parse_meter_file(lines: Iterable[str], path: str = "<csv>") -> MeterImport:
    """Parse a registry file; MeterFileError names every bad line."""
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise MeterFileError(path, [(1, f"missing column(s): {', '.join(missing)}")])
    unknown = [name for name in header if name not in REQUIRED + OPTIONAL]
    if unknown:
        raise MeterFileError(path, [(1, f"unknown column(s): {', '.join(unknown)}")])
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    loaded: list[Meter] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(
                (line, f"{len(header) + len(row[None])} fields, the header has {len(header)}")
            )
            continue
        values = {k: (v or "").strip() for k, v in row.items()}
        errors = []
        if not _ESIID.fullmatch(values["esiid"]):
            errors.append(f"esiid {values['esiid']!r} is not 1 to 64 letters and digits")
        elif values["esiid"] in seen:
            errors.append(f"esiid {values['esiid']} is already on line {seen[values['esiid']]}")
        for name in ("tdsp_duns", "ror_duns"):
            if not DUNS.fullmatch(values[name]):
                errors.append(f"{name} {values[name]!r} is not a 9- or 13-digit DUNS number")
        for name in ("meter_serial", "hardware_version", "firmware_version"):
            if not values[name]:
                errors.append(f"{name} is empty")
        flags = {}
        for name in ("han_capable", "active"):
            text = values[name].lower()
            if text not in _TRUE | _FALSE:
                errors.append(f"{name} must be true or false, got {values[name]!r}")
            flags[name] = text in _TRUE
        if errors:
            problems.append((line, "; ".join(errors)))
            continue
        seen[values["esiid"]] = line
        loaded.append(
            Meter(
                esiid=values["esiid"],
                meter_serial=values["meter_serial"],
                tdsp_duns=values["tdsp_duns"],
                ror_duns=values["ror_duns"],
                customer_id=values.get("customer_id") or None,
                hardware_version=values["hardware_version"],
                firmware_version=values["firmware_version"],
                han_capable=flags["han_capable"],
                active=flags["active"],
            )
        )
    if problems:
        raise MeterFileError(path, problems)
    return MeterImport(loaded, customers="customer_id" in header)


def upsert_meters_thd(
    conn: sa.Connection,
    rows: list[Meter],
    now: float | None = None,
    *,
    customers: bool = True,
) -> tuple[int, int]:
    """Insert new meters and update known ones; returns (inserted, updated).

    ``customers=False`` (a file without the customer_id column): a known ESI ID keeps the
    customer the store has, and a new one has none.
    A grant is the customer's: where a known ESI ID's customer changes, the grants its former
    customer gave are revoked (at ``now``), so a HAN service provider does not keep access to
    the next customer's HAN and usage on the strength of the last one's consent.
    """
    known: dict[str, str | None] = {}
    for start in range(0, len(rows), _LOOKUP):
        chunk = [m.esiid for m in rows[start : start + _LOOKUP]]
        known.update(
            conn.execute(
                sa.select(meters.c.esiid, meters.c.customer_id).where(meters.c.esiid.in_(chunk))
            ).all()
        )
    values = [m.__dict__ for m in rows]
    fresh = [v for v in values if v["esiid"] not in known]
    if fresh:
        conn.execute(meters.insert(), fresh)
    kept = () if customers else ("customer_id",)
    stale = [
        {"b_esiid": v["esiid"], **{k: x for k, x in v.items() if k != "esiid" and k not in kept}}
        for v in values
        if v["esiid"] in known
    ]
    if stale:
        conn.execute(
            meters.update()
            .where(meters.c.esiid == sa.bindparam("b_esiid"))
            .values({k: sa.bindparam(k) for k in stale[0] if k != "b_esiid"}),
            stale,
        )
    moved = (
        [v["b_esiid"] for v in stale if v["customer_id"] != known[v["b_esiid"]]]
        if customers
        else []
    )
    revoked_at = time.time() if now is None else now
    for start in range(0, len(moved), _LOOKUP):
        conn.execute(
            grants.update()
            .where(
                grants.c.esiid.in_(moved[start : start + _LOOKUP]), grants.c.revoked_at.is_(None)
            )
            .values(revoked_at=revoked_at)
        )
    return len(fresh), len(stale)


@dataclass(frozen=True)
class MeterEventOutcome:
    """What a meter event did: the meter as it is now, or why it was refused; ``duplicate``: a
    copy of an event already answered, which changed nothing this time."""

    meter: Meter | None
    refusal: str | None = None
    duplicate: bool = False


def apply_meter_event_thd(conn: sa.Connection, event: MeterEvent, now: float) -> MeterEventOutcome:
    """Apply a TDSP's meter event to the registry.

    A meter exchange sets the new serial (and firmware and HAN capability when given) and makes
    the meter active; a removal makes it inactive, so no new device can be added to it; a
    firmware change sets the version and, when given, whether it can serve a HAN. An unknown ESI
    ID or a meter of another TDSP is refused. The answer is recorded under the event's id in this
    transaction (a refusal too: it is returned, not raised, so the record is kept).
    """
    if event.event_id:
        earlier = head_end_events.answers_thd(conn, event.tdsp_duns, [event.event_id])
        if event.event_id in earlier:  # a copy resent after a crash: the same answer, once
            refusal = earlier[event.event_id]
            meter = None if refusal is not None else _current(conn, event.esiid)
            return MeterEventOutcome(meter, refusal, duplicate=True)
    row = conn.execute(sa.select(meters).where(meters.c.esiid == event.esiid)).first()
    refusal = None
    if row is None:
        refusal = f"ESI ID {event.esiid} is not in the meter registry"
    elif event.tdsp_duns and row.tdsp_duns != event.tdsp_duns:
        refusal = f"ESI ID {event.esiid} is a meter of another TDSP"
    if event.event_id:
        head_end_events.record_thd(conn, event.tdsp_duns, [(event.event_id, refusal)], now)
    if refusal is not None:
        return MeterEventOutcome(None, refusal)
    changes: dict[str, object] = {}
    if event.kind is MeterEventKind.METER_REMOVED:
        changes["active"] = False
    if event.kind is MeterEventKind.METER_EXCHANGED:
        changes["active"] = True
    if event.meter_serial:
        changes["meter_serial"] = event.meter_serial
    if event.firmware_version:
        changes["firmware_version"] = event.firmware_version
    if event.han_capable is not None:
        changes["han_capable"] = event.han_capable
    if changes:
        conn.execute(meters.update().where(meters.c.esiid == event.esiid).values(**changes))
    return MeterEventOutcome(_current(conn, event.esiid))


def tdsp_of_thd(conn: sa.Connection, esiid: str) -> str | None:
    """The DUNS of the TDSP whose meter the ESI ID is; None when it is not in the registry."""
    tdsp: str | None = conn.execute(
        sa.select(meters.c.tdsp_duns).where(meters.c.esiid == esiid)
    ).scalar()
    return tdsp


def _current(conn: sa.Connection, esiid: str) -> Meter:
    row = conn.execute(sa.select(meters).where(meters.c.esiid == esiid)).one()
    return Meter(**{name: getattr(row, name) for name in Meter.__dataclass_fields__})
