"""The webhook paths of the v1 API: subscribe, list, read, delete and resume subscriptions.

Registered on the ``Api`` Klein app by ``register``; handlers get the Api instance as ``self``
and its ``webhooks`` service (hangw.webhooks.WebhookService). The signing secret is in the
answer to the POST that created the subscription and in no other answer: an Idempotency-Key
replay of that POST answers without it, since the answers kept for replays are not sealed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.web.iweb import IRequest

from hangw.api.kept import keeping
from hangw.problems import InvalidField, Problem
from hangw.webhooks import Subscription, WebhookService, iso_utc

if TYPE_CHECKING:
    from hangw.api.app import Api

__all__ = ["register", "subscription_json"]


class WebhooksUnavailable(Problem):
    status, slug, title = 503, "webhooks-unavailable", "Webhooks unavailable"


def subscription_json(subscription: Subscription) -> dict[str, Any]:
    """A subscription as the API shows it (never with its secret)."""
    base = f"/v1/webhooks/{subscription.subscription_id}"
    return {
        "id": subscription.subscription_id,
        "url": subscription.url,
        "state": subscription.state,
        "parked_reason": subscription.parked_reason,
        "failures": subscription.failures,
        "backlog": subscription.backlog,
        "next_attempt_at": (
            None if subscription.next_attempt_at is None else iso_utc(subscription.next_attempt_at)
        ),
        "created_at": iso_utc(subscription.created_at),
        "links": {"self": base, "resume": f"{base}/resume"},
    }


def _service(api: Api) -> WebhookService:
    if api.webhooks is None:
        raise WebhooksUnavailable("webhooks are not enabled on this gateway")
    return api.webhooks


def register(app: Klein) -> None:
    """Add the webhook routes to the Api class's Klein app."""

    @app.route("/v1/webhooks", methods=["POST"])
    async def subscribe_webhook(self: Api, request: IRequest) -> bytes:
        party = self._party(request)
        body = self._body(request)
        webhooks = _service(self)
        secrets_made: list[str] = []

        async def handle() -> bytes:
            unknown = set(body) - {"url", "secret"}
            if unknown:
                raise InvalidField(
                    sorted(unknown)[0], f"unknown field(s): {', '.join(sorted(unknown))}"
                )
            subscription, secret = await webhooks.subscribe(
                party,
                body.get("url"),
                body.get("secret"),
                also=keeping(request, 201, subscription_json),
            )
            secrets_made.append(secret)
            request.setHeader(b"location", f"/v1/webhooks/{subscription.subscription_id}".encode())
            return self._json(request, 201, subscription_json(subscription))

        answer = await self._idempotent(request, party, handle, located=True)
        if not secrets_made:
            return answer  # a replay, or a refusal
        created = json.loads(answer)
        created["secret"] = secrets_made[0]
        return json.dumps(created, separators=(",", ":")).encode()

    @app.route("/v1/webhooks", methods=["GET"])
    async def list_webhooks(self: Api, request: IRequest) -> bytes:
        party = self._party(request)
        subscriptions = await _service(self).list(party)
        return self._json(request, 200, {"webhooks": [subscription_json(s) for s in subscriptions]})

    @app.route("/v1/webhooks/<subscription_id>", methods=["GET"])
    async def get_webhook(self: Api, request: IRequest, subscription_id: str) -> bytes:
        party = self._party(request)
        subscription = await _service(self).get(party, subscription_id)
        return self._json(request, 200, subscription_json(subscription))

    @app.route("/v1/webhooks/<subscription_id>", methods=["DELETE"])
    async def delete_webhook(self: Api, request: IRequest, subscription_id: str) -> bytes:
        party = self._party(request)
        subscription = await _service(self).delete(party, subscription_id)
        return self._json(request, 200, subscription_json(subscription))

    @app.route("/v1/webhooks/<subscription_id>/resume", methods=["POST"])
    async def resume_webhook(self: Api, request: IRequest, subscription_id: str) -> bytes:
        party = self._party(request)
        subscription = await _service(self).resume(party, subscription_id)
        return self._json(request, 200, subscription_json(subscription))
