"""Bulk usage report jobs: checked whole before anything is stored, run in chunks with progress,
results equal to the synchronous reports, visible to their owner only, run again after a
restart, deleted after the retention by an injected clock; on the service and over the API."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
import sqlalchemy as sa
from structlog.testing import capture_logs
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from hangw.domain import Meter
from hangw.problems import Forbidden, InvalidField, NotFound
from hangw.store import schema
from hangw.store.model import usage_jobs
from hangw.usage import reports
from hangw.usage.jobs import (
    RETRY_S,
    JobExpired,
    JobInterrupted,
    JobNotReady,
    JobRefused,
    JobService,
    _claim_thd,
    write_report,
)
from hangw.usage.reports import ReportSpec
from tests.gateway_harness import (
    E_OTHER,
    E_OTHER_TDSP,
    E_OWN,
    E_REMOVED,
    HSP,
    REP_A,
    REP_B,
    TDSP,
    Harness,
)
from tests.test_usage_reports import (
    DAILY_COLUMNS,
    PARTIES,
    Setup,
    days_from,
    download,
    generate,
    kwh,
    path_of,
    store_days_thd,
    store_reads_thd,
    texas_today,
    usage_service,
)

#: ESI IDs of REP_A's (and one of REP_B's) beyond tests/data/meters.csv.
MINE = [f"104437210000{n:05d}" for n in range(12)]
THEIRS = [f"104437220000{n:05d}" for n in range(12)]
EXTRA_METERS = [
    Meter(esiid, f"X{esiid[-5:]}", TDSP, rep, None, "GE-I210+c", "5.2.1", True, True)
    for rep, esiids in ((REP_A, MINE), (REP_B, THEIRS))
    for esiid in esiids
]
#: Days the service-level tests store (the injected clock's today is 2026-11-23).
DAYS = days_from(dt.date(2026, 11, 13), 3)
JOB_ID = re.compile(r"J[0-9A-F]{12}")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def finished(jobs: JobService, job_id: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = await jobs.get(PARTIES["rep"], job_id)
        if job.state in ("done", "failed") or time.monotonic() > deadline:
            return job
        await sleep(0.02)


async def with_usage(setup: Setup, esiids: list[str]) -> dict[str, list[Any]]:
    """Generated days (some missing, some estimated intervals) and reads for each ESI ID."""
    generated = {
        esiid: [
            generate(setup.rng, esiid, day, missing=(n + k) % 2, estimated=(n * k) % 3)
            for k, day in enumerate(DAYS)
        ]
        for n, esiid in enumerate(esiids)
    }
    await setup.store.run(store_days_thd, [d for days in generated.values() for d in days])
    reads = [(esiid, day, 1_000_000 * n + k) for n, esiid in enumerate(esiids) for k, day in
             enumerate(days_from(DAYS[0], len(DAYS) + 1))]  # fmt: skip
    await setup.store.run(store_reads_thd, reads)
    return generated


async def synchronous_csv(setup: Setup, spec: ReportSpec, esiids: list[str]) -> str:
    """What the one-ESI-ID reports answer, one after another, under a single header."""
    text = reports.csv_header(spec)
    for esiid in esiids:
        pieces = [piece async for piece in setup.usage.reports.csv_pieces(spec, esiid)]
        text += b"".join(pieces[1:]).decode()
    return text


def body(report: str, esiids: list[str], first: dt.date, last: dt.date) -> dict[str, Any]:
    return {"report": report, "esiids": esiids, "from": str(first), "to": str(last)}


@pytest_twisted.ensureDeferred
async def test_a_job_runs_in_chunks_and_equals_the_synchronous_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job runs in chunks with progress and writes what the one-ESI-ID reports answer."""
    monkeypatch.setattr(reports, "MAX_CHUNK_ESIIDS", 5)
    async with usage_service(tmp_path, extra_meters=EXTRA_METERS) as setup:
        esiids = [E_OWN, *MINE]
        generated = await with_usage(setup, esiids)
        jobs = setup.usage.jobs
        progress: list[tuple[int, int]] = []
        record = jobs._progress

        def recorded(job_id: str, done: int, rows: int) -> None:
            progress.append((done, rows))
            record(job_id, done, rows)

        jobs._progress = recorded  # type: ignore[method-assign]
        job = await jobs.submit(PARTIES["rep"], body("daily", esiids, DAYS[0], DAYS[-1]))
        assert JOB_ID.fullmatch(job.job_id) and job.state == "queued"
        job = await finished(jobs, job.job_id)
        assert (job.state, job.esiids, job.esiids_done, job.rows) == ("done", 13, 13, 39)
        assert progress == [(5, 15), (10, 30), (13, 39)]
        _, path = await jobs.result(PARTIES["rep"], job.job_id)
        assert path.parent == setup.config.usage_jobs_dir and path.name == f"{job.job_id}.csv"
        text = path.read_bytes().decode()
        assert text == await synchronous_csv(setup, job.spec, esiids)
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == DAILY_COLUMNS
        assert [(r[0], r[1], r[4]) for r in rows[1:]] == [
            (esiid, d.day.isoformat(), kwh(d.total)) for esiid in esiids for d in generated[esiid]
        ]
        assert list(setup.config.usage_jobs_dir.iterdir()) == [path]

        for report in ("interval", "monthly"):
            job = await jobs.submit(PARTIES["rep"], body(report, MINE[:3], DAYS[0], DAYS[-1]))
            job = await finished(jobs, job.job_id)
            assert job.state == "done"
            _, path = await jobs.result(PARTIES["rep"], job.job_id)
            assert path.read_bytes().decode() == await synchronous_csv(setup, job.spec, MINE[:3])
            expected_rows = sum(len(d.values) for e in MINE[:3] for d in generated[e])
            assert job.rows == (expected_rows if report == "interval" else 3)


@pytest_twisted.ensureDeferred
async def test_only_the_owner_sees_a_job_and_its_result_waits_until_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the owner sees a job; its result is 409 until the job ran."""
    async with usage_service(tmp_path) as setup:
        await with_usage(setup, [E_OWN])
        jobs = setup.usage.jobs
        kick = jobs.kick
        monkeypatch.setattr(jobs, "kick", lambda: None)  # the job waits in the queue
        job = await jobs.submit(PARTIES["rep"], body("daily", [E_OWN], DAYS[0], DAYS[-1]))
        for other in ("other-rep", "customer", "tdsp"):
            with pytest.raises(NotFound):
                await jobs.get(PARTIES[other], job.job_id)
            with pytest.raises(NotFound):
                await jobs.result(PARTIES[other], job.job_id)
        with pytest.raises(JobNotReady) as waiting:
            await jobs.result(PARTIES["rep"], job.job_id)
        assert waiting.value.status == 409 and "0 of 1 ESI IDs done" in waiting.value.detail
        kick()
        assert (await finished(jobs, job.job_id)).state == "done"
        _, path = await jobs.result(PARTIES["rep"], job.job_id)
        assert path.exists()


@pytest_twisted.ensureDeferred
async def test_results_are_deleted_after_the_retention(tmp_path: Path) -> None:
    """After the retention by the injected clock the timer deletes the file: 410."""
    async with usage_service(tmp_path, job_retention_days=3) as setup:
        await with_usage(setup, [E_OWN])
        jobs = setup.usage.jobs
        job = await jobs.submit(PARTIES["rep"], body("daily", [E_OWN], DAYS[0], DAYS[-1]))
        job = await finished(jobs, job.job_id)
        assert job.expires_at == job.finished_at + 3 * 86400  # type: ignore[operator]
        _, path = await jobs.result(PARTIES["rep"], job.job_id)

        setup.clock.advance(3 * 86400 - 1)
        assert await jobs.expire() == 0
        assert path.exists() and (await jobs.get(PARTIES["rep"], job.job_id)).state == "done"
        setup.clock.advance(2 + 3600)  # past the retention, and the hourly timer ran
        deadline = time.monotonic() + 10
        while (await jobs.get(PARTIES["rep"], job.job_id)).state != "expired":
            assert time.monotonic() < deadline, "the timer did not expire the job"
            await sleep(0.02)
        assert not path.exists()
        with pytest.raises(JobExpired) as gone:
            await jobs.result(PARTIES["rep"], job.job_id)
        assert gone.value.status == 410

        def params_thd(conn: sa.Connection) -> Any:
            return conn.execute(
                sa.select(usage_jobs.c.params, usage_jobs.c.result_path).where(
                    usage_jobs.c.job_id == job.job_id
                )
            ).one()

        params, result_path = await setup.store.run(params_thd)
        assert "esiids" not in json.loads(params) and result_path == ""
        assert await jobs.expire() == 0


async def left_running(setup: Setup) -> None:
    """The daily job J00000000ABCD of both ESI IDs, half done and running, as a gateway that
    stopped in the middle of it left it."""
    params = {"from": str(DAYS[0]), "to": str(DAYS[-1]), "channel": 4}
    params["esiids"] = [E_OWN, E_OTHER_TDSP]  # type: ignore[assignment]
    row = {
        "job_id": "J00000000ABCD", "party_id": REP_A, "report": "daily",
        "params": json.dumps(params), "state": "running", "esiids": 2, "esiids_done": 1,
        "rows": 3, "created_at": 1.0,
    }  # fmt: skip
    await setup.store.run(lambda conn: conn.execute(usage_jobs.insert(), row))


@pytest_twisted.ensureDeferred
async def test_a_job_interrupted_by_a_restart_runs_again_on_start(tmp_path: Path) -> None:
    """A job left running by a stopped gateway runs again, whole, on start."""
    async with usage_service(tmp_path, start=False) as setup:
        await with_usage(setup, [E_OWN, E_OTHER_TDSP])
        await left_running(setup)
        jobs_dir = setup.config.usage_jobs_dir
        jobs_dir.mkdir(parents=True)
        (jobs_dir / "J00000000ABCD.csv.part").write_text("ESIID,half a line")
        setup.usage.startService()
        job = await finished(setup.usage.jobs, "J00000000ABCD")
        assert (job.state, job.esiids_done, job.rows) == ("done", 2, 6)
        _, path = await setup.usage.jobs.result(PARTIES["rep"], job.job_id)
        assert path.read_bytes().decode() == await synchronous_csv(
            setup, job.spec, [E_OWN, E_OTHER_TDSP]
        )
        assert sorted(p.name for p in jobs_dir.iterdir()) == ["J00000000ABCD.csv"]


@pytest_twisted.ensureDeferred
async def test_a_store_locked_when_the_gateway_starts_delays_jobs_but_loses_none(
    tmp_path: Path,
) -> None:
    """With the store locked by another process as the gateway starts, the job a stopped gateway
    left running is run (whole) once the lock is let go, and so is a job submitted after."""
    async with usage_service(tmp_path, start=False) as setup:
        await with_usage(setup, [E_OWN, E_OTHER_TDSP])
        await left_running(setup)
        lock = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # `hangw usage import` writing, say
            with capture_logs() as logs:
                setup.usage.startService()
                deadline = time.monotonic() + 20
                while not any(e["event"].startswith("usage.job.") for e in logs):
                    assert time.monotonic() < deadline, "the store's failure was never noticed"
                    await sleep(0.05)
        finally:
            lock.close()
        setup.clock.advance(RETRY_S)
        job = await finished(setup.usage.jobs, "J00000000ABCD", timeout=10)
        assert (job.state, job.esiids_done, job.rows) == ("done", 2, 6)
        later = await setup.usage.jobs.submit(
            PARTIES["rep"], body("daily", [E_OWN], DAYS[0], DAYS[-1])
        )
        assert (await finished(setup.usage.jobs, later.job_id, timeout=10)).state == "done"


@pytest_twisted.ensureDeferred
async def test_a_stopping_gateway_interrupts_a_job_and_leaves_no_file(tmp_path: Path) -> None:
    """A stopping gateway interrupts the job at the next chunk and deletes its part file."""
    async with usage_service(tmp_path) as setup:
        await with_usage(setup, [E_OWN, E_OTHER_TDSP])
        spec = ReportSpec("daily", DAYS[0], DAYS[-1])
        stopping = threading.Event()
        stopping.set()
        path = tmp_path / "J000000000001.csv"
        with pytest.raises(JobInterrupted):
            await deferToThread(
                write_report, setup.usage.reader, spec, [E_OWN, E_OTHER_TDSP], path,
                stopping=stopping,
            )  # fmt: skip
        assert list(tmp_path.glob("J000000000001*")) == []
        rows = await deferToThread(
            write_report, setup.usage.reader, spec, [E_OWN, E_OTHER_TDSP], path
        )
        assert rows == 6 and path.exists()


@pytest_twisted.ensureDeferred
async def test_refused_jobs_store_nothing(tmp_path: Path) -> None:
    """Refused jobs (unknown, not entitled, 50,001, out of reach) leave no row and no file."""
    async with usage_service(tmp_path, extra_meters=EXTRA_METERS) as setup:
        jobs = setup.usage.jobs
        rep = PARTIES["rep"]
        unknown = ["10443729999900001", "10443729999900002"]
        with pytest.raises(JobRefused) as refused:
            await jobs.submit(rep, body("daily", [E_OWN, *unknown], DAYS[0], DAYS[-1]))
        assert refused.value.detail == (
            f"2 ESI ID(s) are not in the meter registry: {unknown[0]}, {unknown[1]}"
        )
        with pytest.raises(Forbidden) as forbidden:
            await jobs.submit(rep, body("daily", [*MINE, E_OTHER, *THEIRS], DAYS[0], DAYS[-1]))
        listed = ", ".join([E_OTHER, *THEIRS[:9]])
        assert "of these ESI IDs" in forbidden.value.detail
        assert forbidden.value.detail.endswith(f": {listed} and 3 more")
        assert forbidden.value.extensions["esiids"] == [E_OTHER, *THEIRS]
        many = [f"1{n:016d}" for n in range(50_001)]
        with pytest.raises(InvalidField, match="holds 50001 ESI IDs; a report job takes at most"):
            await jobs.submit(rep, body("daily", many, DAYS[0], DAYS[-1]))
        with pytest.raises(InvalidField, match="listed twice"):
            await jobs.submit(rep, body("daily", [E_OWN, E_OWN], DAYS[0], DAYS[-1]))
        with pytest.raises(InvalidField, match="report must be one of"):
            await jobs.submit(rep, body("hourly", [E_OWN], DAYS[0], DAYS[-1]))
        with pytest.raises(InvalidField, match="unknown field"):
            await jobs.submit(rep, {**body("daily", [E_OWN], DAYS[0], DAYS[-1]), "format": "x"})
        with pytest.raises(Forbidden, match="customers may read daily data from 2025-10-23"):
            await jobs.submit(
                PARTIES["customer"], body("daily", [E_OWN], dt.date(2025, 10, 22), DAYS[-1])
            )

        def count_thd(conn: sa.Connection) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(usage_jobs)).scalar_one()

        assert await setup.store.run(count_thd) == 0
        jobs_dir = setup.config.usage_jobs_dir
        assert not jobs_dir.exists() or not any(jobs_dir.iterdir())


@pytest_twisted.ensureDeferred
async def test_job_reads_never_run_on_the_store_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job and report reads run on the usage reader threads, never on the store's writer."""
    threads: list[str] = []
    for name in ("fetch_thd", "entitlement_thd"):
        real = getattr(reports, name)

        def spy(*args: Any, _real: Any = real) -> Any:
            threads.append(threading.current_thread().name)
            return _real(*args)

        monkeypatch.setattr(reports, name, spy)
    async with usage_service(tmp_path) as setup:
        await with_usage(setup, [E_OWN])
        job = await setup.usage.jobs.submit(
            PARTIES["rep"], body("daily", [E_OWN], DAYS[0], DAYS[-1])
        )
        assert (await finished(setup.usage.jobs, job.job_id)).state == "done"
        await setup.usage.reports.report_json(
            PARTIES["rep"], "daily", {"esiid": E_OWN, "from": str(DAYS[0]), "to": str(DAYS[0])}
        )
    assert len(threads) >= 4
    assert all("hangw-usage-read" in name for name in threads), threads
    assert not any("hangw-store" in name for name in threads)


# ---- over the API ------------------------------------------------------------------------------


def post_with_headers(harness: Harness, name: str, path: str, payload: Any) -> Any:
    """POST over the party's own connection, keeping the answer's headers."""
    connection = harness.caller(name).client._connection
    connection.request(
        "POST",
        path,
        body=json.dumps(payload).encode(),
        headers={"content-type": "application/json", "accept": "application/json"},
    )
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), json.loads(response.read())


@pytest_twisted.ensureDeferred
async def test_jobs_over_the_api(harness: Harness) -> None:
    """Over the API a job is 202 + Location, runs, equals the reports, is 409/410, owner only."""
    today = texas_today()
    first = today - dt.timedelta(days=4)
    last = today - dt.timedelta(days=1)
    esiids = [E_OWN, E_OTHER_TDSP, E_REMOVED]
    rng = np.random.default_rng(5)
    generated = [generate(rng, e, d, missing=1) for e in esiids for d in days_from(first, 4)]
    await harness.gateway.store.run(store_days_thd, generated)

    def jobs_thd(conn: sa.Connection) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(usage_jobs)).scalar_one()

    status, headers, job = await deferToThread(
        post_with_headers, harness, "demo-rep-a", "/v1/usage/jobs",
        body("daily", esiids, first, last),
    )  # fmt: skip
    assert status == 202, job
    assert JOB_ID.fullmatch(job["id"]) and job["state"] == "queued"
    assert headers["Location"] == f"/v1/usage/jobs/{job['id']}" == job["links"]["self"]
    rep = harness.caller("demo-rep-a")
    deadline = time.monotonic() + 20
    while job["state"] != "done" and time.monotonic() < deadline:
        await sleep(0.05)
        status, job = await rep.call("GET", f"/v1/usage/jobs/{job['id']}")
        assert status == 200
    assert (job["state"], job["esiids"], job["esiids_done"], job["rows"]) == ("done", 3, 3, 12)
    assert job["report"] == "daily" and job["from"] == str(first) and job["to"] == str(last)
    assert job["expires_at"] is not None and job["links"]["result"].endswith("/result")

    result = await download(harness, "demo-rep-a", job["links"]["result"])
    expected = ",".join(DAILY_COLUMNS) + "\r\n"
    for esiid in esiids:
        single = await download(harness, "demo-rep-a", path_of("daily", esiid, first, last))
        expected += single.split("\r\n", 1)[1]
    assert result == expected
    assert [row[4] for row in csv.reader(io.StringIO(result))][1:] == [
        kwh(g.total) for g in generated
    ]

    other = harness.caller("demo-rep-b")
    for path in (job["links"]["self"], job["links"]["result"]):
        status, problem = await other.call("GET", path)
        assert status == 404 and job["id"] in problem["detail"]

    running = {
        "job_id": "J0000000000AA", "party_id": REP_A, "report": "daily",
        "params": json.dumps({"from": str(first), "to": str(last), "channel": 4}),
        "state": "running", "esiids": 5, "esiids_done": 2, "rows": 8, "created_at": 1.0,
    }  # fmt: skip
    await harness.gateway.store.run(lambda conn: conn.execute(usage_jobs.insert(), running))
    status, problem = await rep.call("GET", "/v1/usage/jobs/J0000000000AA/result")
    assert status == 409 and "2 of 5 ESI IDs done" in problem["detail"]

    await harness.gateway.store.run(
        lambda conn: conn.execute(
            usage_jobs.update().where(usage_jobs.c.job_id == job["id"]).values(expires_at=0.0)
        )
    )
    assert await harness.gateway.usage_reports.jobs.expire() == 1
    status, problem = await rep.call("GET", job["links"]["result"])
    assert status == 410 and problem["type"].endswith("/usage-job-expired")
    assert (await rep.call("GET", job["links"]["self"]))[1]["state"] == "expired"

    before = await harness.gateway.store.run(jobs_thd)
    many = [f"1{n:016d}" for n in range(50_001)]
    status, problem = await rep.call("POST", "/v1/usage/jobs", body("daily", many, first, last))
    assert status == 422 and problem["field"] == "esiids" and "50001" in problem["detail"]
    status, problem = await rep.call(
        "POST", "/v1/usage/jobs", body("daily", [E_OWN, E_OTHER], first, last)
    )
    assert status == 403 and problem["esiids"] == [E_OTHER]
    assert await harness.gateway.store.run(jobs_thd) == before


@pytest_twisted.ensureDeferred
async def test_a_revoked_grant_withholds_the_result_of_a_job_made_under_it(
    harness: Harness,
) -> None:
    """An HSP's job result is 403 once the customer revoked the grant it was submitted under."""
    today = texas_today()
    first, last = today - dt.timedelta(days=3), today - dt.timedelta(days=1)
    rng = np.random.default_rng(7)
    await harness.gateway.store.run(
        store_days_thd, [generate(rng, E_OWN, d) for d in days_from(first, 3)]
    )
    customer, hsp = harness.caller("demo-customer"), harness.caller("demo-hsp")
    status, _ = await customer.call("POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP})
    assert status == 201
    status, job = await hsp.call("POST", "/v1/usage/jobs", body("daily", [E_OWN], first, last))
    assert status == 202, job
    deadline = time.monotonic() + 20
    while job["state"] != "done" and time.monotonic() < deadline:
        await sleep(0.05)
        job = (await hsp.call("GET", job["links"]["self"]))[1]
    assert job["state"] == "done"
    assert (await download(harness, "demo-hsp", job["links"]["result"])).count("\r\n") == 4

    status, _ = await customer.call("DELETE", f"/v1/esiids/{E_OWN}/grants/{HSP}")
    assert status == 200
    status, problem = await hsp.call("GET", job["links"]["result"])
    assert status == 403, problem
    assert problem["esiids"] == [E_OWN] and job["id"] in problem["detail"]


class _Racing:
    """A connection on which another gateway claims every queued job right after each read."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def execute(self, statement: Any) -> Any:
        result = self.conn.execute(statement)
        if isinstance(statement, sa.Select):
            rows = result.freeze()
            self.conn.execute(
                usage_jobs.update().where(usage_jobs.c.state == "queued").values(state="running")
            )
            return rows()
        return result


def test_a_job_another_gateway_claimed_meanwhile_is_not_run_twice(tmp_path: Path) -> None:
    """A job read as queued but taken by another gateway before the update is not claimed."""
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            usage_jobs.insert().values(
                job_id="J000000000001",
                party_id=REP_A,
                report="daily",
                params="{}",
                state="queued",
                esiids=1,
                esiids_done=0,
                rows=0,
                created_at=1.0,
            )
        )
        assert _claim_thd(_Racing(conn)) is None  # type: ignore[arg-type]
        assert conn.execute(sa.select(usage_jobs.c.state)).scalar_one() == "running"
    engine.dispose()
