"""The router: drains the outbox to each TDSP's adapter and retires what the head-end accepted.

Rows are written in the same transaction as the state change that needs them, so a command is
never lost; a row is retired only after the adapter accepted the command, so after a crash or a
lost link it is sent again (receivers drop duplicates by command id: effect exactly once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from adapters.commands import Command
from adapters.interfaces import IHeadEndAdapter
from hangw import metrics
from hangw.devices import DeviceService
from hangw.store.db import TurnBatch

log = structlog.get_logger(__name__)


class OutboxSource(Protocol):
    """An outbox the router drains: device commands, or messaging fan-outs."""

    store: Any

    def pending_after_thd(
        self, conn: Any, tdsp_duns: str, limit: int, skip: frozenset[str], after: int
    ) -> tuple[Sequence[Command], int]: ...

    def retire_many_thd(self, conn: Any, command_ids: list[str], now: float) -> None: ...


class Router(Service):
    name = "router"

    def __init__(
        self,
        devices: DeviceService,
        adapters: Mapping[str, IHeadEndAdapter],
        clock: IReactorTime,
        *,
        batch: int = 200,
        poll_interval_s: float = 2.0,
        max_backoff_s: float = 30.0,
        window: int = 1024,
        sources: Sequence[OutboxSource] = (),
    ) -> None:
        self._devices = devices
        #: Every outbox drained, the devices' first: provisioning commands go before fan-outs.
        self._sources: list[OutboxSource] = [devices, *sources]
        self._adapters = dict(adapters)
        self._clock = clock
        self._batch = batch
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._in_flight: set[str] = set()
        #: Handed to an adapter (once or more) and not yet retired: the head-end may hold these,
        #: also those whose sending failed (the acknowledgement may be what was lost).
        self._handed_out: set[str] = set()
        #: At most ``window`` commands per TDSP are handed to its adapter and not yet settled;
        #: the rest wait in the outbox (not in the adapter's memory, where their ack timeouts
        #: would run while they wait for credit). Reading resumes when half the window is free.
        self._window = window
        self._in_flight_by_tdsp: dict[str, int] = {}
        self._window_full: set[str] = set()
        #: Commands accepted in one reactor turn are retired by one store job per source.
        self._retirements: list[TurnBatch[str, None]] = [
            TurnBatch(devices.store, clock, source.retire_many_thd) for source in self._sources
        ]
        self._backoff: dict[str, float] = {}  # tdsp_duns -> seconds to wait after a failure
        self._not_before: dict[str, float] = {}
        #: (source, tdsp_duns) -> the last outbox row handed out; a drain reads only rows after it.
        self._after: dict[tuple[int, str], int] = {}
        self._draining: Deferred[None] | None = None
        self._again = False
        self._rescan = True
        #: The sources (by number) a command was queued in since the last drain: only those are
        #: read, so a burst of device commands does not read the idle messaging outbox each time.
        self._woken: set[int] = set()
        self._wake_call: IDelayedCall | None = None
        self._poll = LoopingCall(self.wake, rescan=True)
        self._poll.clock = clock

    def startService(self) -> None:
        super().startService()
        self._poll.start(self._poll_interval_s, now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        return self._draining

    def handed_out(self, command_id: str) -> bool:
        """Was the command handed to its adapter, and has it not been retired since?"""
        return command_id in self._handed_out

    def link_up(self, tdsp_duns: str) -> None:
        """A TDSP's head-end (re)connected: forget the back-off and send what waits, now."""
        self._backoff.pop(tdsp_duns, None)
        self._not_before.pop(tdsp_duns, None)
        self.wake(rescan=True)

    def wake(self, rescan: bool = False, source: OutboxSource | None = None) -> None:
        """Drain soon; called after a command was queued, and with ``rescan`` on every poll.

        ``source``: the outbox the command was queued in, the only one the drain need read
        (None: read every outbox). A rescan reads every outbox from its start instead of only
        the rows queued since the last drain: it finds commands that failed to send, and rows
        another writer committed late.
        """
        self._rescan = self._rescan or rescan
        if source is None:
            self._woken.update(range(len(self._sources)))
        else:
            self._woken.add(self._sources.index(source))
        if not self.running:
            return
        if self._draining is not None:
            self._again = True
            return
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self._clock.callLater(0, self._start_drain)

    def _start_drain(self) -> None:
        self._draining = Deferred.fromCoroutine(self.drain())

        def done(result: object) -> None:
            self._draining = None
            if self._again:
                self._again = False
                if self.running:  # a wake during the last drain before stopService starts none
                    self._schedule_drain()

        self._draining.addBoth(done)

    async def drain(self) -> None:
        now = self._clock.seconds()
        rescan, self._rescan = self._rescan, False
        woken, self._woken = self._woken, set()
        for tdsp_duns, adapter in self._adapters.items():
            if self._not_before.get(tdsp_duns, 0.0) > now:
                self._rescan = True  # what could not be sent waits for the next poll
                continue
            for number, source in enumerate(self._sources):
                if not rescan and number not in woken:
                    continue
                if not await self._drain_source(number, source, tdsp_duns, adapter, rescan):
                    break

    async def _drain_source(
        self,
        number: int,
        source: OutboxSource,
        tdsp_duns: str,
        adapter: IHeadEndAdapter,
        rescan: bool,
    ) -> bool:
        """Hand over what this source has for the TDSP; False when the TDSP can take no more."""
        key = (number, tdsp_duns)
        if rescan:
            self._after[key] = 0
        while True:
            room = self._window - self._in_flight_by_tdsp.get(tdsp_duns, 0)
            if room <= 0:
                self._window_full.add(tdsp_duns)  # read on when half the window settled
                return False
            limit = min(self._batch, room)
            try:
                commands, last = await self._devices.store.run(
                    source.pending_after_thd,
                    tdsp_duns,
                    limit,
                    frozenset(self._in_flight),
                    self._after.get(key, 0),
                )
            except Exception:
                log.exception("router.read_failed", tdsp=tdsp_duns)
                self._rescan = True
                return False
            self._after[key] = last
            for command in commands:
                self._send(tdsp_duns, adapter, command, number)
            metrics.outbox_pending.labels(tdsp_duns).set(len(self._in_flight))
            if not self.running:
                return False
            if self._not_before.get(tdsp_duns, 0.0) > self._clock.seconds():
                # the adapter refused (its head-end is gone): the rest waits for the back-off
                self._rescan = True
                return False
            if len(commands) < limit:
                return True

    def _send(
        self, tdsp_duns: str, adapter: IHeadEndAdapter, command: Command, source: int = 0
    ) -> None:
        self._in_flight.add(command.command_id)
        self._handed_out.add(command.command_id)
        self._in_flight_by_tdsp[tdsp_duns] = self._in_flight_by_tdsp.get(tdsp_duns, 0) + 1
        d: Deferred[object] = maybeDeferred(adapter.send, command)
        kind = type(command).__name__

        def accepted(_: object) -> Deferred[None]:
            self._backoff.pop(tdsp_duns, None)
            metrics.outbox_sent.labels(tdsp_duns, kind).inc()
            retired = self._retirements[source].add(command.command_id)
            return retired.addCallback(lambda _: self._handed_out.discard(command.command_id))

        def refused(failure: object) -> None:
            self._rescan = True  # send it again from the start of the outbox
            now = self._clock.seconds()
            # A lost link fails every command in flight at once: that is one failure, and it
            # doubles the wait once, not once per command (and is logged once).
            episode = self._not_before.get(tdsp_duns, 0.0) <= now
            if episode:
                delay = min(self._backoff.get(tdsp_duns, 0.25) * 2, self._max_backoff_s)
                self._backoff[tdsp_duns] = delay
                self._not_before[tdsp_duns] = now + delay
            delay = self._not_before[tdsp_duns] - now
            metrics.outbox_failures.labels(tdsp_duns).inc()
            (log.warning if episode else log.debug)(
                "router.send_failed",
                tdsp=tdsp_duns,
                command=command.command_id,
                retry_in_s=delay,
                error=getattr(failure, "getErrorMessage", lambda: str(failure))(),
            )

        def settled(result: object) -> None:
            self._in_flight.discard(command.command_id)
            left = self._in_flight_by_tdsp.get(tdsp_duns, 1) - 1
            self._in_flight_by_tdsp[tdsp_duns] = left
            if tdsp_duns in self._window_full and left <= self._window // 2:
                self._window_full.discard(tdsp_duns)
                self.wake()

        d.addCallbacks(accepted, refused)
        d.addErrback(
            lambda failure: log.error("router.retire_failed", error=failure.getErrorMessage())
        )
        d.addBoth(settled)
