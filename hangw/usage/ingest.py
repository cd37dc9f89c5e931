"""Loading LSE deliveries into the usage store, one delivery per transaction.

A delivery (a .lse file, a zip of them, either PGP-encrypted) is opened (``delivery``), its LSE
texts are cut at record boundaries and parsed on worker processes (``lse.parse``), and the rows
go through the DB-API ``executemany`` into a staging table while the workers parse on. One
statement then merges the staging table into ``usage_days``: an ESI ID-day-channel the store
does not have is inserted, one it has in an older version (creation timestamp, then transaction
id) is replaced, one it has in the same or a newer version is left alone. A delivery for a TDSP
loads only that TDSP's meters (an ESI ID not in the meter registry: a day no other TDSP
delivered); the others are rejected before the merge. The file's outcome
(records loaded, replaced, unchanged, rejected, each rejection's line and reason) is written in
the same transaction, so a crash leaves the store as it was before the delivery and importing it
again gives what one clean import gives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from hangw import affinity
from hangw.store.model import usage_files, usage_rejections
from hangw.usage import lse
from hangw.usage.days import MARKET_TZ, date_of, day_of
from hangw.usage.vee import Flag

#: Rejections kept in a file's outcome (the count is always exact).
MAX_REJECTIONS_KEPT = 10_000
#: Texts shorter than this are parsed on the calling thread: a worker costs more than it saves.
_PARALLEL_FROM = 1 << 20

#: How far ahead of now a record's creation timestamp may be.
CREATED_AHEAD_S = 86400

#: Called with (bytes of LSE text parsed so far, bytes in all) as a delivery is loaded.
Progress = Callable[[int, int], None]


@dataclass
class FileOutcome:
    """What became of one delivered file."""

    name: str
    state: str  # loaded | rejected | duplicate
    reason: str = ""
    file_id: int | None = None
    records: int = 0
    loaded: int = 0
    replaced: int = 0
    unchanged: int = 0
    rejected: int = 0
    flagged: int = 0
    seconds: float = 0.0
    rejections: list[lse.Rejection] = field(default_factory=list)

    def summary(self) -> str:
        if self.state == "rejected":
            return f"{self.name}: rejected: {self.reason}"
        if self.state == "duplicate":
            return f"{self.name}: {self.reason}"
        return (
            f"{self.name}: {self.records} records: {self.loaded} loaded, {self.replaced} replaced, "
            f"{self.unchanged} unchanged (the store had them or newer), {self.rejected} rejected, "
            f"{self.flagged} stored with VEE flags ({self.seconds:.1f} s)"
        )


_COLUMNS = lse.ROW_COLUMNS
_STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_staging ("
    "esiid VARCHAR(64) NOT NULL, day INTEGER NOT NULL, channel SMALLINT NOT NULL, "
    "tdsp_duns VARCHAR(16) NOT NULL, start_utc BIGINT NOT NULL, intervals SMALLINT NOT NULL, "
    "wh {blob} NOT NULL, missing {blob}, estimated {blob}, total_wh BIGINT NOT NULL, "
    "missing_count SMALLINT NOT NULL, estimated_count SMALLINT NOT NULL, flags INTEGER NOT NULL, "
    "version VARCHAR(96) NOT NULL, line INTEGER NOT NULL)"
)
_STORED = [c for c in _COLUMNS if c != "line"]
_MERGE = (
    f"INSERT INTO usage_days ({', '.join(_STORED)}, file_id) "
    f"SELECT {', '.join(_STORED)}, {{file_id}} FROM usage_staging WHERE true "
    "ON CONFLICT (esiid, day, channel) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STORED[3:])
    + ", file_id = excluded.file_id WHERE usage_days.version < excluded.version"
)
_COUNT = (
    "SELECT count(*), count(u.esiid), "
    "coalesce(sum(CASE WHEN u.version < s.version THEN 1 ELSE 0 END), 0) "
    "FROM usage_staging s LEFT JOIN usage_days u "
    "ON u.esiid = s.esiid AND u.day = s.day AND u.channel = s.channel"
)


def placeholder(dialect: sa.Dialect) -> str:
    """The DB-API driver's mark for a bound value (``?`` for sqlite3, ``%s`` for psycopg)."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def _placeholders(dialect: sa.Dialect, count: int) -> str:
    return ", ".join([placeholder(dialect)] * count)


class Ingest:
    """Loads deliveries into the store with a pool of parsing processes (created on first use)."""

    def __init__(
        self,
        vee: lse.VeeSettings | None = None,
        *,
        sum_tolerance_wh: int = 10,
        decrypt: Callable[[bytes], bytes] | None = None,
        max_unpacked_bytes: int = 4 << 30,
        workers: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vee = vee or lse.VeeSettings()
        self.sum_tolerance_wh = sum_tolerance_wh
        self.decrypt = decrypt
        self.max_unpacked_bytes = max_unpacked_bytes
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self._clock = clock
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parsing (no database) -------------------------------------------------------------------

    def open(self, name: str, data: bytes) -> list[tuple[str, bytes]]:
        """The LSE files of a delivery ``(member name, bytes)``; raises DeliveryRejected."""
        from hangw.usage.delivery import open_delivery

        members = open_delivery(
            name, data, decrypt=self.decrypt, max_unpacked_bytes=self.max_unpacked_bytes
        )
        return [(m.name, m.data.removeprefix(b"\xef\xbb\xbf")) for m in members]

    def parse(
        self,
        texts: Sequence[tuple[str, bytes]],
        tdsp_duns: str | None,
        progress: Progress | None = None,
    ) -> Iterator[tuple[str, lse.Parsed, int]]:
        """Parse the texts piece by piece, in order, on the worker processes when they are big."""
        return self.start_parsing(texts, tdsp_duns).results(progress)

    def start_parsing(self, texts: Sequence[tuple[str, bytes]], tdsp_duns: str | None) -> Parsing:
        """Hand big files to the workers now (their results are taken later, in order)."""
        total = sum(len(data) for _, data in texts)
        parsing = Parsing(total, [], tdsp_duns, self.vee, self.latest_created())
        if total < _PARALLEL_FROM or self.workers <= 1:
            parsing.pieces = [[name, data, None] for name, data in texts]
        else:
            parsing.pieces = [
                [name, piece, None]
                for name, data in texts
                for piece in lse.split_records(data, max(4, 2 * self.workers))
            ]
            parsing.submit = self._submit
            self._submit(parsing, 0)
        return parsing

    def _submit(self, parsing: Parsing, start: int) -> None:
        """Hand the pieces of ``parsing`` from ``start`` on to the workers.

        A pool with a dead worker (killed by the OOM killer, say) takes no more work: it is
        replaced once, and the pieces go to the new one.
        """
        for attempt in (1, 2):
            pool = self._workers()
            try:
                for piece in parsing.pieces[start:]:
                    piece[2] = pool.submit(
                        lse.parse_piece,
                        piece[1],
                        parsing.tdsp_duns,
                        parsing.vee,
                        parsing.latest_created,
                    )
            except BrokenProcessPool:
                self._discard(pool)
                if attempt == 2:
                    raise
            else:
                return

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget ``pool`` (broken) so that the next piece starts a new one."""
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def latest_created(self) -> str:
        """The latest creation timestamp believed: a day after now, in local time (a TDSP's
        clock may run a little ahead; one years ahead would outrank every later correction)."""
        later = dt.datetime.fromtimestamp(self._clock() + CREATED_AHEAD_S, MARKET_TZ)
        return later.strftime("%Y%m%d%H%M%S")

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the daemon runs threads, and a forked child would inherit their locks;
            # the workers parse on every CPU, not only on the one the daemon keeps to
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=affinity.release,
                initargs=(0, affinity.unpinned()),
            )
        return self._pool

    # -- loading ---------------------------------------------------------------------------------

    def import_bytes(
        self,
        engine: sa.Engine,
        name: str,
        data: bytes,
        *,
        source: str,
        tdsp_duns: str | None = None,
        progress: Progress | None = None,
    ) -> FileOutcome:
        """Open, parse and load one delivery in one transaction of its own."""
        prepared = self.prepare(engine, name, data, tdsp_duns=tdsp_duns)
        return self.finish(engine, prepared, source=source, progress=progress)

    def import_many(
        self,
        engine: sa.Engine,
        deliveries: Iterable[tuple[str, bytes]],
        *,
        source: str,
        tdsp_duns: str | None = None,
        progress: Callable[[str], Progress | None] | None = None,
    ) -> Iterator[FileOutcome]:
        """Import deliveries one after the other, each in its own transaction.

        The next delivery is opened and handed to the workers before the current one is
        written, so the workers parse while the store writes.
        """
        current: Prepared | None = None
        for name, data in deliveries:
            following = self.prepare(engine, name, data, tdsp_duns=tdsp_duns)
            if current is not None:
                yield self.finish(
                    engine, current, source=source, progress=progress and progress(current.name)
                )
            current = following
        if current is not None:
            yield self.finish(
                engine, current, source=source, progress=progress and progress(current.name)
            )

    def prepare(
        self, engine: sa.Engine, name: str, data: bytes, *, tdsp_duns: str | None
    ) -> Prepared:
        """Open a delivery and start parsing it (or note why it cannot be loaded)."""
        from hangw.usage.delivery import DeliveryRejected

        prepared = Prepared(name, hashlib.sha256(data).hexdigest(), tdsp_duns, time.perf_counter())
        with engine.connect() as conn:
            earlier = conn.execute(
                sa.select(usage_files.c.name)
                .where(usage_files.c.sha256 == prepared.sha256, usage_files.c.state == "loaded")
                .limit(1)
            ).first()
        if earlier is not None:
            prepared.duplicate_of = earlier.name
            return prepared
        try:
            texts = self.open(name, data)
        except DeliveryRejected as error:
            prepared.rejection = str(error)
            return prepared
        prepared.several = len(texts) > 1
        prepared.parsing = self.start_parsing(texts, tdsp_duns)
        return prepared

    def finish(
        self,
        engine: sa.Engine,
        prepared: Prepared,
        *,
        source: str,
        progress: Progress | None = None,
    ) -> FileOutcome:
        """Load a prepared delivery in one transaction (or record why it was not loaded)."""
        name = prepared.name
        if prepared.duplicate_of is not None:
            return FileOutcome(
                name,
                "duplicate",
                f"already loaded (the same bytes as {prepared.duplicate_of}); nothing to do",
            )
        if prepared.parsing is None:
            outcome = FileOutcome(name, "rejected", prepared.rejection)
            outcome.seconds = time.perf_counter() - prepared.started
            with engine.begin() as conn:
                outcome.file_id = _record_file(
                    conn, outcome, prepared.sha256, prepared.tdsp_duns, source, self._clock()
                )
            return outcome
        with engine.begin() as conn:
            return self.load(
                conn,
                name,
                prepared.parsing,
                sha256=prepared.sha256,
                source=source,
                tdsp_duns=prepared.tdsp_duns,
                progress=progress,
                started=prepared.started,
                several=prepared.several,
            )

    def record_rejected(
        self,
        engine: sa.Engine,
        name: str,
        data: bytes,
        reason: str,
        *,
        source: str,
        tdsp_duns: str | None = None,
    ) -> FileOutcome:
        """Record a delivery that could not be loaded at all, and why (``hangw usage files``)."""
        outcome = FileOutcome(name, "rejected", reason)
        with engine.begin() as conn:
            outcome.file_id = _record_file(
                conn, outcome, hashlib.sha256(data).hexdigest(), tdsp_duns, source, self._clock()
            )
        return outcome

    def load(
        self,
        conn: sa.Connection,
        name: str,
        texts: Sequence[tuple[str, bytes]] | Parsing,
        *,
        sha256: str,
        source: str,
        tdsp_duns: str | None,
        progress: Progress | None = None,
        started: float | None = None,
        several: bool = False,
    ) -> FileOutcome:
        """Parse ``texts`` (or take a parsing begun) and load them in the caller's transaction."""
        started = time.perf_counter() if started is None else started
        outcome = FileOutcome(name, "loaded")
        dialect = conn.dialect
        raw: Any = conn.connection.dbapi_connection
        cursor = raw.cursor()
        try:
            blob = "BLOB" if dialect.name == "sqlite" else "BYTEA"
            cursor.execute(_STAGING_DDL.format(blob=blob))
            cursor.execute("DELETE FROM usage_staging")
            insert = (
                f"INSERT INTO usage_staging ({', '.join(_COLUMNS)}) "
                f"VALUES ({_placeholders(dialect, len(_COLUMNS))})"
            )
            seen: dict[tuple[str, int, int], tuple[str, int]] = {}
            duplicates: list[tuple[str, lse.Rejection]] = []
            doubled: set[tuple[str, int, int]] = set()
            if not isinstance(texts, Parsing):
                several = len(texts) > 1
                texts = self.start_parsing(texts, tdsp_duns)
            for member, parsed, offset in texts.results(progress):
                outcome.records += parsed.records
                rows = parsed.rows
                for rejection in parsed.rejections:
                    _reject(outcome, member if several else "", rejection, offset)
                fresh = []
                for row in rows:
                    key = (row[0], row[1], row[2])
                    first = seen.get(key)
                    if first is None:
                        seen[key] = (member, row[-1] + offset)
                        fresh.append(row)
                    else:
                        duplicates.append((member, _duplicate(row, offset, first, several)))
                        doubled.add(key)
                if len(fresh) != len(rows):
                    rows = fresh
                cursor.executemany(insert, rows)
            if duplicates:
                # neither copy of an ESI ID-day sent twice in one delivery is trusted
                for esiid, day, channel in sorted(doubled):
                    member, line = seen[(esiid, day, channel)]
                    cursor.execute(
                        _where("DELETE FROM usage_staging", dialect), (esiid, day, channel)
                    )
                    _reject(
                        outcome,
                        member if several else "",
                        lse.Rejection(
                            line,
                            f"ESI ID {esiid} day {day} channel {channel} is in this delivery "
                            "more than once; no copy of it is loaded",
                            esiid,
                            day,
                        ),
                    )
                for member, rejection in duplicates:
                    _reject(outcome, member if several else "", rejection)
            # the store itself is written from here on: SQLite's write lock is held from this
            # point to the commit, not while the workers parse. Its first statement writes: a
            # read of the store before it would fix the transaction's snapshot, and a commit of
            # the gateway's writer in between would then fail the write (SQLITE_BUSY_SNAPSHOT)
            outcome.file_id = _record_file(conn, outcome, sha256, tdsp_duns, source, self._clock())
            if tdsp_duns:
                self._other_tdsps(cursor, dialect, tdsp_duns, seen, outcome, several)
            cursor.execute(_COUNT)
            staged, existing, newer = cursor.fetchone()
            outcome.loaded = staged - existing
            outcome.replaced = newer
            outcome.unchanged = existing - newer
            cursor.execute(_MERGE.format(file_id=int(outcome.file_id or 0)))
            self._sum_check(cursor, dialect)
            cursor.execute(
                "SELECT count(*) FROM usage_days WHERE file_id = "
                + placeholder(dialect)
                + " AND flags <> 0",
                (outcome.file_id,),
            )
            outcome.flagged = cursor.fetchone()[0]
            cursor.execute("DELETE FROM usage_staging")
        finally:
            cursor.close()
        if outcome.rejections:
            conn.execute(
                usage_rejections.insert(),
                [
                    {
                        "file_id": outcome.file_id,
                        "line": r.line,
                        "esiid": r.esiid,
                        "day": r.day,
                        "reason": r.reason,
                    }
                    for r in outcome.rejections
                ],
            )
        conn.execute(
            usage_files.update()
            .where(usage_files.c.file_id == outcome.file_id)
            .values(
                records=outcome.records,
                loaded=outcome.loaded,
                replaced=outcome.replaced,
                unchanged=outcome.unchanged,
                rejected=outcome.rejected,
                flagged=outcome.flagged,
                seconds=time.perf_counter() - started,
            )
        )
        outcome.seconds = time.perf_counter() - started
        return outcome

    @staticmethod
    def _other_tdsps(
        cursor: Any,
        dialect: sa.Dialect,
        tdsp_duns: str,
        seen: dict[tuple[str, int, int], tuple[str, int]],
        outcome: FileOutcome,
        several: bool,
    ) -> None:
        """Reject the staged days a TDSP may not deliver: those of another TDSP's meter, and,
        for an ESI ID not in the meter registry, a day the store holds from another TDSP."""
        mark = placeholder(dialect)
        cursor.execute(
            "SELECT s.esiid, s.day, s.channel, m.tdsp_duns FROM usage_staging s "
            f"JOIN meters m ON m.esiid = s.esiid WHERE m.tdsp_duns <> {mark}",
            (tdsp_duns,),
        )
        foreign = [
            (esiid, day, channel, f"its meter is TDSP {owner}'s in the meter registry")
            for esiid, day, channel, owner in cursor.fetchall()
        ]
        cursor.execute(
            "SELECT s.esiid, s.day, s.channel, u.tdsp_duns FROM usage_staging s "
            "JOIN usage_days u ON u.esiid = s.esiid AND u.day = s.day AND u.channel = s.channel "
            f"WHERE u.tdsp_duns <> '' AND u.tdsp_duns <> {mark} "
            "AND NOT EXISTS (SELECT 1 FROM meters m WHERE m.esiid = s.esiid)",
            (tdsp_duns,),
        )
        foreign += [
            (esiid, day, channel, f"it is not in the meter registry and TDSP {owner} delivered it")
            for esiid, day, channel, owner in cursor.fetchall()
        ]
        for esiid, day, channel, why in sorted(foreign):
            cursor.execute(_where("DELETE FROM usage_staging", dialect), (esiid, day, channel))
            member, line = seen[(esiid, day, channel)]
            _reject(
                outcome,
                member if several else "",
                lse.Rejection(
                    line,
                    f"ESI ID {esiid} day {day} channel {channel} was delivered for TDSP "
                    f"{tdsp_duns}, but {why}",
                    esiid,
                    day,
                ),
            )

    def _sum_check(self, cursor: Any, dialect: sa.Dialect) -> None:
        """Judge the staged days against the midnight register reads, when any are loaded."""
        cursor.execute("SELECT 1 FROM register_reads LIMIT 1")
        if cursor.fetchone() is None:
            return
        cursor.execute("SELECT DISTINCT day FROM usage_staging")
        days = [row[0] for row in cursor.fetchall()]
        prepare_sum_keys(cursor, dialect, days)
        cursor.execute(
            "INSERT INTO sum_keys SELECT s.esiid, s.day, s.channel, d.next_day "
            "FROM usage_staging s JOIN sum_days d ON d.day = s.day"
        )
        apply_sum_check(cursor, dialect, self.sum_tolerance_wh)


def prepare_sum_keys(cursor: Any, dialect: sa.Dialect, days: Sequence[int]) -> None:
    """Empty temporary tables ``sum_keys`` (the days to judge) and ``sum_days`` (each of ``days``
    with the day after it), for the caller to fill ``sum_keys``."""
    mark = placeholder(dialect)
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sum_keys (esiid VARCHAR(64) NOT NULL, "
        "day INTEGER NOT NULL, channel SMALLINT NOT NULL, next_day INTEGER NOT NULL)"
    )
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sum_days (day INTEGER NOT NULL, next_day INTEGER NOT NULL)"
    )
    cursor.execute("DELETE FROM sum_keys")
    cursor.execute("DELETE FROM sum_days")
    cursor.executemany(
        f"INSERT INTO sum_days VALUES ({mark}, {mark})",
        [(day, day_of(date_of(day) + dt.timedelta(days=1))) for day in days],
    )


def apply_sum_check(cursor: Any, dialect: sa.Dialect, tolerance_wh: int) -> None:
    """Set or clear SUM_CHECK on the stored days listed in ``sum_keys``.

    A day is judged when the reads at its midnight and at the next are both loaded: its total
    must equal their difference within ``tolerance_wh``; a day without both keeps its flag as is.
    """
    bit = int(Flag.SUM_CHECK)
    mark = placeholder(dialect)
    cursor.execute(
        "UPDATE usage_days SET flags = CASE "
        f"WHEN abs(usage_days.total_wh - (r1.reading_wh - r0.reading_wh)) > {mark} "
        f"THEN (usage_days.flags | {bit}) ELSE (usage_days.flags & ~{bit}) END "
        "FROM sum_keys k "
        "JOIN register_reads r0 "
        "ON r0.esiid = k.esiid AND r0.day = k.day AND r0.channel = k.channel "
        "JOIN register_reads r1 "
        "ON r1.esiid = k.esiid AND r1.day = k.next_day AND r1.channel = k.channel "
        "WHERE usage_days.esiid = k.esiid AND usage_days.day = k.day "
        "AND usage_days.channel = k.channel",
        (tolerance_wh,),
    )
    cursor.execute("DELETE FROM sum_keys")


@dataclass
class Prepared:
    """A delivery opened and being parsed, not yet written."""

    name: str
    sha256: str
    tdsp_duns: str | None
    started: float
    duplicate_of: str | None = None
    rejection: str = ""
    several: bool = False
    parsing: Parsing | None = None


class Parsing:
    """The pieces of a delivery's files: ``[member, bytes, future on the workers or None]``
    (None: parsed on the calling thread when taken)."""

    def __init__(
        self,
        total: int,
        pieces: list[list[Any]],
        tdsp_duns: str | None,
        vee: lse.VeeSettings,
        latest_created: str | None = None,
    ) -> None:
        self.total = total
        self.pieces = pieces
        self.tdsp_duns = tdsp_duns
        self.vee = vee
        self.latest_created = latest_created
        #: Hands the pieces from an index on to the workers again (once, if the pool broke).
        self.submit: Callable[[Parsing, int], None] | None = None

    def _result(self, index: int) -> tuple[lse.Parsed, int]:
        future: Future[tuple[lse.Parsed, int]] = self.pieces[index][2]
        try:
            return future.result()
        except BrokenProcessPool:
            # a worker died (this piece need not be why): a new pool parses the rest, once
            if self.submit is None:
                raise
            submit, self.submit = self.submit, None
            submit(self, index)
            return self.pieces[index][2].result()

    def results(self, progress: Progress | None = None) -> Iterator[tuple[str, lse.Parsed, int]]:
        """``(member, parsed, offset)`` piece by piece: the piece's lines are numbered from 1,
        ``offset`` is the number of lines of its member before it."""
        done = 0
        offset = 0
        member = None
        try:
            for index, (name, data, future) in enumerate(self.pieces):
                size = len(data)
                if name != member:
                    member, offset = name, 0
                if future is None:
                    parsed, lines = lse.parse_piece(
                        data, self.tdsp_duns, self.vee, self.latest_created
                    )
                else:
                    parsed, lines = self._result(index)
                self.pieces[index][1] = b""  # parsed: its bytes are no longer needed
                yield name, parsed, offset
                offset += lines
                done += size
                if progress:
                    progress(done, self.total)
        finally:
            for _, _, future in self.pieces:
                if future is not None:
                    future.cancel()


def _where(statement: str, dialect: sa.Dialect) -> str:
    """``statement`` limited to one ESI ID, day and channel (bound in that order)."""
    mark = placeholder(dialect)
    return f"{statement} WHERE esiid = {mark} AND day = {mark} AND channel = {mark}"


def _reject(outcome: FileOutcome, member: str, rejection: lse.Rejection, offset: int = 0) -> None:
    outcome.rejected += 1
    if len(outcome.rejections) < MAX_REJECTIONS_KEPT:
        if member or offset:
            reason = f"{member}: {rejection.reason}" if member else rejection.reason
            rejection = lse.Rejection(
                rejection.line + offset, reason, rejection.esiid, rejection.day
            )
        outcome.rejections.append(rejection)


def _duplicate(row: lse.Row, offset: int, first: tuple[str, int], several: bool) -> lse.Rejection:
    where = f"{first[0]} line {first[1]}" if several else f"line {first[1]}"
    return lse.Rejection(
        row[-1] + offset,
        f"ESI ID {row[0]} day {row[1]} channel {row[2]} was already in this delivery at {where}; "
        "no copy of it is loaded",
        row[0],
        row[1],
    )


def _record_file(
    conn: sa.Connection,
    outcome: FileOutcome,
    sha256: str,
    tdsp_duns: str | None,
    source: str,
    now: float,
) -> int:
    result = conn.execute(
        usage_files.insert().values(
            name=outcome.name[:500],
            sha256=sha256,
            tdsp_duns=tdsp_duns or "",
            source=source,
            state=outcome.state,
            reason=outcome.reason,
            records=0,
            loaded=0,
            replaced=0,
            unchanged=0,
            rejected=0,
            flagged=0,
            imported_at=now,
            seconds=outcome.seconds,
        )
    )
    key: Any = result.inserted_primary_key
    return int(key[0])
