"""An Idempotency-Key's answer kept in the transaction of the request it answers.

``Api._idempotent`` claims a POST's key, runs the request, and keeps its answer under the key.
A service method that writes takes ``also=``: a function it calls last in its own transaction
with what it is about to return. The route passes ``keeping(request, status, render)`` there,
so the answer (``render(result)`` as JSON) is committed exactly when the request's writes are:
a gateway that stops between the two cannot leave the writes made and the key unanswered,
where a retry would run the request a second time. It also saves the answer a store job.
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


@dataclass
class KeptAnswer:
    """The key a request came with, and the answer once a store job has kept it."""

    party_id: str
    key: str
    kept: tuple[int, bytes] | None = None

    def keep_thd(self, conn: sa.Connection, status: int, body: bytes) -> None:
        idempotency.answer_thd(conn, self.party_id, self.key, status, body)
        self.kept = (status, body)  # read on the reactor thread after the job's commit


def kept_answer_of(request: IRequest) -> KeptAnswer | None:
    """The Idempotency-Key answer a handler may keep in its own transaction, if a key came."""
    return getattr(request, "hangw_kept_answer", None)


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
