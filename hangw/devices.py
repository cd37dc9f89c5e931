"""HAN device provisioning: requests from parties, reports from head-ends, and timers.

Every change is one transaction: the device row (guarded by ``WHERE status = :old``), its history
row and, when the head-end must act, an outbox row. The ``_thd`` functions run on the store's
thread; the ``async`` methods are what the API, the adapters and the timers call.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from cryptography.exceptions import InvalidTag
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from adapters.commands import (
    Command,
    DeprovisionDevice,
    HeadEndStatus,
    ProvisionDevice,
    ProvisioningReport,
    ReportRefused,
)
from hangw import authz, head_end_events, logs, metrics
from hangw.config import ProvisioningConfig
from hangw.domain import Device, Grant, HistoryEntry, Meter, Party, Role
from hangw.installcodes import InstallCodeError, derive_link_key, parse_install_code
from hangw.problems import (
    Conflict,
    Forbidden,
    IllegalTransitionProblem,
    InvalidField,
    MeterInactive,
    MeterNotHanCapable,
    NotFound,
    SlotsFull,
)
from hangw.provisioning import (
    COMMAND_TIMEOUT_STATUSES,
    INITIAL_STATUS,
    JOIN_WINDOW_STATUSES,
    MAX_SLOTS_PER_ESIID,
    SLOT_FREEING,
    DeviceStatus,
    Event,
    IllegalTransition,
    next_status,
)
from hangw.secrets import SecretBox
from hangw.store.db import Store, TurnBatch
from hangw.store.model import LIVE_STATUS, device_history, grants, han_devices, meters, outbox
from hangw.store.prepared import Prepared

if TYPE_CHECKING:
    from hangw.webhooks import Notifier

log = structlog.get_logger(__name__)

DEVICE_TYPES = (
    "in_home_display",
    "thermostat",
    "load_control",
    "smart_appliance",
    "range_extender",
    "other",
)

#: How a head-end's report maps onto the table's events.
REPORT_EVENTS: dict[HeadEndStatus, Event] = {
    HeadEndStatus.ACKNOWLEDGED: Event.TDSP_ACKNOWLEDGED,
    HeadEndStatus.ADD_PENDING: Event.ADD_PENDING,
    HeadEndStatus.METER_READY: Event.METER_READY,
    HeadEndStatus.DEVICE_JOINED: Event.DEVICE_JOINED,
    HeadEndStatus.ADD_REJECTED: Event.ADD_REJECTED,
    HeadEndStatus.ADD_FAILED: Event.ADD_FAILED,
    HeadEndStatus.REMOVE_PENDING: Event.REMOVE_PENDING,
    HeadEndStatus.REMOVE_REJECTED: Event.REMOVE_REJECTED,
    HeadEndStatus.REMOVE_FAILED: Event.REMOVE_FAILED,
    HeadEndStatus.DEVICE_REMOVED: Event.DEVICE_REMOVED,
}

#: Statuses in which removing the device withdraws its add request.
_ADDING_STATUSES = frozenset(
    {DeviceStatus.ADD_ACKNOWLEDGED, DeviceStatus.ADD_PENDING, DeviceStatus.METER_READY}
)
_HEX_MAC = re.compile(r"[0-9A-F]{16}")
_ESIID = re.compile(r"[0-9A-Za-z]{1,64}")


@dataclass(frozen=True)
class AddDeviceRequest:
    mac: str
    install_code: str
    device_type: str
    description: str = ""

    def __repr__(self) -> str:  # the install code never appears in a repr
        return f"AddDeviceRequest(mac={self.mac!r}, device_type={self.device_type!r})"


def normalize_mac(text: object) -> str:
    """An EUI-64 as 16 upper-case hex digits; separators ``:`` ``-`` and spaces are accepted."""
    if not isinstance(text, str):
        raise InvalidField("mac", "mac must be a string of 16 hexadecimal digits (an EUI-64)")
    mac = re.sub(r"[:\- ]", "", text).upper()
    # The value is described, not quoted: a code pasted into the wrong field must not echo back.
    if not _HEX_MAC.fullmatch(mac):
        raise InvalidField(
            "mac",
            f"mac is not an EUI-64: expected 16 hexadecimal digits (separators : - allowed), "
            f"e.g. 00:0D:6F:00:0A:1B:2C:3D; got {len(mac)} characters"
            + ("" if set(mac) <= set("0123456789ABCDEF") else ", some not hexadecimal"),
        )
    if mac in ("0000000000000000", "FFFFFFFFFFFFFFFF"):
        raise InvalidField("mac", f"mac {mac} is a reserved EUI-64, not a device address")
    return mac


def check_esiid(esiid: str) -> str:
    if not _ESIID.fullmatch(esiid):
        raise NotFound(f"{esiid!r} is not an ESI ID (1 to 64 letters and digits)")
    return esiid


def _meter(row: Any) -> Meter:
    return Meter(
        esiid=row.esiid,
        meter_serial=row.meter_serial,
        tdsp_duns=row.tdsp_duns,
        ror_duns=row.ror_duns,
        customer_id=row.customer_id,
        hardware_version=row.hardware_version,
        firmware_version=row.firmware_version,
        han_capable=bool(row.han_capable),
        active=bool(row.active),
    )


def _device(row: Any) -> Device:
    return Device(
        device_id=row.device_id,
        esiid=row.esiid,
        mac=row.mac,
        device_type=row.device_type,
        description=row.description,
        owner_party_id=row.owner_party_id,
        owner_role=Role(row.owner_role),
        status=DeviceStatus(row.status),
        status_at=row.status_at,
        reason=row.reason,
        created_at=row.created_at,
    )


def _history(row: Any) -> HistoryEntry:
    return HistoryEntry(
        device_id=row.device_id,
        esiid=row.esiid,
        status=DeviceStatus(row.status),
        event=row.event,
        at=row.at,
        actor=row.actor,
        reason=row.reason,
    )


_DEVICE_COLUMNS = [c for c in han_devices.c if c.name not in ("install_code_enc", "link_key_enc")]

# The statements of the hot paths, built once: SQLAlchemy then reuses their compiled form, which
# costs a fraction of building a statement per call. Bound names that match a column are
# prefixed ``b_`` (SQLAlchemy keeps the column names of an UPDATE for its SET clause).
_LATEST_COMMAND = (
    sa.select(outbox.c.command_id)
    .where(outbox.c.device_id == han_devices.c.device_id)
    .order_by(outbox.c.outbox_id.desc())
    .limit(1)
    .scalar_subquery()
    .label("latest_command")
)
_SELECT_DEVICE = Prepared(
    sa.select(*_DEVICE_COLUMNS).where(han_devices.c.device_id == sa.bindparam("b_device_id"))
)


def new_device_id(now: float) -> str:
    """A new device id: ``dev_``, the time in milliseconds, then 48 random bits (all hex).

    Ids made close in time sort close together, so the indexes keyed by device id (the devices'
    own, their history's, the outbox's) take each new key near the last one, on pages already in
    the cache and already written by the commit; random ids put every insert on a page of its
    own, read and written again, and that cost grows with the tables. The random part keeps ids
    of the same millisecond apart, also across gateways sharing one database.
    """
    return f"dev_{int(now * 1000):012x}{secrets.token_hex(6)}"


#: hangw_device_transitions_total, one child per status, looked up once instead of per change
_TRANSITIONS = {status: metrics.device_transitions.labels(status.value) for status in DeviceStatus}

_SELECT_DEVICE_WITH_COMMAND = Prepared(
    sa.select(*_DEVICE_COLUMNS, _LATEST_COMMAND, meters.c.tdsp_duns)
    .join(meters, meters.c.esiid == han_devices.c.esiid)
    .where(han_devices.c.device_id == sa.bindparam("b_device_id"))
)
#: An ESI ID's history, found through its devices (device_history has no ESI ID index).
_SELECT_ESIID_HISTORY = (
    sa.select(device_history)
    .where(
        device_history.c.device_id.in_(
            sa.select(han_devices.c.device_id).where(han_devices.c.esiid == sa.bindparam("b_esiid"))
        )
    )
    .order_by(device_history.c.history_id)
)
_UPDATE_STATUS = Prepared(
    han_devices.update()
    .where(
        han_devices.c.device_id == sa.bindparam("b_device_id"),
        han_devices.c.status == sa.bindparam("b_old"),
    )
    .values(
        status=sa.bindparam("b_new"),
        status_at=sa.bindparam("b_now"),
        reason=sa.bindparam("b_reason"),
        deadline=sa.bindparam("b_deadline"),
    )
)
_INSERT_HISTORY = Prepared(
    device_history.insert(),
    columns=("device_id", "esiid", "status", "event", "at", "actor", "reason"),
)
_INSERT_DEVICE = Prepared(
    han_devices.insert(),
    columns=[c.name for c in han_devices.c],
)
_INSERT_OUTBOX = Prepared(
    outbox.insert(), columns=("tdsp_duns", "command_id", "device_id", "kind", "created_at")
)
_SELECT_METER = Prepared(sa.select(meters).where(meters.c.esiid == sa.bindparam("b_esiid")))
_SELECT_METER_FOR_UPDATE = Prepared(
    sa.select(meters).where(meters.c.esiid == sa.bindparam("b_esiid")).with_for_update()
)
_SELECT_LIVE_GRANT = Prepared(
    sa.select(grants.c.grant_id).where(
        grants.c.esiid == sa.bindparam("b_esiid"),
        grants.c.hsp_party_id == sa.bindparam("b_hsp"),
        grants.c.revoked_at.is_(None),
    )
)
_SELECT_SLOT_HOLDERS = Prepared(
    sa.select(han_devices.c.device_id).where(
        han_devices.c.esiid == sa.bindparam("b_esiid"), LIVE_STATUS
    )
)
_SELECT_LIVE_MAC = Prepared(
    sa.select(han_devices.c.device_id, han_devices.c.esiid, han_devices.c.owner_role).where(
        han_devices.c.mac == sa.bindparam("b_mac"), LIVE_STATUS
    )
)
_PENDING_COMMANDS = Prepared(
    sa.select(
        outbox.c.outbox_id,
        outbox.c.command_id,
        outbox.c.device_id,
        outbox.c.kind,
        han_devices.c.esiid,
        han_devices.c.mac,
        han_devices.c.device_type,
        han_devices.c.status,
        han_devices.c.install_code_enc,
        han_devices.c.link_key_enc,
    )
    .join(han_devices, han_devices.c.device_id == outbox.c.device_id)
    .where(
        outbox.c.tdsp_duns == sa.bindparam("b_tdsp_duns"),
        outbox.c.retired_at.is_(None),
        outbox.c.outbox_id > sa.bindparam("b_after"),
    )
    .order_by(outbox.c.outbox_id)
    .limit(sa.bindparam("b_limit"))
)
_ABANDON_COMMANDS = Prepared(
    outbox.update()
    .where(outbox.c.device_id == sa.bindparam("b_device_id"), outbox.c.retired_at.is_(None))
    .values(retired_at=sa.bindparam("b_now"))
)
_UNRETIRED_PROVISIONS = Prepared(
    sa.select(outbox.c.command_id, outbox.c.created_at).where(
        outbox.c.device_id == sa.bindparam("b_device_id"),
        outbox.c.kind == "provision",
        outbox.c.retired_at.is_(None),
    )
)
_RETIRE = Prepared(
    outbox.update()
    .where(outbox.c.command_id == sa.bindparam("b_command_id"))
    .values(retired_at=sa.bindparam("b_now"), attempts=outbox.c.attempts + 1)
)


class DeviceService:
    """Provisioning as the API, the adapters and the timers see it."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        clock: IReactorTime,
        config: ProvisioningConfig,
        on_outbox: Callable[[], None] = lambda: None,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self._box = box
        self._clock = clock
        self._config = config
        self._on_outbox = on_outbox  # wakes the router after a command was queued
        self._notifier = notifier  # tells the owner's webhooks of every status change
        self._pruned_at = 0.0  # when remembered head-end event ids were last pruned
        self._reports: TurnBatch[ProvisioningReport, Device | ReportRefused | None] = TurnBatch(
            store, clock, self.apply_reports_thd, self._log_statuses
        )
        #: Was this command handed to its adapter (the router's answer; the gateway wires it)?
        self.handed_out: Callable[[str], bool] = lambda command_id: False
        #: Commands queued before this time may have gone out in an earlier run of the gateway.
        self._started_at = clock.seconds()

    # ---- reads shared by requests ------------------------------------------------------------

    def _load_meter(self, conn: sa.Connection, esiid: str, *, lock: bool = False) -> Meter:
        query = _SELECT_METER_FOR_UPDATE if lock else _SELECT_METER
        row = query.first(conn, {"b_esiid": esiid})
        if row is None:
            raise NotFound(f"ESI ID {esiid} is not in the meter registry")
        return _meter(row)

    def _live_grant(self, conn: sa.Connection, party: Party, esiid: str) -> bool:
        if party.role is not Role.HSP:
            return False
        row = _SELECT_LIVE_GRANT.first(conn, {"b_esiid": esiid, "b_hsp": party.party_id})
        return row is not None

    def _owner_may_read_thd(self, conn: sa.Connection, device: Device) -> bool:
        """May the party that added the device still read it? Its webhooks carry the device's
        changes only while it may (an HSP whose grant was revoked, a REP no longer of record:
        GET /v1/han-devices/{id} answers them 403, and a webhook must not tell them more)."""
        row = _SELECT_METER.first(conn, {"b_esiid": device.esiid})
        owner = Party(device.owner_party_id, device.owner_role, "", "")
        return row is not None and self._has_access(conn, owner, _meter(row))

    def _has_access(self, conn: sa.Connection, party: Party, meter: Meter) -> bool:
        live = self._live_grant(conn, party, meter.esiid)
        return authz.has_han_access(party, meter, live_grant=live)

    def _authorize(self, conn: sa.Connection, party: Party, meter: Meter) -> None:
        if not self._has_access(conn, party, meter):
            raise Forbidden(
                f"{party.role.value} {party.party_id} has no HAN access to ESI ID {meter.esiid}"
                + (
                    " (the customer has not granted it, or revoked it)"
                    if party.role is Role.HSP
                    else ""
                )
            )

    def _load_device(self, conn: sa.Connection, device_id: str) -> Device:
        row = _SELECT_DEVICE.first(conn, {"b_device_id": device_id})
        if row is None:
            raise NotFound(f"no HAN device with id {device_id}")
        return _device(row)

    def _deadline(self, status: DeviceStatus, now: float) -> float | None:
        if status in JOIN_WINDOW_STATUSES:
            return now + self._config.join_window_s
        if status in COMMAND_TIMEOUT_STATUSES:
            return now + self._config.command_timeout_s
        return None

    def _queue(
        self, conn: sa.Connection, meter_tdsp: str, device_id: str, kind: str, now: float
    ) -> None:
        _INSERT_OUTBOX.execute(
            conn,
            {
                "tdsp_duns": meter_tdsp,
                "command_id": f"{kind[:3]}-{device_id}-{secrets.token_hex(3)}",  # <= 40
                "device_id": device_id,
                "kind": kind,
                "created_at": now,
            },
        )

    def _write_history(
        self,
        conn: sa.Connection,
        device: Device,
        status: DeviceStatus,
        event: str,
        now: float,
        actor: str,
        reason: str,
    ) -> None:
        _INSERT_HISTORY.execute(
            conn,
            {
                "device_id": device.device_id,
                "esiid": device.esiid,
                "status": status.value,
                "event": event,
                "at": now,
                "actor": actor,
                "reason": reason,
            },
        )
        if (
            self._notifier is not None
            and self._notifier.wants(device.owner_party_id)
            and self._owner_may_read_thd(conn, device)
        ):
            self._notifier.enqueue_thd(
                conn,
                device.owner_party_id,
                [
                    {
                        "type": "device.status",
                        "device_id": device.device_id,
                        "esiid": device.esiid,
                        "status": status.value,
                        "event": event,
                        "reason": reason,
                        "at": now,
                    }
                ],
            )

    def _transition_thd(
        self,
        conn: sa.Connection,
        device_id: str,
        event: Event,
        actor: str,
        reason: str,
        now: float,
        device: Device | None = None,
    ) -> Device:
        """Move the device by ``event`` (``device``: its row, when the caller just read it)."""
        if device is None:
            device = self._load_device(conn, device_id)
        new = next_status(device.status, event)  # raises IllegalTransition before any write
        result = _UPDATE_STATUS.execute(
            conn,
            {
                "b_device_id": device_id,
                "b_old": device.status.value,
                "b_new": new.value,
                "b_now": now,
                "b_reason": reason,
                "b_deadline": self._deadline(new, now),
            },
        )
        if result.rowcount != 1:
            raise Conflict(f"device {device_id} changed status while this request ran; try again")
        self._write_history(conn, device, new, event.value, now, actor, reason)
        _TRANSITIONS[new].inc()
        return dataclasses.replace(device, status=new, status_at=now, reason=reason)

    # ---- requests from parties -----------------------------------------------------------------

    async def add_device(
        self,
        party: Party,
        esiid: str,
        request: AddDeviceRequest,
        also: Callable[[sa.Connection, Device], None] | None = None,
        before: Callable[[sa.Connection], None] | None = None,
    ) -> Device:
        """Add a device (Add Acknowledged) and queue its provisioning command, in one transaction.

        ``also(conn, device)`` runs last in that transaction, when the add is accepted: the API
        keeps an Idempotency-Key's answer there, so the answer is kept exactly when the add is.
        ``before(conn)`` runs first in it (the API claims the key there); what it raises
        refuses the add, and what it wrote is undone with the add.
        """
        check_esiid(esiid)
        mac = normalize_mac(request.mac)
        if request.device_type not in DEVICE_TYPES:
            raise InvalidField(
                "device_type", f"device_type must be one of {', '.join(DEVICE_TYPES)}"
            )
        if not isinstance(request.description, str) or len(request.description) > 200:
            raise InvalidField(
                "description", "description must be a string of at most 200 characters"
            )
        try:
            install_code = parse_install_code(request.install_code)
        except InstallCodeError as error:
            raise InvalidField("install_code", str(error)) from None
        now = self._clock.seconds()
        device_id = new_device_id(now)
        sealed_code = self._box.seal(install_code, device_id)
        sealed_key = self._box.seal(derive_link_key(install_code), device_id)

        def thd(conn: sa.Connection) -> Device:
            if before is not None:
                before(conn)
            meter = self._load_meter(conn, esiid, lock=True)
            self._authorize(conn, party, meter)
            if not meter.active:
                raise MeterInactive(
                    f"ESI ID {esiid} is not active (its meter was removed); "
                    "HAN devices cannot be added"
                )
            if not meter.han_capable:
                raise MeterNotHanCapable(
                    f"meter {meter.meter_serial} on ESI ID {esiid} runs firmware "
                    f"{meter.firmware_version} on hardware {meter.hardware_version}, "
                    f"which cannot serve HAN devices; the TDSP ({meter.tdsp_duns}) "
                    "must upgrade or exchange the meter first",
                    firmware_version=meter.firmware_version,
                )
            holders = _SELECT_SLOT_HOLDERS.scalars(conn, {"b_esiid": esiid})
            if len(holders) >= MAX_SLOTS_PER_ESIID:
                raise SlotsFull(
                    f"ESI ID {esiid} already has {len(holders)} HAN devices holding slots "
                    f"({', '.join(holders)}); remove one before adding another",
                    devices=list(holders),
                )
            clash = _SELECT_LIVE_MAC.first(conn, {"b_mac": mac})
            if clash is not None:
                if clash.esiid != esiid:
                    where = "on another ESI ID"
                elif authz.hides_identifiers_of(party, Role(clash.owner_role)):
                    # the customer sees the HSP's devices without their MACs: no id either
                    where = "on this ESI ID by a HAN service provider"
                else:
                    where = f"as device {clash.device_id}"
                raise Conflict(f"MAC {mac} is already provisioned {where}; remove it there first")
            device = Device(
                device_id=device_id,
                esiid=esiid,
                mac=mac,
                device_type=request.device_type,
                description=request.description,
                owner_party_id=party.party_id,
                owner_role=party.role,
                status=INITIAL_STATUS,
                status_at=now,
                reason="",
                created_at=now,
            )
            _INSERT_DEVICE.execute(
                conn,
                {
                    "device_id": device_id,
                    "esiid": esiid,
                    "mac": mac,
                    "install_code_enc": sealed_code,
                    "link_key_enc": sealed_key,
                    "device_type": device.device_type,
                    "description": device.description,
                    "owner_party_id": device.owner_party_id,
                    "owner_role": device.owner_role.value,
                    "status": INITIAL_STATUS.value,
                    "status_at": now,
                    "reason": "",
                    "deadline": self._deadline(INITIAL_STATUS, now),
                    "created_at": now,
                },
            )
            self._write_history(
                conn, device, INITIAL_STATUS, "add requested", now, party.party_id, ""
            )
            self._queue(conn, meter.tdsp_duns, device_id, "provision", now)
            if also is not None:
                also(conn, device)
            _TRANSITIONS[INITIAL_STATUS].inc()
            return device

        try:
            device = await self.store.run(thd)
        except self.store.integrity_errors:
            # another writer (a second gateway on PostgreSQL) made the MAC live meanwhile
            raise Conflict(f"MAC {mac} is already provisioned; remove it there first") from None
        log.info(
            "device.add_acknowledged", esiid=esiid, device=device_id, mac=mac, party=party.party_id
        )
        self._on_outbox()
        return device

    async def remove_device(self, party: Party, device_id: str, reason: str = "") -> Device:
        if not isinstance(reason, str) or len(reason) > 200:
            raise InvalidField("reason", "reason must be a string of at most 200 characters")
        now = self._clock.seconds()

        def thd(conn: sa.Connection) -> Device:
            device = self._load_device(conn, device_id)
            meter = self._load_meter(conn, device.esiid)
            live = self._live_grant(conn, party, meter.esiid)
            if not authz.may_remove(party, meter, device, live_grant=live):
                raise Forbidden(
                    f"{party.role.value} {party.party_id} may not remove device {device_id}"
                )
            why = reason or (
                "withdrawn before it was added" if device.status in _ADDING_STATUSES else ""
            )
            try:
                updated = self._transition_thd(
                    conn, device_id, Event.REMOVE_REQUESTED, party.party_id, why, now
                )
            except IllegalTransition as refusal:
                raise IllegalTransitionProblem(
                    f"device {device_id} is {refusal.status.value}; it cannot be removed now",
                    current_status=refusal.status.value,
                ) from None
            self._queue(conn, meter.tdsp_duns, device_id, "deprovision", now)
            return updated

        device = await self.store.run(thd)
        log.info(
            "device.remove_acknowledged", esiid=device.esiid, device=device_id, party=party.party_id
        )
        self._on_outbox()
        return device

    async def list_devices(self, party: Party, esiid: str) -> list[Device]:
        check_esiid(esiid)

        def thd(conn: sa.Connection) -> list[Device]:
            meter = self._load_meter(conn, esiid)
            self._authorize(conn, party, meter)
            rows = conn.execute(
                sa.select(*_DEVICE_COLUMNS)
                .where(han_devices.c.esiid == esiid)
                .order_by(han_devices.c.created_at, han_devices.c.device_id)
            )
            return [_device(row) for row in rows]

        return await self.store.run(thd)

    async def authorized_meter(self, party: Party, esiid: str) -> Meter:
        """The meter of an ESI ID the party may see the devices of (else Forbidden/NotFound)."""
        check_esiid(esiid)

        def thd(conn: sa.Connection) -> Meter:
            meter = self._load_meter(conn, esiid)
            self._authorize(conn, party, meter)
            return meter

        return await self.store.run(thd)

    async def authorized_device(self, party: Party, device_id: str) -> tuple[Device, Meter]:
        """A device the party may see, with its meter (else Forbidden/NotFound)."""

        def thd(conn: sa.Connection) -> tuple[Device, Meter]:
            device = self._load_device(conn, device_id)
            meter = self._load_meter(conn, device.esiid)
            self._authorize(conn, party, meter)
            return device, meter

        return await self.store.run(thd)

    async def get_device(self, party: Party, device_id: str) -> tuple[Device, list[HistoryEntry]]:
        def thd(conn: sa.Connection) -> tuple[Device, list[HistoryEntry]]:
            device = self._load_device(conn, device_id)
            self._authorize(conn, party, self._load_meter(conn, device.esiid))
            rows = conn.execute(
                sa.select(device_history)
                .where(device_history.c.device_id == device_id)
                .order_by(device_history.c.history_id)
            )
            return device, [_history(row) for row in rows]

        return await self.store.run(thd)

    async def esiid_history(self, party: Party, esiid: str) -> list[tuple[HistoryEntry, Device]]:
        check_esiid(esiid)

        def thd(conn: sa.Connection) -> list[tuple[HistoryEntry, Device]]:
            self._authorize(conn, party, self._load_meter(conn, esiid))
            devices = {
                row.device_id: _device(row)
                for row in conn.execute(
                    sa.select(*_DEVICE_COLUMNS).where(han_devices.c.esiid == esiid)
                )
            }
            rows = conn.execute(_SELECT_ESIID_HISTORY, {"b_esiid": esiid})
            return [(_history(row), devices[row.device_id]) for row in rows]

        return await self.store.run(thd)

    # ---- grants --------------------------------------------------------------------------------

    async def grant(
        self,
        party: Party,
        esiid: str,
        hsp_party_id: str,
        also: Callable[[sa.Connection, Grant], None] | None = None,
    ) -> Grant:
        """Grant ``hsp_party_id`` HAN access to ``esiid`` (its live grant, if it has one already).

        ``also(conn, grant)`` runs last in the grant's transaction, as in ``add_device``.
        """
        check_esiid(esiid)
        now = self._clock.seconds()

        def thd(conn: sa.Connection) -> Grant:
            from hangw.store.model import parties

            meter = self._load_meter(conn, esiid)
            if not authz.may_manage_grants(party, meter):
                raise Forbidden(f"only the customer of ESI ID {esiid} may grant HAN access")
            hsp = conn.execute(sa.select(parties).where(parties.c.party_id == hsp_party_id)).first()
            if hsp is None or hsp.role != Role.HSP.value:
                # described, not quoted: a code pasted into the wrong field must not echo back
                raise InvalidField(
                    "hsp_party_id",
                    "hsp_party_id is not the party id of a registered HAN service provider",
                )
            existing = _live_grant_row(conn, esiid, hsp_party_id)
            if existing is not None:
                grant = _grant(existing)
            else:
                grant = Grant(
                    "grt_" + secrets.token_hex(8), esiid, hsp_party_id, party.party_id, now, None
                )
                conn.execute(
                    grants.insert().values(
                        grant_id=grant.grant_id,
                        esiid=esiid,
                        hsp_party_id=hsp_party_id,
                        granted_by=party.party_id,
                        granted_at=now,
                        revoked_at=None,
                    )
                )
            if also is not None:
                also(conn, grant)
            return grant

        return await self.store.run(thd)

    async def revoke(self, party: Party, esiid: str, hsp_party_id: str) -> Grant:
        check_esiid(esiid)
        now = self._clock.seconds()

        def thd(conn: sa.Connection) -> Grant:
            meter = self._load_meter(conn, esiid)
            if not authz.may_manage_grants(party, meter):
                raise Forbidden(f"only the customer of ESI ID {esiid} may revoke HAN access")
            row = _live_grant_row(conn, esiid, hsp_party_id)
            if row is None:
                raise NotFound(
                    f"HAN service provider {hsp_party_id} has no live grant on ESI ID {esiid}"
                )
            conn.execute(
                grants.update().where(grants.c.grant_id == row.grant_id).values(revoked_at=now)
            )
            return Grant(row.grant_id, esiid, hsp_party_id, row.granted_by, row.granted_at, now)

        return await self.store.run(thd)

    async def list_grants(self, party: Party, esiid: str) -> list[Grant]:
        check_esiid(esiid)

        def thd(conn: sa.Connection) -> list[Grant]:
            meter = self._load_meter(conn, esiid)
            self._authorize(conn, party, meter)
            query = sa.select(grants).where(grants.c.esiid == esiid).order_by(grants.c.granted_at)
            if party.role is Role.HSP:
                query = query.where(grants.c.hsp_party_id == party.party_id)
            return [_grant(row) for row in conn.execute(query)]

        return await self.store.run(thd)

    # ---- head-end reports and timers -----------------------------------------------------------

    def apply_report_thd(
        self, conn: sa.Connection, report: ProvisioningReport, now: float
    ) -> Device | None:
        """Apply one head-end report; None when it is stale or illegal (logged, nothing written)."""
        row = _SELECT_DEVICE_WITH_COMMAND.first(conn, {"b_device_id": report.device_id})
        if row is not None and report.tdsp_duns and row.tdsp_duns != report.tdsp_duns:
            raise ReportRefused(
                f"device {report.device_id} is on a meter of another TDSP, not {report.tdsp_duns}'s"
            )
        if row is not None and report.esiid and row.esiid != report.esiid:
            raise ReportRefused(f"device {report.device_id} is not on ESI ID {report.esiid}")
        latest = row.latest_command if row is not None else None
        if row is None or latest != report.command_id:
            log.warning(
                "report.stale",
                device=report.device_id,
                command=report.command_id,
                status=report.status.value,
                latest_command=latest,
            )
            return None
        try:
            return self._transition_thd(
                conn,
                report.device_id,
                REPORT_EVENTS[report.status],
                row.tdsp_duns,  # the head-end acts for the meter's TDSP
                report.reason,
                now,
                device=_device(row),
            )
        except IllegalTransition as refusal:
            log.warning(
                "report.illegal",
                device=report.device_id,
                command=report.command_id,
                status=refusal.status.value,
                tdsp_status=report.status.value,
            )
            return None

    def apply_reports_thd(
        self, conn: sa.Connection, reports: list[ProvisioningReport], now: float
    ) -> list[Device | ReportRefused | None]:
        """Apply reports in the order they came, in one transaction; refusals are returned.

        A report whose head-end event id was answered before (a copy resent because the gateway
        died before its acknowledgement went out) gets the same answer and is not applied again;
        the answer of every new one is recorded in this transaction.
        """
        answered: dict[tuple[str, str], str | None] = {}
        by_tdsp: dict[str, list[str]] = {}
        for report in reports:
            if report.event_id:
                by_tdsp.setdefault(report.tdsp_duns, []).append(report.event_id)
        for tdsp_duns, event_ids in by_tdsp.items():
            earlier = head_end_events.answers_thd(conn, tdsp_duns, event_ids)
            for event_id, refusal in earlier.items():
                answered[tdsp_duns, event_id] = refusal
        results: list[Device | ReportRefused | None] = []
        new: dict[str, list[tuple[str, str | None]]] = {}
        for report in reports:
            key = (report.tdsp_duns, report.event_id)
            if report.event_id and key in answered:
                log.info("report.duplicate", device=report.device_id, event_id=report.event_id)
                first = answered[key]
                results.append(None if first is None else ReportRefused(first))
                continue
            try:
                results.append(self.apply_report_thd(conn, report, now))
                answer: str | None = None
            except ReportRefused as refusal:
                log.warning(
                    "report.refused",
                    device=report.device_id,
                    command=report.command_id,
                    tdsp=report.tdsp_duns,
                    why=str(refusal),
                )
                results.append(refusal)
                answer = str(refusal)
            if report.event_id:
                answered[key] = answer
                new.setdefault(report.tdsp_duns, []).append((report.event_id, answer))
        for tdsp_duns, answers in new.items():
            head_end_events.record_thd(conn, tdsp_duns, answers, now)
        return results

    def apply_report(self, report: ProvisioningReport) -> Deferred[Device | None]:
        """Apply a head-end report; fires with the device, or None when it was stale or illegal.

        Reports that arrive in the same reactor turn are applied by one store job, in order: a
        head-end reports for thousands of devices at once, and one job each would queue them.
        A report about a device of another TDSP or ESI ID fails with ReportRefused.
        """

        def refused(result: Device | ReportRefused | None) -> Device | None:
            if isinstance(result, ReportRefused):
                raise result
            return result

        return self._reports.add(report).addCallback(refused)

    def _log_statuses(
        self, reports: list[ProvisioningReport], devices: list[Device | ReportRefused | None]
    ) -> None:
        if not logs.is_enabled(log, logging.INFO):
            return
        for device in devices:
            if isinstance(device, Device):
                log.info(
                    "device.status",
                    esiid=device.esiid,
                    device=device.device_id,
                    status=device.status.value,
                    reason=device.reason or None,
                )

    def fire_timers_thd(self, conn: sa.Connection, now: float) -> list[Device]:
        """Move every device whose timer ran out: join window -> Add Failed, timeout -> *Failed."""
        return self._fire_timers_thd(conn, now)[0]

    def _fire_timers_thd(
        self, conn: sa.Connection, now: float
    ) -> tuple[list[Device], list[tuple[Device, list[tuple[str, float]]]]]:
        """The devices moved, and the adds abandoned unanswered with their unretired provisions
        (command id, queued at): the head-end may hold one of those all the same (see
        fire_timers)."""
        due = conn.execute(
            sa.select(han_devices.c.device_id, han_devices.c.status)
            .where(han_devices.c.deadline.is_not(None), han_devices.c.deadline <= now)
            .order_by(han_devices.c.deadline)
            .limit(500)
        ).all()
        moved = []
        unsure: list[tuple[Device, list[tuple[str, float]]]] = []
        for device_id, status in due:
            if DeviceStatus(status) in JOIN_WINDOW_STATUSES:
                event = Event.JOIN_WINDOW_EXPIRED
                reason = (
                    f"the device did not join within the {self._config.join_window_s} s join window"
                )
            else:
                event = Event.COMMAND_TIMED_OUT
                reason = f"the TDSP did not answer within {self._config.command_timeout_s} s"
            add_unanswered = (
                event is Event.COMMAND_TIMED_OUT
                and DeviceStatus(status) is DeviceStatus.ADD_ACKNOWLEDGED
            )
            provisions = (
                [
                    (row.command_id, row.created_at)
                    for row in _UNRETIRED_PROVISIONS.all(conn, {"b_device_id": device_id})
                ]
                if add_unanswered
                else []
            )
            device = self._transition_thd(conn, device_id, event, "gateway", reason, now)
            moved.append(device)
            # What the head-end has not taken yet is abandoned with the device: sent later, it
            # would act on a device the gateway has given up on (and whose slot is free again).
            _ABANDON_COMMANDS.execute(conn, {"b_device_id": device_id, "b_now": now})
            if add_unanswered and not provisions:
                # the head-end took the add and never answered: take it back off the meter
                self._take_back_thd(conn, device, now)
            elif provisions:
                unsure.append((device, provisions))
        return moved, unsure

    def _take_back_thd(self, conn: sa.Connection, device: Device, now: float) -> None:
        """Queue a de-provision for a device the gateway gave up adding."""
        meter = self._load_meter(conn, device.esiid)
        self._queue(conn, meter.tdsp_duns, device.device_id, "deprovision", now)

    def _may_have_gone_out(self, provisions: list[tuple[str, float]]) -> bool:
        """Might the head-end hold one of these unretired provisions?

        With several writers (PostgreSQL) the router's read of the outbox may run beside the
        timer's transaction and hand the provision out after this question: then it may have.
        """
        if self.store.writers > 1:
            return True
        return any(
            self.handed_out(command_id) or queued_at < self._started_at
            for command_id, queued_at in provisions
        )

    async def fire_timers(self) -> list[Device]:
        now = self._clock.seconds()
        moved, unsure = await self.store.run(self._fire_timers_thd, now)
        # An unretired provision may have reached the head-end all the same: handed out and not
        # acknowledged yet, or its acknowledgement lost with the link (or with an earlier run of
        # the gateway). The head-end could add the device after the gateway freed its slot, so
        # it is taken back too. Asked here, on the reactor, after the timer's transaction: with
        # one writer (SQLite) the router has then handed out every command it read before that
        # transaction, and any it reads later is already retired.
        taken_back = [
            device for device, provisions in unsure if self._may_have_gone_out(provisions)
        ]
        if taken_back:

            def take_back_thd(conn: sa.Connection) -> None:
                for device in taken_back:
                    self._take_back_thd(conn, device, now)

            await self.store.run(take_back_thd)
        if moved:
            self._on_outbox()  # an add the head-end took but never answered is taken back now
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            await self.store.run(head_end_events.prune_thd, now)
        for device in moved:
            log.info(
                "device.status",
                esiid=device.esiid,
                device=device.device_id,
                status=device.status.value,
                reason=device.reason,
            )
        return moved

    # ---- the router's view of the outbox -------------------------------------------------------

    def pending_commands_thd(
        self, conn: sa.Connection, tdsp_duns: str, limit: int, skip: frozenset[str]
    ) -> list[Command]:
        """Up to ``limit`` unretired commands for the TDSP, oldest first, leaving out ``skip``."""
        return self.pending_after_thd(conn, tdsp_duns, limit, skip, 0)[0]

    def pending_after_thd(
        self, conn: sa.Connection, tdsp_duns: str, limit: int, skip: frozenset[str], after: int
    ) -> tuple[list[Command], int]:
        """Unretired commands queued after outbox row ``after``, and the last row looked at.

        The router passes the last row it handed out, so commands still on their way to the
        head-end are not read again on every drain; it passes 0 to look at everything again.
        """
        rows = _PENDING_COMMANDS.all(
            conn,
            {"b_tdsp_duns": tdsp_duns, "b_after": after, "b_limit": limit + len(skip)},
        )
        last = rows[-1].outbox_id if rows else after
        commands: list[Command] = []
        for row in rows:
            if row.command_id in skip:
                continue
            if row.kind == "provision" and DeviceStatus(row.status) in SLOT_FREEING:
                # the device failed or was removed before its add went out: never send it
                now = self._clock.seconds()
                _RETIRE.execute(conn, {"b_command_id": row.command_id, "b_now": now})
                continue
            if row.kind == "provision":
                try:
                    install_code = self._box.open(row.install_code_enc, row.device_id)
                    link_key = self._box.open(row.link_key_enc, row.device_id)
                except InvalidTag:
                    # sealed with another key (or damaged): it can never be sent, and must not
                    # hold up every other command of this TDSP; the command timeout fails it
                    log.error(
                        "outbox.secret_unreadable",
                        device=row.device_id,
                        command=row.command_id,
                        why="sealed with another store key, or damaged",
                    )
                    now = self._clock.seconds()
                    _RETIRE.execute(conn, {"b_command_id": row.command_id, "b_now": now})
                    continue
                commands.append(
                    ProvisionDevice(
                        command_id=row.command_id,
                        esiid=row.esiid,
                        device_id=row.device_id,
                        mac=row.mac,
                        install_code=install_code,
                        link_key=link_key,
                        join_window_s=self._config.join_window_s,
                        device_type=row.device_type,
                    )
                )
            else:
                commands.append(
                    DeprovisionDevice(
                        command_id=row.command_id,
                        esiid=row.esiid,
                        device_id=row.device_id,
                        mac=row.mac,
                    )
                )
            if len(commands) == limit:
                last = row.outbox_id
                break
        return commands, last

    def retire_many_thd(self, conn: sa.Connection, command_ids: list[str], now: float) -> None:
        """Retire commands the head-end accepted (one statement for the whole batch)."""
        if command_ids:
            _RETIRE.executemany(conn, [{"b_command_id": c, "b_now": now} for c in command_ids])


def _live_grant_row(conn: sa.Connection, esiid: str, hsp_party_id: str) -> Any:
    """The HSP's unrevoked grant on the ESI ID, or None."""
    return conn.execute(
        sa.select(grants).where(
            grants.c.esiid == esiid,
            grants.c.hsp_party_id == hsp_party_id,
            grants.c.revoked_at.is_(None),
        )
    ).first()


def _grant(row: Any) -> Grant:
    return Grant(
        row.grant_id, row.esiid, row.hsp_party_id, row.granted_by, row.granted_at, row.revoked_at
    )
