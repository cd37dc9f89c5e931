"""The store's group commit: queued jobs share one transaction, each in its own savepoint."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from hangw import metrics
from hangw.store import schema
from hangw.store.db import Store, StoreStopped, StoreUnavailable, TurnBatch
from hangw.store.model import parties


def make_store(tmp_path: Path) -> Store:
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'batch.sqlite'}")
    schema.upgrade(engine)
    return Store(engine, reactor)


def insert_party(party_id: str, fail: bool = False):  # type: ignore[no-untyped-def]
    def thd(conn: sa.Connection) -> str:
        conn.execute(
            parties.insert().values(
                party_id=party_id,
                role="rep",
                name=party_id,
                cert_fingerprint=party_id,
                created_at=0,
            )
        )
        if fail:
            raise ValueError(f"job {party_id} refuses after writing")
        return party_id

    return thd


def stored_ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(parties.c.party_id)).scalars())


def counter(metric: object) -> float:
    return metrics.registry.get_sample_value(metric) or 0.0  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_queued_jobs_commit_together_and_a_failing_one_alone_is_undone(
    tmp_path: Path,
) -> None:
    """Jobs queued together run in one transaction; the one that raises leaves nothing behind."""
    store = make_store(tmp_path)
    commits_before = counter("hangw_store_transactions_total")
    jobs = [store.run(insert_party(f"p{n}", fail=n == 3)) for n in range(8)]
    store.start()  # every job is already queued: the writer takes them as one batch
    results = await DeferredList(jobs, consumeErrors=True)
    store.stop()
    assert [ok for ok, _ in results] == [n != 3 for n in range(8)]
    assert "refuses after writing" in results[3][1].getErrorMessage()
    assert counter("hangw_store_transactions_total") - commits_before == 1
    assert stored_ids(store.engine) == {f"p{n}" for n in range(8) if n != 3}


@pytest_twisted.ensureDeferred
async def test_jobs_of_one_reactor_turn_share_a_commit_though_the_writer_is_idle(
    tmp_path: Path,
) -> None:
    """Jobs handed over in one reactor turn commit together, even if the turn pauses between."""
    store = make_store(tmp_path)
    store.start()
    await store.run(insert_party("warm-up"))  # the writer is running and waiting for work
    commits_before = counter("hangw_store_transactions_total")
    jobs = []
    for n in range(5):
        jobs.append(store.run(insert_party(f"t{n}")))
        time.sleep(0.02)  # the turn goes on (TLS, parsing): an idle writer must not start alone
    results = await DeferredList(jobs, consumeErrors=True)
    store.stop()
    assert all(ok for ok, _ in results)
    assert counter("hangw_store_transactions_total") - commits_before == 1


@pytest_twisted.ensureDeferred
async def test_a_turn_of_more_jobs_than_max_batch_commits_in_several_transactions(
    tmp_path: Path,
) -> None:
    """No transaction takes more than max_batch jobs, however many one turn hands over."""
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'batch.sqlite'}")
    schema.upgrade(engine)
    store = Store(engine, reactor, max_batch=4)
    store.start()
    commits_before = counter("hangw_store_transactions_total")
    jobs = [store.run(insert_party(f"m{n}")) for n in range(10)]
    results = await DeferredList(jobs, consumeErrors=True)
    store.stop()
    assert all(ok for ok, _ in results)
    assert counter("hangw_store_transactions_total") - commits_before == 3  # 4 + 4 + 2
    assert len(stored_ids(engine)) == 10


@pytest_twisted.ensureDeferred
async def test_the_writer_keeps_temporary_files_in_memory_on_its_own_connection(
    tmp_path: Path,
) -> None:
    """Only the writer's connection keeps temporary files in memory; the pool's keep the default."""
    store = make_store(tmp_path)
    store.start()
    on_writer = await store.run(lambda conn: conn.exec_driver_sql("PRAGMA temp_store").scalar())
    store.stop()  # the writer closes its connection
    with store.engine.connect() as conn:
        elsewhere = conn.exec_driver_sql("PRAGMA temp_store").scalar()
    assert (on_writer, elsewhere) == (2, 0)  # MEMORY, DEFAULT


@pytest_twisted.ensureDeferred
async def test_a_single_failing_job_rolls_back(tmp_path: Path) -> None:
    """A job alone in its transaction that raises after writing leaves nothing behind."""
    store = make_store(tmp_path)
    store.start()
    with pytest.raises(ValueError):
        await store.run(insert_party("lonely", fail=True))
    assert await store.run(insert_party("next")) == "next"
    store.stop()
    assert stored_ids(store.engine) == {"next"}


@pytest_twisted.ensureDeferred
async def test_result_arrives_only_after_the_commit(tmp_path: Path) -> None:
    """When a job's Deferred fires, another connection already sees what it wrote."""
    store = make_store(tmp_path)
    store.start()
    seen_at_callback: list[set[str]] = []
    done = store.run(insert_party("durable"))
    done.addCallback(lambda _: seen_at_callback.append(stored_ids(store.engine)))
    await done
    store.stop()
    assert seen_at_callback == [{"durable"}]


@pytest_twisted.ensureDeferred
async def test_stop_finishes_every_queued_job(tmp_path: Path) -> None:
    """Jobs queued before stop() are all run and committed."""
    store = make_store(tmp_path)
    store.start()
    jobs = [store.run(insert_party(f"q{n}")) for n in range(50)]
    store.stop()
    results = await DeferredList(jobs, consumeErrors=True)
    assert all(ok for ok, _ in results)
    assert len(stored_ids(store.engine)) == 50


@pytest_twisted.ensureDeferred
async def test_work_after_stop_fails_at_once(tmp_path: Path) -> None:
    """A job handed to a stopped store fails immediately instead of waiting forever."""
    store = make_store(tmp_path)
    store.start()
    store.stop()
    with pytest.raises(StoreStopped):
        await store.run(insert_party("late"))


@pytest_twisted.ensureDeferred
async def test_an_unreachable_database_fails_the_batch_and_is_tried_again(tmp_path: Path) -> None:
    """While the database cannot be opened jobs fail with StoreUnavailable; then they run again."""
    missing = tmp_path / "not-yet"
    engine = sa.create_engine(f"sqlite:///{missing / 'later.sqlite'}")
    store = Store(engine, reactor)
    store.start()
    with pytest.raises(StoreUnavailable):
        await store.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    missing.mkdir()
    assert await store.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar()) == 1
    store.stop()


@pytest_twisted.ensureDeferred
async def test_a_batch_keeps_its_writes_when_another_connection_writes_meanwhile(
    tmp_path: Path,
) -> None:
    """A batch that reads first still writes: another connection's commit waits for it."""
    store = make_store(tmp_path)
    store.start()
    await store.run(insert_party("warm"))
    other_done = threading.Event()

    def other_writer() -> None:  # the usage import or a CLI, on a connection of its own
        with store.engine.begin() as other:
            other.execute(sa.text("CREATE TABLE IF NOT EXISTS other_writes (x)"))
            other.execute(sa.text("INSERT INTO other_writes VALUES (1)"))
        other_done.set()

    other = threading.Thread(target=other_writer)

    def read_while_another_connection_writes(conn: sa.Connection) -> int:
        seen = len(conn.execute(sa.select(parties.c.party_id)).all())  # the batch's snapshot
        other.start()
        other_done.wait(0.5)  # committed meanwhile, unless the batch holds the write lock
        return seen

    jobs = [store.run(read_while_another_connection_writes)]
    jobs += [store.run(insert_party(f"p{n}")) for n in range(3)]
    results = await DeferredList(jobs, consumeErrors=True)
    await deferToThread(other.join)
    store.stop()
    assert [ok for ok, _ in results] == [True] * 4, [
        r.getErrorMessage() for ok, r in results if not ok
    ]
    assert {"p0", "p1", "p2"} <= stored_ids(store.engine)
    assert other_done.is_set()  # and the other connection's write went in after the batch


@pytest_twisted.ensureDeferred
async def test_a_turn_batch_is_retried_item_by_item_only_for_its_own_failure(
    tmp_path: Path,
) -> None:
    """A batch job failing on its data is done again item by item; one failing on the store
    (a locked database, a lost connection: its commit may have taken effect) is not."""
    import sqlite3

    store = make_store(tmp_path)
    store.start()
    for error in (ValueError("an item the store cannot take"), sqlite3.OperationalError("locked")):
        calls: list[list[int]] = []

        def thd(
            conn: sa.Connection,
            items: list[int],
            now: float,
            calls: list[list[int]] = calls,
            error: Exception = error,
        ) -> list[int]:
            calls.append(items)
            if len(items) > 1 or isinstance(error, sqlite3.OperationalError):
                raise error
            return items

        batch: TurnBatch[int, int] = TurnBatch(store, reactor, thd)
        results = await DeferredList([batch.add(1), batch.add(2)], consumeErrors=True)
        if isinstance(error, ValueError):
            assert calls == [[1, 2], [1], [2]] and results == [(True, 1), (True, 2)]
        else:
            assert calls == [[1, 2]] and [ok for ok, _ in results] == [False, False]
    store.stop()
