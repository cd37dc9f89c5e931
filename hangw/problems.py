"""Refusals a person can act on, rendered by the API as RFC 9457 problem+json.

Every refusal of a request is one of these, raised before anything is written.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://hangw.invalid/problems/"


class Problem(Exception):
    """A refused request: an HTTP status, a short title, and a detail saying what to do."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    def to_json(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class InvalidField(Problem):
    """A field of the request body is missing or has a value hangw cannot accept."""

    status, slug, title = 422, "invalid-field", "Invalid field"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field=field)


class Unauthenticated(Problem):
    status, slug, title = 401, "unauthenticated", "Client certificate not registered"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not authorized"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class MeterNotHanCapable(Problem):
    status, slug, title = 409, "meter-not-han-capable", "Meter cannot serve HAN devices"


class MeterInactive(Problem):
    status, slug, title = 409, "meter-inactive", "ESI ID not active"


class SlotsFull(Problem):
    status, slug, title = 409, "han-slots-full", "All five HAN device slots are in use"


class IllegalTransitionProblem(Problem):
    status, slug, title = 409, "illegal-transition", "Not possible in the device's current status"


class MethodNotAllowedProblem(Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class InternalError(Problem):
    status, slug, title = 500, "internal-error", "Internal error"


class StoreUnavailable(Problem):
    """The gateway's database could not be reached (down, locked, read-only, full)."""

    status, slug, title = 503, "store-unavailable", "Store unavailable"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(Problem):
    status, slug, title = 415, "unsupported-media-type", "Body must be JSON"


class IdempotencyKeyInProgress(Problem):
    status, slug, title = 409, "idempotency-key-in-progress", "Request with this key in progress"


class IdempotencyKeyReused(Problem):
    status, slug, title = (
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused for another request",
    )
