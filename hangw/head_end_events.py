"""The head-end events that changed the store, kept by event id so each is applied once.

A head-end resends an event until the gateway acknowledges it. The acknowledgement goes out after
the transaction that applied the event commits; if the gateway dies in between, the copy that
comes after the restart must get the first answer without being applied again. So the event id
and its answer (applied, or the reason it was refused) are written in that same transaction, and
looked up before an event is applied. Rows older than the retention are pruned.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from hangw.store.model import head_end_events

#: How long an event id is remembered: far longer than any head-end keeps resending.
RETENTION_S = 7 * 24 * 3600.0

APPLIED: None = None


def answers_thd(
    conn: sa.Connection, tdsp_duns: str, event_ids: Iterable[str]
) -> dict[str, str | None]:
    """The recorded answer of each event id already seen: None (applied) or the refusal."""
    ids = sorted({i for i in event_ids if i})
    found: dict[str, str | None] = {}
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            sa.select(head_end_events.c.event_id, head_end_events.c.refusal).where(
                head_end_events.c.tdsp_duns == tdsp_duns,
                head_end_events.c.event_id.in_(ids[start : start + 500]),
            )
        )
        found.update({event_id: refusal for event_id, refusal in rows})
    return found


def record_thd(
    conn: sa.Connection, tdsp_duns: str, answers: Iterable[tuple[str, str | None]], now: float
) -> None:
    """Record the answer given to each event (in the transaction that applied it)."""
    rows = [
        {"tdsp_duns": tdsp_duns, "event_id": event_id, "refusal": refusal, "received_at": now}
        for event_id, refusal in answers
        if event_id
    ]
    if rows:
        conn.execute(head_end_events.insert(), rows)


def prune_thd(conn: sa.Connection, now: float, retention_s: float = RETENTION_S) -> int:
    """Forget events older than the retention; returns how many were forgotten."""
    result = conn.execute(
        head_end_events.delete().where(head_end_events.c.received_at < now - retention_s)
    )
    return result.rowcount or 0
