"""Messaging as the API, the router, the adapters and the timers see it.

A request is accepted in one transaction: the request row, one delivery per target ESI ID
(status RQA) and, for devices the registry knows and that will answer, one per device; the
fan-out outbox rows (one per TDSP and chunk of ESI IDs); and, for a load control event, the older
overlapping events it supersedes. The router hands each outbox row to the TDSP's adapter as one
``FanOutFrame``; the head-end's acknowledgement makes the chunk's deliveries ACK (or PEN, for an
event that starts later). Delivery statuses from the head-end settle the ESI ID's delivery;
the devices' Report Event Status and Message Confirmation frames, decoded with sep1, settle a
delivery per device (made when a device the registry did not know answers). A delivery that is
not settled by its deadline fails (FLR).

Every status a delivery takes is a row of ``delivery_statuses``: that is the message log.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

import sep1
from adapters.commands import (
    TO_ESI,
    DeliveryState,
    DeliveryStatus,
    FanOutFrame,
    FanOutTarget,
    InboundFrame,
)
from hangw import metrics
from hangw.config import MessagingConfig
from hangw.domain import Party, Role
from hangw.head_end_events import answers_thd, record_thd
from hangw.messaging import requests as specs
from hangw.messaging.categories import (
    CANCEL_ANSWERS,
    SETTLED,
    Category,
    StatusCode,
    event_status,
)
from hangw.problems import Conflict, Forbidden, InvalidField, NotFound, Problem
from hangw.store.db import Store
from hangw.store.model import (
    DESCRIPTION_LENGTH,
    deliveries,
    delivery_statuses,
    esiid_groups,
    group_members,
    message_outbox,
    message_requests,
    meters,
)
from hangw.webhooks import Notifier
from sep1 import (
    CancelAllLoadControlEvents,
    CancelLoadControlEvent,
    CancelMessage,
    EventStatus,
    MessageConfirmation,
    ReportEventStatus,
    utctime,
)

log = structlog.get_logger(__name__)

#: Run last in a request's own transaction with the summary it answers (see ``send``).
Also = Callable[[sa.Connection, dict[str, Any]], None] | None

#: Device types (hangw.devices.DEVICE_TYPES) and the Device Class bits they take load control
#: for; a registered device of a matching type gets a delivery of its own for an LCE.
LOAD_CLASSES = {
    "thermostat": 0x0003,  # HVAC compressor or furnace, strip heaters
    "load_control": 0x07EC,  # water heater, pool pump, irrigation, C&I, on/off loads, lights, EV
    "smart_appliance": 0x0010,
}
#: Device types that show text (and confirm it when asked) and take prices.
DISPLAY_TYPES = ("in_home_display", "thermostat")
PRICE_TYPES = ("in_home_display", "thermostat", "smart_appliance")
#: How many warnings a large request lists before it only counts.
MAX_LISTED = 10

#: A delivery id as a head-end reports it: ASCII digits (str.isdigit() takes '²', which int()
#: refuses) few enough for the store's BIGINT.
_DELIVERY_ID = re.compile(r"[0-9]{1,18}")
#: What RQA says, in the message log and wherever a delivery's status is shown.
ACCEPTED_DESCRIPTION = "request accepted and queued for the TDSP"
_RANK_SQL = "CASE {0} WHEN 'RQA' THEN 0 WHEN 'ACK' THEN 1 WHEN 'PEN' THEN 2 ELSE 3 END"
_SETTLED_SQL = "('STR', 'CON', 'OPT', 'FLR')"


#: A delivery's new status (a delivery made for a device first heard from), unless it would go
#: back; see ``_apply_thd``.
_UPSERT = (
    "INSERT INTO deliveries (request_id, esiid, mac, tdsp_duns, chunk, status, "
    "status_desc, status_at, settled_at, deadline) "
    "VALUES (:r, :e, :m, :t, -1, :s, :d, :at, :settled, NULL) "
    "ON CONFLICT (request_id, esiid, mac) DO UPDATE SET "
    "status = excluded.status, status_desc = excluded.status_desc, "
    "status_at = excluded.status_at, "
    "settled_at = COALESCE(deliveries.settled_at, excluded.settled_at), "
    "deadline = CASE WHEN excluded.settled_at IS NULL THEN deliveries.deadline "
    "ELSE NULL END "
    f"WHERE {_RANK_SQL.format('excluded.status')} >= {_RANK_SQL.format('deliveries.status')} "
    # a settled delivery takes only a newer settled answer; FLR is final; "command received"
    # says less than "started" or "opted out"
    f"AND (deliveries.status NOT IN {_SETTLED_SQL} OR (deliveries.status <> 'FLR' "
    "AND excluded.status_at >= deliveries.status_at "
    "AND NOT (:received = 1 AND deliveries.status IN ('STR', 'OPT'))))"
)


class RequestRefused(Problem):
    status, slug, title = 422, "message-refused", "Message request refused"


class CancelRefused(Problem):
    status, slug, title = 409, "cancel-refused", "Nothing to cancel"


@dataclass
class _Live:
    """A request the gateway matches device answers to: its targets, by ESI ID -> TDSP."""

    request_id: str
    category: Category
    party_id: str
    issuer_event_id: int | None
    created_at: float
    cancels_request_id: str | None
    targets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Told:
    """What a ``message.status`` event names of a delivery."""

    delivery_id: int
    request_id: str
    esiid: str
    mac: str
    category: str
    cancellation_id: str | None


@dataclass(frozen=True)
class Change:
    """One status for one delivery, keyed as the log is: (request, ESI ID, device MAC or '')."""

    request_id: str
    esiid: str
    mac: str
    tdsp_duns: str
    code: StatusCode
    description: str
    at: float
    #: A device's "command received": it does not replace a STR or an OPT.
    received: bool = False


def new_request_id() -> str:
    return "R" + secrets.token_hex(6).upper()


def new_cancellation_id() -> str:
    return "C" + secrets.token_hex(6).upper()


class MessagingService:
    """Requests, cancellations, groups, the fan-out outbox and what comes back."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        config: MessagingConfig,
        *,
        notifier: Notifier | None = None,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._config = config
        self._notifier = notifier
        self._on_outbox = on_outbox
        #: (cluster, issuer event id) -> request ids, newest last; a key is here once the store's
        #: requests with it were read (a request made before that waits in ``_unloaded``).
        self._by_event: dict[tuple[int, int], list[str]] = {}
        self._unloaded: dict[tuple[int, int], list[str]] = {}
        self._live: dict[str, _Live] = {}
        #: Cancel-all requests still matched to answers, newest last; complete once the store's
        #: were read (``_cancel_alls_loaded``; one made before that waits in ``_unloaded_cals``).
        self._cancel_alls: list[str] = []
        self._cancel_alls_loaded = False
        self._unloaded_cals: list[str] = []
        #: Decoded inbound frames by their bytes: a fan-out's answers repeat.
        self._decoded: dict[tuple[int, bytes], Any] = {}

    # ---- accepting requests --------------------------------------------------------------------

    def _deadline(self, now: float, end_at: float | None) -> float:
        deadline = now + self._config.settle_timeout_s
        return min(deadline, end_at) if end_at is not None else deadline

    def _check_sender(self, party: Party) -> None:
        if party.role is Role.CUSTOMER:
            raise Forbidden(
                "customers cannot send HAN messages; prices, load control and text come from "
                "the REP of record, the TDSP, or a HAN service provider the customer granted "
                "access"
            )

    async def send(self, party: Party, body: dict[str, Any], also: Also = None) -> dict[str, Any]:
        """Accept a PRM, LCE or STM request (POST /v1/messages).

        ``also(conn, summary)`` runs last in the request's transaction (the API keeps an
        Idempotency-Key's answer there); so it does in ``cancel`` and ``cancel_all``.
        """
        self._check_sender(party)
        now = self._clock.seconds()
        spec = specs.message_spec(body, now)
        targets = specs.targets_of(body)
        request_id = new_request_id()
        frame = sep1.encode(spec.message, secrets.randbelow(256))
        event_key = f"{party.party_id}:{spec.category}:{spec.issuer_event_id}"

        def thd(conn: sa.Connection) -> dict[str, Any]:
            earlier = conn.execute(
                sa.select(message_requests.c.request_id).where(
                    message_requests.c.event_key == event_key
                )
            ).scalar()
            if earlier is not None:
                id_name = "message_id" if spec.category is Category.TEXT else "issuer_event_id"
                raise Conflict(
                    f"{id_name} {spec.issuer_event_id} was already used by you in request "
                    f"{earlier}; SE 1.0 devices would take this as the same {spec.category}. "
                    "Use a new id (or cancel the earlier one)"
                )
            conn.execute(
                message_requests.insert(),
                {
                    "request_id": request_id,
                    "category": spec.category.value,
                    "party_id": party.party_id,
                    "party_role": party.role.value,
                    "created_at": now,
                    "issuer_event_id": spec.issuer_event_id,
                    "event_key": event_key,
                    "device_class": spec.device_class,
                    "enrollment_group": spec.enrollment_group,
                    "start_at": spec.start_at,
                    "end_at": spec.end_at,
                    "destination": spec.destination,
                    "cluster": spec.cluster,
                    "zcl": frame,
                    "fields": spec.fields_json(),
                    "group_name": targets.group,
                    "targets": 0,
                    "state": "queued",
                },
            )
            count = self._insert_targets_thd(conn, party, request_id, targets, now, spec.end_at)
            warnings = list(spec.warnings)
            device_types: Sequence[str] = ()
            if spec.category is Category.LOAD_CONTROL:
                assert spec.device_class is not None
                device_types = [t for t, bits in LOAD_CLASSES.items() if bits & spec.device_class]
            elif spec.category is Category.TEXT and spec.message.confirmation_required:  # type: ignore[attr-defined]
                device_types = DISPLAY_TYPES
            if device_types:
                self._insert_known_devices_thd(conn, request_id, device_types)
            if spec.category is Category.PRICE:
                warnings += self._price_warnings_thd(conn, request_id)
            if spec.category is Category.LOAD_CONTROL:
                warnings += self._supersede_thd(conn, party, request_id, spec, now)
            if warnings:  # kept for every later read of the request
                conn.execute(
                    message_requests.update()
                    .where(message_requests.c.request_id == request_id)
                    .values(warnings=json.dumps(warnings))
                )
            self._accepted_thd(conn, party, request_id, count, now)
            summary = self._summary_thd(conn, request_id)
            if also is not None:
                also(conn, summary)
            return summary

        summary = await self.store.run(thd)
        self._remember(
            _Live(request_id, spec.category, party.party_id, spec.issuer_event_id, now, None),
            spec.cluster,
        )
        log.info(
            "message.accepted",
            request_id=request_id,
            category=spec.category.value,
            party=party.party_id,
            targets=summary["targets"],
        )
        self._on_outbox()
        return summary

    def _insert_targets_thd(
        self,
        conn: sa.Connection,
        party: Party,
        request_id: str,
        targets: specs.Targets,
        now: float,
        end_at: float | None,
    ) -> int:
        """One ESI ID delivery per target, checked as one set; raises before anything stays."""
        deadline = self._deadline(now, end_at)
        params = {"r": request_id, "now": now, "deadline": deadline}
        if targets.group is not None:
            size = conn.execute(
                sa.select(esiid_groups.c.size).where(
                    esiid_groups.c.party_id == party.party_id,
                    esiid_groups.c.name == targets.group,
                )
            ).scalar()
            if size is None:
                raise NotFound(
                    f"you have no group {targets.group!r}; create it with PUT "
                    f"/v1/groups/{targets.group}"
                )
            conn.execute(
                sa.text(
                    "INSERT INTO deliveries (request_id, esiid, mac, tdsp_duns, chunk, status, "
                    "status_desc, status_at, deadline) "
                    "SELECT :r, m.esiid, '', m.tdsp_duns, 0, 'RQA', '', :now, :deadline "
                    "FROM group_members g JOIN meters m ON m.esiid = g.esiid "
                    "WHERE g.party_id = :p AND g.name = :g ORDER BY g.esiid"
                ),
                {**params, "p": party.party_id, "g": targets.group},
            )
        else:
            conn.execute(
                sa.text(
                    "INSERT INTO deliveries (request_id, esiid, mac, tdsp_duns, chunk, status, "
                    "status_desc, status_at, deadline) "
                    "SELECT :r, m.esiid, '', m.tdsp_duns, 0, 'RQA', '', :now, :deadline "
                    "FROM meters m WHERE m.esiid = :e"
                ),
                [{**params, "e": esiid} for esiid in targets.esiids],
            )
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(deliveries)
            .where(deliveries.c.request_id == request_id)
        ).scalar_one()
        if targets.group is None and count < len(targets.esiids):
            known = set(
                conn.execute(
                    sa.select(deliveries.c.esiid).where(deliveries.c.request_id == request_id)
                ).scalars()
            )
            unknown = [e for e in targets.esiids if e not in known]
            raise RequestRefused(
                f"{len(unknown)} ESI ID(s) are not in the meter registry: "
                + ", ".join(unknown[:MAX_LISTED])
                + ("..." if len(unknown) > MAX_LISTED else ""),
                unknown=unknown[:100],
            )
        if count == 0:
            raise RequestRefused(f"group {targets.group!r} is empty; nothing to send")
        self._check_targets_thd(conn, party, request_id)
        conn.execute(
            sa.text(
                "UPDATE deliveries SET chunk = (delivery_id - "
                "(SELECT MIN(delivery_id) FROM deliveries WHERE request_id = :r)) / :size "
                "WHERE request_id = :r"
            ),
            {"r": request_id, "size": self._config.fan_out_chunk},
        )
        conn.execute(
            message_requests.update()
            .where(message_requests.c.request_id == request_id)
            .values(targets=count)
        )
        return count

    def _check_targets_thd(self, conn: sa.Connection, party: Party, request_id: str) -> None:
        """Refuse the request when any target is inactive, not HAN-capable or not the party's."""

        def offenders(condition: str, **extra: Any) -> list[str]:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT d.esiid FROM deliveries d JOIN meters m ON m.esiid = d.esiid "
                        f"WHERE d.request_id = :r AND d.mac = '' AND ({condition}) "
                        "ORDER BY d.esiid LIMIT 101"
                    ),
                    {"r": request_id, **extra},
                ).scalars()
            )

        def listed(esiids: list[str]) -> str:
            more = "..." if len(esiids) > MAX_LISTED else ""
            return ", ".join(esiids[:MAX_LISTED]) + more

        if party.role is Role.REP:
            bad = offenders("m.ror_duns <> :p", p=party.party_id)
            why = "you are not their REP of record"
        elif party.role is Role.TDSP:
            bad = offenders("m.tdsp_duns <> :p", p=party.party_id)
            why = "their meters are not yours"
        else:  # HSP
            bad = offenders(
                "NOT EXISTS (SELECT 1 FROM grants g WHERE g.esiid = d.esiid "
                "AND g.hsp_party_id = :p AND g.revoked_at IS NULL)",
                p=party.party_id,
            )
            why = "their customers have not granted you HAN access (or revoked it)"
        if bad:
            raise Forbidden(
                f"you may not send to {len(bad)}{'+' if len(bad) > 100 else ''} of these ESI "
                f"IDs: {why}: {listed(bad)}",
                esiids=bad[:100],
            )
        inactive = offenders("m.active = :no", no=False)
        if inactive:
            raise RequestRefused(
                f"ESI ID(s) not active (meter removed): {listed(inactive)}", esiids=inactive[:100]
            )
        incapable = offenders("m.han_capable = :no", no=False)
        if incapable:
            raise RequestRefused(
                f"the meters of these ESI IDs run firmware that cannot serve a HAN: "
                f"{listed(incapable)}; the TDSP must upgrade or exchange them first",
                esiids=incapable[:100],
            )

    def _insert_known_devices_thd(
        self, conn: sa.Connection, request_id: str, device_types: Sequence[str]
    ) -> None:
        """A delivery per registered device (Device Added) of a kind that will answer."""
        types = ", ".join(f"'{t}'" for t in device_types)  # constants, not input
        conn.execute(
            sa.text(
                "INSERT INTO deliveries (request_id, esiid, mac, tdsp_duns, chunk, status, "
                "status_desc, status_at, deadline) "
                "SELECT d.request_id, d.esiid, h.mac, d.tdsp_duns, d.chunk, 'RQA', '', "
                "d.status_at, d.deadline FROM deliveries d JOIN han_devices h "
                "ON h.esiid = d.esiid AND h.status = 'Device Added' "
                f"AND h.device_type IN ({types}) "
                "WHERE d.request_id = :r AND d.mac = ''"
            ),
            {"r": request_id},
        )

    def _price_warnings_thd(self, conn: sa.Connection, request_id: str) -> list[str]:
        types = ", ".join(f"'{t}'" for t in PRICE_TYPES)
        without = list(
            conn.execute(
                sa.text(
                    "SELECT d.esiid FROM deliveries d WHERE d.request_id = :r AND d.mac = '' "
                    "AND NOT EXISTS (SELECT 1 FROM han_devices h WHERE h.esiid = d.esiid "
                    f"AND h.status = 'Device Added' AND h.device_type IN ({types})) "
                    "ORDER BY d.esiid LIMIT 101"
                ),
                {"r": request_id},
            ).scalars()
        )
        if not without:
            return []
        note = (
            "no price-capable HAN device is registered on this ESI ID; the meter keeps the price "
            "for devices that ask"
        )
        conn.execute(
            sa.text(
                "UPDATE deliveries SET status_desc = :note WHERE request_id = :r AND mac = '' "
                "AND esiid = :e"
            ),
            [{"r": request_id, "e": e, "note": note} for e in without[:100]],
        )
        listed = ", ".join(without[:MAX_LISTED]) + ("..." if len(without) > MAX_LISTED else "")
        return [f"{note}: {listed}"]

    def _supersede_thd(
        self,
        conn: sa.Connection,
        party: Party,
        request_id: str,
        spec: specs.MessageSpec,
        now: float,
    ) -> list[str]:
        """Older overlapping events (same enrollment group, a common device class) on the same
        ESI IDs are superseded: their deliveries say so, from now. Devices do so whoever sent
        either event, but a party is shown the ids of its own requests only."""
        assert spec.device_class is not None and spec.end_at is not None
        older = conn.execute(
            sa.select(
                message_requests.c.request_id,
                message_requests.c.issuer_event_id,
                message_requests.c.device_class,
                message_requests.c.party_id,
            ).where(
                message_requests.c.category == Category.LOAD_CONTROL.value,
                message_requests.c.request_id != request_id,
                message_requests.c.enrollment_group == spec.enrollment_group,
                message_requests.c.cancelled_by.is_(None),
                message_requests.c.start_at < spec.end_at,
                message_requests.c.end_at > max(spec.start_at, now),
            )
        ).all()
        warnings = []
        for row in older:
            if not row.device_class & spec.device_class:
                continue
            own = row.party_id == party.party_id
            if own:
                description = (
                    f"superseded by issuer event {spec.issuer_event_id} (request {request_id})"
                )
            else:
                description = "superseded by a newer overlapping event of another sender"
            shared = "SELECT esiid FROM deliveries WHERE request_id = :new AND mac = ''"
            params = {"old": row.request_id, "new": request_id, "d": description, "now": now}
            # a delivery already superseded (by an earlier request, or as its device said) stays
            # so, and a failed one keeps its reason
            fresh = "status_desc NOT LIKE '%superseded%' AND status <> 'FLR'"
            inserted = conn.execute(
                sa.text(
                    "INSERT INTO delivery_statuses (request_id, esiid, mac, code, description, at) "
                    "SELECT request_id, esiid, mac, status, :d, :now FROM deliveries "
                    f"WHERE request_id = :old AND {fresh} AND esiid IN ({shared})"
                ),
                params,
            ).rowcount
            if not inserted:
                continue
            # the status itself (and its time) stays: a device's own answer, dated by its clock,
            # must still be able to follow
            conn.execute(
                sa.text(
                    "UPDATE deliveries SET status_desc = :d "
                    f"WHERE request_id = :old AND {fresh} AND esiid IN ({shared})"
                ),
                params,
            )
            if not own:
                warnings.append(
                    f"supersedes an overlapping event of another sender on {inserted} deliveries"
                )
                continue
            conn.execute(
                message_requests.update()
                .where(message_requests.c.request_id == row.request_id)
                .values(superseded_by=request_id)
            )
            warnings.append(
                f"supersedes issuer event {row.issuer_event_id} (request {row.request_id}) on "
                f"{inserted} deliveries"
            )
        return warnings

    def _accepted_thd(
        self, conn: sa.Connection, party: Party, request_id: str, count: int, now: float
    ) -> None:
        """RQA in the log for every delivery, and the fan-out commands in the outbox."""
        conn.execute(
            sa.text(
                "INSERT INTO delivery_statuses (request_id, esiid, mac, code, description, at) "
                "SELECT request_id, esiid, mac, 'RQA', :d, :now "
                "FROM deliveries WHERE request_id = :r ORDER BY delivery_id"
            ),
            {"r": request_id, "now": now, "d": ACCEPTED_DESCRIPTION},
        )
        conn.execute(
            sa.text(
                "INSERT INTO message_outbox (tdsp_duns, command_id, request_id, chunk, "
                "created_at, attempts) "
                "SELECT DISTINCT tdsp_duns, :r || '.' || tdsp_duns || '.' || "
                "CAST(chunk AS VARCHAR(12)), :r, chunk, :now, 0 "
                "FROM deliveries WHERE request_id = :r AND mac = ''"
            ),
            {"r": request_id, "now": now},
        )
        self._notify_all_thd(conn, party.party_id, request_id)
        metrics.messages_accepted.labels(party.role.value).inc()
        metrics.deliveries_changed.labels(StatusCode.ACCEPTED.value).inc(count)

    # ---- cancellations ------------------------------------------------------------------------

    async def cancel(
        self, party: Party, request_id: str, body: dict[str, Any], also: Also = None
    ) -> dict[str, Any]:
        """Cancel one load control event (CLE) or one text (CSM) on all its ESI IDs."""
        self._check_sender(party)
        specs.only_fields(body, specs.CANCEL_FIELDS, "a cancellation")
        now = self._clock.seconds()
        effective = specs.parse_time(body.get("effective_time"), "effective_time")
        randomize_end = body.get("randomize_end", False)
        if not isinstance(randomize_end, bool):
            raise InvalidField("randomize_end", "randomize_end must be true or false")
        cancel_id = new_request_id()
        cancellation_id = new_cancellation_id()

        def thd(conn: sa.Connection) -> tuple[dict[str, Any], _Live, int]:
            original = conn.execute(
                sa.select(message_requests).where(
                    message_requests.c.request_id == request_id,
                    message_requests.c.party_id == party.party_id,
                )
            ).first()
            if original is None:
                raise NotFound(f"you sent no request {request_id}")
            category = Category(original.category)
            if category is Category.LOAD_CONTROL:
                message: sep1.Message = CancelLoadControlEvent(
                    issuer_event_id=original.issuer_event_id,
                    device_class=original.device_class,
                    utility_enrollment_group=original.enrollment_group,
                    cancel_control=1 if randomize_end else 0,
                    effective_time=0 if effective is None else utctime.from_unix(effective),
                )
                kind = Category.CANCEL_LOAD_CONTROL
                noun = f"load control event {original.issuer_event_id}"
            elif category is Category.TEXT:
                fields = json.loads(original.fields)
                message = CancelMessage(
                    message_id=original.issuer_event_id,
                    message_control=0x80 if fields.get("confirmation_required") else 0,
                )
                kind = Category.CANCEL_TEXT
                noun = f"text message {original.issuer_event_id}"
            else:
                raise CancelRefused(
                    f"request {request_id} is a {category} ({category.name.lower()}); only load "
                    "control events (LCE) and texts (STM) can be cancelled; a price is replaced "
                    "by publishing a newer one"
                )
            if original.cancelled_by is not None:
                raise CancelRefused(
                    f"{noun} (request {request_id}) was already cancelled by request "
                    f"{original.cancelled_by}"
                )
            if original.end_at is not None and original.end_at <= now:
                raise CancelRefused(
                    f"{noun} (request {request_id}) ended at {specs.iso(original.end_at)}; "
                    "there is nothing left to cancel"
                )
            if (
                effective is not None
                and original.end_at is not None
                and effective >= original.end_at
            ):
                raise InvalidField(
                    "effective_time",
                    f"effective_time {specs.iso(effective)} is not before the event's end "
                    f"({specs.iso(original.end_at)})",
                )
            frame = sep1.encode(message, secrets.randbelow(256))
            conn.execute(
                message_requests.insert(),
                {
                    "request_id": cancel_id,
                    "category": kind.value,
                    "party_id": party.party_id,
                    "party_role": party.role.value,
                    "created_at": now,
                    "issuer_event_id": original.issuer_event_id,
                    "cancellation_id": cancellation_id,
                    "cancels_request_id": request_id,
                    "device_class": original.device_class,
                    "enrollment_group": original.enrollment_group,
                    "start_at": effective if effective is not None else now,
                    "end_at": None,
                    "destination": original.destination,
                    "cluster": type(message).CLUSTER_ID,
                    "zcl": frame,
                    "fields": json.dumps(
                        {
                            "cancels": request_id,
                            "effective_time": specs.iso(effective or now),
                            "randomize_end": randomize_end,
                        }
                    ),
                    "group_name": original.group_name,
                    "targets": original.targets,
                    "state": "queued",
                },
            )
            conn.execute(
                message_requests.update()
                .where(message_requests.c.request_id == request_id)
                .values(cancelled_by=cancel_id)
            )
            deadline = self._deadline(now, None)
            # devices answer a cancelled event (0x06), but nothing answers a cancelled text:
            # a CSM is tracked to the meters only
            which = "" if kind is Category.CANCEL_LOAD_CONTROL else " AND mac = ''"
            conn.execute(
                sa.text(
                    "INSERT INTO deliveries (request_id, esiid, mac, tdsp_duns, chunk, status, "
                    "status_desc, status_at, deadline) "
                    "SELECT :c, esiid, mac, tdsp_duns, chunk, 'RQA', '', :now, :deadline "
                    f"FROM deliveries WHERE request_id = :r{which} ORDER BY delivery_id"
                ),
                {"c": cancel_id, "r": request_id, "now": now, "deadline": deadline},
            )
            if kind is Category.CANCEL_TEXT:
                # a cancelled text will not be confirmed: its device deliveries stop waiting
                self._settle_waiting_thd(
                    conn,
                    party.party_id,
                    request_id,
                    f"text cancelled (cancellation {cancellation_id})",
                    now,
                )
            self._accepted_thd(conn, party, cancel_id, original.targets, now)
            live = _Live(cancel_id, kind, party.party_id, original.issuer_event_id, now, request_id)
            summary = self._summary_thd(conn, cancel_id)
            if also is not None:
                also(conn, summary)
            return summary, live, type(message).CLUSTER_ID

        summary, live, cluster = await self.store.run(thd)
        self._remember(live, cluster)
        log.info(
            "message.cancel_accepted",
            request_id=cancel_id,
            cancels=request_id,
            cancellation_id=cancellation_id,
            party=party.party_id,
        )
        self._on_outbox()
        return summary

    async def cancel_all(
        self, party: Party, targets: specs.Targets, body: dict[str, Any], also: Also = None
    ) -> dict[str, Any]:
        """Cancel every load control event on ESI IDs (CAL): what the devices run, any sender's."""
        self._check_sender(party)
        specs.only_fields(body, specs.CANCEL_ALL_FIELDS, "a cancel-all")
        now = self._clock.seconds()
        randomize_end = body.get("randomize_end", False)
        if not isinstance(randomize_end, bool):
            raise InvalidField("randomize_end", "randomize_end must be true or false")
        message = CancelAllLoadControlEvents(cancel_control=1 if randomize_end else 0)
        frame = sep1.encode(message, secrets.randbelow(256))
        request_id = new_request_id()
        cancellation_id = new_cancellation_id()

        def thd(conn: sa.Connection) -> dict[str, Any]:
            conn.execute(
                message_requests.insert(),
                {
                    "request_id": request_id,
                    "category": Category.CANCEL_ALL_LOAD_CONTROL.value,
                    "party_id": party.party_id,
                    "party_role": party.role.value,
                    "created_at": now,
                    "cancellation_id": cancellation_id,
                    "start_at": now,
                    "destination": "all",
                    "cluster": sep1.DRLC,
                    "zcl": frame,
                    "fields": json.dumps({"randomize_end": randomize_end}),
                    "group_name": targets.group,
                    "targets": 0,
                    "state": "queued",
                },
            )
            count = self._insert_targets_thd(conn, party, request_id, targets, now, None)
            self._accepted_thd(conn, party, request_id, count, now)
            summary = self._summary_thd(conn, request_id)
            if also is not None:
                also(conn, summary)
            return summary

        summary = await self.store.run(thd)
        self._remember(
            _Live(request_id, Category.CANCEL_ALL_LOAD_CONTROL, party.party_id, None, now, None),
            sep1.DRLC,
        )
        log.info(
            "message.cancel_all_accepted",
            request_id=request_id,
            cancellation_id=cancellation_id,
            party=party.party_id,
            targets=summary["targets"],
        )
        self._on_outbox()
        return summary

    def _settle_waiting_thd(
        self, conn: sa.Connection, party_id: str, request_id: str, description: str, now: float
    ) -> None:
        """Device deliveries of ``request_id`` still waiting for an answer settle as CON."""
        waiting = "request_id = :r AND mac <> '' AND settled_at IS NULL"
        self._settle_thd(
            conn, party_id, waiting, {"r": request_id}, StatusCode.CONFIRMED, description, now
        )

    # ---- reading requests ---------------------------------------------------------------------

    def _summary_thd(self, conn: sa.Connection, request_id: str) -> dict[str, Any]:
        row = conn.execute(
            sa.select(message_requests).where(message_requests.c.request_id == request_id)
        ).one()
        counts = {
            code: n
            for code, n in conn.execute(
                sa.select(deliveries.c.status, sa.func.count())
                .where(deliveries.c.request_id == request_id)
                .group_by(deliveries.c.status)
            ).all()
        }
        total = sum(counts.values())
        settled = sum(n for code, n in counts.items() if code in SETTLED)
        commands = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count(message_outbox.c.retired_at),
            ).where(message_outbox.c.request_id == request_id)
        ).one()
        summary: dict[str, Any] = {
            "request_id": row.request_id,
            "category": row.category,
            "cancellation_id": row.cancellation_id,
            "cancels_request_id": row.cancels_request_id,
            "issuer_event_id": row.issuer_event_id,
            "created_at": specs.iso(row.created_at),
            "group": row.group_name,
            "fields": json.loads(row.fields),
            "targets": row.targets,
            "deliveries": total,
            "statuses": {code.value: counts.get(code.value, 0) for code in StatusCode},
            "settled": settled,
            "complete": total > 0 and settled == total,
            "fan_out": {"commands": commands[0], "acknowledged": commands[1]},
            "cancelled_by": row.cancelled_by,
            "superseded_by": row.superseded_by,
            # Always there, empty when none: a client reads it as the docs describe it.
            "warnings": json.loads(row.warnings),
            "links": {
                "self": f"/v1/messages/{row.request_id}",
                "log": f"/v1/message-log?request_id={row.request_id}",
            },
        }
        if total <= 100:
            summary["delivery_list"] = [
                {
                    "message_status_id": str(d.delivery_id),
                    "esiid": d.esiid,
                    "mac": d.mac or None,
                    "status": d.status,
                    "status_desc": _description(d.status, d.status_desc),
                    "status_at": specs.iso(d.status_at),
                }
                for d in conn.execute(
                    sa.select(deliveries)
                    .where(deliveries.c.request_id == request_id)
                    .order_by(deliveries.c.delivery_id)
                )
            ]
        return summary

    async def get_request(self, party: Party, request_id: str) -> dict[str, Any]:
        """A request's progress: deliveries by status, settled or not, fan-out commands sent."""

        def thd(conn: sa.Connection) -> dict[str, Any]:
            owner = conn.execute(
                sa.select(message_requests.c.party_id).where(
                    message_requests.c.request_id == request_id
                )
            ).scalar()
            if owner != party.party_id:
                raise NotFound(f"you sent no request {request_id}")
            return self._summary_thd(conn, request_id)

        return await self.store.run(thd)

    # ---- groups -------------------------------------------------------------------------------

    async def put_group(self, party: Party, name: str, esiids: tuple[str, ...]) -> dict[str, Any]:
        """Create or replace a named group of the party's ESI IDs."""
        self._check_sender(party)
        name = specs.group_name(name)
        now = self._clock.seconds()

        def thd(conn: sa.Connection) -> dict[str, Any]:
            where = sa.and_(
                group_members.c.party_id == party.party_id, group_members.c.name == name
            )
            conn.execute(group_members.delete().where(where))
            conn.execute(
                sa.text(
                    "INSERT INTO group_members (party_id, name, esiid) "
                    "SELECT :p, :g, esiid FROM meters WHERE esiid = :e"
                ),
                [{"p": party.party_id, "g": name, "e": e} for e in esiids],
            )
            stored = conn.execute(
                sa.select(sa.func.count()).select_from(group_members).where(where)
            ).scalar_one()
            if stored < len(esiids):
                known = set(conn.execute(sa.select(group_members.c.esiid).where(where)).scalars())
                unknown = [(i, e) for i, e in enumerate(esiids) if e not in known]
                raise InvalidField(
                    f"esiids[{unknown[0][0]}]",
                    f"{len(unknown)} ESI ID(s) are not in the meter registry, first "
                    f"esiids[{unknown[0][0]}] = {unknown[0][1]}",
                )
            updated = conn.execute(
                esiid_groups.update()
                .where(esiid_groups.c.party_id == party.party_id, esiid_groups.c.name == name)
                .values(size=stored, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    esiid_groups.insert(),
                    {
                        "party_id": party.party_id,
                        "name": name,
                        "size": stored,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            return _group_json(name, stored, now)

        return await self.store.run(thd)

    async def list_groups(self, party: Party) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            return [
                _group_json(row.name, row.size, row.updated_at)
                for row in conn.execute(
                    sa.select(esiid_groups)
                    .where(esiid_groups.c.party_id == party.party_id)
                    .order_by(esiid_groups.c.name)
                )
            ]

        return await self.store.run(thd)

    async def get_group(self, party: Party, name: str) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            row = conn.execute(
                sa.select(esiid_groups).where(
                    esiid_groups.c.party_id == party.party_id, esiid_groups.c.name == name
                )
            ).first()
            if row is None:
                raise NotFound(f"you have no group {name!r}")
            members = conn.execute(
                sa.select(group_members.c.esiid)
                .where(group_members.c.party_id == party.party_id, group_members.c.name == name)
                .order_by(group_members.c.esiid)
            ).scalars()
            return {**_group_json(row.name, row.size, row.updated_at), "esiids": list(members)}

        return await self.store.run(thd)

    async def delete_group(self, party: Party, name: str) -> None:
        def thd(conn: sa.Connection) -> None:
            gone = conn.execute(
                esiid_groups.delete().where(
                    esiid_groups.c.party_id == party.party_id, esiid_groups.c.name == name
                )
            ).rowcount
            if not gone:
                raise NotFound(f"you have no group {name!r}")
            conn.execute(
                group_members.delete().where(
                    group_members.c.party_id == party.party_id, group_members.c.name == name
                )
            )

        await self.store.run(thd)

    # ---- the router's view of the fan-out outbox ------------------------------------------------

    def pending_after_thd(
        self, conn: sa.Connection, tdsp_duns: str, limit: int, skip: frozenset[str], after: int
    ) -> tuple[list[FanOutFrame], int]:
        """Unretired fan-out commands after outbox row ``after``, and the last row looked at."""
        rows = conn.execute(
            sa.select(
                message_outbox.c.outbox_id,
                message_outbox.c.command_id,
                message_outbox.c.request_id,
                message_outbox.c.chunk,
                message_requests.c.destination,
                message_requests.c.cluster,
                message_requests.c.zcl,
            )
            .join(
                message_requests,
                message_requests.c.request_id == message_outbox.c.request_id,
            )
            .where(
                message_outbox.c.tdsp_duns == tdsp_duns,
                message_outbox.c.retired_at.is_(None),
                message_outbox.c.outbox_id > after,
            )
            .order_by(message_outbox.c.outbox_id)
            .limit(limit + len(skip))
        ).all()
        last = rows[-1].outbox_id if rows else after
        commands: list[FanOutFrame] = []
        for row in rows:
            if row.command_id in skip:
                continue
            targets = conn.execute(
                sa.select(deliveries.c.delivery_id, deliveries.c.esiid)
                .where(
                    deliveries.c.request_id == row.request_id,
                    deliveries.c.chunk == row.chunk,
                    deliveries.c.mac == "",
                    deliveries.c.tdsp_duns == tdsp_duns,
                )
                .order_by(deliveries.c.delivery_id)
            ).all()
            commands.append(
                FanOutFrame(
                    command_id=row.command_id,
                    destination=row.destination,
                    cluster=row.cluster,
                    zcl=row.zcl,
                    targets=tuple(FanOutTarget(esiid, str(d)) for d, esiid in targets),
                )
            )
            if len(commands) == limit:
                last = row.outbox_id
                break
        return commands, last

    def retire_many_thd(self, conn: sa.Connection, command_ids: list[str], now: float) -> None:
        """The head-end accepted these fan-out commands: their deliveries are acknowledged."""
        if not command_ids:
            return
        rows = conn.execute(
            sa.select(
                message_outbox.c.command_id,
                message_outbox.c.request_id,
                message_outbox.c.chunk,
                message_outbox.c.tdsp_duns,
                message_requests.c.start_at,
                message_requests.c.party_id,
            )
            .join(
                message_requests,
                message_requests.c.request_id == message_outbox.c.request_id,
            )
            .where(
                message_outbox.c.command_id.in_(command_ids),
                message_outbox.c.retired_at.is_(None),
            )
        ).all()
        conn.execute(
            message_outbox.update()
            .where(message_outbox.c.command_id.in_(command_ids))
            .values(retired_at=now, attempts=message_outbox.c.attempts + 1)
        )
        for row in rows:
            params = {"r": row.request_id, "c": row.chunk, "t": row.tdsp_duns, "now": now}
            chunk = "request_id = :r AND chunk = :c AND tdsp_duns = :t"
            # the acknowledgement is logged for every delivery of the chunk, even one a quick
            # head-end status overtook; the status moves on only from RQA
            conn.execute(
                sa.text(
                    "INSERT INTO delivery_statuses (request_id, esiid, mac, code, description, "
                    "at) SELECT request_id, esiid, mac, 'ACK', "
                    "'acknowledged by the TDSP head-end', :now FROM deliveries "
                    f"WHERE {chunk} ORDER BY delivery_id"
                ),
                params,
            )
            status, description = "ACK", "acknowledged by the TDSP head-end"
            if row.start_at is not None and row.start_at > now + 1:
                status, description = "PEN", f"pending: starts at {specs.iso(row.start_at)}"
                conn.execute(
                    sa.text(
                        "INSERT INTO delivery_statuses (request_id, esiid, mac, code, "
                        "description, at) SELECT request_id, esiid, mac, 'PEN', :d, :now "
                        f"FROM deliveries WHERE {chunk} AND status = 'RQA' ORDER BY delivery_id"
                    ),
                    {**params, "d": description},
                )
            waiting = f"{chunk} AND status = 'RQA'"
            told: Sequence[Any] = ()
            if self._wants(row.party_id):
                told = self._rows_to_tell_thd(conn, waiting, params)
            changed = conn.execute(
                sa.text(
                    "UPDATE deliveries SET status = :s, status_desc = :d, status_at = :now "
                    f"WHERE {waiting}"
                ),
                {**params, "s": status, "d": description},
            ).rowcount
            metrics.deliveries_changed.labels(status).inc(max(changed, 0))
            if told:
                self._tell_thd(
                    conn, row.party_id, [_event(d, status, description, now) for d in told]
                )

    # ---- what comes back ------------------------------------------------------------------------

    def delivery_statuses(
        self, statuses: Sequence[DeliveryStatus], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        """Head-end reports on the ESI ID deliveries of fan-outs (and frames sent one by one)."""
        now = self._clock.seconds()
        tdsp_duns = statuses[0].tdsp_duns if statuses else ""
        return self.store.run(self._delivery_statuses_thd, list(statuses), batch_id, tdsp_duns, now)

    def _delivery_statuses_thd(
        self,
        conn: sa.Connection,
        statuses: list[DeliveryStatus],
        batch_id: str,
        tdsp_duns: str,
        now: float,
    ) -> list[str | None]:
        return _once_thd(
            conn, tdsp_duns, batch_id, len(statuses), now, self._apply_statuses_thd, statuses
        )

    def _apply_statuses_thd(
        self, conn: sa.Connection, statuses: list[DeliveryStatus], tdsp_duns: str, now: float
    ) -> list[str | None]:
        results: list[str | None] = [None] * len(statuses)
        ids: dict[int, int] = {}
        for index, status in enumerate(statuses):
            if not _DELIVERY_ID.fullmatch(status.delivery_id):
                results[index] = f"delivery id {status.delivery_id[:40]!r} is not one of hangw's"
            else:
                ids[index] = int(status.delivery_id)
        rows: dict[int, Any] = {}
        wanted = list(set(ids.values()))
        for start in range(0, len(wanted), 500):
            for hit in conn.execute(
                sa.select(
                    deliveries.c.delivery_id,
                    deliveries.c.request_id,
                    deliveries.c.esiid,
                    deliveries.c.mac,
                    deliveries.c.tdsp_duns,
                    deliveries.c.status,
                    message_requests.c.category,
                    message_requests.c.party_id,
                )
                .join(message_requests, message_requests.c.request_id == deliveries.c.request_id)
                .where(deliveries.c.delivery_id.in_(wanted[start : start + 500]))
            ):
                rows[hit.delivery_id] = hit
        changes: list[Change] = []
        failed_esis: list[Change] = []
        for index, delivery_id in ids.items():
            status = statuses[index]
            found = rows.get(delivery_id)
            if found is None or found.esiid != status.esiid:
                results[index] = (
                    f"no delivery {status.delivery_id} to ESI ID {status.esiid} was sent"
                )
                continue
            row = found
            if tdsp_duns and row.tdsp_duns != tdsp_duns:
                results[index] = f"delivery {status.delivery_id} went to another TDSP's meter"
                continue
            if status.state is DeliveryState.DELIVERED:
                code = StatusCode.CONFIRMED
                if row.category == Category.PRICE.value:
                    description = "price acknowledged by the meter (ESI)"
                else:
                    description = "delivered to the meter (ESI)"
                if status.reason:
                    description += f": {status.reason}"
            elif status.state is DeliveryState.PENDING:
                code = StatusCode.PENDING
                description = f"pending: {status.reason or 'the head-end is still trying'}"
            else:
                code = StatusCode.FAILED
                description = f"failed at the head-end: {status.reason or 'no reason given'}"
            description = description[:DESCRIPTION_LENGTH]
            change = Change(
                row.request_id, row.esiid, row.mac, row.tdsp_duns, code, description, now
            )
            changes.append(change)
            if code is StatusCode.FAILED and row.mac == "":
                failed_esis.append(change)
        self._apply_thd(conn, changes)
        for change in failed_esis:
            # the meter never took the frame: its devices will not answer either
            self._fail_devices_thd(conn, change)
        return results

    def _fail_devices_thd(self, conn: sa.Connection, change: Change) -> None:
        description = f"the meter did not take the frame ({change.description})"
        description = description[:DESCRIPTION_LENGTH]
        params = {"r": change.request_id, "e": change.esiid, "d": description, "now": change.at}
        waiting = "request_id = :r AND esiid = :e AND mac <> '' AND settled_at IS NULL"
        party_id = None
        if self._notifier is not None:
            party_id = self._party_of_thd(conn, change.request_id)
        self._settle_thd(conn, party_id, waiting, params, StatusCode.FAILED, description, change.at)

    def _settle_thd(
        self,
        conn: sa.Connection,
        party_id: str | None,
        waiting: str,
        params: dict[str, Any],
        code: StatusCode,
        description: str,
        now: float,
    ) -> None:
        """The deliveries ``waiting`` picks settle as ``code``: logged, changed, posted."""
        told: Sequence[Any] = ()
        if party_id is not None and self._wants(party_id):
            told = self._rows_to_tell_thd(conn, waiting, params)
        params = {**params, "code": code.value, "d": description, "now": now}
        conn.execute(
            sa.text(
                "INSERT INTO delivery_statuses (request_id, esiid, mac, code, description, at) "
                f"SELECT request_id, esiid, mac, :code, :d, :now FROM deliveries WHERE {waiting} "
                "ORDER BY delivery_id"
            ),
            params,
        )
        conn.execute(
            sa.text(
                "UPDATE deliveries SET status = :code, status_desc = :d, status_at = :now, "
                f"settled_at = :now, deadline = NULL WHERE {waiting}"
            ),
            params,
        )
        if told:
            assert party_id is not None
            self._tell_thd(conn, party_id, [_event(d, code.value, description, now) for d in told])

    def inbound_frames(
        self, frames: Sequence[InboundFrame], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        """Devices' answers: decoded, matched to deliveries, applied in one store job."""
        return Deferred.fromCoroutine(self._inbound_frames(list(frames), batch_id))

    async def _inbound_frames(self, frames: list[InboundFrame], batch_id: str) -> list[str | None]:
        now = self._clock.seconds()
        results: list[str | None] = [None] * len(frames)
        decoded: list[Any] = [None] * len(frames)
        wanted: set[tuple[int, int]] = set()
        cache = self._decoded
        for index, frame in enumerate(frames):
            key = (frame.cluster, frame.zcl)
            message = cache.get(key)
            if message is None:
                try:
                    message = sep1.decode_frame(frame.cluster, frame.zcl).message
                except sep1.DecodeError as error:
                    results[index] = f"inbound frame from {frame.source}: {error}"
                    continue
                if len(cache) >= 4096:
                    cache.clear()
                cache[key] = message
            decoded[index] = message
            if isinstance(message, ReportEventStatus):
                wanted.add((sep1.DRLC, message.issuer_event_id))
            elif isinstance(message, MessageConfirmation):
                wanted.add((sep1.MESSAGING, message.message_id))
        missing = [key for key in wanted if key not in self._by_event]
        reports = any(cluster == sep1.DRLC for cluster, _ in wanted)
        self._drop_old_cancel_alls(now)
        cancel_alls = not self._cancel_alls_loaded or any(
            not self._live[r].targets for r in [*self._cancel_alls, *self._unloaded_cals]
        )
        if (
            missing
            or (reports and cancel_alls)
            or any(
                request_id not in self._live or not self._live[request_id].targets
                for key in wanted
                for request_id in self._by_event.get(key, ())
            )
        ):
            await self._load_live(missing, wanted, now - self._config.settle_timeout_s)
        changes: list[Change] = []
        unmatched = 0
        #: frames that answer nothing known: their ESI ID must still be the head-end's meter
        strangers: dict[int, str] = {}
        for index, message in enumerate(decoded):
            if message is None:
                continue
            frame = frames[index]
            if isinstance(message, ReportEventStatus):
                matched = self._match_report(frame, message, now)
            elif isinstance(message, MessageConfirmation):
                matched = self._match_confirmation(frame, message, now)
            else:
                matched = None  # a device asking (Get Last Message, Get Current Price): no status
            if matched is None:
                unmatched += 1
                if frame.tdsp_duns:
                    strangers[index] = frame.esiid
                continue
            if isinstance(matched, str):
                results[index] = matched
                continue
            changes.extend(matched)
        if unmatched:
            metrics.inbound_unmatched.inc(unmatched)
        tdsp_duns = frames[0].tdsp_duns if frames else ""
        answered = await self.store.run(
            self._inbound_thd, changes, results, strangers, batch_id, tdsp_duns, now
        )
        return answered

    def _inbound_thd(
        self,
        conn: sa.Connection,
        changes: list[Change],
        results: list[str | None],
        strangers: dict[int, str],
        batch_id: str,
        tdsp_duns: str,
        now: float,
    ) -> list[str | None]:
        def apply(conn: sa.Connection, _: object, tdsp_duns: str, now: float) -> list[str | None]:
            self._check_strangers_thd(conn, results, strangers, tdsp_duns)
            self._apply_thd(conn, changes)
            return results

        return _once_thd(conn, tdsp_duns, batch_id, len(results), now, apply, None)

    def _check_strangers_thd(
        self,
        conn: sa.Connection,
        results: list[str | None],
        strangers: dict[int, str],
        tdsp_duns: str,
    ) -> None:
        """Frames that answer nothing known must still come from the head-end's own meters."""
        if not strangers:
            return
        owners: dict[str, str] = {}
        wanted = sorted(set(strangers.values()))
        for start in range(0, len(wanted), 500):
            owners.update(
                conn.execute(
                    sa.select(meters.c.esiid, meters.c.tdsp_duns).where(
                        meters.c.esiid.in_(wanted[start : start + 500])
                    )
                ).all()
            )
        for index, esiid in strangers.items():
            owner = owners.get(esiid)
            if owner is None:
                results[index] = f"ESI ID {esiid} is not in the meter registry"
            elif owner != tdsp_duns:
                results[index] = f"ESI ID {esiid} is a meter of another TDSP"

    def _targeted(self, request_id: str, frame: InboundFrame) -> _Live | str | None:
        live = self._live.get(request_id)
        if live is None:
            return None
        owner = live.targets.get(frame.esiid)
        if owner is None:
            return None
        if frame.tdsp_duns and owner != frame.tdsp_duns:
            return f"ESI ID {frame.esiid} is a meter of another TDSP"
        return live

    def _match_report(
        self, frame: InboundFrame, report: ReportEventStatus, now: float
    ) -> list[Change] | str | None:
        at = float(utctime.to_unix(report.event_status_time)) if report.event_status_time else now
        code, description = event_status(report.event_status)
        event: _Live | None = None
        cancellation: _Live | None = None
        for request_id in reversed(self._by_event.get((sep1.DRLC, report.issuer_event_id), [])):
            live = self._targeted(request_id, frame)
            if isinstance(live, str):
                return live
            if live is None:
                continue
            if live.category is Category.LOAD_CONTROL and event is None:
                event = live
            elif live.category is Category.CANCEL_LOAD_CONTROL and cancellation is None:
                cancellation = live
        if report.event_status in CANCEL_ANSWERS:
            if cancellation is None or (
                event is not None and cancellation.cancels_request_id != event.request_id
            ):
                cancel_all = self._cancel_all_for(frame, event)
                if isinstance(cancel_all, str):
                    return cancel_all
                cancellation = cancel_all
            changes = []
            if cancellation is not None:
                changes.append(self._change(cancellation, frame, code, description, at))
            if event is not None and report.event_status == EventStatus.EVENT_CANCELLED:
                by = ""
                if cancellation is not None:
                    by = f" by request {cancellation.request_id}"
                changes.append(
                    self._change(event, frame, StatusCode.CONFIRMED, f"event cancelled{by}", at)
                )
            return changes or None
        if event is None:
            return None
        received = report.event_status == EventStatus.COMMAND_RECEIVED
        return [self._change(event, frame, code, description, at, received)]

    def _cancel_all_for(self, frame: InboundFrame, event: _Live | None) -> _Live | str | None:
        """The newest cancel-all on the frame's ESI ID (no older than ``event``), or why the
        frame may not answer one (it came from another TDSP's head-end)."""
        for request_id in reversed(self._cancel_alls):
            live = self._targeted(request_id, frame)
            if isinstance(live, str):
                return live
            if live is None:
                continue
            if event is None or live.created_at >= event.created_at:
                return live
        return None

    def _match_confirmation(
        self, frame: InboundFrame, confirmation: MessageConfirmation, now: float
    ) -> list[Change] | str | None:
        at = (
            float(utctime.to_unix(confirmation.confirmation_time))
            if confirmation.confirmation_time
            else now
        )
        for request_id in reversed(
            self._by_event.get((sep1.MESSAGING, confirmation.message_id), [])
        ):
            live = self._targeted(request_id, frame)
            if isinstance(live, str):
                return live
            if live is not None and live.category is Category.TEXT:
                return [
                    self._change(
                        live, frame, StatusCode.CONFIRMED, "message confirmed by the user", at
                    )
                ]
        return None

    @staticmethod
    def _change(
        live: _Live,
        frame: InboundFrame,
        code: StatusCode,
        description: str,
        at: float,
        received: bool = False,
    ) -> Change:
        mac = "" if frame.source == TO_ESI else frame.source
        return Change(
            live.request_id,
            frame.esiid,
            mac,
            live.targets[frame.esiid],
            code,
            description,
            at,
            received,
        )

    def _apply_thd(self, conn: sa.Connection, changes: list[Change]) -> None:
        """Each change: the delivery's status (made for a device first heard from) and its log row.

        A status never goes back (a late ACK after a CON is logged but does not replace it); a
        settled one is replaced only by a settled answer no older than it, never a FLR, and a
        "command received" never replaces a STR or an OPT. A settled delivery has no deadline.
        A change that moved a delivery is posted to the sender's webhooks (one event per change;
        one that did not move it is only logged).
        """
        if not changes:
            return
        quiet: list[Change] = []
        told: dict[str, list[Change]] = {}
        parties: dict[str, str | None] = {}
        for c in changes:
            party_id = None
            if self._notifier is not None:
                if c.request_id not in parties:
                    parties[c.request_id] = self._party_of_thd(conn, c.request_id)
                party_id = parties[c.request_id]
            if party_id is not None and self._wants(party_id):
                told.setdefault(party_id, []).append(c)
            else:
                quiet.append(c)
        if quiet:
            conn.execute(sa.text(_UPSERT), [_upsert_params(c) for c in quiet])
        for party_id, some in told.items():
            requests: dict[str, Any] = {}
            events = []
            for c in some:
                # one by one: RETURNING says whether this change moved the delivery
                delivery_id = conn.execute(
                    sa.text(_UPSERT + " RETURNING delivery_id"), _upsert_params(c)
                ).scalar()
                if delivery_id is None:
                    continue
                request = requests.get(c.request_id)
                if request is None:
                    request = requests[c.request_id] = conn.execute(
                        sa.select(
                            message_requests.c.category, message_requests.c.cancellation_id
                        ).where(message_requests.c.request_id == c.request_id)
                    ).one()
                row = _Told(
                    delivery_id,
                    c.request_id,
                    c.esiid,
                    c.mac,
                    request.category,
                    request.cancellation_id,
                )
                events.append(_event(row, c.code.value, c.description, c.at))
            self._tell_thd(conn, party_id, events)
        conn.execute(
            delivery_statuses.insert(),
            [
                {
                    "request_id": c.request_id,
                    "esiid": c.esiid,
                    "mac": c.mac,
                    "code": c.code.value,
                    "description": c.description,
                    "at": c.at,
                }
                for c in changes
            ],
        )
        by_code: dict[str, int] = {}
        for c in changes:
            by_code[c.code.value] = by_code.get(c.code.value, 0) + 1
        for code, n in by_code.items():
            metrics.deliveries_changed.labels(code).inc(n)

    # ---- the live requests answers are matched to ---------------------------------------------

    def _remember(self, live: _Live, cluster: int) -> None:
        """A request just made. It joins the lists answers are matched with only where those
        already hold the store's requests: a list started with it alone would hide the older
        requests of the same event (made before a restart) from ``_load_live``."""
        if live.issuer_event_id is not None:
            key = (cluster, live.issuer_event_id)
            known = self._by_event.get(key)
            if known is not None:
                known.append(live.request_id)
            else:
                self._unloaded.setdefault(key, []).append(live.request_id)
        if live.category is Category.CANCEL_ALL_LOAD_CONTROL:
            if self._cancel_alls_loaded:
                self._cancel_alls.append(live.request_id)
            else:
                self._unloaded_cals.append(live.request_id)
        # targets are read when the first answer needs them
        self._live[live.request_id] = live

    def _newest_last(self, *lists: list[str]) -> list[str]:
        """The request ids of ``lists``, once each, oldest first."""
        merged = list(dict.fromkeys(r for ids in lists for r in ids if r in self._live))
        merged.sort(key=lambda r: self._live[r].created_at)
        return merged

    async def _load_live(
        self, missing: list[tuple[int, int]], wanted: set[tuple[int, int]], cutoff: float
    ) -> None:
        """Read what answers to ``wanted`` need: the requests of the ``missing`` event keys, the
        cancel-alls sent since ``cutoff`` (once), and the targets of all these not in memory."""
        cals_loaded = self._cancel_alls_loaded

        def thd(conn: sa.Connection) -> tuple[dict[tuple[int, int], list[str]], list[_Live]]:
            found: dict[tuple[int, int], list[str]] = {}
            lives: list[_Live] = []
            for cluster, issuer_event_id in missing:
                rows = conn.execute(
                    sa.select(message_requests)
                    .where(
                        message_requests.c.issuer_event_id == issuer_event_id,
                        message_requests.c.cluster == cluster,
                    )
                    .order_by(message_requests.c.created_at)
                ).all()
                found[(cluster, issuer_event_id)] = [row.request_id for row in rows]
                lives.extend(_live_of(row) for row in rows if row.request_id not in self._live)
            if not cals_loaded:
                rows = conn.execute(
                    sa.select(message_requests)
                    .where(
                        message_requests.c.category == Category.CANCEL_ALL_LOAD_CONTROL.value,
                        message_requests.c.created_at >= cutoff,
                    )
                    .order_by(message_requests.c.created_at)
                ).all()
                lives.extend(_live_of(row) for row in rows if row.request_id not in self._live)
            needed = {r for key in wanted for r in found.get(key, self._by_event.get(key, []))}
            needed |= {live.request_id for live in lives}
            needed |= {*self._cancel_alls, *self._unloaded_cals}
            for live in [*lives, *(self._live[r] for r in needed if r in self._live)]:
                if not live.targets and live.request_id in needed:
                    live.targets = dict(
                        conn.execute(
                            sa.select(deliveries.c.esiid, deliveries.c.tdsp_duns).where(
                                deliveries.c.request_id == live.request_id,
                                deliveries.c.mac == "",
                            )
                        ).all()
                    )
            return found, lives

        found, lives = await self.store.run(thd)
        for live in lives:
            self._live.setdefault(live.request_id, live)
        # what the store held, what was read before, and what was made while it was read
        if not cals_loaded:
            cals = [
                live.request_id
                for live in lives
                if live.category is Category.CANCEL_ALL_LOAD_CONTROL
            ]
            self._cancel_alls = self._newest_last(self._cancel_alls, cals, self._unloaded_cals)
            self._unloaded_cals = []
            self._cancel_alls_loaded = True
        for key, request_ids in found.items():
            self._by_event[key] = self._newest_last(
                self._by_event.get(key, []), request_ids, self._unloaded.pop(key, [])
            )

    # ---- timers -------------------------------------------------------------------------------

    def fire_timers_thd(self, conn: sa.Connection, now: float) -> int:
        """Deliveries not settled by their deadline fail (FLR), saying what was last known."""
        due = "deadline IS NOT NULL AND deadline <= :now"
        params = {"now": now}
        count = conn.execute(
            sa.text(
                "INSERT INTO delivery_statuses (request_id, esiid, mac, code, description, at) "
                "SELECT request_id, esiid, mac, 'FLR', "
                "'no confirmation in time (last status ' || status || ')', :now "
                f"FROM deliveries WHERE {due} ORDER BY delivery_id"
            ),
            params,
        ).rowcount
        if count and self._notifier is not None:
            self._tell_timeouts_thd(conn, due, params)
        if count:
            conn.execute(
                sa.text(
                    "UPDATE deliveries SET status = 'FLR', "
                    "status_desc = 'no confirmation in time (last status ' || status || ')', "
                    f"status_at = :now, settled_at = :now, deadline = NULL WHERE {due}"
                ),
                params,
            )
            metrics.deliveries_changed.labels(StatusCode.FAILED.value).inc(count)
        return count

    def _tell_timeouts_thd(self, conn: sa.Connection, due: str, params: dict[str, Any]) -> None:
        """Post the deadline failures of the requests whose senders have webhooks (read before
        the failures are written; a sender without costs nothing per delivery)."""
        senders = conn.execute(
            sa.text(
                "SELECT request_id, party_id FROM message_requests WHERE request_id IN "
                f"(SELECT request_id FROM deliveries WHERE {due})"
            ),
            params,
        ).all()
        for request_id, party_id in senders:
            if not self._wants(party_id):
                continue
            rows = self._rows_to_tell_thd(
                conn, f"request_id = :r AND {due}", {**params, "r": request_id}
            )
            events = [
                _event(d, "FLR", f"no confirmation in time (last status {d.status})", params["now"])
                for d in rows
            ]
            self._tell_thd(conn, party_id, events)

    async def fire_timers(self) -> int:
        now = self._clock.seconds()
        count = await self.store.run(self.fire_timers_thd, now)
        if count:
            log.info("message.deliveries_timed_out", deliveries=count)
        self._forget_targets(now)
        self._drop_old_cancel_alls(now)
        return count

    def _forget_targets(self, now: float) -> None:
        """Let go of the target lists of requests past their settle timeout (200,000 ESI IDs
        each, at most); an answer that still comes reads them again from the store."""
        cutoff = now - self._config.settle_timeout_s
        for live in self._live.values():
            if live.targets and live.created_at < cutoff:
                live.targets = {}

    def _drop_old_cancel_alls(self, now: float) -> None:
        """Cancel-alls are matched to answers for the settle timeout after they were sent (their
        deadline); older ones are let go, so a late answer does not read their targets again."""
        cutoff = now - self._config.settle_timeout_s
        for cals in (self._cancel_alls, self._unloaded_cals):
            while cals and self._live[cals[0]].created_at < cutoff:
                del self._live[cals.pop(0)]

    # ---- notifications ------------------------------------------------------------------------

    def _wants(self, party_id: str) -> bool:
        return self._notifier is not None and self._notifier.wants(party_id)

    def _party_of_thd(self, conn: sa.Connection, request_id: str) -> str | None:
        live = self._live.get(request_id)
        if live is not None:
            return live.party_id
        return conn.execute(
            sa.select(message_requests.c.party_id).where(
                message_requests.c.request_id == request_id
            )
        ).scalar()

    def _notify_all_thd(self, conn: sa.Connection, party_id: str, request_id: str) -> None:
        """Every delivery of a request just accepted, as it is (RQA)."""
        if not self._wants(party_id):
            return
        rows = self._rows_to_tell_thd(conn, "request_id = :r", {"r": request_id})
        self._tell_thd(
            conn,
            party_id,
            [_event(row, row.status, row.status_desc, row.status_at) for row in rows],
        )

    def _rows_to_tell_thd(
        self, conn: sa.Connection, where: str, params: dict[str, Any]
    ) -> Sequence[Any]:
        """The deliveries ``where`` picks (plain ``deliveries`` columns), with what an event
        names of their request; read before a bulk statement changes them."""
        return conn.execute(
            sa.text(
                "SELECT d.delivery_id, d.request_id, d.esiid, d.mac, d.status, d.status_desc, "
                "d.status_at, r.category, r.cancellation_id FROM (SELECT delivery_id, "
                "request_id, esiid, mac, status, status_desc, status_at FROM deliveries "
                f"WHERE {where}) d JOIN message_requests r ON r.request_id = d.request_id "
                "ORDER BY d.delivery_id"
            ),
            params,
        ).all()

    def _tell_thd(self, conn: sa.Connection, party_id: str, events: list[dict[str, Any]]) -> None:
        if events:
            assert self._notifier is not None
            self._notifier.enqueue_thd(conn, party_id, events)


def _description(status: str, description: str) -> str:
    """A delivery's status description as shown: an accepted delivery's row keeps none (one
    string fewer for each of a fan-out's deliveries), so it is the message log's."""
    return description or (ACCEPTED_DESCRIPTION if status == "RQA" else "")


def _event(row: Any, status: str, description: str, at: float) -> dict[str, Any]:
    """The ``message.status`` event of a delivery ``row`` (delivery_id, request_id, esiid, mac,
    category, cancellation_id) that took ``status``."""
    return {
        "type": "message.status",
        "request_id": row.request_id,
        "message_cancellation_id": row.cancellation_id,
        "message_status_id": str(row.delivery_id),
        "category": row.category,
        "esiid": row.esiid,
        "mac": row.mac or None,
        "status_code": status,
        "status_desc": _description(status, description),
        "at": at,
    }


def _upsert_params(c: Change) -> dict[str, Any]:
    return {
        "r": c.request_id,
        "e": c.esiid,
        "m": c.mac,
        "t": c.tdsp_duns,
        "s": c.code.value,
        "d": c.description,
        "at": c.at,
        "settled": c.at if c.code in SETTLED else None,
        "received": 1 if c.received else 0,
    }


def _live_of(row: Any) -> _Live:
    return _Live(
        row.request_id,
        Category(row.category),
        row.party_id,
        row.issuer_event_id,
        row.created_at,
        row.cancels_request_id,
    )


def _group_json(name: str, size: int, updated_at: float) -> dict[str, Any]:
    return {
        "name": name,
        "size": size,
        "updated_at": specs.iso(updated_at),
        "links": {"self": f"/v1/groups/{name}"},
    }


def _once_thd(
    conn: sa.Connection,
    tdsp_duns: str,
    batch_id: str,
    count: int,
    now: float,
    apply: Callable[[sa.Connection, Any, str, float], list[str | None]],
    items: Any,
) -> list[str | None]:
    """Apply a head-end batch once: a batch id already recorded gets its first answer again;
    otherwise ``apply`` runs and its answer is recorded under the id in the same transaction."""
    if batch_id and tdsp_duns:
        known = answers_thd(conn, tdsp_duns, [batch_id])
        if batch_id in known:
            return _unpack_refusals(known[batch_id], count)
    results = apply(conn, items, tdsp_duns, now)
    if batch_id and tdsp_duns:
        record_thd(conn, tdsp_duns, [(batch_id, _pack_refusals(results))], now)
    return results


def _pack_refusals(results: Iterable[str | None]) -> str | None:
    refused = [[i, reason] for i, reason in enumerate(results) if reason is not None]
    return json.dumps(refused) if refused else None


def _unpack_refusals(packed: str | None, count: int) -> list[str | None]:
    results: list[str | None] = [None] * count
    if packed:
        for index, reason in json.loads(packed):
            if 0 <= index < count:
                results[index] = reason
    return results


__all__ = ["Change", "MessagingService", "new_request_id"]
