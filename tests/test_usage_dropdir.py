"""Drop directories: what settles in a TDSP's folder is imported and moved to done/ or rejected/."""

from __future__ import annotations

import datetime as dt
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest_twisted
import sqlalchemy as sa
from structlog.testing import capture_logs
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from hangw.store import schema
from hangw.store.model import usage_days, usage_files
from hangw.usage.dropdir import MAX_TRIES, DropDirectories, make_drop_directory
from hangw.usage.ingest import FileOutcome, Ingest
from hangw.usage.pgp import UsageKey, UsageKeyError, encrypt_for
from simulators.fleet import generated_esiid
from simulators.usage import profile_records, write_lse_files
from tests.conftest import start_gateway
from tests.gateway_harness import TDSP


async def settle(gateway: object, count: int, timeout: float = 30.0) -> None:
    waited = 0.0
    while len(gateway.drop_dirs.outcomes) < count:  # type: ignore[attr-defined]
        assert waited < timeout, "the drop directory did not take the files in time"
        await deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


@pytest_twisted.ensureDeferred
async def test_files_dropped_are_imported_and_moved(tmp_path: Path) -> None:
    """A good file loads (not others' meters), moves to done/, a non-LSE one to rejected/."""
    drop = tmp_path / "drop"
    running = await start_gateway(
        tmp_path / "state", usage={"drop_dirs": {TDSP: str(drop)}, "poll_s": 0.05}
    )
    try:
        ids = [generated_esiid(n) for n in range(30)]
        records = profile_records(
            ids,
            dt.date(2026, 3, 7),
            dt.date(2026, 3, 8),
            tdsp_duns=TDSP,
            rep_duns="0000000000001",
            created="20260309000000",
        )
        [good] = write_lse_files(
            tmp_path / "out", records, tdsp_duns=TDSP, created="20260309000000"
        )
        other = write_lse_files(
            tmp_path / "other",
            profile_records(
                ids[:2],
                dt.date(2026, 3, 7),
                dt.date(2026, 3, 7),
                tdsp_duns="9999999999999",
                rep_duns="0000000000001",
                created="20260309000000",
            ),
            tdsp_duns="9999999999999",
            created="20260309000000",
        )[0]
        (drop / ".partial.lse").write_text("being uploaded")
        good.rename(drop / good.name)
        other.rename(drop / "from-another-tdsp.lse")
        (drop / "notes.txt").write_text("this is not an LSE file\n")
        await settle(running.gateway, 3)
        assert sorted(p.name for p in (drop / "done").iterdir()) == sorted(
            [good.name, "from-another-tdsp.lse"]
        )
        assert [p.name for p in (drop / "rejected").iterdir()] == ["notes.txt"]
        assert (drop / ".partial.lse").exists()
        with running.gateway.store.engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(usage_days)).scalar()
            files = {row.name: row for row in conn.execute(sa.select(usage_files)).all()}
        # generated meter 5 is E_OTHER_TDSP, another TDSP's meter in the registry: its 2 days
        # are not this TDSP's to deliver
        assert stored == 58
        assert (files[good.name].loaded, files[good.name].source) == (58, f"drop:{TDSP}")
        assert files[good.name].rejected == 2
        assert files["from-another-tdsp.lse"].rejected == 2
        assert files["notes.txt"].state == "rejected"
        assert "not an LSE file" in files["notes.txt"].reason
    finally:
        running.close()
        await running.gateway.stopService()


class _Failing(Ingest):
    """Fails every import with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(workers=1)
        self.error = error

    def import_bytes(self, *args: object, **kwargs: object) -> FileOutcome:
        raise self.error


def _drop(tmp_path: Path, ingest: Ingest) -> tuple[DropDirectories, Path, sa.Engine]:
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    schema.upgrade(engine)
    drop = tmp_path / "drop"
    for sub in ("", "done", "rejected"):
        (drop / sub).mkdir(parents=True, exist_ok=True)
    (drop / "day.lse").write_bytes(b"00000001,E1\n")
    return DropDirectories({TDSP: drop}, engine, ingest, reactor, reactor, 1.0), drop, engine


def _files(engine: sa.Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        columns = (usage_files.c.name, usage_files.c.state, usage_files.c.reason)
        return [tuple(row) for row in conn.execute(sa.select(*columns))]


def test_a_broken_worker_pool_leaves_the_file_to_try_again(tmp_path: Path) -> None:
    """A failure of the gateway keeps the file in place, until MAX_TRIES looks fail in a row."""
    drops, drop, engine = _drop(tmp_path, _Failing(BrokenProcessPool("a worker died")))
    for _ in range(MAX_TRIES - 1):
        drops._import_one(TDSP, drop / "day.lse")
        assert (drop / "day.lse").exists() and drops.outcomes == [] and _files(engine) == []
    drops._import_one(TDSP, drop / "day.lse")
    assert [p.name for p in (drop / "rejected").iterdir()] == ["day.lse"]
    [(name, state, reason)] = _files(engine)
    assert (name, state) == ("day.lse", "rejected")
    assert reason == f"not loaded after {MAX_TRIES} tries: BrokenProcessPool: a worker died"
    engine.dispose()


def test_a_file_set_aside_is_recorded_with_why(tmp_path: Path) -> None:
    """A file that fails unexpectedly goes to rejected/ and the store says why."""
    drops, drop, engine = _drop(tmp_path, _Failing(OverflowError("date value out of range")))
    drops._import_one(TDSP, drop / "day.lse")
    assert [p.name for p in (drop / "rejected").iterdir()] == ["day.lse"]
    assert _files(engine) == [("day.lse", "rejected", "OverflowError: date value out of range")]
    assert drops.outcomes[0].file_id is not None
    engine.dispose()


def test_a_file_waiting_for_the_key_is_logged_as_an_error_once_per_reason(tmp_path: Path) -> None:
    """A file kept for the usage key logs an error on its first look, debug on the looks after,
    and an error again when the reason changes; it stays in place all along."""
    failing = _Failing(UsageKeyError("there is no usage key: run hangw usage key init"))
    drops, drop, engine = _drop(tmp_path, failing)
    with capture_logs() as logs:
        for _ in range(4):
            drops._import_one(TDSP, drop / "day.lse")
        failing.error = UsageKeyError("gpg failed: the agent did not start")
        drops._import_one(TDSP, drop / "day.lse")
    retries = [e for e in logs if e["event"] == "usage.drop_retry"]
    assert [e["log_level"] for e in retries] == ["error", "debug", "debug", "debug", "error"]
    assert "usage key init" in retries[0]["error"] and "agent" in retries[-1]["error"]
    assert (drop / "day.lse").exists() and drops.outcomes == [] and _files(engine) == []
    engine.dispose()


@pytest_twisted.ensureDeferred
async def test_a_usage_key_made_after_start_decrypts_what_is_dropped(
    tmp_path: Path, gnupg: None
) -> None:
    """An encrypted file waits (kept, not rejected) until `usage key init`; then it loads."""
    drop = tmp_path / "drop"
    running = await start_gateway(
        tmp_path / "state", usage={"drop_dirs": {TDSP: str(drop)}, "poll_s": 0.05}
    )
    key = UsageKey(running.config.gnupg_home)
    try:
        records = profile_records(
            [generated_esiid(0)],
            dt.date(2026, 3, 7),
            dt.date(2026, 3, 7),
            tdsp_duns=TDSP,
            rep_duns="0000000000001",
            created="20260309000000",
        )
        [plain] = write_lse_files(
            tmp_path / "out", records, tdsp_duns=TDSP, created="20260309000000"
        )
        # a key the gateway does not hold: waits like a file sent before the key was made
        stranger = UsageKey(tmp_path / "stranger" / "gnupg")
        stranger.init("not the gateway")
        early = encrypt_for(stranger.export_public(), plain.read_bytes())
        stranger.close()
        (drop / "early.lse.pgp").write_bytes(early)
        await deferLater(reactor, 0.5, lambda: None)  # several polls
        assert (drop / "early.lse.pgp").exists() and running.gateway.drop_dirs.outcomes == []
        # `hangw usage key init` while hangwd runs, then the TDSP sends to that key
        await deferToThread(key.init, "hangw usage key (test)")
        data = await deferToThread(encrypt_for, key.export_public(), plain.read_bytes())
        (drop / "day.lse.pgp").write_bytes(data)
        await settle(running.gateway, 2)
        outcomes = {o.name: o for o in running.gateway.drop_dirs.outcomes}
        assert outcomes["day.lse.pgp"].state != "rejected", outcomes
        assert (drop / "done" / "day.lse.pgp").exists()
        # the early file was for another key: with the gateway's key made, that is its fault
        assert outcomes["early.lse.pgp"].state == "rejected"
        assert (drop / "rejected" / "early.lse.pgp").exists()
    finally:
        key.close()
        running.close()
        await running.gateway.stopService()


def test_a_store_whose_disk_fills_mid_load_keeps_the_file_to_try_again(tmp_path: Path) -> None:
    """A delivery whose load fails because the store's disk is full (raised by the driver's
    cursor mid-merge) stays in place, recorded nowhere, and loads once there is room again."""
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    schema.upgrade(engine)
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    engine.dispose()
    room = {"pages": pages}  # the store's file may not grow past this: its disk is full

    def limit(dbapi_connection: Any, _: object) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count={room['pages']}")

    sa.event.listen(engine, "connect", limit)
    drop = tmp_path / "drop"
    records = profile_records(
        [generated_esiid(n) for n in range(30)],
        dt.date(2026, 3, 7),
        dt.date(2026, 3, 8),
        tdsp_duns=TDSP,
        rep_duns="0000000000001",
        created="20260309000000",
    )
    [good] = write_lse_files(tmp_path / "out", records, tdsp_duns=TDSP, created="20260309000000")
    with Ingest(workers=1) as ingest:
        drops = DropDirectories({TDSP: drop}, engine, ingest, reactor, reactor, 1.0)
        make_drop_directory(drop)
        good.rename(drop / good.name)
        drops._import_one(TDSP, drop / good.name)
        assert (drop / good.name).exists() and drops.outcomes == [] and _files(engine) == []
        room["pages"] = 1_000_000
        engine.dispose()  # connections made from now on have room
        drops._import_one(TDSP, drop / good.name)
    assert [p.name for p in (drop / "done").iterdir()] == [good.name]
    assert [(o.state, o.loaded) for o in drops.outcomes] == [("loaded", 60)]
    engine.dispose()


@pytest_twisted.ensureDeferred
async def test_a_stopping_gateway_leaves_the_files_it_has_not_begun(tmp_path: Path) -> None:
    """Stopping while a look's files are imported finishes the one begun and leaves the others
    in place for the next start, which imports them."""
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    schema.upgrade(engine)
    drop = tmp_path / "drop"
    make_drop_directory(drop)
    for n in range(4):
        records = profile_records(
            [generated_esiid(n)],
            dt.date(2026, 3, 7),
            dt.date(2026, 3, 7),
            tdsp_duns=TDSP,
            rep_duns="0000000000001",
            created=f"2026030900000{n}",
        )
        [lse] = write_lse_files(
            tmp_path / f"out{n}", records, tdsp_duns=TDSP, created=f"2026030900000{n}"
        )
        lse.rename(drop / f"day{n}.lse")
    names = {f"day{n}.lse" for n in range(4)}
    drops = DropDirectories({TDSP: drop}, engine, Ingest(workers=1), reactor, reactor, 60.0)
    drops.startService()  # its first look only notes the files
    try:
        importing = drops.poll()  # the second finds them settled
        assert importing is not None
    finally:
        await drops.stopService()
    left = {p.name for p in drop.iterdir() if p.is_file()}
    assert left and len(drops.outcomes) < 4 and left == names - {o.name for o in drops.outcomes}
    again = DropDirectories({TDSP: drop}, engine, Ingest(workers=1), reactor, reactor, 60.0)
    again.startService()
    try:
        importing = again.poll()
        assert importing is not None
        await importing
    finally:
        await again.stopService()
    assert {p.name for p in (drop / "done").iterdir()} == names
    assert all(o.state == "loaded" for o in [*drops.outcomes, *again.outcomes])
    engine.dispose()
