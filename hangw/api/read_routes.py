"""The on-demand meter read of the v1 API: ``POST /v1/esiids/{esiid}/reads``.

Registered on the ``Api`` Klein app by ``register``; the handler gets the Api instance as
``self`` and asks its ``diagnostics`` (hangw.diagnostics.Diagnostics), which authorizes the party
as for a ping and reads the meter through the TDSP's head-end while the caller waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from klein import Klein
from twisted.web.iweb import IRequest

from hangw.webhooks import iso_utc

if TYPE_CHECKING:
    from hangw.api.app import Api

__all__ = ["register"]


def register(app: Klein) -> None:
    """Add the meter read route to the Api class's Klein app."""

    @app.route("/v1/esiids/<esiid>/reads", methods=["POST"])
    async def read_meter(self: Api, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        answer = await self.diagnostics.read_meter(party, esiid)
        answer["read_at"] = iso_utc(answer["read_at"])
        answer["asked_at"] = iso_utc(answer["asked_at"])
        return self._json(request, 200, answer)
