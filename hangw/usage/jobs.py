"""Bulk usage report jobs: one report for up to ``usage.max_job_esiids`` ESI IDs, as a CSV file.

A job is checked whole before it is accepted: every ESI ID must be in the meter registry and one
the party may read (hangw.usage.reports), and the days within the role's reach; a refusal lists
the first offenders and stores nothing. An accepted job (202, id ``J`` + 12 hex digits) waits in
``usage_jobs`` and runs in the background, one job at a time, in chunks of ESI IDs: the chunks
are read on connections and threads of their own (two ahead of the one being written), never on
the store's writer, and each chunk's progress (ESI IDs done, rows written) goes to the job's row
through the store. The CSV is written under ``usage.jobs_dir`` as ``<id>.csv.part`` and renamed
to ``<id>.csv`` once complete. It is kept ``usage.job_retention_days``; then a timer deletes the
file and marks the job expired (the job's list of ESI IDs is dropped with it).

A job that was running when hangwd stopped runs again, from the start, when it starts. When the
store fails the jobs' work (a database down or locked, at start or while a job is taken or its
end recorded), it is tried again every ``RETRY_S`` seconds until it succeeds: no job is left
queued or running for want of a look. Only the party that submitted a job sees it, and its result
only while that party may still read every ESI ID of the job (a revoked grant, a new customer or
REP of record withholds it: 403).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from hangw import affinity
from hangw.config import Config, UsageConfig
from hangw.domain import Party
from hangw.problems import Conflict, Forbidden, InvalidField, NotFound, Problem
from hangw.store.db import Store
from hangw.store.model import usage_jobs
from hangw.usage import reports
from hangw.usage.reports import Reader, ReportService, ReportSpec

log = structlog.get_logger(__name__)

#: Seconds between looks for expired results.
EXPIRY_CHECK_S = 3600.0
#: Seconds after which the jobs' work is tried again when the store failed it.
RETRY_S = 2.0
#: Chunks read ahead of the one being written, and the threads reading them.
READ_AHEAD = 2
#: ESI IDs a refusal lists in its detail (its ``esiids`` member lists up to 100).
MAX_LISTED = 10
_FIELDS = {"report", "esiids", "from", "to", "channel"}
#: The ESI IDs of a job, as JSON, take at most this many bytes each (64 characters, quotes,
#: comma and a space).
_BYTES_PER_ESIID = 68


class JobRefused(Problem):
    status, slug, title = 422, "usage-job-refused", "Report job refused"


class JobNotReady(Problem):
    status, slug, title = 409, "usage-job-not-ready", "Report job has no result yet"


class JobExpired(Problem):
    status, slug, title = 410, "usage-job-expired", "Report job result deleted"


class JobInterrupted(Exception):
    """The gateway is stopping; the job runs again on the next start."""


def new_job_id() -> str:
    return "J" + secrets.token_hex(6).upper()


@dataclass(frozen=True)
class Job:
    job_id: str
    party_id: str
    spec: ReportSpec
    state: str  # queued | running | done | failed | expired
    esiids: int
    esiids_done: int
    rows: int
    error: str
    result_path: str
    created_at: float
    finished_at: float | None
    expires_at: float | None

    def json(self) -> dict[str, Any]:
        base = f"/v1/usage/jobs/{self.job_id}"
        return {
            "id": self.job_id,
            "state": self.state,
            **self.spec.json(),
            "esiids": self.esiids,
            "esiids_done": self.esiids_done,
            "rows": self.rows,
            "error": self.error or None,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
            "expires_at": _iso(self.expires_at),
            "links": {"self": base, "result": f"{base}/result"},
        }


def _iso(ts: float | None) -> str | None:
    """A POSIX time as ISO-8601 UTC with milliseconds, as the other API answers have them."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _spec_of(report: str, params: str) -> ReportSpec:
    values = json.loads(params)
    return reports.make_spec(report, values["from"], values["to"], values["channel"])


def _listed(esiids: Sequence[str]) -> str:
    more = f" and {len(esiids) - MAX_LISTED} more" if len(esiids) > MAX_LISTED else ""
    return ", ".join(esiids[:MAX_LISTED]) + more


# ---- writing a result ----------------------------------------------------------------------


def write_report(
    reader: Reader,
    spec: ReportSpec,
    esiids: Sequence[str],
    path: Path,
    *,
    progress: Callable[[int, int], None] = lambda done, rows: None,
    stopping: threading.Event | None = None,
) -> int:
    """Write the CSV of ``spec`` for ``esiids`` to ``path``; returns the rows written.

    Chunks are read ``READ_AHEAD`` at a time on threads of their own while this thread writes
    the one before; ``progress(esiids_done, rows)`` follows each chunk. The file appears at
    ``path`` only when complete (it is written beside it as ``.part``); when ``stopping`` is
    set, the part is deleted and JobInterrupted raised.
    """
    part = path.with_name(path.name + ".part")
    size = reports.chunk_size(spec)
    chunks = [esiids[start : start + size] for start in range(0, len(esiids), size)]
    done = rows = 0
    pending: deque[tuple[int, Future[reports.Frame]]] = deque()
    try:
        with (
            ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="hangw-usage-read") as fetchers,
            open(part, "w", encoding="utf-8", newline="") as out,
        ):

            def fetch(chunk: Sequence[str]) -> None:
                read = fetchers.submit(reader.read, reports.fetch_thd, spec, chunk)
                pending.append((len(chunk), read))

            try:
                out.write(reports.csv_header(spec))
                for chunk in chunks[:READ_AHEAD]:
                    fetch(chunk)
                for index in range(len(chunks)):
                    if index + READ_AHEAD < len(chunks):
                        fetch(chunks[index + READ_AHEAD])
                    count, read = pending.popleft()
                    frame = read.result()
                    if stopping is not None and stopping.is_set():
                        raise JobInterrupted()
                    out.write(reports.csv_text(frame))
                    done += count
                    rows += reports.csv_rows(frame)
                    progress(done, rows)
            finally:
                for _, waiting in pending:
                    waiting.cancel()
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return rows


# ---- the job table -------------------------------------------------------------------------

_COLUMNS = [column for column in usage_jobs.c if column.name != "params"]


def _job(row: Any, spec: ReportSpec) -> Job:
    return Job(
        job_id=row.job_id,
        party_id=row.party_id,
        spec=spec,
        state=row.state,
        esiids=row.esiids,
        esiids_done=row.esiids_done,
        rows=row.rows,
        error=row.error,
        result_path=row.result_path,
        created_at=row.created_at,
        finished_at=row.finished_at,
        expires_at=row.expires_at,
    )


def _load_thd(conn: sa.Connection, job_id: str, with_params: bool) -> tuple[Any, str | None]:
    row = conn.execute(sa.select(*_COLUMNS).where(usage_jobs.c.job_id == job_id)).first()
    if row is None or not with_params:
        return row, None
    params = conn.execute(
        sa.select(usage_jobs.c.params).where(usage_jobs.c.job_id == job_id)
    ).scalar_one()
    return row, params


def _entitlement_thd(conn: sa.Connection, job_id: str, party: Party) -> tuple[list[str], list[str]]:
    """reports.entitlement_thd of the job's ESI IDs: those no longer known, and those ``party``
    may no longer read."""
    params = conn.execute(
        sa.select(usage_jobs.c.params).where(usage_jobs.c.job_id == job_id)
    ).scalar_one_or_none()
    esiids = [] if params is None else json.loads(params).get("esiids", [])
    return reports.entitlement_thd(conn, party, esiids)


def _claim_thd(conn: sa.Connection) -> tuple[Any, str] | None:
    """The oldest queued job, now running (from the start), with its parameters.

    The job is taken only if it is still queued when it is updated: another gateway on the same
    database may have taken it since it was read, and then the next one is tried.
    """
    while True:
        row = conn.execute(
            sa.select(usage_jobs)
            .where(usage_jobs.c.state == "queued")
            .order_by(usage_jobs.c.created_at, usage_jobs.c.job_id)
            .limit(1)
        ).first()
        if row is None:
            return None
        taken = conn.execute(
            usage_jobs.update()
            .where(usage_jobs.c.job_id == row.job_id, usage_jobs.c.state == "queued")
            .values(state="running", esiids_done=0, rows=0)
        )
        if taken.rowcount == 1:
            return row, row.params


def _progress_thd(conn: sa.Connection, job_id: str, done: int, rows: int) -> None:
    conn.execute(
        usage_jobs.update()
        .where(usage_jobs.c.job_id == job_id, usage_jobs.c.state == "running")
        .values(esiids_done=done, rows=rows)
    )


def _finish_thd(conn: sa.Connection, job_id: str, values: dict[str, Any]) -> None:
    conn.execute(
        usage_jobs.update()
        .where(usage_jobs.c.job_id == job_id, usage_jobs.c.state == "running")
        .values(**values)
    )


def _requeue_thd(conn: sa.Connection) -> int:
    """Jobs a stopped gateway left running wait to run again."""
    result = conn.execute(
        usage_jobs.update().where(usage_jobs.c.state == "running").values(state="queued")
    )
    return result.rowcount


def _expire_thd(conn: sa.Connection, now: float) -> list[tuple[str, str]]:
    """Mark finished jobs past their retention expired; their ``(job_id, result_path)``."""
    rows = conn.execute(
        sa.select(
            usage_jobs.c.job_id, usage_jobs.c.report, usage_jobs.c.params, usage_jobs.c.result_path
        ).where(usage_jobs.c.state.in_(["done", "failed"]), usage_jobs.c.expires_at <= now)
    ).all()
    for row in rows:
        values = json.loads(row.params)
        values.pop("esiids", None)
        conn.execute(
            usage_jobs.update()
            .where(usage_jobs.c.job_id == row.job_id)
            .values(state="expired", result_path="", params=json.dumps(values))
        )
    return [(row.job_id, row.result_path) for row in rows]


# ---- the service ---------------------------------------------------------------------------


class JobService:
    """Accepts report jobs, runs them one at a time, answers their state, expires results."""

    def __init__(
        self,
        store: Store,
        reader: Reader,
        reactor: Any,
        clock: IReactorTime,
        config: UsageConfig,
        jobs_dir: Path,
    ) -> None:
        self.store = store
        self.reader = reader
        self.jobs_dir = jobs_dir
        self._reactor = reactor
        self._clock = clock
        self._config = config
        self._pool = ThreadPool(1, 1, name="hangw-usage-jobs")
        self._specs: dict[str, ReportSpec] = {}
        self._stopping = threading.Event()
        self._started = False
        self._wanted = False
        self._loop: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        #: Jobs left running by an earlier run of the gateway were queued again.
        self._requeued = False
        #: Ended jobs whose end is not recorded yet (job_id -> the row's new values).
        self._ends: dict[str, dict[str, Any]] = {}
        self._progress_due: tuple[str, int, int] | None = None
        self._progress_busy = False

    @property
    def max_body_bytes(self) -> int:
        """The largest job request body: the most ESI IDs a job takes, and room for the rest."""
        return self._config.max_job_esiids * _BYTES_PER_ESIID + 65536

    # -- accepting -----------------------------------------------------------------------------

    def _esiids(self, value: object) -> list[str]:
        most = self._config.max_job_esiids
        if not isinstance(value, list) or not value:
            raise InvalidField("esiids", "esiids must be a non-empty list of ESI IDs")
        if len(value) > most:
            raise InvalidField(
                "esiids", f"esiids holds {len(value)} ESI IDs; a report job takes at most {most}"
            )
        seen: set[str] = set()
        for index, esiid in enumerate(value):
            reports.check_esiid(esiid, f"esiids[{index}]")
            if esiid in seen:
                raise InvalidField(f"esiids[{index}]", f"esiids[{index}]: {esiid} is listed twice")
            seen.add(esiid)
        return value

    async def submit(
        self,
        party: Party,
        body: dict[str, Any],
        also: Callable[[sa.Connection, Job], None] | None = None,
    ) -> Job:
        """Check a job whole and queue it (POST /v1/usage/jobs); nothing is stored if refused.

        ``also(conn, job)`` runs last in the transaction that queues the job (the API keeps an
        Idempotency-Key's answer there).
        """
        unknown_fields = set(body) - _FIELDS
        if unknown_fields:
            names = sorted(unknown_fields)
            raise InvalidField(names[0], f"unknown field(s): {', '.join(names)}")
        report = body.get("report")
        if not isinstance(report, str) or report not in reports.REPORTS:
            raise InvalidField("report", f"report must be one of {', '.join(reports.REPORTS)}")
        esiids = self._esiids(body.get("esiids"))
        spec = reports.make_spec(report, body.get("from"), body.get("to"), body.get("channel"))
        reports.check_reach(party, spec, reports.today_of(self._clock))
        unknown, refused = await self.reader.run(reports.entitlement_thd, party, esiids)
        if unknown:
            raise JobRefused(
                f"{len(unknown)} ESI ID(s) are not in the meter registry: {_listed(unknown)}",
                esiids=unknown[:100],
            )
        if refused:
            raise Forbidden(
                f"you may not read the usage of {len(refused)} of these ESI IDs "
                f"({party.role.value} {party.party_id} has no HAN access to them): "
                f"{_listed(refused)}",
                esiids=refused[:100],
            )
        now = self._clock.seconds()
        job_id = new_job_id()
        params = json.dumps(
            {"from": spec.first.isoformat(), "to": spec.last.isoformat(), "channel": spec.channel}
            | {"esiids": esiids},
            separators=(",", ":"),
        )
        values = {
            "job_id": job_id,
            "party_id": party.party_id,
            "report": spec.report,
            "params": params,
            "state": "queued",
            "esiids": len(esiids),
            "esiids_done": 0,
            "rows": 0,
            "error": "",
            "result_path": "",
            "created_at": now,
        }
        job = Job(
            job_id, party.party_id, spec, "queued", len(esiids), 0, 0, "", "", now, None, None
        )

        def thd(conn: sa.Connection) -> None:
            conn.execute(usage_jobs.insert(), values)
            if also is not None:
                also(conn, job)

        await self.store.run(thd)
        self._specs[job_id] = spec
        log.info(
            "usage.job.accepted",
            job_id=job_id,
            report=spec.report,
            esiids=len(esiids),
            party=party.party_id,
        )
        self.kick()
        return job

    # -- answering -----------------------------------------------------------------------------

    async def get(self, party: Party, job_id: str) -> Job:
        """The party's own job (else NotFound: another party's jobs are not even named)."""
        cached = self._specs.get(job_id)
        row, params = await self.store.run(_load_thd, job_id, cached is None)
        if row is None or row.party_id != party.party_id:
            raise NotFound(f"you have no report job {job_id}")
        if cached is None:
            assert params is not None
            cached = _spec_of(row.report, params)
            if len(self._specs) > 10_000:
                self._specs.clear()
            self._specs[job_id] = cached
        return _job(row, cached)

    async def result(self, party: Party, job_id: str) -> tuple[Job, Path]:
        """The party's finished job and its CSV file; 409 before it is done, 410 once expired,
        403 once the party may no longer read one of its ESI IDs."""
        job = await self.get(party, job_id)
        if job.state == "expired":
            raise JobExpired(
                f"the result of report job {job_id} was deleted at {_iso(job.expires_at)} "
                f"(results are kept {self._config.job_retention_days} days); submit it again"
            )
        if job.state == "failed":
            raise Conflict(f"report job {job_id} failed: {job.error}; submit it again")
        if job.state != "done":
            raise JobNotReady(
                f"report job {job_id} is {job.state}: {job.esiids_done} of {job.esiids} ESI IDs "
                "done; ask again when its state is done",
                state=job.state,
            )
        # read when the job was submitted, but handed out only while the party may still read
        # them: a grant revoked, a new customer or REP of record since withholds the result
        unknown, refused = await self.reader.run(_entitlement_thd, job_id, party)
        lost = refused + unknown
        if lost:
            raise Forbidden(
                f"you may no longer read the usage of {len(lost)} of the ESI IDs of report job "
                f"{job_id} ({party.role.value} {party.party_id} has no HAN access to them any "
                f"more): {_listed(lost)}; its result is not handed out",
                esiids=lost[:100],
            )
        path = Path(job.result_path)
        if not path.exists():
            raise JobExpired(f"the result of report job {job_id} is no longer on the gateway")
        return job, path

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Run again what a stopped gateway left unfinished, then whatever is queued."""
        self._stopping.clear()
        self._pool.start()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for part in self.jobs_dir.glob("*.csv.part"):
            part.unlink(missing_ok=True)
        self._requeued = False  # the loop's first step, tried again until the store takes it
        self._started = True
        self.kick()

    def stop(self) -> Deferred[None]:
        """Interrupt the running job (it runs again on the next start); fires once it let go."""
        self._started = False
        self._stopping.set()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        running = self._loop or succeed(None)

        def stopped(_: object) -> None:
            self._pool.stop()

        return running.addBoth(stopped)

    def kick(self) -> None:
        """Make sure queued jobs are being worked through."""
        self._wanted = True
        if self._loop is None and self._started:
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._retry = None
            self._loop = Deferred.fromCoroutine(self._work())
            self._loop.addErrback(self._loop_failed)
            self._loop.addBoth(self._loop_ended)

    def _loop_failed(self, failure: Failure) -> None:
        """The store failed the jobs' work: look again in ``RETRY_S`` seconds."""
        log.error(
            "usage.job.loop_failed",
            error=(failure.getErrorMessage().splitlines() or [""])[0][:300],
            error_type=getattr(failure.type, "__name__", "?"),
            retry_in_s=RETRY_S if self._started else None,
        )
        if self._started:
            self._retry = self._clock.callLater(RETRY_S, self.kick)

    def _loop_ended(self, _: object) -> None:
        self._loop = None

    async def _work(self) -> None:
        if not self._requeued:
            again = await self.store.run(_requeue_thd)
            self._requeued = True
            if again:
                log.info("usage.job.resumed", jobs=again)
        while self._wanted and not self._stopping.is_set():
            self._wanted = False
            while not self._stopping.is_set():
                await self._record_ends()
                claimed = await self.store.run(_claim_thd)
                if claimed is None:
                    break
                await self._run(*claimed)

    async def _run(self, row: Any, params: str) -> None:
        job_id = row.job_id
        path = self.jobs_dir / f"{job_id}.csv"
        began = self._clock.seconds()
        try:
            rows = await deferToThreadPool(
                self._reactor, self._pool, self._produce, job_id, row.report, params, path
            )
        except JobInterrupted:
            log.info("usage.job.interrupted", job_id=job_id)
            return
        except Exception as error:
            now = self._clock.seconds()
            log.error("usage.job.failed", job_id=job_id, error=str(error)[:300])
            self._ends[job_id] = {
                "state": "failed",
                "error": f"{type(error).__name__}: {str(error)[:500]}",
                "finished_at": now,
                "expires_at": now + self._retention_s,
            }
            await self._record_ends()
            return
        now = self._clock.seconds()
        self._ends[job_id] = {
            "state": "done",
            "esiids_done": row.esiids,
            "rows": rows,
            "result_path": str(path),
            "finished_at": now,
            "expires_at": now + self._retention_s,
        }
        await self._record_ends()
        log.info("usage.job.done", job_id=job_id, rows=rows, seconds=round(now - began, 3))

    async def _record_ends(self) -> None:
        """Record the ends of the jobs that ended (one the store failed to take stays running
        in the store, and its end here, until this succeeds)."""
        for job_id, values in list(self._ends.items()):
            await self.store.run(_finish_thd, job_id, values)
            del self._ends[job_id]

    @property
    def _retention_s(self) -> float:
        return self._config.job_retention_days * 86400.0

    def _produce(self, job_id: str, report: str, params: str, path: Path) -> int:
        """On the job thread: write the job's CSV, reporting progress to the reactor."""
        # a bulk report reads and sums for seconds, mostly in SQLite and numpy: on every CPU,
        # not on the one the daemon keeps its reactor on (its read-ahead threads inherit this)
        affinity.release()
        spec = _spec_of(report, params)
        esiids = json.loads(params)["esiids"]

        def progress(done: int, rows: int) -> None:
            self._reactor.callFromThread(self._progress, job_id, done, rows)

        return write_report(
            self.reader, spec, esiids, path, progress=progress, stopping=self._stopping
        )

    def _progress(self, job_id: str, done: int, rows: int) -> None:
        """Record a job's progress; while one update is on its way, only the newest waits."""
        self._progress_due = (job_id, done, rows)
        if not self._progress_busy:
            self._write_progress()

    def _write_progress(self) -> None:
        due, self._progress_due = self._progress_due, None
        if due is None:
            return
        self._progress_busy = True

        def written(result: object) -> None:
            self._progress_busy = False
            if isinstance(result, Failure):
                log.warning("usage.job.progress_failed", error=result.getErrorMessage())
            self._write_progress()

        self.store.run(_progress_thd, *due).addBoth(written)

    # -- expiring ------------------------------------------------------------------------------

    async def expire(self) -> int:
        """Delete the results kept past their retention; returns how many jobs expired."""
        expired = await self.store.run(_expire_thd, self._clock.seconds())
        for job_id, result_path in expired:
            self._specs.pop(job_id, None)
            if result_path:
                try:
                    Path(result_path).unlink(missing_ok=True)
                except OSError as error:
                    log.error("usage.job.delete_failed", job_id=job_id, error=str(error))
        if expired:
            log.info("usage.job.expired", jobs=len(expired))
        return len(expired)

    def expire_now(self) -> Deferred[Any]:
        """``expire`` for the timer: a failure is logged and the next period tries again."""
        d = Deferred.fromCoroutine(self.expire())
        d.addErrback(
            lambda failure: log.error("usage.job.expiry_failed", error=failure.getErrorMessage())
        )
        d.addBoth(lambda _: self.kick())
        return d


class UsageReports(MultiService):
    """Usage reports and bulk report jobs: the reader threads, both services, the expiry timer.

    ``reports`` answers one ESI ID at a time, ``jobs`` the bulk jobs (hangw.api.usage_routes).
    """

    name = "usage-reports"

    def __init__(self, store: Store, config: Config, reactor: Any, clock: IReactorTime) -> None:
        super().__init__()
        self.reader = Reader(store.engine, reactor)
        self.reports = ReportService(self.reader, clock)
        self.jobs = JobService(
            store, self.reader, reactor, clock, config.usage, config.usage_jobs_dir
        )
        expiry = TimerService(EXPIRY_CHECK_S, self.jobs.expire_now)
        expiry.clock = clock
        expiry.setServiceParent(self)

    def startService(self) -> None:
        self.reader.start()
        Deferred.fromCoroutine(self.jobs.start()).addErrback(
            lambda failure: log.error("usage.job.start_failed", error=failure.getErrorMessage())
        )
        super().startService()

    def stopService(self) -> Deferred[Any]:
        timers = super().stopService()
        stopping = self.jobs.stop()
        stopping.addBoth(lambda _: self.reader.stop())
        return stopping.addBoth(lambda _: timers)
