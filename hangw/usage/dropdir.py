"""Drop directories: one folder per TDSP where its LSE deliveries land, as the FTPS folders were.

Every ``usage.poll_s`` seconds hangwd looks into each configured directory. A file whose size
and modification time have not changed since the previous look (so it is no longer being
written) is imported on a worker thread, one file at a time, with the TDSP's DUNS checked
against each record's Sender. Afterwards it is moved to ``done/`` beside it (even with some
records rejected: the store holds the outcome, ``hangw usage files``) or to ``rejected/`` when
the delivery could not be read at all, its reason recorded in the store. A file that fails
because the store cannot be reached (or is locked, or its disk is full or failing) or the
gateway's key fails stays where it is and is tried again; one that fails because the gateway did
(a parse worker died, memory or disk ran out) is tried again up to ``MAX_TRIES`` looks in a row,
then set aside with the last error. Files whose names start with a dot are left alone (a sender
may upload under a dot name and rename when complete).

When hangwd is stopped it finishes the file being imported, not the others found at the same
look: they stay for the next start. If hangwd dies in the middle of a file, the file's
transaction never commits and the file is still in the directory: it is imported again, whole,
on the next start. If it dies after the commit but before the move, the next import
recognises the same bytes and only moves the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from hangw.usage.ingest import FileOutcome, Ingest
from hangw.usage.pgp import UsageKey, UsageKeyError

log = structlog.get_logger(__name__)

DONE = "done"
REJECTED = "rejected"
#: Failures of the gateway rather than of a file (one the file caused would recur every time).
NOT_THE_FILE: tuple[type[BaseException], ...] = (BrokenProcessPool, MemoryError, OSError)
#: Looks in a row a file may fail with one of them before it is set aside.
MAX_TRIES = 3


def make_drop_directory(directory: Path) -> None:
    """Make ``directory`` and its done/ and rejected/, where they are missing (OSError if not)."""
    for sub in ("", DONE, REJECTED):
        (directory / sub).mkdir(parents=True, exist_ok=True)


class DropDirectories(TimerService):
    """Watches the drop directories and imports what settles in them."""

    def __init__(
        self,
        directories: Mapping[str, Path],
        engine: sa.Engine,
        ingest: Ingest,
        reactor: Any,
        clock: Any,
        poll_s: float,
        key: UsageKey | None = None,
    ) -> None:
        super().__init__(poll_s, self.poll)
        self._key = key
        self.clock = clock
        self.directories = dict(directories)
        self._engine = engine
        self._ingest = ingest
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name="hangw-usage-import")
        self._sizes: dict[Path, tuple[int, float]] = {}
        self._busy: Deferred[Any] | None = None
        #: Set when hangwd stops: the files of the current look not begun yet wait for the next
        #: start (read on the import thread between files).
        self._stopping = False
        #: Looks in a row each file failed for a reason not its own.
        self._tries: dict[Path, int] = {}
        #: Files kept to try again, with the error last logged for each.
        self._waiting: dict[Path, str] = {}
        #: Outcomes of the files imported since start, newest last (for tests and /metrics).
        self.outcomes: list[FileOutcome] = []

    def startService(self) -> None:
        for directory in self.directories.values():
            make_drop_directory(directory)
        self._stopping = False
        self._pool.start()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True  # the file being imported is finished; the others wait
        busy = self._busy or succeed(None)

        def stop(_: object) -> None:
            self._pool.stop()
            self._ingest.close()
            if self._key is not None:
                self._key.close()  # its gpg-agent

        return busy.addBoth(stop)

    def poll(self) -> Deferred[Any] | None:
        """Look once; import the files that have settled (one poll's imports run in sequence)."""
        if self._busy is not None:
            return None
        ready = list(self._settled())
        if not ready:
            return None
        self._busy = deferToThreadPool(self._reactor, self._pool, self._import_all, ready)

        def done(result: object) -> object:
            self._busy = None
            return result

        self._busy.addBoth(done)
        self._busy.addErrback(
            lambda failure: log.error("usage.drop_failed", error=failure.getErrorMessage())
        )
        return self._busy

    def _settled(self) -> list[tuple[str, Path]]:
        seen: dict[Path, tuple[int, float]] = {}
        ready = []
        for duns, directory in self.directories.items():
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as error:
                log.error("usage.drop_unreadable", directory=str(directory), error=str(error))
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                stat = entry.stat(follow_symlinks=False)
                mark = (stat.st_size, stat.st_mtime)
                seen[path] = mark
                if self._sizes.get(path) == mark:
                    ready.append((duns, path))
        self._sizes = seen
        self._tries = {path: n for path, n in self._tries.items() if path in seen}
        self._waiting = {path: e for path, e in self._waiting.items() if path in seen}
        return ready

    def _import_all(self, ready: list[tuple[str, Path]]) -> None:
        for duns, path in ready:
            if self._stopping:
                return
            self._import_one(duns, path)

    @property
    def _store_failures(self) -> tuple[type[Exception], ...]:
        """What the store raises when it, not the delivery, failed."""
        return (sa.exc.OperationalError, self._engine.dialect.loaded_dbapi.OperationalError)

    def _kept(self, path: Path, error: str) -> None:
        """Log a file kept to try again: at error level when it first fails for this reason, at
        debug on the looks after (a file waiting for the usage key would log every poll)."""
        if self._waiting.get(path) == error:
            log.debug("usage.drop_retry", file=path.name, error=error)
            return
        self._waiting[path] = error
        log.error("usage.drop_retry", file=path.name, error=error, again_every_s=self.step)

    def _set_aside(self, duns: str, path: Path, data: bytes, reason: str) -> FileOutcome | None:
        """Record ``path`` as rejected whole, with ``reason`` (None: not recorded, so it stays)."""
        try:
            return self._ingest.record_rejected(
                self._engine, path.name, data, reason, source=f"drop:{duns}", tdsp_duns=duns
            )
        except Exception as error:
            log.error("usage.drop_retry", file=path.name, error=_said(error)[:300])
            return None

    def _import_one(self, duns: str, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as error:
            log.error("usage.drop_unreadable", file=str(path), error=str(error))
            return
        outcome: FileOutcome | None
        try:
            outcome = self._ingest.import_bytes(
                self._engine, path.name, data, source=f"drop:{duns}", tdsp_duns=duns
            )
        except UsageKeyError as error:
            # the gateway's key or GnuPG failed, not the file: keep it and try again
            self._kept(path, str(error)[:300])
            return
        except self._store_failures as error:
            # the store could not be reached, was busy too long, or its disk is full or failing
            # (raised by SQLAlchemy, or by the driver's cursor the load writes with): not the
            # file's fault, so it stays and is tried again next time
            self._kept(path, str(getattr(error, "orig", None) or error)[:200])
            return
        except NOT_THE_FILE as error:
            # the gateway failed (a parse worker died, memory or a disk ran out), likely not
            # because of the file: keep it and try again, a few times
            tries = self._tries[path] = self._tries.get(path, 0) + 1
            if tries < MAX_TRIES:
                log.error("usage.drop_retry", file=path.name, tries=tries, error=_said(error)[:300])
                return
            log.exception("usage.drop_failed", file=path.name, tries=tries)
            outcome = self._set_aside(
                duns, path, data, f"not loaded after {tries} tries: {_said(error)}"
            )
        except Exception as error:  # a file must never stop the directory: set it aside
            log.exception("usage.drop_failed", file=path.name)
            outcome = self._set_aside(duns, path, data, _said(error))
        if outcome is None:
            return
        self._tries.pop(path, None)
        self._waiting.pop(path, None)
        self.outcomes.append(outcome)
        target = path.parent / (REJECTED if outcome.state == "rejected" else DONE) / path.name
        try:
            os.replace(path, target)
        except OSError as error:
            log.error("usage.drop_move_failed", file=path.name, error=str(error))
        self._sizes.pop(path, None)
        log.info(
            "usage.file_imported",
            file=path.name,
            tdsp_duns=duns,
            state=outcome.state,
            records=outcome.records,
            loaded=outcome.loaded,
            replaced=outcome.replaced,
            unchanged=outcome.unchanged,
            rejected=outcome.rejected,
            reason=outcome.reason,
            seconds=round(outcome.seconds, 2),
        )


def _said(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:1000]
