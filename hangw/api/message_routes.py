"""The messaging paths of the v1 API: requests, cancellations, groups and the message log.

Registered on the ``Api`` Klein app by ``register``; handlers get the Api instance as ``self``
and its ``messaging`` service. Bodies may be as large as ``messaging.max_body_bytes`` (a request
to 200,000 ESI IDs is one request); the message log streams as CSV page by page.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from klein import Klein
from twisted.web.iweb import IRequest

from hangw.api.kept import keeping
from hangw.api.paced import wants_csv, write_csv
from hangw.api.query import query_args
from hangw.messaging import log as message_log
from hangw.messaging import requests as specs
from hangw.problems import InvalidField

_LOG_PAGE_FOR_CSV = 5000
#: What GET /v1/message-log takes: its filters, a page's size and cursor, and the format.
_LOG_PARAMETERS = (
    "from",
    "to",
    "request_id",
    "esiid",
    "category",
    "status",
    "limit",
    "after",
    "format",
)
#: What PUT /v1/groups/{name} takes: a misspelt field is refused, not ignored.
_GROUP_FIELDS = frozenset({"esiids"})


def _same(summary: dict[str, Any]) -> dict[str, Any]:
    return summary


#: A page size, and a page's cursor (a status row id; 18 digits stay below a BIGINT's 2**63), in
#: ASCII digits: str.isdigit() also takes digits int() cannot read ('²'), and any number of them.
_LIMIT = re.compile(r"[0-9]{1,5}")
_CURSOR = re.compile(r"[0-9]{1,18}")


def _page_size(args: dict[str, str]) -> int:
    raw = args.get("limit", str(message_log.DEFAULT_PAGE))
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= message_log.MAX_PAGE:
        raise InvalidField("limit", f"limit must be from 1 to {message_log.MAX_PAGE}")
    return int(raw)


def register(app: Klein) -> None:
    """Add the messaging routes to the Api class's app."""

    @app.route("/v1/messages", methods=["POST"])
    async def send_message(self: Any, request: IRequest) -> bytes:
        party = self._party(request)
        body = self._body(request, limit=self.messaging_max_body)

        async def handle() -> bytes:
            summary = await self.messaging.send(party, body, also=keeping(request, 202, _same))
            request.setHeader(b"location", summary["links"]["self"].encode())
            return self._json(request, 202, summary)

        return await self._idempotent(request, party, handle, located=True)

    @app.route("/v1/messages/<request_id>", methods=["GET"])
    async def get_message(self: Any, request: IRequest, request_id: str) -> bytes:
        party = self._party(request)
        return self._json(request, 200, await self.messaging.get_request(party, request_id))

    @app.route("/v1/messages/<request_id>/cancel", methods=["POST"])
    async def cancel_message(self: Any, request: IRequest, request_id: str) -> bytes:
        party = self._party(request)
        body = _optional_body(self, request)

        async def handle() -> bytes:
            summary = await self.messaging.cancel(
                party, request_id, body, also=keeping(request, 202, _same)
            )
            request.setHeader(b"location", summary["links"]["self"].encode())
            return self._json(request, 202, summary)

        return await self._idempotent(request, party, handle, located=True)

    @app.route("/v1/esiids/<esiid>/load-control/cancel-all", methods=["POST"])
    async def cancel_all_esiid(self: Any, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        body = _optional_body(self, request)
        targets = specs.Targets(esiids=specs.esiid_list([esiid], "esiid"))

        async def handle() -> bytes:
            summary = await self.messaging.cancel_all(
                party, targets, body, also=keeping(request, 202, _same)
            )
            return self._json(request, 202, summary)

        return await self._idempotent(request, party, handle)

    @app.route("/v1/groups/<name>/load-control/cancel-all", methods=["POST"])
    async def cancel_all_group(self: Any, request: IRequest, name: str) -> bytes:
        party = self._party(request)
        body = _optional_body(self, request)
        targets = specs.Targets(group=specs.group_name(name))

        async def handle() -> bytes:
            summary = await self.messaging.cancel_all(
                party, targets, body, also=keeping(request, 202, _same)
            )
            return self._json(request, 202, summary)

        return await self._idempotent(request, party, handle)

    @app.route("/v1/groups", methods=["GET"])
    async def list_groups(self: Any, request: IRequest) -> bytes:
        party = self._party(request)
        return self._json(request, 200, {"groups": await self.messaging.list_groups(party)})

    @app.route("/v1/groups/<name>", methods=["PUT"])
    async def put_group(self: Any, request: IRequest, name: str) -> bytes:
        party = self._party(request)
        body = self._body(request, limit=self.messaging_max_body)
        specs.only_fields(body, _GROUP_FIELDS, "a group")
        esiids = specs.esiid_list(body.get("esiids"), "esiids")
        group = await self.messaging.put_group(party, name, esiids)
        return self._json(request, 200, group)

    @app.route("/v1/groups/<name>", methods=["GET"])
    async def get_group(self: Any, request: IRequest, name: str) -> bytes:
        party = self._party(request)
        return self._json(request, 200, await self.messaging.get_group(party, name))

    @app.route("/v1/groups/<name>", methods=["DELETE"])
    async def delete_group(self: Any, request: IRequest, name: str) -> bytes:
        party = self._party(request)
        await self.messaging.delete_group(party, name)
        request.setResponseCode(204)
        return b""

    @app.route("/v1/message-log", methods=["GET"])
    async def message_log_(self: Any, request: Any) -> bytes:
        party = self._party(request)
        args = query_args(request, _LOG_PARAMETERS)
        wanted = message_log.log_filter(party, args)
        store = self.messaging.store
        if not wants_csv(request, args):
            limit = _page_size(args)
            after_raw = args.get("after", "0")
            if not _CURSOR.fullmatch(after_raw):
                raise InvalidField("after", "after must be the 'next' cursor of a page")
            rows, last = await store.run(message_log.page_thd, wanted, int(after_raw), limit)
            body: dict[str, Any] = {
                "columns": list(message_log.COLUMNS),
                "entries": [message_log.entry_json(row) for row in rows],
                "next": None,
            }
            if len(rows) == limit:
                query = {k: v for k, v in args.items() if k != "after"}
                query["after"] = str(last)
                body["next"] = "/v1/message-log?" + urlencode(query)
            return self._json(request, 200, body)

        async def pieces() -> AsyncIterator[bytes]:
            yield message_log.csv_header()
            after = 0
            while True:
                rows, after = await store.run(
                    message_log.page_thd, wanted, after, _LOG_PAGE_FOR_CSV
                )
                if rows:
                    yield message_log.csv_rows([message_log.entry_values(row) for row in rows])
                if len(rows) < _LOG_PAGE_FOR_CSV:
                    return

        return await write_csv(request, "hangw-message-log.csv", pieces())


def _optional_body(api: Any, request: IRequest) -> dict[str, Any]:
    """The body of a POST whose body may be left out: {} when no byte of one came.

    Decided from what arrived, not from Content-Length: a chunked body declares none.
    """
    request.content.seek(0, os.SEEK_END)
    received = request.content.tell()
    request.content.seek(0)
    return api._body(request) if received else {}
