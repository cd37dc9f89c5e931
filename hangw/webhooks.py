"""Webhooks: a party's device and message status changes, posted to its receiver and signed.

A REP, HSP or TDSP subscribes a URL. Every change to a device it owns, or to a messaging request
it sent, becomes a row of the ``notifications`` outbox, written by ``enqueue_thd`` in the same
transaction as the change, one per live subscription of the party. The sender posts each
subscription's rows in ``notification_id`` order, up to ``webhooks.batch`` per POST and one POST
at a time per subscription, as ``{"events": [...]}`` with a ``Hangw-Signature`` header (see
``verify_signature``). A 2xx answer marks the batch sent; anything else is a failed attempt, tried
again after a back-off that doubles from ``first_retry_s`` to ``max_retry_s``. After
``max_attempts`` failures in a row the subscription is parked with the reason; its backlog keeps
growing until the party resumes it, and is then sent from the oldest row on.

Delivery is at least once: a batch whose answer was lost is sent again, so receivers drop the
events whose ``event_id`` they have already taken.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
import treq.client
from cryptography.exceptions import InvalidTag
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.ssl import Certificate
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from hangw.config import ConfigError, WebhooksConfig, unusable_path
from hangw.domain import Party, Role
from hangw.problems import Conflict, Forbidden, InvalidField, NotFound
from hangw.secrets import SecretBox
from hangw.store.db import Store
from hangw.store.model import notifications, webhook_subscriptions
from hangw.store.prepared import Prepared

__all__ = [
    "ACTIVE",
    "DELETED",
    "PARKED",
    "SIGNATURE_HEADER",
    "Notifier",
    "Subscription",
    "WebhookSender",
    "WebhookService",
    "iso_utc",
    "sign",
    "verify_signature",
]

log = structlog.get_logger(__name__)

ACTIVE, PARKED, DELETED = "active", "parked", "deleted"
#: Who may subscribe: the market participants (customers follow their devices through the API).
SUBSCRIBER_ROLES = frozenset({Role.REP, Role.HSP, Role.TDSP})
MAX_URL_CHARS = 2000
#: Subscriptions (active or parked) one party may hold at once.
MAX_SUBSCRIPTIONS_PER_PARTY = 10
MIN_SECRET_CHARS, MAX_SECRET_CHARS = 16, 200
SIGNATURE_HEADER = "Hangw-Signature"
#: How far a signature's timestamp may be from the receiver's clock, in seconds.
SIGNATURE_TOLERANCE_S = 300
#: Sent notifications are deleted this long after they were sent.
SENT_KEPT_S = 3600.0
#: How often sent notifications are pruned, in seconds.
PRUNE_EVERY_S = 600.0
#: The most characters of one failed attempt's description kept in a parked reason.
_PROBLEM_CHARS = 200


def iso_utc(ts: float) -> str:
    """A POSIX time as ISO-8601 UTC with milliseconds, e.g. ``2026-11-23T12:00:00.000Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- signatures ----------------------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The ``Hangw-Signature`` value for ``body`` sent at ``timestamp`` (POSIX seconds):
    ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body, keyed with the secret>``.

    The key is the secret's text as UTF-8 (the 64 hex digits of a generated secret, not the 32
    bytes they spell).
    """
    digest = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str | bytes,
    header: str | bytes | None,
    body: bytes,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Is ``header`` (the request's ``Hangw-Signature``) a valid signature of ``body``?

    ``secret`` is the subscription's secret, ``body`` the request body exactly as received (before
    any JSON parsing), ``now`` the receiver's POSIX time. True only when the header carries one
    timestamp ``t`` within ``tolerance_s`` of ``now`` (a replayed old request is refused) and a
    ``v1`` signature equal to HMAC-SHA256(secret, ``f"{t}."`` + body); several ``v1`` values are
    allowed and one matching is enough. The comparison takes constant time.
    """
    if header is None:
        return False
    if isinstance(header, bytes):
        header = header.decode("ascii", "replace")
    timestamp: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value.strip().lower().encode("utf-8", "replace"))
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).partition(",v1=")[2].encode()
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# ---- values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    """A webhook subscription as a party sees it (the secret is never part of it)."""

    subscription_id: str
    party_id: str
    url: str
    state: str  # active | parked | deleted
    parked_reason: str
    failures: int  # failed attempts in a row
    backlog: int  # notifications not sent yet
    created_at: float
    next_attempt_at: float | None  # when a failed batch is tried again


class Notifier(Protocol):
    """What a service that changes statuses calls, inside its transaction, to notify a party."""

    def enqueue_thd(self, conn: sa.Connection, party_id: str, events: list[dict[str, Any]]) -> None:
        """Queue ``events`` for every live subscription of ``party_id``."""

    def wants(self, party_id: str) -> bool:
        """Might ``party_id`` have a live subscription (worth building its events for)?"""


@dataclass(frozen=True)
class _Work:
    """A batch of one subscription's notifications, ready to post."""

    subscription_id: str
    url: str
    secret_enc: bytes
    ids: tuple[int, ...]
    payloads: tuple[str, ...]


@dataclass
class _Lane:
    """The sender's state for one subscription."""

    subscription_id: str
    busy: bool = False
    #: A wake arrived while the lane was busy: look for new rows once more before going idle.
    woken: bool = False
    run: Deferred[None] | None = None
    attempt: Deferred[tuple[int, str]] | None = None
    #: What went wrong in each failed attempt since the last success, oldest first.
    problems: list[str] = field(default_factory=list)


# ---- statements ----------------------------------------------------------------------------------

_subs = webhook_subscriptions
_LIVE = _subs.c.state != DELETED

_SELECT_LIVE_SUBSCRIPTIONS = Prepared(
    sa.select(_subs.c.subscription_id)
    .where(_subs.c.party_id == sa.bindparam("b_party_id"), _LIVE)
    .order_by(_subs.c.subscription_id)
)
_INSERT_NOTIFICATION = Prepared(
    notifications.insert(), columns=("subscription_id", "event_id", "payload", "created_at")
)
_SELECT_BATCH = Prepared(
    sa.select(notifications.c.notification_id, notifications.c.payload)
    .where(
        notifications.c.subscription_id == sa.bindparam("b_subscription_id"),
        notifications.c.sent_at.is_(None),
    )
    .order_by(notifications.c.notification_id)
    .limit(sa.bindparam("b_limit"))
)
_BACKLOG = (
    sa.select(sa.func.count())
    .where(
        notifications.c.subscription_id == _subs.c.subscription_id,
        notifications.c.sent_at.is_(None),
    )
    .scalar_subquery()
    .label("backlog")
)


def _subscription(row: Any) -> Subscription:
    return Subscription(
        subscription_id=row.subscription_id,
        party_id=row.party_id,
        url=row.url,
        state=row.state,
        parked_reason=row.parked_reason,
        failures=row.failures,
        backlog=row.backlog,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
    )


def _where(url: str) -> str:
    """``host:port`` of a URL, which logs and reasons name (its path or query may hold a token)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def park_reason(problems: Sequence[str], attempts: int, at: float) -> str:
    """Why a subscription was parked, in words a person can act on."""
    counts = Counter(problems)
    if len(counts) == 1 and len(problems) == attempts:
        head = f"{problems[0]} {_times(attempts)}"
    else:
        tally = ", ".join(f"{problem} {_times(n)}" for problem, n in counts.items())
        head = f"{attempts} attempts in a row failed" + (f" ({tally})" if tally else "")
    last = f"; the last: {problems[-1]}" if len(counts) > 1 else ""
    reason = (
        f"{head}; last at {iso_utc(at)}{last}. "
        "Fix the receiver, then resume the subscription to send its backlog"
    )
    return reason if len(reason) <= 1000 else reason[:999] + "…"


def _tls_problem(value: BaseException) -> str | None:
    """The OpenSSL reason inside a connection failure, when TLS is what failed."""
    if isinstance(value, SSL.Error):
        reasons = [str(item[-1]) for item in value.args[0] if item] if value.args else []
        return "; ".join(r for r in reasons if r) or "TLS error"
    for failure in getattr(value, "reasons", ()) or ():
        found = _tls_problem(failure.value)
        if found is not None:
            return found
    return None


@implementer(IOpenSSLTrustRoot)
class SystemAndExtraTrust:
    """Trust the system's CA certificates, plus those of a PEM file (``webhooks.ca_file``).

    Twisted offers either trust root alone (``platformTrust``, ``trustRootFromCertificates``),
    not both; this implements the same interface, which it keeps in ``_sslverify``.
    """

    def __init__(self, extra: Iterable[Certificate] = ()) -> None:
        self._extra = [cert.original for cert in extra]

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for cert in self._extra:
            store.add_cert(cert)


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_ca_file(path: str) -> list[Certificate]:
    """Every certificate in a PEM file (``webhooks.ca_file``).

    A file that cannot be read, holds no PEM certificate or a broken one is a ConfigError
    naming the key; what the file holds (a private key, perhaps) is never quoted.
    """
    key = "webhooks.ca_file"
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as refusal:
        raise unusable_path(key, path, refusal) from None
    blocks = _PEM_CERTIFICATE.findall(text)
    if not blocks:
        pem = "PEM certificate (-----BEGIN CERTIFICATE-----)"
        if b"PRIVATE KEY-----" in text:
            why = f"holds a private key and no {pem}"
        elif b"-----BEGIN " in text:
            why = f"holds no {pem}, only PEM blocks of other kinds"
        else:  # DER, or no certificate at all
            why = (
                f"holds no {pem} (a DER certificate converts with "
                "`openssl x509 -inform der -in FILE -out FILE.pem`)"
            )
        raise ConfigError(
            f"{key}: {path} {why}; name a file of the CA certificates that issued the "
            "receivers' certificates"
        )
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(Certificate.loadPEM(block))
        except crypto.Error:
            raise ConfigError(
                f"{key}: {path} holds {len(blocks)} PEM certificate(s), and number {number} is "
                "not a readable X.509 certificate"
            ) from None
    return certificates


# ---- the service ---------------------------------------------------------------------------------


class WebhookService:
    """Subscriptions as the API sees them, the outbox writer, and the sender (``.sender``)."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        clock: IReactorTime,
        config: WebhooksConfig,
        reactor: Any,
        *,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self._box = box
        self._clock = clock
        self.config = config
        self._reactor = reactor
        #: Parties with a subscription that is not deleted; None until first loaded. Replaced as
        #: a whole (never changed in place) so the writer threads read it without a lock.
        self._live: frozenset[str] | None = None
        self._live_lock = threading.Lock()
        self._live_generation = 0
        self._wake_asked = False
        self.sender = WebhookSender(self, poll_interval_s=poll_interval_s)

    # ---- which parties have subscriptions --------------------------------------------------------

    def _change_live(self, party_id: str, live: bool) -> None:
        with self._live_lock:
            current = self._live or frozenset()
            self._live = current | {party_id} if live else current - {party_id}
            self._live_generation += 1

    def refresh_live_thd(self, conn: sa.Connection) -> frozenset[str]:
        """Load the parties with live subscriptions (as other gateways on the store see them).

        A subscription made or deleted while the query ran wins over what the query read.
        """
        generation = self._live_generation
        loaded = frozenset(
            conn.execute(sa.select(_subs.c.party_id).where(_LIVE).distinct()).scalars()
        )
        with self._live_lock:
            if self._live_generation == generation or self._live is None:
                self._live = loaded
            return self._live

    def wants(self, party_id: str) -> bool:
        """Might ``party_id`` have a live subscription? Lets a caller skip building events that
        would be dropped (True until the set of parties is first loaded)."""
        live = self._live
        return live is None or party_id in live

    # ---- the outbox ------------------------------------------------------------------------------

    def enqueue_thd(
        self, conn: sa.Connection, party_id: str, events: builtins.list[dict[str, Any]]
    ) -> None:
        """Queue ``events`` for each live (active or parked) subscription of ``party_id``.

        Runs on a store writer thread inside the transaction of the change, so the notifications
        commit (or roll back) with it. Each event is a dict with ``type`` (``device.status``,
        ``message.status``), optionally ``at`` (POSIX time of the change; now when absent) and its
        own fields; it is given an ``event_id`` (``evt_`` + 16 hex digits) and stored as
        ``{"event_id", "type", "occurred_at" (ISO-8601), ...fields}``. A party without a
        subscription costs one look-up in memory and no database work.

        The sender is asked to look for the new rows as soon as the reactor runs; a caller that
        knows when its transaction committed may call ``wake()`` then as well.
        """
        live = self._live
        if live is None:
            live = self.refresh_live_thd(conn)
        if party_id not in live or not events:
            return
        subscriptions = _SELECT_LIVE_SUBSCRIPTIONS.scalars(conn, {"b_party_id": party_id})
        if not subscriptions:
            return
        now = self._clock.seconds()
        rows = []
        for event in events:
            event_id = "evt_" + secrets.token_hex(8)
            payload = _payload(event_id, event, now)
            for subscription_id in subscriptions:
                rows.append(
                    {
                        "subscription_id": subscription_id,
                        "event_id": event_id,
                        "payload": payload,
                        "created_at": now,
                    }
                )
        _INSERT_NOTIFICATION.executemany(conn, rows)
        if not self._wake_asked:
            self._wake_asked = True
            self._reactor.callFromThread(self._asked_wake)

    def _asked_wake(self) -> None:
        self._wake_asked = False
        self.sender.wake()

    def wake(self) -> None:
        """Look for unsent notifications now; call from the reactor after a commit."""
        self.sender.wake()

    # ---- requests from parties -------------------------------------------------------------------

    def _check_role(self, party: Party) -> None:
        if party.role not in SUBSCRIBER_ROLES:
            raise Forbidden(
                f"{party.role.value} {party.party_id} cannot use webhooks: only REPs, HAN service "
                "providers and TDSPs subscribe; follow your devices with GET /v1/han-devices/{id}"
            )

    def _own_row_thd(self, conn: sa.Connection, party: Party, subscription_id: str) -> Any:
        row = conn.execute(
            sa.select(_subs, _BACKLOG).where(
                _subs.c.subscription_id == subscription_id,
                _subs.c.party_id == party.party_id,
                _LIVE,
            )
        ).first()
        if row is None:
            raise NotFound(f"no webhook subscription {subscription_id}")
        return row

    async def subscribe(
        self,
        party: Party,
        url: object,
        secret: object = None,
        also: Callable[[sa.Connection, Subscription], None] | None = None,
    ) -> tuple[Subscription, str]:
        """Subscribe ``url``; answers the subscription and its signing secret (generated when
        ``secret`` is None), which is shown this once and stored only sealed.

        ``also(conn, subscription)`` runs last in the subscription's transaction (the API keeps
        an Idempotency-Key's answer there; never the secret).
        """
        self._check_role(party)
        url = _check_url(url)
        if secret is None:
            secret = secrets.token_hex(32)
        elif (
            not isinstance(secret, str)
            or not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS
            or not secret.isprintable()
            or not secret.isascii()
        ):
            # described, never quoted: the value is a secret
            raise InvalidField(
                "secret",
                f"secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} printable ASCII "
                "characters; leave it out to have one generated",
            )
        subscription_id = "whk_" + secrets.token_hex(8)
        sealed = self._box.seal(secret.encode(), subscription_id)
        now = self._clock.seconds()

        def thd(conn: sa.Connection) -> Subscription:
            held = conn.execute(
                sa.select(sa.func.count()).where(_subs.c.party_id == party.party_id, _LIVE)
            ).scalar_one()
            if held >= MAX_SUBSCRIPTIONS_PER_PARTY:
                raise Conflict(
                    f"{party.party_id} already has {held} webhook subscriptions, the most one "
                    "party may hold; delete one before adding another"
                )
            # in the live set before the row exists: a change committed after this one is seen
            self._change_live(party.party_id, True)
            conn.execute(
                _subs.insert().values(
                    subscription_id=subscription_id,
                    party_id=party.party_id,
                    url=url,
                    secret_enc=sealed,
                    state=ACTIVE,
                    parked_reason="",
                    failures=0,
                    next_attempt_at=None,
                    created_at=now,
                )
            )
            subscription = Subscription(
                subscription_id, party.party_id, url, ACTIVE, "", 0, 0, now, None
            )
            if also is not None:
                also(conn, subscription)
            return subscription

        subscription = await self.store.run(thd)
        log.info(
            "webhook.subscribed",
            party=party.party_id,
            subscription=subscription_id,
            receiver=_where(url),
        )
        return subscription, secret

    async def list(self, party: Party) -> builtins.list[Subscription]:
        """The party's subscriptions that are not deleted, oldest first."""
        self._check_role(party)

        def thd(conn: sa.Connection) -> builtins.list[Subscription]:
            rows = conn.execute(
                sa.select(_subs, _BACKLOG)
                .where(_subs.c.party_id == party.party_id, _LIVE)
                .order_by(_subs.c.created_at, _subs.c.subscription_id)
            )
            return [_subscription(row) for row in rows]

        return await self.store.run(thd)

    async def get(self, party: Party, subscription_id: str) -> Subscription:
        """One of the party's subscriptions (NotFound for another party's, or a deleted one)."""
        self._check_role(party)

        def thd(conn: sa.Connection) -> Subscription:
            return _subscription(self._own_row_thd(conn, party, subscription_id))

        return await self.store.run(thd)

    async def delete(self, party: Party, subscription_id: str) -> Subscription:
        """Delete a subscription; its unsent notifications are dropped."""
        self._check_role(party)

        def thd(conn: sa.Connection) -> Subscription:
            row = self._own_row_thd(conn, party, subscription_id)
            conn.execute(
                _subs.update()
                .where(_subs.c.subscription_id == subscription_id)
                .values(state=DELETED, next_attempt_at=None)
            )
            conn.execute(
                notifications.delete().where(
                    notifications.c.subscription_id == subscription_id,
                    notifications.c.sent_at.is_(None),
                )
            )
            left = conn.execute(
                sa.select(sa.func.count()).where(_subs.c.party_id == party.party_id, _LIVE)
            ).scalar_one()
            if not left:
                self._change_live(party.party_id, False)
            return Subscription(
                subscription_id,
                party.party_id,
                row.url,
                DELETED,
                row.parked_reason,
                row.failures,
                0,
                row.created_at,
                None,
            )

        subscription = await self.store.run(thd)
        self.sender.forget(subscription_id)
        log.info("webhook.deleted", party=party.party_id, subscription=subscription_id)
        return subscription

    async def resume(self, party: Party, subscription_id: str) -> Subscription:
        """Make a parked subscription active again (an active one is tried again at once):
        failures back to 0, and sending starts again with the oldest unsent notification."""
        self._check_role(party)

        def thd(conn: sa.Connection) -> Subscription:
            self._own_row_thd(conn, party, subscription_id)
            conn.execute(
                _subs.update()
                .where(_subs.c.subscription_id == subscription_id)
                .values(state=ACTIVE, failures=0, parked_reason="", next_attempt_at=None)
            )
            return _subscription(self._own_row_thd(conn, party, subscription_id))

        subscription = await self.store.run(thd)
        self.sender.forget(subscription_id)
        log.info(
            "webhook.resumed",
            party=party.party_id,
            subscription=subscription_id,
            backlog=subscription.backlog,
        )
        self.sender.wake()
        return subscription

    # ---- what the sender runs on the store -------------------------------------------------------

    def _batch_thd(self, conn: sa.Connection, row: Any, limit: int) -> _Work | None:
        rows = _SELECT_BATCH.all(conn, {"b_subscription_id": row.subscription_id, "b_limit": limit})
        if not rows:
            return None
        return _Work(
            row.subscription_id,
            row.url,
            row.secret_enc,
            tuple(r.notification_id for r in rows),
            tuple(r.payload for r in rows),
        )

    def due_thd(
        self, conn: sa.Connection, now: float, busy: frozenset[str], limit: int
    ) -> tuple[builtins.list[_Work], float | None]:
        """The first batch of every active subscription that is due and not being sent, and
        when the next one in back-off is due (None: none is)."""
        self.refresh_live_thd(conn)
        rows = conn.execute(
            sa.select(
                _subs.c.subscription_id, _subs.c.url, _subs.c.secret_enc, _subs.c.next_attempt_at
            )
            .where(_subs.c.state == ACTIVE)
            .order_by(_subs.c.created_at)
        ).all()
        due: builtins.list[_Work] = []
        later: float | None = None
        for row in rows:
            if row.subscription_id in busy:
                continue
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                later = row.next_attempt_at if later is None else min(later, row.next_attempt_at)
                continue
            work = self._batch_thd(conn, row, limit)
            if work is not None:
                due.append(work)
        return due, later

    def next_batch_thd(self, conn: sa.Connection, subscription_id: str, limit: int) -> _Work | None:
        """The subscription's next batch, or None when it has none or is no longer active."""
        row = conn.execute(
            sa.select(_subs.c.subscription_id, _subs.c.url, _subs.c.secret_enc).where(
                _subs.c.subscription_id == subscription_id, _subs.c.state == ACTIVE
            )
        ).first()
        return None if row is None else self._batch_thd(conn, row, limit)

    def mark_sent_thd(
        self, conn: sa.Connection, subscription_id: str, ids: Sequence[int], now: float
    ) -> None:
        conn.execute(
            notifications.update()
            .where(notifications.c.notification_id.in_(ids), notifications.c.sent_at.is_(None))
            .values(sent_at=now)
        )
        conn.execute(
            _subs.update()
            .where(_subs.c.subscription_id == subscription_id, _subs.c.state == ACTIVE)
            .values(failures=0, next_attempt_at=None)
        )

    def record_failure_thd(
        self, conn: sa.Connection, subscription_id: str, problems: Sequence[str], now: float
    ) -> tuple[int, float | None, str]:
        """Count a failed attempt: (failures in a row, when to try again, parked reason).

        After ``max_attempts`` failures the subscription is parked: no time to try again, and
        the reason. A subscription no longer active (deleted, or parked meanwhile) is left alone.
        """
        failures = conn.execute(
            sa.select(_subs.c.failures).where(
                _subs.c.subscription_id == subscription_id, _subs.c.state == ACTIVE
            )
        ).scalar()
        if failures is None:
            return 0, None, ""
        failures += 1
        config = self.config
        if failures >= config.max_attempts:
            reason = park_reason(problems, failures, now)
            conn.execute(
                _subs.update()
                .where(_subs.c.subscription_id == subscription_id)
                .values(state=PARKED, failures=failures, parked_reason=reason, next_attempt_at=None)
            )
            return failures, None, reason
        delay = min(config.first_retry_s * 2 ** (failures - 1), config.max_retry_s)
        conn.execute(
            _subs.update()
            .where(_subs.c.subscription_id == subscription_id)
            .values(failures=failures, next_attempt_at=now + delay)
        )
        return failures, now + delay, ""

    def park_thd(self, conn: sa.Connection, subscription_id: str, reason: str) -> None:
        conn.execute(
            _subs.update()
            .where(_subs.c.subscription_id == subscription_id, _subs.c.state == ACTIVE)
            .values(state=PARKED, parked_reason=reason, next_attempt_at=None)
        )

    def prune_thd(self, conn: sa.Connection, before: float) -> int:
        """Delete notifications sent before ``before``; returns how many."""
        return conn.execute(
            notifications.delete().where(
                notifications.c.sent_at.is_not(None), notifications.c.sent_at < before
            )
        ).rowcount


def _check_url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidField("url", "url is required: the https:// (or http://) URL to post to")
    if len(url) > MAX_URL_CHARS:
        raise InvalidField("url", f"url is {len(url)} characters; at most {MAX_URL_CHARS}")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise InvalidField("url", "url must be ASCII without spaces (percent-encode anything else)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as refusal:
        raise InvalidField("url", f"url is not a URL: {refusal}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField("url", "url must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:  # the part before it is not quoted: it may be a password
        raise InvalidField(
            "url",
            "url must not carry a user name or password (user:password@host): the gateway "
            "would store and log them with the URL; take them out, the notifications are "
            "signed with the subscription's secret instead",
        )
    return url


def _payload(event_id: str, event: dict[str, Any], now: float) -> str:
    fields = dict(event)
    kind = fields.pop("type")
    at = fields.pop("at", None)
    occurred_at = at if isinstance(at, str) else iso_utc(now if at is None else float(at))
    return json.dumps(
        {"event_id": event_id, "type": kind, "occurred_at": occurred_at, **fields},
        separators=(",", ":"),
    )


def _discard(_: bytes) -> None:
    pass


class WebhookSender(Service):
    """Posts each subscription's notifications, in order, one POST in flight per subscription."""

    name = "webhooks"

    def __init__(self, webhooks: WebhookService, *, poll_interval_s: float = 1.0) -> None:
        self._webhooks = webhooks
        self._store = webhooks.store
        self._clock = webhooks._clock
        self._reactor = webhooks._reactor
        self._config = webhooks.config
        self._lanes: dict[str, _Lane] = {}
        self._draining: Deferred[None] | None = None
        self._again = False
        self._wake_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._pruned_at = 0.0
        self._poll = LoopingCall(self.wake)
        self._poll.clock = self._clock
        self._poll_interval_s = poll_interval_s
        self._pool: HTTPConnectionPool | None = None
        self._http: treq.client.HTTPClient | None = None
        #: read now, so that a ca_file that cannot be used stops start-up as a configuration
        #: error, not the first POST
        self._extra_ca = load_ca_file(self._config.ca_file) if self._config.ca_file else []

    def _client(self) -> treq.client.HTTPClient:
        if self._http is None:
            self._pool = HTTPConnectionPool(self._reactor, persistent=True)
            self._pool.maxPersistentPerHost = 4
            agent = Agent(
                self._reactor,
                contextFactory=BrowserLikePolicyForHTTPS(SystemAndExtraTrust(self._extra_ca)),
                connectTimeout=self._config.timeout_s,
                pool=self._pool,
            )
            self._http = treq.client.HTTPClient(agent)
        return self._http

    def startService(self) -> None:
        super().startService()
        self._poll.start(self._poll_interval_s, now=True)

    def stopService(self) -> Deferred[Any]:
        """Stop polling, abandon the POSTs in flight (they are sent again after a restart) and
        wait for the lanes' store work to finish."""
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        for call in (self._wake_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        runs: list[Deferred[Any]] = []
        for lane in self._lanes.values():
            if lane.attempt is not None:
                lane.attempt.cancel()
            if lane.run is not None:
                runs.append(lane.run)
        if self._draining is not None:
            runs.append(self._draining)
        done = DeferredList(runs)

        def close(_: object) -> Deferred[Any] | None:
            return self._pool.closeCachedConnections() if self._pool is not None else None

        return done.addBoth(close)

    def forget(self, subscription_id: str) -> None:
        """Forget the failures remembered for a subscription (it was resumed or deleted)."""
        lane = self._lanes.get(subscription_id)
        if lane is not None:
            lane.problems.clear()
            if not lane.busy:
                del self._lanes[subscription_id]

    def wake(self) -> None:
        """Look for unsent notifications soon (after the current reactor turn)."""
        if not self.running:
            return
        for lane in self._lanes.values():
            if lane.busy:
                lane.woken = True
        if self._draining is not None:
            self._again = True
            return
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self._clock.callLater(0, self._start_drain)

    def _wake_at(self, at: float) -> None:
        """Wake at ``at`` (for the next attempt of a subscription in back-off)."""
        if not self.running:
            return
        delay = max(0.0, at - self._clock.seconds())
        call = self._retry_call
        if call is not None and call.active():
            if call.getTime() <= self._clock.seconds() + delay:
                return
            call.cancel()
        self._retry_call = self._clock.callLater(delay, self.wake)

    def _start_drain(self) -> None:
        self._draining = Deferred.fromCoroutine(self._drain())

        def done(result: object) -> None:
            self._draining = None
            if self._again:
                self._again = False
                self.wake()

        self._draining.addErrback(
            lambda failure: log.error("webhook.read_failed", error=failure.getErrorMessage())
        )
        self._draining.addBoth(done)

    async def _drain(self) -> None:
        now = self._clock.seconds()
        busy = frozenset(sid for sid, lane in self._lanes.items() if lane.busy)
        due, later = await self._store.run(self._webhooks.due_thd, now, busy, self._config.batch)
        for work in due:
            lane = self._lanes.setdefault(work.subscription_id, _Lane(work.subscription_id))
            if lane.busy or not self.running:
                continue
            lane.busy = True
            lane.run = Deferred.fromCoroutine(self._run_lane(lane, work))
        if later is not None:
            self._wake_at(later)
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            pruned = await self._store.run(self._webhooks.prune_thd, now - SENT_KEPT_S)
            if pruned:
                log.debug("webhook.pruned", notifications=pruned)

    async def _run_lane(self, lane: _Lane, work: _Work | None) -> None:
        try:
            while work is not None and self.running:
                if not await self._attempt(lane, work):
                    return
                while self.running:
                    lane.woken = False
                    work = await self._store.run(
                        self._webhooks.next_batch_thd, lane.subscription_id, self._config.batch
                    )
                    if work is not None or not lane.woken:
                        break
        except Exception as failure:  # the store failed; the next poll tries again
            log.error(
                "webhook.lane_failed", subscription=lane.subscription_id, error=str(failure)[:300]
            )
        finally:
            lane.busy = False
            lane.run = None
            lane.attempt = None

    async def _attempt(self, lane: _Lane, work: _Work) -> bool:
        """Post one batch; True when the receiver took it."""
        subscription_id = work.subscription_id
        try:
            secret = self._webhooks._box.open(work.secret_enc, subscription_id)
        except InvalidTag:
            reason = (
                "the signing secret cannot be opened (it was sealed with another store key); "
                "delete the subscription and subscribe again"
            )
            await self._store.run(self._webhooks.park_thd, subscription_id, reason)
            log.error("webhook.parked", subscription=subscription_id, reason=reason)
            return False
        body = b'{"events":[' + ",".join(work.payloads).encode() + b"]}"
        timestamp = int(self._clock.seconds())
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"User-Agent": [b"hangw-webhooks/1"],
                b"Hangw-Subscription": [subscription_id.encode()],
                SIGNATURE_HEADER.encode(): [sign(secret, body, timestamp).encode()],
            }
        )
        where = _where(work.url)
        attempt: Deferred[tuple[int, str]] = Deferred.fromCoroutine(
            self._post(work.url, body, headers)
        )
        # cancelling a request the agent already sent fails it with ResponseNeverReceived, not
        # CancelledError: say it was the timeout whatever the failure cancelling brought
        attempt.addTimeout(
            self._config.timeout_s,
            self._clock,
            onTimeoutCancel=lambda _result, timeout: Failure(defer.TimeoutError(timeout)),
        )
        lane.attempt = attempt
        try:
            code, phrase = await attempt
        except Exception as failure:
            if not self.running:
                return False  # abandoned at shutdown: not the receiver's failure
            problem = self._describe(failure, where)
        else:
            if 200 <= code < 300:
                await self._store.run(
                    self._webhooks.mark_sent_thd, subscription_id, work.ids, self._clock.seconds()
                )
                lane.problems.clear()
                log.debug(
                    "webhook.delivered", subscription=subscription_id, notifications=len(work.ids)
                )
                return True
            problem = f"receiver answered {code} {phrase}".strip()
        finally:
            lane.attempt = None
        lane.problems.append(problem[:_PROBLEM_CHARS])
        now = self._clock.seconds()
        failures, retry_at, reason = await self._store.run(
            self._webhooks.record_failure_thd, subscription_id, list(lane.problems), now
        )
        if reason:
            log.warning(
                "webhook.parked", subscription=subscription_id, receiver=where, reason=reason
            )
            lane.problems.clear()
        elif retry_at is not None:
            log.warning(
                "webhook.failed",
                subscription=subscription_id,
                receiver=where,
                failures=failures,
                problem=problem,
                retry_in_s=round(retry_at - now, 3),
            )
            self._wake_at(retry_at)
        return False

    async def _post(self, url: str, body: bytes, headers: Headers) -> tuple[int, str]:
        response = await self._client().post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
            reactor=self._reactor,
        )
        await response.collect(_discard)
        return response.code, response.phrase.decode("latin-1", "replace")

    def _describe(self, failure: BaseException, where: str) -> str:
        """One failed attempt in words (never the URL's path or query, never a header)."""
        if isinstance(failure, defer.TimeoutError | defer.CancelledError):
            return f"no answer from {where} within {self._config.timeout_s:g} s"
        if isinstance(failure, error.ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(failure, error.DNSLookupError):
            return f"the host of {where} cannot be resolved"
        if isinstance(failure, error.TimeoutError):
            return f"could not connect to {where} within {self._config.timeout_s:g} s"
        tls = _tls_problem(failure)
        if tls is not None:
            return f"TLS with {where} failed: {tls}"
        if isinstance(failure, error.ConnectError):
            return f"could not connect to {where}: {failure}"
        if hasattr(failure, "reasons"):
            return f"the connection to {where} was lost before an answer"
        if isinstance(failure, ValueError):
            # the HTTP client's words quote the URL's parts, a user name among them (a URL
            # stored before such URLs were refused): not repeated
            return (
                f"the HTTP client cannot post to the URL of {where} (a user name or password "
                "in it?); replace the subscription with a URL of scheme, host, port and path"
            )
        return f"{type(failure).__name__} posting to {where}: {failure}"
