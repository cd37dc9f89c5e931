"""DeviceService on a real SQLite file, with the store's queries run on the calling thread.

The queries, transactions and guards are the real ones; only the hop to the thread pool is
skipped, so Hypothesis can drive thousands of steps quickly and deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hangw.config import ProvisioningConfig
from hangw.devices import DeviceService
from hangw.meters import parse_meter_csv, upsert_meters_thd
from hangw.secrets import SecretBox
from hangw.store import schema
from hangw.store.db import Store

T = TypeVar("T")
DATA = Path(__file__).parent / "data"


class CallingThreadStore(Store):
    def run(self, thd: Callable[..., T], *args: Any) -> Deferred[T]:
        return maybeDeferred(self.transaction, thd, *args)


def resolve(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine whose awaits all complete synchronously (or raise its error)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the coroutine did not finish synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


def make_service(path: Path, **config: Any) -> tuple[DeviceService, Clock]:
    engine = schema.make_engine(f"sqlite:///{path}")
    schema.upgrade(engine)
    store = CallingThreadStore(engine, reactor=None)  # type: ignore[arg-type]
    with open(DATA / "meters.csv", newline="") as handle:
        store.transaction(upsert_meters_thd, parse_meter_csv(handle))
    clock = Clock()
    clock.advance(1_800_000_000)
    settings = ProvisioningConfig(**{"join_window_s": 600, "command_timeout_s": 120, **config})
    return DeviceService(store, SecretBox(b"k" * 32), clock, settings), clock
