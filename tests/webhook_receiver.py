"""A webhook receiver for tests: HTTPS on loopback with a certificate from a CA of its own.

It checks every request's signature with ``hangw.webhooks.verify_signature`` and answers as its
``mode`` says: ``"ok"`` (200 when the signature is valid, 401 when not), an HTTP status to answer
with, or ``"hang"`` (never answer).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import PrivateCertificate
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from hangw import certs
from hangw.webhooks import verify_signature


@dataclass(frozen=True)
class ReceiverCA:
    """A CA for receivers (written to ``ca_file``) and a localhost certificate it issued."""

    ca_file: Path
    server_pem: bytes

    @classmethod
    def make(cls, directory: Path) -> ReceiverCA:
        now = time.time()
        ca = certs.make_ca(now)
        issued = certs.issue_server_cert(ca, now)
        directory.mkdir(parents=True, exist_ok=True)
        ca_file = directory / "receiver-ca.pem"
        ca_file.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
        return cls(ca_file, issued.key_pem + issued.cert_pem)


@dataclass
class Attempt:
    """One POST as the receiver saw it."""

    arrived: float  # time.monotonic()
    subscription_id: str
    signature: str | None
    body: bytes
    valid: bool
    answered: int | None  # None: left hanging


class Receiver(Resource):
    isLeaf = True

    def __init__(self, ca: ReceiverCA) -> None:
        super().__init__()
        self.ca = ca
        self.mode: Any = "ok"
        #: subscription id -> secret, to check signatures with
        self.secrets: dict[str, str] = {}
        self.attempts: list[Attempt] = []
        #: events taken (answered 200), in the order they arrived
        self.taken: list[dict[str, Any]] = []
        self.port = 0
        self._listening: IListeningPort | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hooks/hangw?token=abc"

    def taken_by(self, subscription_id: str) -> list[dict[str, Any]]:
        return [event for event in self.taken if event["_subscription"] == subscription_id]

    async def start(self) -> None:
        """Listen (again on the same port, once it has one)."""
        options = PrivateCertificate.loadPEM(self.ca.server_pem).options()
        endpoint = SSL4ServerEndpoint(reactor, self.port, options, interface="127.0.0.1")
        self._listening = await endpoint.listen(Site(self))
        self.port = self._listening.getHost().port

    async def stop(self) -> None:
        if self._listening is not None:
            await self._listening.stopListening()
            self._listening = None

    def render_POST(self, request: Request) -> bytes | int:
        body = request.content.read()
        subscription_id = (request.getHeader(b"hangw-subscription") or b"").decode()
        signature = request.getHeader(b"hangw-signature")
        secret = self.secrets.get(subscription_id)
        valid = secret is not None and verify_signature(secret, signature, body, time.time())
        attempt = Attempt(
            time.monotonic(),
            subscription_id,
            signature.decode() if signature else None,
            body,
            valid,
            None,
        )
        self.attempts.append(attempt)
        if self.mode == "hang":
            return NOT_DONE_YET
        code = self.mode if isinstance(self.mode, int) else (200 if valid else 401)
        attempt.answered = code
        request.setResponseCode(code)
        if code == 200:
            assert request.getHeader(b"content-type") == b"application/json"
            for event in json.loads(body)["events"]:
                self.taken.append({**event, "_subscription": subscription_id})
        return b"{}"
