"""The v1 API as a Klein app: routes, JSON bodies, problem+json errors, Idempotency-Key.

The app is mounted in hangw's own ``Site`` behind the mutual-TLS listener (hangw.api.listener);
the party is the owner of the client certificate of the connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import structlog
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from hangw import authz, idempotency, metrics, tls
from hangw.api.kept import KeptAnswer, KeyHeld, claiming, json_bytes, keeping
from hangw.api.message_routes import register as register_message_routes
from hangw.api.query import query_args
from hangw.api.read_routes import register as register_read_routes
from hangw.api.usage_routes import register as register_usage_routes
from hangw.api.webhook_routes import register as register_webhook_routes
from hangw.devices import AddDeviceRequest, DeviceService
from hangw.diagnostics import Diagnostics
from hangw.domain import Device, Grant, HistoryEntry, Party
from hangw.parties import PartyRegistry
from hangw.problems import (
    BadRequest,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InternalError,
    InvalidField,
    MethodNotAllowedProblem,
    NotFound,
    PayloadTooLarge,
    Problem,
    StoreUnavailable,
    Unauthenticated,
    UnsupportedMediaType,
)
from hangw.store.db import without_password
from hangw.webhooks import WebhookService

log = structlog.get_logger(__name__)

#: Seconds a 503 for an unavailable store asks the client to wait (Retry-After).
STORE_RETRY_AFTER_S = 5
PROBLEM_JSON = b"application/problem+json"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_NUL_IN_URL = "the URL holds a NUL character (%00); no path or query parameter takes one"
#: \u0000, or a \u escape of a surrogate (a pair, an emoji say, also matches; the walk finds
#: it whole): what the walk below looks for, so that other escaped text is not walked at all.
_NUL_OR_SURROGATE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _refuse_unstorable_text(value: Any, where: str) -> None:
    """Refuse a string in the body that no field can hold, naming where it is: a NUL (which
    PostgreSQL cannot store, and devices end a string at) or a lone surrogate (no UTF-8)."""
    if isinstance(value, str):
        field = where or "body"
        if "\x00" in value:
            raise InvalidField(
                field,
                f"{field} holds a NUL character at position {value.index(chr(0))}; "
                "no field takes one",
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidField(
                field,
                f"{field} holds a lone surrogate at position {error.start} "
                "(\\ud800 to \\udfff), which is no character; send the text as UTF-8",
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unstorable_text(key, f"a field name in {where or 'the body'}")
            _refuse_unstorable_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for number, item in enumerate(value):
            _refuse_unstorable_text(item, f"{where}[{number}]")


def request_id_of(request: IRequest) -> str:
    """The id of this request, made on first use and kept on the request object."""
    request_id: str | None = getattr(request, "hangw_request_id", None)
    if request_id is None:
        request_id = uuid.uuid4().hex[:16]
        request.hangw_request_id = request_id  # type: ignore[attr-defined]
    return request_id


def path_of(request: IRequest) -> str:
    """The request's path as sent (its %-escapes kept), for problems and logs."""
    return request.path.decode("utf-8", "replace")


def device_json(device: Device, viewer: Party) -> dict[str, Any]:
    hidden = authz.hides_identifiers(viewer, device)
    return {
        "id": device.device_id,
        "esiid": device.esiid,
        "mac": None if hidden else device.mac,
        "mac_hidden": hidden,
        "device_type": device.device_type,
        "description": device.description,
        "status": device.status.value,
        "status_at": iso(device.status_at),
        "reason": device.reason,
        "owner": {"party_id": device.owner_party_id, "role": device.owner_role.value},
        "created_at": iso(device.created_at),
        "links": {"self": f"/v1/han-devices/{device.device_id}"},
    }


def history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "device_id": entry.device_id,
        "status": entry.status.value,
        "event": entry.event,
        "at": iso(entry.at),
        "actor": entry.actor,
        "reason": entry.reason,
    }


def grant_json(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.grant_id,
        "esiid": grant.esiid,
        "hsp_party_id": grant.hsp_party_id,
        "granted_by": grant.granted_by,
        "granted_at": iso(grant.granted_at),
        "revoked_at": iso(grant.revoked_at),
        "live": grant.revoked_at is None,
    }


def openapi_document() -> bytes:
    return resources.files("hangw.api").joinpath("openapi.json").read_bytes()


class Api:
    app = Klein()
    # a path with an empty segment (/v1//han-devices/x) is no path of the API: werkzeug would
    # route it as the path without it, by a redirect (a 500 here) or to another path's methods
    app.url_map.merge_slashes = False

    def __init__(
        self,
        devices: DeviceService,
        registry: PartyRegistry,
        *,
        max_body_bytes: int = 65536,
        diagnostics: Diagnostics | None = None,
        messaging: Any = None,
        messaging_max_body: int = 16 << 20,
        webhooks: WebhookService | None = None,
        usage: Any = None,
    ) -> None:
        self.devices = devices
        self.registry = registry
        #: hangw.messaging.service.MessagingService (the messaging paths answer 503 without it)
        self.messaging = messaging
        self.messaging_max_body = messaging_max_body
        self.webhooks = webhooks  # the webhook paths answer 503 without it
        #: hangw.usage.jobs.UsageReports (the usage paths answer 503 without it)
        self.usage = usage
        self.diagnostics = diagnostics or Diagnostics(devices, {})
        self.max_body_bytes = max_body_bytes
        self._openapi = openapi_document()

    @property
    def largest_body_bytes(self) -> int:
        """The largest body any path takes; the Site refuses a larger one as it arrives."""
        limits = [self.max_body_bytes, self.messaging_max_body]
        if self.usage is not None:
            limits.append(self.usage.jobs.max_body_bytes)
        return max(limits)

    def resource(self) -> ApiResource:
        """The resource to mount in the API's Site."""
        return ApiResource(self)

    # ---- plumbing ------------------------------------------------------------------------------

    def _party(self, request: IRequest) -> Party:
        """The calling party; also names the request (X-Request-Id) for the logs it causes."""
        request_id = request_id_of(request)
        request.setHeader(b"x-request-id", request_id.encode())
        if b"%00" in request.uri:
            raise BadRequest(_NUL_IN_URL)
        fingerprint = tls.peer_fingerprint(request)
        party = self.registry.lookup(fingerprint)
        if party is None:
            raise Unauthenticated(
                "the client certificate of this connection is not registered; "
                "register it with `hangw party add CERT.pem --role ROLE --party-id ID`"
            )
        request.setHeader(b"x-hangw-party", party.party_id.encode())
        # handlers run as coroutines, each in a context of its own: this binds for this one only
        structlog.contextvars.bind_contextvars(request_id=request_id, party=party.party_id)
        return party

    def _body(self, request: IRequest, limit: int | None = None) -> dict[str, Any]:
        most = limit or self.max_body_bytes
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > most:
            raise PayloadTooLarge(f"the body is {int(length)} bytes; at most {most} are accepted")
        request.content.seek(0)
        raw = request.content.read(most + 1)
        if len(raw) > most:
            raise PayloadTooLarge(f"the body is over {most} bytes")
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequest(f"the body is not valid JSON: {error}") from None
        except RecursionError:
            raise BadRequest("the body is not valid JSON: it is nested too deeply") from None
        except ValueError:  # over Python's limit on the digits of an integer it reads
            raise BadRequest(
                f"the body holds a number of more than {sys.get_int_max_str_digits()} digits; "
                "no field takes one that long"
            ) from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        if _NUL_OR_SURROGATE_ESCAPE.search(raw):  # the only way either can be in JSON text
            _refuse_unstorable_text(body, "")
        return body

    def _json(self, request: IRequest, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json_bytes(body)

    async def _idempotent(
        self,
        request: IRequest,
        party: Party,
        handler: Any,
        claims_in_job: bool = False,
        located: bool = False,
    ) -> bytes:
        """Run ``handler()`` once per Idempotency-Key; a repeat gets the first answer again.

        ``claims_in_job``: the handler's store job claims the key itself (``kept.claiming``),
        so the claim, the request's writes and its answer are one job; otherwise the key is
        claimed in a job of its own before the handler runs. ``located``: an accepted request's
        answer carries ``Location``, its body's ``links.self``, and so does a replay of it.
        """
        key_header = request.getHeader(b"idempotency-key")
        if key_header is None:
            return await handler()
        if not (1 <= len(key_header) <= 200 and all(0x20 <= b < 0x7F for b in key_header)):
            # bytes that are not printable ASCII would be told apart by no text kept for them
            # (two keys decoded alike would share an answer): refused, not replaced
            raise InvalidField(
                "Idempotency-Key", "Idempotency-Key must be 1 to 200 printable ASCII characters"
            )
        key = key_header.decode("ascii")
        request.content.seek(0)
        digest = hashlib.sha256(
            request.method + b" " + request.uri + b"\n" + request.content.read()
        ).hexdigest()
        request.content.seek(0)
        store = self.devices.store
        now = time.time()
        if not claims_in_job:
            try:
                previous = await store.run(idempotency.claim_thd, party.party_id, key, digest, now)
            except store.integrity_errors:  # another gateway claimed the key at the same moment
                raise self._key_in_progress(key) from None
            if previous is not None:
                return self._earlier_answer(request, key, digest, previous, located)
        kept = KeptAnswer(party.party_id, key, digest, now, claims_in_job, store.integrity_errors)
        request.hangw_kept_answer = kept  # type: ignore[attr-defined]
        try:
            body: bytes = await handler()
        except KeyHeld as held:  # the handler's own job found the key held
            if held.previous is None:
                raise self._key_in_progress(key) from None
            return self._earlier_answer(request, key, digest, held.previous, located)
        except Problem as problem:
            body = self._refuse(request, problem)  # a refusal is this key's answer too
        except CancelledError:
            # the client went away: the handler's store job, already queued, still commits
            # and keeps its answer, which needs the claim; with nothing queued it lapses
            raise
        except BaseException:
            if not claims_in_job:  # an unexpected failure: the client may try the key again
                await store.run(idempotency.release_thd, party.party_id, key)
            raise  # (a claim made in the handler's job went with the job)
        status = request.code  # type: ignore[attr-defined]
        if kept.kept == (status, body):  # kept in the request's own transaction
            return body
        if not claims_in_job:
            if not await store.run(
                idempotency.answer_thd, party.party_id, key, digest, status, body
            ):  # a refusal made nothing: a retry of it is checked afresh
                log.warning("api.answer_not_kept", status=status, request_id=request_id_of(request))
            return body
        try:
            previous = await store.run(
                idempotency.claim_answered_thd, party.party_id, key, digest, now, status, body
            )
        except store.integrity_errors:
            raise self._key_in_progress(key) from None
        if previous is not None:  # the key was taken since: its request's answer, not ours
            return self._earlier_answer(request, key, digest, previous, located)
        return body

    @staticmethod
    def _key_in_progress(key: str) -> IdempotencyKeyInProgress:
        return IdempotencyKeyInProgress(
            f"a request with Idempotency-Key {key!r} is being processed; "
            "send it again in a moment to get its answer"
        )

    def _earlier_answer(
        self,
        request: IRequest,
        key: str,
        digest: str,
        previous: idempotency.Earlier,
        located: bool = False,
    ) -> bytes:
        """The answer the key already holds, or why there is none to give; ``located``: an
        accepted request's answer had its body's ``links.self`` as ``Location``, as this has."""
        if previous.request_hash != digest:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used for a different request; use a new key"
            )
        if previous.status_code == idempotency.IN_PROGRESS:
            raise self._key_in_progress(key)
        request.setResponseCode(previous.status_code)
        media = PROBLEM_JSON if previous.status_code >= 400 else b"application/json"
        request.setHeader(b"content-type", media)
        request.setHeader(b"idempotent-replayed", b"true")
        if located and previous.status_code < 300:
            location: str = json.loads(previous.body)["links"]["self"]
            request.setHeader(b"location", location.encode())
        return previous.body

    # ---- errors --------------------------------------------------------------------------------

    def _answer(self, request: IRequest, problem: Problem) -> bytes:
        """``problem`` as the problem+json answer to ``request``, with its X-Request-Id."""
        request.setResponseCode(problem.status)
        request.setHeader(b"content-type", PROBLEM_JSON)
        request.setHeader(b"x-request-id", request_id_of(request).encode())
        return json.dumps(problem.to_json(instance=path_of(request))).encode()

    def _refuse(self, request: IRequest, problem: Problem) -> bytes:
        """Answer with ``problem`` and log the refusal."""
        log.info(
            "api.refused",
            status=problem.status,
            problem=problem.slug,
            path=path_of(request),
            request_id=request_id_of(request),
        )
        return self._answer(request, problem)

    @app.handle_errors(Problem)
    def problem(self, request: IRequest, failure: Failure) -> bytes:
        problem = failure.value
        assert isinstance(problem, Problem)
        return self._refuse(request, problem)

    @app.handle_errors(RouteNotFound)
    def route_not_found(self, request: IRequest, failure: Failure) -> bytes:
        if b"%00" in request.uri:  # 400 on every path, as on the ones that exist
            return self.problem(request, Failure(BadRequest(_NUL_IN_URL)))
        return self.problem(
            request,
            Failure(NotFound(f"no such resource {path_of(request)!r}; see /v1/openapi.json")),
        )

    @app.handle_errors(RequestRedirect)
    def route_redirected(self, request: IRequest, failure: Failure) -> bytes:
        # werkzeug answers some paths with a redirect to another (a rule's trailing slash); no
        # API path is reached that way, so it is an unknown path like any other
        return self.route_not_found(request, failure)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        method, path = request.method.decode("ascii", "replace"), path_of(request)
        refused = failure.value
        assert isinstance(refused, MethodNotAllowed)
        allowed = ", ".join(sorted(refused.valid_methods or ()))
        request.setHeader(b"allow", allowed.encode())
        return self._refuse(
            request,
            MethodNotAllowedProblem(f"{method} is not allowed on {path}; it takes {allowed}"),
        )

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(*self.devices.store.unavailable_errors):
            return self._store_unavailable(request, failure)
        incident = uuid.uuid4().hex[:12]
        log.error(
            "api.internal_error",
            incident=incident,
            request_id=request_id_of(request),
            path=path_of(request),
            error=failure.getErrorMessage(),
            error_type=getattr(failure.type, "__name__", "?"),
        )
        return self._answer(
            request,
            InternalError(
                "the gateway failed while answering; the request may or may not have taken "
                f"effect, so look (GET) before you send it again. Incident {incident} is in the "
                "gateway's log"
            ),
        )

    def _store_unavailable(self, request: IRequest, failure: Failure) -> bytes:
        """503 for a request the store failed (down, locked, read-only, full, or stopping)."""
        log.warning(
            "api.store_unavailable",
            request_id=request_id_of(request),
            path=path_of(request),
            error=without_password(failure.getErrorMessage()).splitlines()[0][:300],
            error_type=getattr(failure.type, "__name__", "?"),
        )
        request.setHeader(b"retry-after", str(STORE_RETRY_AFTER_S).encode())
        return self._answer(
            request,
            StoreUnavailable(
                "the gateway cannot reach its store just now (the database is down, locked, "
                "read-only or full, or the gateway is stopping); send the request again in a "
                "little while. A request that changes something may or may not have taken "
                "effect: look (GET) first, or send it again with the same Idempotency-Key"
            ),
        )

    # ---- documents -----------------------------------------------------------------------------

    @app.route("/v1/openapi.json", methods=["GET"])
    async def openapi(self, request: IRequest) -> bytes:
        self._party(request)  # in a coroutine, so the context it binds is this request's own
        request.setHeader(b"content-type", b"application/json")
        return self._openapi

    # ---- HAN devices ---------------------------------------------------------------------------

    @app.route("/v1/esiids/<esiid>/han-devices", methods=["POST"])
    async def add_device(self, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        body = self._body(request)

        async def handle() -> bytes:
            fields = {}
            for name in ("mac", "install_code", "device_type"):
                if not isinstance(body.get(name), str):
                    raise InvalidField(name, f"{name} is required and must be a string")
                fields[name] = body[name]
            unknown = set(body) - {"mac", "install_code", "device_type", "description"}
            if unknown:
                raise InvalidField(
                    sorted(unknown)[0], f"unknown field(s): {', '.join(sorted(unknown))}"
                )
            request_ = AddDeviceRequest(description=body.get("description", ""), **fields)
            device = await self.devices.add_device(
                party,
                esiid,
                request_,
                before=claiming(request),
                also=keeping(request, 202, lambda device: device_json(device, party)),
            )
            request.setHeader(b"location", f"/v1/han-devices/{device.device_id}".encode())
            return self._json(request, 202, device_json(device, party))

        return await self._idempotent(request, party, handle, claims_in_job=True, located=True)

    @app.route("/v1/esiids/<esiid>/han-devices", methods=["GET"])
    async def list_devices(self, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        devices = await self.devices.list_devices(party, esiid)
        return self._json(
            request, 200, {"esiid": esiid, "devices": [device_json(d, party) for d in devices]}
        )

    @app.route("/v1/han-devices/<device_id>", methods=["GET"])
    async def get_device(self, request: IRequest, device_id: str) -> bytes:
        party = self._party(request)
        device, history = await self.devices.get_device(party, device_id)
        body = device_json(device, party)
        body["history"] = [history_json(entry) for entry in history]
        return self._json(request, 200, body)

    @app.route("/v1/han-devices/<device_id>", methods=["DELETE"])
    async def remove_device(self, request: IRequest, device_id: str) -> bytes:
        party = self._party(request)
        reason = query_args(request, ("reason",)).get("reason", "")
        device = await self.devices.remove_device(party, device_id, reason)
        return self._json(request, 202, device_json(device, party))

    @app.route("/v1/esiids/<esiid>/han-history", methods=["GET"])
    async def esiid_history(self, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        entries = await self.devices.esiid_history(party, esiid)
        rows = []
        for entry, device in entries:
            row = history_json(entry)
            row["mac"] = None if authz.hides_identifiers(party, device) else device.mac
            row["device_type"] = device.device_type
            rows.append(row)
        return self._json(request, 200, {"esiid": esiid, "history": rows})

    # ---- pings through the head-end ------------------------------------------------------------

    @app.route("/v1/esiids/<esiid>/ping", methods=["POST"])
    async def ping_esi(self, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        answer = await self.diagnostics.ping_esi(party, esiid)
        answer["asked_at"] = iso(answer["asked_at"])
        return self._json(request, 200, answer)

    @app.route("/v1/han-devices/<device_id>/ping", methods=["POST"])
    async def ping_device(self, request: IRequest, device_id: str) -> bytes:
        party = self._party(request)
        answer = await self.diagnostics.ping_device(party, device_id)
        answer["asked_at"] = iso(answer["asked_at"])
        return self._json(request, 200, answer)

    # ---- grants --------------------------------------------------------------------------------

    @app.route("/v1/esiids/<esiid>/grants", methods=["POST"])
    async def grant(self, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        body = self._body(request)

        async def handle() -> bytes:
            unknown = set(body) - {"hsp_party_id"}
            if unknown:
                raise InvalidField(
                    sorted(unknown)[0], f"unknown field(s): {', '.join(sorted(unknown))}"
                )
            hsp = body.get("hsp_party_id")
            if not isinstance(hsp, str):
                raise InvalidField("hsp_party_id", "hsp_party_id is required and must be a string")
            grant = await self.devices.grant(
                party, esiid, hsp, also=keeping(request, 201, grant_json)
            )
            return self._json(request, 201, grant_json(grant))

        return await self._idempotent(request, party, handle)

    @app.route("/v1/esiids/<esiid>/grants", methods=["GET"])
    async def list_grants(self, request: IRequest, esiid: str) -> bytes:
        party = self._party(request)
        grants = await self.devices.list_grants(party, esiid)
        return self._json(request, 200, {"esiid": esiid, "grants": [grant_json(g) for g in grants]})

    @app.route("/v1/esiids/<esiid>/grants/<hsp_party_id>", methods=["DELETE"])
    async def revoke(self, request: IRequest, esiid: str, hsp_party_id: str) -> bytes:
        party = self._party(request)
        grant = await self.devices.revoke(party, esiid, hsp_party_id)
        return self._json(request, 200, grant_json(grant))


def _not_utf8(request: IRequest) -> str | None:
    """Why Klein could not route ``request``, if a part of its URL is not UTF-8."""
    try:
        b"/".join(request.prepath + request.postpath).decode("utf-8")
    except UnicodeDecodeError:
        return (
            "the path is not UTF-8 once its %-escapes are decoded (as %FF is not); "
            "write the path's characters in UTF-8"
        )
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "the Host header is not UTF-8; send the host name the gateway's certificate names"
    return None


class ApiResource(KleinResource):
    """The Api's Klein resource, whose every error is a problem: a URL that is not UTF-8 too.

    Klein refuses one itself, before any route or error handler, with a text/html answer and
    a logged traceback; here it is a 400 problem like any other bad request.
    """

    def __init__(self, api: Api) -> None:
        super().__init__(api.app)
        self._api = api

    def render(self, request: IRequest) -> Any:
        refusal = _not_utf8(request)
        if refusal is not None:
            return self._api._refuse(request, BadRequest(refusal))
        return super().render(request)


register_message_routes(Api.app)
register_webhook_routes(Api.app)
register_read_routes(Api.app)
register_usage_routes(Api.app)


class OpsApi:
    """/healthz and /metrics for operators, on a plain-HTTP loopback listener."""

    app = Klein()

    def __init__(self, health: Any) -> None:
        self._health = health

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request: IRequest) -> bytes:
        report = await self._health()
        request.setResponseCode(200 if report["status"] == "ok" else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(report).encode()

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        body, content_type = metrics.render()
        request.setHeader(b"content-type", content_type.encode())
        return body
