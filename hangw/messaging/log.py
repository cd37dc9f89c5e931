"""The HAN message log: one entry per status a delivery took, with the SMT log columns.

Read in pages ordered by the status row's id (keyset: a page ends where the next begins), so a
log of millions of rows streams as CSV without being held in memory. A party sees only the
requests it sent. For a cancellation (CLE, CSM) the RequestID column is the cancelled request's
and MessageCancellationID the cancellation's own; a CAL has no earlier request and shows its own.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from hangw.domain import Party
from hangw.messaging.categories import Category, StatusCode
from hangw.messaging.requests import parse_time
from hangw.problems import InvalidField
from hangw.store.model import deliveries, delivery_statuses, message_requests, meters

#: The SMT HAN messaging log columns, in order (smt-han.md).
COLUMNS = (
    "TDSPDUNSNumber",
    "MessageDate",
    "RequestID",
    "MessageCancellationID",
    "MessageStatusID",
    "ESIID",
    "MeterSerialNumber",
    "DeviceMACAddr",
    "EventCategoryID",
    "StatusCode",
    "StatusDesc",
    "StatusTimestamp",
)
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000


@dataclass(frozen=True)
class LogFilter:
    """What a party asked to see; every field but the party may be left out."""

    party_id: str
    since: float | None = None  # MessageDate from (inclusive)
    until: float | None = None  # MessageDate to (exclusive)
    request_id: str | None = None
    esiid: str | None = None
    category: Category | None = None
    status: StatusCode | None = None


def log_filter(party: Party, args: dict[str, str]) -> LogFilter:
    """A filter from query parameters (from, to, request_id, esiid, category, status)."""
    since = _day_or_time(args.get("from"), "from")
    until = _day_or_time(args.get("to"), "to", end=True)
    if since is not None and until is not None and until <= since:
        raise InvalidField("to", "'to' must be after 'from'")
    category = args.get("category")
    if category is not None and category not in Category.__members__.values():
        raise InvalidField("category", f"category must be one of {', '.join(Category)}")
    status = args.get("status")
    if status is not None and status not in StatusCode.__members__.values():
        raise InvalidField("status", f"status must be one of {', '.join(StatusCode)}")
    return LogFilter(
        party_id=party.party_id,
        since=since,
        until=until,
        request_id=args.get("request_id") or None,
        esiid=args.get("esiid") or None,
        category=Category(category) if category else None,
        status=StatusCode(status) if status else None,
    )


def _day_or_time(value: str | None, name: str, *, end: bool = False) -> float | None:
    """A date (YYYY-MM-DD, a whole UTC day; ``to`` includes it) or an ISO-8601 time."""
    if not value:
        return None
    if len(value) == 10:
        try:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise InvalidField(name, f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None
        return day.timestamp() + (86400 if end else 0)
    return parse_time(value, name)


_request_of = sa.case(
    (
        message_requests.c.category.in_(
            [Category.CANCEL_LOAD_CONTROL.value, Category.CANCEL_TEXT.value]
        ),
        message_requests.c.cancels_request_id,
    ),
    else_=message_requests.c.request_id,
)


def page_thd(
    conn: sa.Connection, wanted: LogFilter, after: int, limit: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Up to ``limit`` log rows after status row ``after``, and the last status row id read."""
    query = (
        sa.select(
            delivery_statuses.c.status_id,
            deliveries.c.tdsp_duns,
            message_requests.c.created_at,
            _request_of,
            message_requests.c.cancellation_id,
            deliveries.c.delivery_id,
            delivery_statuses.c.esiid,
            meters.c.meter_serial,
            delivery_statuses.c.mac,
            message_requests.c.category,
            delivery_statuses.c.code,
            delivery_statuses.c.description,
            delivery_statuses.c.at,
        )
        .select_from(
            delivery_statuses.join(
                message_requests,
                message_requests.c.request_id == delivery_statuses.c.request_id,
            )
            .join(
                deliveries,
                sa.and_(
                    deliveries.c.request_id == delivery_statuses.c.request_id,
                    deliveries.c.esiid == delivery_statuses.c.esiid,
                    deliveries.c.mac == delivery_statuses.c.mac,
                ),
            )
            .outerjoin(meters, meters.c.esiid == delivery_statuses.c.esiid)
        )
        .where(
            message_requests.c.party_id == wanted.party_id,
            delivery_statuses.c.status_id > after,
        )
        .order_by(delivery_statuses.c.status_id)
        .limit(limit)
    )
    if wanted.request_id is not None:
        # the request itself, or a cancellation of it
        query = query.where(
            sa.or_(
                delivery_statuses.c.request_id == wanted.request_id,
                delivery_statuses.c.request_id.in_(
                    sa.select(message_requests.c.request_id).where(
                        message_requests.c.cancels_request_id == wanted.request_id
                    )
                ),
            )
        )
    if wanted.esiid is not None:
        query = query.where(delivery_statuses.c.esiid == wanted.esiid)
    if wanted.category is not None:
        query = query.where(message_requests.c.category == wanted.category.value)
    if wanted.status is not None:
        query = query.where(delivery_statuses.c.code == wanted.status.value)
    if wanted.since is not None:
        query = query.where(message_requests.c.created_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(message_requests.c.created_at < wanted.until)
    rows = [tuple(row) for row in conn.execute(query)]
    return rows, (rows[-1][0] if rows else after)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry_values(row: Sequence[Any]) -> list[str]:
    """A log row as the twelve column values (strings, as the CSV has them)."""
    (
        _,
        tdsp_duns,
        created_at,
        request_id,
        cancellation_id,
        delivery_id,
        esiid,
        meter_serial,
        mac,
        category,
        code,
        description,
        at,
    ) = row
    return [
        tdsp_duns,
        _iso(created_at),
        request_id,
        cancellation_id or "",
        str(delivery_id),
        esiid,
        meter_serial or "",
        mac,
        category,
        code,
        description,
        _iso(at),
    ]


def entry_json(row: Sequence[Any]) -> dict[str, str | None]:
    return {
        column: (value or None) if column in ("MessageCancellationID", "DeviceMACAddr") else value
        for column, value in zip(COLUMNS, entry_values(row), strict=True)
    }


def csv_header() -> bytes:
    return csv_rows([list(COLUMNS)])


def csv_rows(rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
