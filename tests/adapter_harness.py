"""Adapters under test: the in-process simulator, and the wire adapter with hangw-sim over TLS.

Both are driven through IHeadEndAdapter by the same tests (test_adapter_contract.py); the wire
pair is a real TLS listener on loopback (the gateway's pinned-certificate context) and the
simulated head-end's client dialling it with the demo TDSP's certificate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.task import deferLater
from zope.interface import implementer

from adapters.commands import (
    DeliveryStatus,
    HeadEndStatus,
    InboundFrame,
    MeterEvent,
    ProvisioningReport,
    ReportRefused,
)
from adapters.interfaces import IAdapterEvents
from adapters.wire.gateway import HeadEndLinkFactory, WireAdapter
from hangw import certs
from hangw.api.listener import PinnedClientContextFactory
from simulators.headend import LinkFaults, SimulatedHeadEndClient, tls_endpoint
from simulators.inprocess import SimulatedHeadEnd, SimulatorConfig

TDSP = "1039940674000"
FAST = {
    "ack_delay_s": 0.01,
    "pending_delay_s": 0.01,
    "meter_ready_delay_s": 0.01,
    "join_delay_s": 0.01,
    "remove_delay_s": 0.01,
}


@implementer(IAdapterEvents)
class RecordingEvents:
    """The gateway's side of IAdapterEvents, recording every event in order."""

    def __init__(self) -> None:
        self.reports: list[ProvisioningReport] = []
        self.deliveries: list[DeliveryStatus] = []
        self.frames: list[InboundFrame] = []
        self.meter_events: list[MeterEvent] = []
        self.refuse_esiids: set[str] = set()

    def _check(self, event: Any) -> None:
        if event.esiid in self.refuse_esiids:
            raise ReportRefused(f"ESI ID {event.esiid} is not served by TDSP {event.tdsp_duns}")

    def provisioning_report(self, report: ProvisioningReport) -> Deferred[None]:
        self._check(report)
        self.reports.append(report)
        return succeed(None)

    def delivery_status(self, status: DeliveryStatus) -> Deferred[None]:
        self._check(status)
        self.deliveries.append(status)
        return succeed(None)

    def inbound_frame(self, frame: InboundFrame) -> Deferred[None]:
        self._check(frame)
        self.frames.append(frame)
        return succeed(None)

    def _take_all(self, items: list[Any], into: list[Any]) -> Deferred[list[str | None]]:
        results: list[str | None] = []
        for item in items:
            try:
                self._check(item)
            except ReportRefused as refused:
                results.append(str(refused))
            else:
                into.append(item)
                results.append(None)
        return succeed(results)

    def delivery_statuses(
        self, statuses: list[DeliveryStatus], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._take_all(statuses, self.deliveries)

    def inbound_frames(
        self, frames: list[InboundFrame], batch_id: str = ""
    ) -> Deferred[list[str | None]]:
        return self._take_all(frames, self.frames)

    def meter_event(self, event: MeterEvent) -> Deferred[None]:
        self._check(event)
        self.meter_events.append(event)
        return succeed(None)

    def statuses_of(self, command_id: str) -> list[HeadEndStatus]:
        return [r.status for r in self.reports if r.command_id == command_id]


@dataclass
class AdapterUnderTest:
    kind: str
    adapter: Any
    events: RecordingEvents
    headend: SimulatedHeadEnd
    client: SimulatedHeadEndClient | None = None
    port: Any = None
    closers: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        await self.adapter.stop()
        if self.client is not None:
            await self.client.stop()
        if self.port is not None:
            await self.port.stopListening()
        if self.kind == "inprocess":
            self.headend.stop()


async def eventually(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01)


def identify_demo_parties(cert_dir: Path) -> tuple[Any, dict[str, tuple[str, str]]]:
    issued = certs.init_dev_identity(cert_dir, now=time.time())
    parties = {p.fingerprint: (p.role, p.party_id) for p in issued}
    return issued, parties


async def start_wire(
    tmp_path: Path,
    *,
    options: dict[str, Any] | None = None,
    faults: LinkFaults | None = None,
    party: str = "demo-tdsp",
    adapter_options: dict[str, Any] | None = None,
    connect: bool = True,
) -> AdapterUnderTest:
    cert_dir = tmp_path / "certs"
    _, parties = identify_demo_parties(cert_dir)

    class AdapterConfig:
        tdsp_duns = TDSP
        options = adapter_options or {}

    adapter = WireAdapter(AdapterConfig(), reactor, tmp_path)
    events = RecordingEvents()
    await adapter.start(events)
    tls = PinnedClientContextFactory(
        cert_dir / "server.pem", cert_dir / "server-key.pem", lambda fp: fp in parties
    )
    factory = HeadEndLinkFactory({TDSP: adapter}, lambda fp: parties.get(fp or ""), reactor)
    port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(factory)
    headend = SimulatedHeadEnd(
        SimulatorConfig(tdsp_duns=TDSP, **{**FAST, **(options or {})}), reactor
    )
    endpoint = tls_endpoint(reactor, "127.0.0.1", port.getHost().port, cert_dir, party)
    client = SimulatedHeadEndClient(endpoint, headend, reactor, faults, max_retry_delay_s=0.5)
    client.start()
    under = AdapterUnderTest("wire", adapter, events, headend, client, port)
    if connect:
        await eventually(lambda: adapter.connected, what="the head-end to connect")
    return under


async def start_inprocess(
    tmp_path: Path, *, options: dict[str, Any] | None = None
) -> AdapterUnderTest:
    headend = SimulatedHeadEnd(
        SimulatorConfig(tdsp_duns=TDSP, **{**FAST, **(options or {})}), reactor
    )
    events = RecordingEvents()
    await headend.start(events)
    return AdapterUnderTest("inprocess", headend, events, headend)
