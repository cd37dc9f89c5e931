"""Drop directories: what settles in a TDSP's folder is imported and moved to done/ or rejected/."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.task import deferLater

from hangw.store.model import usage_days, usage_files
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
