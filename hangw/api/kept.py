"""An Idempotency-Key's answer kept in the transaction of the request it answers.

``Api._idempotent`` claims a POST's key, runs the request, and keeps its answer under the key.
A service method that writes takes ``also=``: a function it calls last in its own transaction
with what it is about to return. The route passes ``keeping(request, status, render)`` there,
so the answer (``render(result)`` as JSON) is committed exactly when the request's writes are:
a gateway that stops between the two cannot leave the writes made and the key unanswered,
where a retry would run the request a second time. It also saves the answer a store job.

A request may also claim its key in that job (``claiming``, a service's ``before=``: adding a
device), rather than in a job of its own before it runs: the claim, the request's writes and the
answer then commit together, in one store job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.web.iweb import IRequest

from hangw import idempotency

T = TypeVar("T")


def json_bytes(body: Any) -> bytes:
    """The API's JSON encoding of an answer body (the same bytes a replay gets)."""
    return json.dumps(body, separators=(",", ":")).encode()


class KeyHeld(Exception):
    """Raised in a request's store job when its key already holds a request (``previous``), or
    when another gateway claimed the key at the same moment, or the claim the request keeps its
    answer under is gone (``previous`` None)."""

    def __init__(self, previous: idempotency.Earlier | None) -> None:
        super().__init__("the Idempotency-Key is held")
        self.previous = previous


@dataclass
class KeptAnswer:
    """The key a request came with, and the answer once a store job has kept it.

    ``claim_in_job``: the key is claimed in the request's own store job (``claiming``), not in
    a job before the request runs; ``integrity_errors`` are what a unique key violation raises.
    """

    party_id: str
    key: str
    request_hash: str
    now: float
    claim_in_job: bool = False
    integrity_errors: tuple[type[Exception], ...] = ()
    kept: tuple[int, bytes] | None = None
    claimed: bool = False

    def claim_thd(self, conn: sa.Connection) -> None:
        """Claim the key first thing in the request's job; raises ``KeyHeld`` when it is held."""
        try:
            previous = idempotency.claim_thd(
                conn, self.party_id, self.key, self.request_hash, self.now
            )
        except self.integrity_errors:
            raise KeyHeld(None) from None  # the job's savepoint takes the failed insert back
        if previous is not None:
            raise KeyHeld(previous)
        self.claimed = True

    def keep_thd(self, conn: sa.Connection, status: int, body: bytes) -> None:
        """Keep the answer last in the request's job; raises ``KeyHeld`` (undoing the job) when
        the key no longer holds this request's claim, so that it is not done unanswered."""
        if self.claim_in_job and not self.claimed:  # the answer would update no row
            raise RuntimeError("a request that claims its key in its job kept it without claiming")
        if not idempotency.answer_thd(
            conn, self.party_id, self.key, self.request_hash, status, body
        ):
            raise KeyHeld(idempotency.earlier_thd(conn, self.party_id, self.key))
        self.kept = (status, body)  # read on the reactor thread after the job's commit


def kept_answer_of(request: IRequest) -> KeptAnswer | None:
    """The Idempotency-Key answer a handler may keep in its own transaction, if a key came."""
    return getattr(request, "hangw_kept_answer", None)


def claiming(request: IRequest) -> Callable[[sa.Connection], None] | None:
    """The ``before=`` that claims the request's key in its own store job, or None when the
    request came without a key or its key was claimed before it ran."""
    kept = kept_answer_of(request)
    if kept is None or not kept.claim_in_job:
        return None
    return kept.claim_thd


def keeping(
    request: IRequest, status: int, render: Callable[[T], Any]
) -> Callable[[sa.Connection, T], None] | None:
    """The ``also=`` that keeps ``status`` and ``render(result)`` as the key's answer, or None
    when the request came without a key. ``render`` runs on the store's thread: it must only
    read ``result`` (and what it closes over), and give the body the route answers with."""
    kept = kept_answer_of(request)
    if kept is None:
        return None

    def also(conn: sa.Connection, result: T) -> None:
        assert kept is not None
        kept.keep_thd(conn, status, json_bytes(render(result)))

    return also
