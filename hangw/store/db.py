"""The store: a SQLAlchemy engine and the writer threads all blocking database work runs on.

A query is a plain function ``thd(conn, *args)``; ``Store.run`` queues it and returns a Deferred of
its result. Work is group-committed: a writer thread takes every job waiting in the queue (up to
``max_batch``) and runs them in one transaction, each inside its own SAVEPOINT, so a job that
raises undoes only its own writes and the others still commit together. A job's Deferred fires
after the commit, so an answer never reports a change that could still be lost. SQLite gets one
writer thread (one writer is all it allows); other databases get ``threads``. Each writer keeps
its connection for as long as it runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from hangw import metrics

T = TypeVar("T")

log = structlog.get_logger(__name__)

_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any], float]
_STOP = None


class Store:
    def __init__(
        self,
        engine: sa.Engine,
        reactor: IReactorFromThreads,
        threads: int = 4,
        max_batch: int = 256,
    ) -> None:
        self.engine = engine
        self._reactor = reactor
        self.writers = 1 if engine.dialect.name == "sqlite" else threads
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.writers):
            thread = threading.Thread(target=self._writer, name=f"hangw-store-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Finish every queued job, then stop the writers and close the engine's connections."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.engine.dispose()

    def transaction(self, thd: Callable[..., T], *args: Any) -> T:
        """Run ``thd(conn, *args)`` in one transaction on the calling thread."""
        with self.engine.begin() as conn:
            return thd(conn, *args)

    def run(self, thd: Callable[..., T], *args: Any) -> Deferred[T]:
        """Queue ``thd(conn, *args)`` for a writer; the Deferred fires after its commit."""
        done: Deferred[T] = Deferred()
        self._queue.put((thd, args, done, time.monotonic()))
        return done

    # -- on the writer threads -----------------------------------------------------------------

    def _writer(self) -> None:
        conn: sa.Connection | None = None
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                metrics.store_wait.observe(time.monotonic() - job[3])
                batch = [job]
                stopping = False
                while len(batch) < self.max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stopping = True
                        break
                    batch.append(more)
                if conn is None or conn.invalidated or conn.closed:
                    conn = self._connect(conn)
                outcomes = self._run_batch(conn, batch)
                self._reactor.callFromThread(_deliver, outcomes)
                if stopping:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _connect(self, old: sa.Connection | None) -> sa.Connection:
        if old is not None:
            old.close()
        return self.engine.connect()

    def _run_batch(self, conn: sa.Connection, batch: list[_Job]) -> list[tuple[Deferred[Any], Any]]:
        outcomes: list[tuple[Deferred[Any], Any]] = []
        own_failure: Failure | None = None
        try:
            with conn.begin():
                if len(batch) == 1:
                    thd, args, done, _ = batch[0]
                    try:
                        outcomes.append((done, thd(conn, *args)))
                    except Exception:
                        own_failure = Failure()
                        raise  # roll the transaction back
                else:
                    # Plain SAVEPOINT statements: SQLAlchemy's begin_nested() costs several
                    # times more, and these jobs never nest transactions of their own.
                    for thd, args, done, _ in batch:
                        conn.exec_driver_sql("SAVEPOINT hangw_job")
                        try:
                            result = thd(conn, *args)
                        except Exception:
                            outcomes.append((done, Failure()))
                            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT hangw_job")
                        else:
                            outcomes.append((done, result))
                        conn.exec_driver_sql("RELEASE SAVEPOINT hangw_job")
        except Exception as error:
            # the one job's own error, or a failed commit: nothing of the batch was kept
            if own_failure is None:
                log.error("store.batch_failed", jobs=len(batch), error=str(error)[:200])
            failure = own_failure or Failure()
            outcomes = [(done, failure) for _, _, done, _ in batch]
        metrics.store_commits.inc()
        metrics.store_jobs.inc(len(batch))
        metrics.store_batch.observe(len(batch))
        return outcomes


def _deliver(outcomes: list[tuple[Deferred[Any], Any]]) -> None:
    for done, result in outcomes:
        if isinstance(result, Failure):
            done.errback(result)
        else:
            done.callback(result)
