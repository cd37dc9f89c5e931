"""The service tree of one hangwd: store, adapters, router, timers, API and ops listeners.

Only bin/ and hangw.daemon touch the global reactor; everything here is handed its reactor and
clock, so tests build a Gateway on a real reactor with a temporary state directory.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from adapters.commands import (
    DeliveryStatus,
    InboundFrame,
    MeterEvent,
    ProvisioningReport,
    ReportRefused,
)
from adapters.interfaces import IAdapterEvents, IHeadEndAdapter
from adapters.wire.gateway import HeadEndLinkFactory, WireAdapter
from hangw import metrics
from hangw.api.app import Api, OpsApi
from hangw.api.bodycap import BodyCappedRequest
from hangw.api.channel import ProblemHTTPChannel
from hangw.api.listener import PinnedClientContextFactory
from hangw.config import AdapterConfig, Config, ConfigError, unusable_path
from hangw.devices import DeviceService
from hangw.diagnostics import Diagnostics
from hangw.domain import Meter
from hangw.messaging.service import MessagingService
from hangw.meters import MeterEventOutcome, apply_meter_event_thd, tdsp_of_thd
from hangw.parties import PartyRegistry
from hangw.router import Router
from hangw.secrets import SecretBox, load_or_create_key
from hangw.store import schema
from hangw.store.db import Store, without_password
from hangw.store.model import han_devices, webhook_subscriptions
from hangw.usage.dropdir import DropDirectories, make_drop_directory
from hangw.usage.ingest import Ingest
from hangw.usage.jobs import UsageReports
from hangw.usage.lse import VeeSettings
from hangw.usage.pgp import UsageKey
from hangw.webhooks import WebhookService

log = structlog.get_logger(__name__)


class MeteredSite(Site):
    """A Site that counts answered requests instead of writing an access log, refuses a
    request body over ``max_body_bytes`` as it arrives (hangw.api.bodycap), and answers a
    request it cannot parse with a problem (hangw.api.channel)."""

    requestFactory = BodyCappedRequest
    protocol = ProblemHTTPChannel  # type: ignore[assignment]  # HTTP/1.1 only: no h2 wrapper

    def __init__(self, resource: Any, *, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes

    def log(self, request: Any) -> None:
        metrics.api_requests.labels(request.method.decode(), str(request.code)).inc()


ADAPTER_GROUP = "hangw.adapters"


def load_adapter(adapter_config: AdapterConfig, clock: Any, config: Config) -> IHeadEndAdapter:
    """Build the adapter named by ``kind`` from the ``hangw.adapters`` entry points."""
    found = {ep.name: ep for ep in entry_points(group=ADAPTER_GROUP)}
    if adapter_config.kind not in found:
        raise ConfigError(
            f"adapters.{adapter_config.tdsp_duns}.kind: no adapter {adapter_config.kind!r} "
            f"(installed: {', '.join(sorted(found)) or 'none'})"
        )
    factory = found[adapter_config.kind].load()
    try:
        adapter = factory(adapter_config, clock, config.state_dir)
    except ValueError as error:  # an adapter's own option refused: a configuration error
        raise ConfigError(str(error)) from None
    verifyObject(IHeadEndAdapter, adapter)
    return adapter


#: The tables whose rows hold secrets sealed with the store key, and what to call them.
SEALED_WITH_THE_STORE_KEY = (
    (han_devices, "install codes and link keys of HAN devices"),
    (webhook_subscriptions, "webhook signing secrets"),
)


def _holds_sealed_secrets(engine: sa.Engine, key_path: Path) -> str | None:
    """What the store holds sealed with the store key (devices' codes, webhook secrets), if any.

    A store that cannot be reached cannot say, and a new key must not be made on a guess: that
    raises ConfigError.
    """
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table, what in SEALED_WITH_THE_STORE_KEY:
                if not inspector.has_table(table.name):
                    continue  # a new store: nothing was ever sealed there
                if conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first():
                    return what
            return None
    except sa.exc.DBAPIError as error:
        why = without_password(str(error.orig)).strip().splitlines()[0][:200]
        raise ConfigError(
            f"store.key_file: {key_path} is missing, and the store cannot be reached to tell "
            f"whether it holds secrets sealed with it ({why}); start hangwd again when the "
            "database is up (a new key is made only for a store without devices or webhooks)"
        ) from None


@implementer(IAdapterEvents)
class GatewayEvents:
    """Where adapters deliver head-end events.

    Provisioning reports drive the devices' state machine and meter events the meter registry.
    Delivery statuses and inbound frames go to messaging, which checks them (a delivery the
    gateway sent to the head-end's TDSP; a frame that decodes as SE 1.0 from one of its meters)
    and applies them to the deliveries they answer; they are counted in ``hangw_head_end_events``.
    """

    #: How long the TDSP of an ESI ID is trusted from memory before the registry is asked again.
    OWNER_TTL_S = 300.0

    def __init__(
        self, devices: DeviceService, clock: IReactorTime, messaging: MessagingService
    ) -> None:
        self._devices = devices
        self._clock = clock
        self._messaging = messaging
        self._owners: dict[str, tuple[str | None, float]] = {}

    def provisioning_report(self, report: ProvisioningReport) -> Deferred[Any]:
        return self._devices.apply_report(report)

    async def _check_owner(self, esiid: str, tdsp_duns: str, kind: str) -> None:
        """Raise ReportRefused unless the ESI ID is a meter of ``tdsp_duns`` (when it is given)."""
        if not tdsp_duns:
            return
        now = self._clock.seconds()
        cached = self._owners.get(esiid)
        if cached is None or now - cached[1] > self.OWNER_TTL_S:
            owner = await self._devices.store.run(tdsp_of_thd, esiid)
            if len(self._owners) > 500_000:
                self._owners.clear()
            self._owners[esiid] = cached = (owner, now)
        owner = cached[0]
        if owner == tdsp_duns:
            return
        metrics.head_end_events.labels(tdsp_duns, kind, "refused").inc()
        if owner is None:
            raise ReportRefused(f"ESI ID {esiid} is not in the meter registry")
        raise ReportRefused(f"ESI ID {esiid} is a meter of another TDSP")

    def delivery_status(self, status: DeliveryStatus) -> Deferred[None]:
        async def take() -> None:
            await self._check_owner(status.esiid, status.tdsp_duns, "delivery_status")
            refusal = (await self.delivery_statuses([status], status.event_id))[0]
            if refusal is not None:
                raise ReportRefused(refusal)

        return Deferred.fromCoroutine(take())

    def inbound_frame(self, frame: InboundFrame) -> Deferred[None]:
        async def take() -> None:
            refusal = (await self.inbound_frames([frame], frame.event_id))[0]
            if refusal is not None:
                raise ReportRefused(refusal)

        return Deferred.fromCoroutine(take())

    def delivery_statuses(
        self, statuses: list[DeliveryStatus], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._counted(
            "delivery_status", statuses, self._messaging.delivery_statuses(statuses, batch_id)
        )

    def inbound_frames(
        self, frames: list[InboundFrame], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._counted(
            "inbound_frame", frames, self._messaging.inbound_frames(frames, batch_id)
        )

    def _counted(
        self, kind: str, items: list[Any], answered: Deferred[list[str | None]]
    ) -> Deferred[list[str | None]]:
        def count(results: list[str | None]) -> list[str | None]:
            refused = [r for r in results if r is not None]
            tdsp_duns = items[0].tdsp_duns if items else ""
            if refused:
                metrics.head_end_events.labels(tdsp_duns, kind, "refused").inc(len(refused))
                log.info(
                    "head_end.events_refused",
                    tdsp=tdsp_duns,
                    kind=kind,
                    refused=len(refused),
                    first=refused[0],
                )
            taken = len(results) - len(refused)
            if taken:
                metrics.head_end_events.labels(tdsp_duns, kind, "taken").inc(taken)
            return results

        return answered.addCallback(count)

    def meter_event(self, event: MeterEvent) -> Deferred[Meter | None]:
        def applied(outcome: MeterEventOutcome) -> Meter | None:
            if outcome.refusal is not None:
                if not outcome.duplicate:
                    metrics.head_end_events.labels(event.tdsp_duns, "meter_event", "refused").inc()
                raise ReportRefused(outcome.refusal)
            meter = outcome.meter
            if not outcome.duplicate and meter is not None:
                metrics.head_end_events.labels(event.tdsp_duns, "meter_event", event.kind).inc()
                log.info(
                    "meter.event",
                    tdsp=event.tdsp_duns,
                    esiid=event.esiid,
                    kind=event.kind.value,
                    active=meter.active,
                    han_capable=meter.han_capable,
                    firmware=meter.firmware_version,
                )
            return meter

        d: Deferred[MeterEventOutcome] = self._devices.store.run(
            apply_meter_event_thd, event, self._clock.seconds()
        )
        return d.addCallback(applied)


class StoreService(Service):
    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store

    def startService(self) -> None:
        schema.upgrade(self.store.engine)
        self.store.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.store.stop()


class AdaptersService(Service):
    name = "adapters"

    def __init__(self, adapters: dict[str, IHeadEndAdapter], events: IAdapterEvents) -> None:
        self.adapters = adapters
        self._events = events

    def startService(self) -> Deferred[Any]:
        super().startService()
        return DeferredList([a.start(self._events) for a in self.adapters.values()])

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([a.stop() for a in self.adapters.values()])


def _drop_directories(
    config: Config, store: Store, reactor: Any, clock: Any
) -> DropDirectories | None:
    """The watcher of the TDSPs' drop directories, when any is configured."""
    if not config.usage.drop_dirs:
        return None
    key = UsageKey(config.gnupg_home)
    # the key may be made while hangwd runs (`hangw usage key init`): looked for per delivery
    decrypt = functools.partial(key.decrypt_once_made, max_bytes=config.usage.max_unpacked_bytes)
    ingest = Ingest(
        VeeSettings(config.usage.spike_ratio, config.usage.zero_run),
        sum_tolerance_wh=config.usage.sum_tolerance_wh,
        decrypt=decrypt,
        max_unpacked_bytes=config.usage.max_unpacked_bytes,
    )
    directories = {duns: Path(path) for duns, path in config.usage.drop_dirs.items()}
    for duns, directory in directories.items():
        try:  # now, so that a path that cannot be a directory stops start-up naming its key
            make_drop_directory(directory)
        except OSError as error:
            raise unusable_path(f"usage.drop_dirs.{duns}", directory, error) from None
    return DropDirectories(
        directories, store.engine, ingest, reactor, clock, config.usage.poll_s, key=key
    )


class Gateway(MultiService):
    def __init__(self, config: Config, reactor: Any, clock: Any = None) -> None:
        super().__init__()
        self.config = config
        clock = clock or reactor
        cert_dir = config.cert_dir
        server_cert, server_key = cert_dir / "server.pem", cert_dir / "server-key.pem"
        if not server_cert.exists() or not server_key.exists():
            raise ConfigError(
                f"api.cert_dir: no server certificate in {cert_dir}; run `hangw certs init` first"
            )
        self.store = Store(schema.make_engine(config.store_url), reactor)
        key_path = config.store_key_path
        sealed = None if key_path.exists() else _holds_sealed_secrets(self.store.engine, key_path)
        if sealed is not None:
            raise ConfigError(
                f"store.key_file: {config.store_key_path} is missing, but the store holds "
                f"{sealed} sealed with it; restore the key file (a new key could not open them)"
            )
        try:
            box = SecretBox(load_or_create_key(key_path))
        except OSError as error:  # a directory, or a path under a file: never the key itself
            raise unusable_path("store.key_file", key_path, error) from None
        self.registry = PartyRegistry(self.store)
        self.adapters = {a.tdsp_duns: load_adapter(a, clock, config) for a in config.adapters}
        self.webhooks = WebhookService(self.store, box, clock, config.webhooks, reactor)
        self.devices = DeviceService(
            self.store, box, clock, config.provisioning, notifier=self.webhooks
        )
        self.messaging = MessagingService(
            self.store, clock, config.messaging, notifier=self.webhooks
        )
        self.router = Router(self.devices, self.adapters, clock, sources=[self.messaging])
        self.devices._on_outbox = functools.partial(self.router.wake, source=self.devices)
        self.devices.handed_out = self.router.handed_out
        self.messaging._on_outbox = functools.partial(self.router.wake, source=self.messaging)

        StoreService(self.store).setServiceParent(self)
        self.webhooks.sender.setServiceParent(self)
        refresh = TimerService(5.0, self._refresh_parties)
        refresh.clock = clock
        refresh.setServiceParent(self)
        events = GatewayEvents(self.devices, clock, self.messaging)
        AdaptersService(self.adapters, events).setServiceParent(self)
        self.router.setServiceParent(self)
        self.drop_dirs = _drop_directories(config, self.store, reactor, clock)
        if self.drop_dirs is not None:
            self.drop_dirs.setServiceParent(self)
        timers = TimerService(config.provisioning.timer_interval_s, self._fire_timers)
        timers.clock = clock
        timers.setServiceParent(self)
        self.usage_reports = UsageReports(self.store, config, reactor, clock)
        self.usage_reports.setServiceParent(self)

        self.api = Api(
            self.devices,
            self.registry,
            max_body_bytes=config.api.max_body_bytes,
            diagnostics=Diagnostics(self.devices, self.adapters),
            messaging=self.messaging,
            webhooks=self.webhooks,
            messaging_max_body=config.messaging.max_body_bytes,
            usage=self.usage_reports,
        )
        tls = PinnedClientContextFactory(server_cert, server_key, self.registry.is_registered)
        self.api_endpoint = SSL4ServerEndpoint(
            reactor, config.api.port, tls, interface=config.api.host
        )
        self.api_service = StreamServerEndpointService(
            self.api_endpoint,
            # the API takes JSON only: no request needs Twisted to look for form fields
            MeteredSite(
                self.api.resource(),
                max_body_bytes=self.api.largest_body_bytes,
                parsePOSTFormSubmission=False,
            ),
        )
        # a port that cannot be bound must stop start-up, not leave a daemon without its API
        self.api_service._raiseSynchronously = True
        self.api_service.setServiceParent(self)
        wire_adapters = {d: a for d, a in self.adapters.items() if isinstance(a, WireAdapter)}
        self.adapter_service: StreamServerEndpointService | None = None
        for wire_adapter in wire_adapters.values():
            wire_adapter.on_connected = self.router.link_up
        if wire_adapters:
            # head-ends dial in with their TDSP certificate: the API's pinned-certificate TLS
            links = HeadEndLinkFactory(wire_adapters, self._identify, clock)
            self.adapter_endpoint = SSL4ServerEndpoint(
                reactor, config.api.adapter_port, tls, interface=config.api.host
            )
            self.adapter_service = StreamServerEndpointService(self.adapter_endpoint, links)
            self.adapter_service._raiseSynchronously = True
            self.adapter_service.setServiceParent(self)
        ops = OpsApi(self.health)
        self.ops_service = StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, config.api.ops_port, interface=config.api.host),
            Site(ops.app.resource(), parsePOSTFormSubmission=False),
        )
        self.ops_service._raiseSynchronously = True
        self.ops_service.setServiceParent(self)

    def stopService(self) -> Deferred[Any]:
        """Stop the listeners, timers, router and adapters first, and the store once they have.

        The store's writers finish every job already queued; nothing may queue more after that.
        Services that never started (start-up failed before them) are not stopped.
        """
        Service.stopService(self)
        store = self.getServiceNamed("store")
        others = [s for s in reversed(list(self)) if s is not store and s.running]
        stopping = DeferredList([maybeDeferred(service.stopService) for service in others])

        def stop_store(_: object) -> Deferred[Any]:
            return maybeDeferred(store.stopService)

        return stopping.addBoth(stop_store)

    def _identify(self, fingerprint: str | None) -> tuple[str, str] | None:
        party = self.registry.lookup(fingerprint)
        return (party.role.value, party.party_id) if party is not None else None

    def _refresh_parties(self) -> Deferred[Any]:
        """Reload the registered parties; a failure is logged and the next period tries again."""
        d = Deferred.fromCoroutine(self.registry.refresh())
        d.addErrback(
            lambda failure: log.error("parties.refresh_failed", error=failure.getErrorMessage())
        )
        return d

    def _fire_timers(self) -> Deferred[Any]:
        async def fire() -> None:
            await self.devices.fire_timers()
            await self.messaging.fire_timers()

        d = Deferred.fromCoroutine(fire())
        d.addErrback(lambda failure: log.error("timers.failed", error=failure.getErrorMessage()))
        return d

    async def health(self) -> dict[str, Any]:
        try:
            await self.store.run(lambda conn: conn.execute(sa.text("SELECT 1")).scalar())
            store = "ok"
        except Exception as error:  # reported, not raised: health answers anyway
            store = f"error: {type(error).__name__}"
        return {
            "status": "ok" if store == "ok" else "degraded",
            "store": store,
            "adapters": sorted(self.adapters),
            "parties": len(self.registry._by_fingerprint),
        }
