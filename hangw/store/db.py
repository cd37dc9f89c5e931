"""The store: a SQLAlchemy engine and the writer threads all blocking database work runs on.

A query is a plain function ``thd(conn, *args)``; ``Store.run`` queues it and returns a Deferred of
its result. Work is group-committed: the jobs handed to ``run`` in one reactor turn go to the
writers together when the turn ends, and a writer thread takes every job waiting (up to
``max_batch``) and runs them in one transaction, each inside its own SAVEPOINT, so a job that
raises undoes only its own writes and the others still commit together. A job's Deferred fires
after the commit, so an answer never reports a change that could still be lost. SQLite gets one
writer thread (one writer is all it allows); other databases get ``threads``, and a turn's jobs
are shared out among them. Each writer keeps its connection for as long as it runs.

Handing a turn's jobs over at its end, not one by one, matters when the writer shares a CPU
with the reactor: woken for each job, it would commit a transaction or two per wake-up.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from hangw import metrics
from hangw.store.schema import WRITER_SQLITE_PRAGMAS, WRITER_SQLITE_RESETS, WRITES

T = TypeVar("T")
Item = TypeVar("Item")
R = TypeVar("R")

log = structlog.get_logger(__name__)

_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any], float]
_STOP = None
#: Seconds a writer waits before trying the database again after it could not connect.
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class _Reactor(Protocol):
    """What the store needs of its reactor: a call at the end of this turn, a call from a thread."""

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> IDelayedCall: ...

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None: ...


class StoreStopped(RuntimeError):
    """Work was handed to a store that has been stopped."""


class StoreUnavailable(ConnectionError):
    """The database could not be reached for this batch of work."""


def without_password(text: str) -> str:
    """A driver's error text with any password in a URL or DSN replaced by ***."""
    text = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)


class Store:
    def __init__(
        self,
        engine: sa.Engine,
        reactor: _Reactor,
        threads: int = 4,
        max_batch: int = 256,
    ) -> None:
        self.engine = engine
        self._reactor = reactor
        self.writers = 1 if engine.dialect.name == "sqlite" else threads
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._turn: list[_Job] = []  # handed to run() in this reactor turn, not yet queued
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._failed_connects = 0

    @property
    def integrity_errors(self) -> tuple[type[Exception], ...]:
        """What a constraint violation raises: SQLAlchemy's error, or the driver's own (the hot
        paths run on the DB-API cursor)."""
        dbapi = self.engine.dialect.loaded_dbapi
        return (sa.exc.IntegrityError, dbapi.IntegrityError)

    @property
    def unavailable_errors(self) -> tuple[type[Exception], ...]:
        """What says the store, not a job's own data, failed: a lost connection, a locked
        database, a commit whose outcome is unknown, or a stopped store."""
        dbapi = self.engine.dialect.loaded_dbapi
        return (StoreStopped, StoreUnavailable, sa.exc.OperationalError, dbapi.OperationalError)

    def start(self) -> None:
        self._stopped = False
        for n in range(self.writers):
            thread = threading.Thread(target=self._writer, name=f"hangw-store-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Finish every queued job, then stop the writers and close the engine's connections."""
        self._stopped = True
        self._hand_over()
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.engine.dispose()

    def transaction(self, thd: Callable[..., T], *args: Any) -> T:
        """Run ``thd(conn, *args)`` in one transaction on the calling thread (one that may write:
        on SQLite it takes the write lock as it begins)."""
        with self.engine.execution_options(**{WRITES: True}).begin() as conn:
            return thd(conn, *args)

    def run(self, thd: Callable[..., T], *args: Any) -> Deferred[T]:
        """Queue ``thd(conn, *args)`` for a writer; the Deferred fires after its commit.

        Call it on the reactor thread: the job reaches a writer when the reactor's turn ends.
        """
        if self._stopped:
            return fail(StoreStopped("the store has stopped; the gateway is shutting down"))
        done: Deferred[T] = Deferred()
        self._turn.append((thd, args, done, time.monotonic()))
        if len(self._turn) == 1:
            self._reactor.callLater(0, self._hand_over)
        return done

    def _hand_over(self) -> None:
        """Queue this turn's jobs: one batch per writer, none larger than ``max_batch``."""
        jobs, self._turn = self._turn, []
        if not jobs:
            return
        size = min(self.max_batch, -(-len(jobs) // self.writers))
        for start in range(0, len(jobs), size):
            self._queue.put(jobs[start : start + size])

    # -- on the writer threads -----------------------------------------------------------------

    def _writer(self) -> None:
        conn: sa.Connection | None = None
        taken: list[_Job] = []  # off the queue, not yet run
        stopping = False
        try:
            while taken or not stopping:
                while len(taken) < self.max_batch and not stopping:
                    try:
                        jobs = self._queue.get(block=not taken)
                    except queue.Empty:
                        break
                    if jobs is _STOP:
                        stopping = True
                    else:
                        taken.extend(jobs)
                if not taken:
                    continue
                batch, taken = taken[: self.max_batch], taken[self.max_batch :]
                metrics.store_wait.observe(time.monotonic() - batch[0][3])
                if conn is None or conn.invalidated or conn.closed:
                    conn = self._connect(conn)
                if conn is None:
                    failure = Failure(StoreUnavailable("the database cannot be reached; retrying"))
                    outcomes = [(done, failure) for _, _, done, _ in batch]
                else:
                    outcomes = self._run_batch(conn, batch)
                self._reactor.callFromThread(_deliver, outcomes)
        finally:
            if conn is not None:
                self._close_writer_connection(conn)

    def _connect(self, old: sa.Connection | None) -> sa.Connection | None:
        """A new connection, or None (logged) after waiting a little when none can be had."""
        if old is not None:
            try:
                self._close_writer_connection(old)
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                pass
        try:
            conn = self._writer_connection()
        except Exception as error:
            delay = RECONNECT_DELAYS[min(self._failed_connects, len(RECONNECT_DELAYS) - 1)]
            self._failed_connects += 1
            log.error(
                "store.connect_failed",
                error=without_password(str(error)),
                attempt=self._failed_connects,
                retry_in_s=delay,
            )
            time.sleep(delay)  # only this writer waits; the reactor keeps serving
            return None
        self._failed_connects = 0
        return conn

    def _writer_connection(self) -> sa.Connection:
        """A connection for a writer to keep, with the writer's own SQLite pragmas."""
        conn = self.engine.connect()
        conn.execution_options(**{WRITES: True})  # every batch may write: see schema.WRITES
        if conn.dialect.name == "sqlite":
            try:
                driver: Any = conn.connection.driver_connection  # outside any transaction
                for pragma in WRITER_SQLITE_PRAGMAS:
                    driver.execute(pragma)
            except Exception:
                conn.invalidate()  # not back to the pool with half the writer's settings
                conn.close()
                raise
        return conn

    @staticmethod
    def _close_writer_connection(conn: sa.Connection) -> None:
        """Give the connection back to the pool as other users expect it, or drop it."""
        if conn.dialect.name == "sqlite" and not (conn.invalidated or conn.closed):
            try:
                driver: Any = conn.connection.driver_connection
                for pragma in WRITER_SQLITE_RESETS:
                    driver.execute(pragma)
            except Exception:
                conn.invalidate()  # the pool gets a fresh one instead
        conn.close()

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
                    # Plain SAVEPOINT statements on the driver's cursor: SQLAlchemy's
                    # begin_nested() costs several times more (and exec_driver_sql ten times
                    # more than the cursor), and these jobs never nest transactions of their own.
                    savepoints = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    for thd, args, done, _ in batch:
                        savepoints.execute("SAVEPOINT hangw_job")
                        try:
                            result = thd(conn, *args)
                        except Exception:
                            outcomes.append((done, Failure()))
                            savepoints.execute("ROLLBACK TO SAVEPOINT hangw_job")
                        else:
                            outcomes.append((done, result))
                        savepoints.execute("RELEASE SAVEPOINT hangw_job")
        except Exception as error:
            # the one job's own error, or a failed commit: nothing of the batch was kept
            if own_failure is None:
                log.error(
                    "store.batch_failed", jobs=len(batch), error=without_password(str(error))[:300]
                )
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


class TurnBatch(Generic[Item, R]):
    """Items handed over in one reactor turn, done by one store job.

    ``thd(conn, items, now)`` returns one result per item (or None, for None each); each
    ``add`` gets a Deferred of its own item's result. When the job fails, each item is done
    again by a job of its own, so that one item the store cannot take (a value it cannot
    encode, say) fails alone and not every item that came in the same turn; when the store
    itself failed (``Store.unavailable_errors``: its commit may even have taken effect), every
    item gets that failure at once.
    ``settled(items, results)``, when given, sees every result first (to log them, say).
    """

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        thd: Callable[[sa.Connection, list[Item], float], list[R] | None],
        settled: Callable[[list[Item], list[R | None]], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._thd = thd
        self._settled = settled
        self._waiting: list[tuple[Item, Deferred[R | None]]] = []

    def add(self, item: Item) -> Deferred[R | None]:
        done: Deferred[R | None] = Deferred()
        self._waiting.append((item, done))
        if len(self._waiting) == 1:
            self._clock.callLater(0, self._run)
        return done

    def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        self._do(batch, alone_on_failure=len(batch) > 1)

    def _do(self, batch: list[tuple[Item, Deferred[R | None]]], alone_on_failure: bool) -> None:
        items = [item for item, _ in batch]
        job = self._store.run(self._thd, items, self._clock.seconds())

        def settle(result: list[R] | Failure | None) -> None:
            if isinstance(result, Failure):
                if alone_on_failure and not result.check(*self._store.unavailable_errors):
                    for waiting in batch:
                        self._do([waiting], alone_on_failure=False)
                    return
                for _, done in batch:
                    done.errback(result)
                return
            results: list[R | None] = list(result) if result is not None else [None] * len(batch)
            if self._settled is not None:
                self._settled(items, results)
            for (_, done), value in zip(batch, results, strict=True):
                done.callback(value)

        job.addBoth(settle)
