"""The store: a SQLAlchemy engine and the dedicated thread pool all blocking database work runs in.

A query is a plain function ``thd(conn, *args)`` run in one transaction on a pool thread;
``Store.run`` returns a Deferred of its result. SQLite gets one thread (one writer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Store:
    def __init__(self, engine: sa.Engine, reactor: IReactorFromThreads, threads: int = 4) -> None:
        self.engine = engine
        self._reactor = reactor
        size = 1 if engine.dialect.name == "sqlite" else threads
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name="hangw-store")

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()
        self.engine.dispose()

    def transaction(self, thd: Callable[..., T], *args: Any) -> T:
        """Run ``thd(conn, *args)`` in one transaction on the calling thread."""
        with self.engine.begin() as conn:
            return thd(conn, *args)

    def run(self, thd: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``thd(conn, *args)`` in one transaction on the store's thread pool."""
        return deferToThreadPool(self._reactor, self.pool, self.transaction, thd, *args)
