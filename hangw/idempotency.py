"""Idempotency-Key records: the first answer to a party's POST, kept under the key it sent.

A request claims its key (a row with status ``IN_PROGRESS``) before it runs, and the row takes
the answer once there is one; a repeat gets that answer again, and a repeat that comes while the
first still runs is told to wait. A claim older than ``CLAIM_EXPIRY_S`` belonged to a request
that died with its gateway, and the next request with the key takes it over. An accepted request
keeps its answer in its own store job (hangw.api.kept), so the answer is kept exactly when the
request's writes are; a refusal, which writes nothing, keeps it in a job of its own just after.
A device add claims its key in its own job too, and a refusal then claims the key with its
answer at once (``claim_answered_thd``). An answer is kept only while the key still holds its
request's claim: a request kept in its own job whose claim is gone (released, or taken over after
the expiry) is undone with its job (``KeyHeld``), so no request is done with its answer lost.
The statements run on the DB-API cursor (hangw.store.prepared).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from hangw.store.model import idempotency_keys
from hangw.store.prepared import Prepared

#: The status code of a claimed key whose request has no answer yet.
IN_PROGRESS = 0
#: Seconds after which an unanswered claim is taken to have died with its gateway.
CLAIM_EXPIRY_S = 60.0

_KEY = (
    idempotency_keys.c.party_id == sa.bindparam("b_party_id"),
    idempotency_keys.c.key == sa.bindparam("b_key"),
)
_SELECT = Prepared(
    sa.select(
        idempotency_keys.c.request_hash,
        idempotency_keys.c.status_code,
        idempotency_keys.c.body,
        idempotency_keys.c.created_at,
    ).where(*_KEY)
)
_CLAIM = Prepared(
    idempotency_keys.insert(),
    columns=("party_id", "key", "request_hash", "status_code", "body", "created_at"),
)
_TAKE_OVER = Prepared(
    idempotency_keys.update()
    .where(*_KEY)
    .values(request_hash=sa.bindparam("b_request_hash"), created_at=sa.bindparam("b_now"))
)
_ANSWER = Prepared(
    idempotency_keys.update()
    .where(
        *_KEY,
        idempotency_keys.c.status_code == IN_PROGRESS,
        idempotency_keys.c.request_hash == sa.bindparam("b_request_hash"),
    )
    .values(status_code=sa.bindparam("b_status_code"), body=sa.bindparam("b_body"))
)
_RELEASE = Prepared(
    idempotency_keys.delete().where(*_KEY, idempotency_keys.c.status_code == IN_PROGRESS)
)


@dataclass(frozen=True)
class Earlier:
    """What a key already holds: the request it was first used for, and its answer (if any)."""

    request_hash: str
    status_code: int  # IN_PROGRESS while that request runs
    body: bytes


def claim_thd(
    conn: sa.Connection, party_id: str, key: str, request_hash: str, now: float
) -> Earlier | None:
    """Claim ``key`` for a request; None once claimed, else what the key already holds.

    Raises the driver's integrity error when another gateway claimed it at the same moment.
    """
    previous = _SELECT.first(conn, {"b_party_id": party_id, "b_key": key})
    if previous is None:
        _CLAIM.execute(
            conn,
            {
                "party_id": party_id,
                "key": key,
                "request_hash": request_hash,
                "status_code": IN_PROGRESS,
                "body": b"",
                "created_at": now,
            },
        )
        return None
    if previous.status_code == IN_PROGRESS and previous.created_at < now - CLAIM_EXPIRY_S:
        _TAKE_OVER.execute(
            conn,
            {"b_party_id": party_id, "b_key": key, "b_request_hash": request_hash, "b_now": now},
        )
        return None  # its request died with a gateway; this one takes the key over
    return Earlier(previous.request_hash, previous.status_code, bytes(previous.body))


def earlier_thd(conn: sa.Connection, party_id: str, key: str) -> Earlier | None:
    """What ``key`` holds now, if anything."""
    held = _SELECT.first(conn, {"b_party_id": party_id, "b_key": key})
    return None if held is None else Earlier(held.request_hash, held.status_code, bytes(held.body))


def answer_thd(
    conn: sa.Connection, party_id: str, key: str, request_hash: str, status_code: int, body: bytes
) -> bool:
    """Keep the answer to the key's request, for every repeat of it; False, keeping nothing, when
    the key no longer holds that request's claim (released, answered, or taken over by another)."""
    kept = _ANSWER.execute(
        conn,
        {
            "b_party_id": party_id,
            "b_key": key,
            "b_request_hash": request_hash,
            "b_status_code": status_code,
            "b_body": body,
        },
    ).rowcount
    return bool(kept == 1)


def claim_answered_thd(
    conn: sa.Connection,
    party_id: str,
    key: str,
    request_hash: str,
    now: float,
    status_code: int,
    body: bytes,
) -> Earlier | None:
    """Claim ``key`` with its answer at once (a request refused before any job of its own
    claimed it); None once kept, else what the key already holds, which is left as it was."""
    previous = claim_thd(conn, party_id, key, request_hash, now)
    if previous is None:
        answer_thd(conn, party_id, key, request_hash, status_code, body)  # claimed just now
    return previous


def release_thd(conn: sa.Connection, party_id: str, key: str) -> None:
    """Give up an unanswered claim (its request failed unexpectedly: it may be sent again).

    Not for a request whose client went away: its store job may still commit, with its answer,
    after the release on another writer, and the answer needs the claim.
    """
    _RELEASE.execute(conn, {"b_party_id": party_id, "b_key": key})
