"""The store's migrations build exactly the schema of hangw.store.model, on SQLite and PostgreSQL.

PostgreSQL runs only when HANGW_TEST_POSTGRES_URL names a throwaway database (e.g.
``postgresql+psycopg://user@localhost/hangw_test``): its store tables are dropped before and after
each test.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from adapters.wire.protocol import MAX_REASON
from hangw.provisioning import SLOT_FREEING, DeviceStatus
from hangw.store import schema
from hangw.store.model import (
    deliveries,
    delivery_statuses,
    device_history,
    han_devices,
    metadata,
    meters,
)

POSTGRES_URL = os.environ.get("HANGW_TEST_POSTGRES_URL")
MAC = "0011223344556677"


def _wipe(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not POSTGRES_URL,
                reason="HANGW_TEST_POSTGRES_URL is not set (a throwaway PostgreSQL database URL)",
            ),
        ),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        made = schema.make_engine(f"sqlite:///{tmp_path / 'store' / 'hangw.sqlite'}")
        yield made
        made.dispose()
        return
    assert POSTGRES_URL is not None
    made = schema.make_engine(POSTGRES_URL)
    _wipe(made)
    try:
        yield made
    finally:
        _wipe(made)
        made.dispose()


def _table_names(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _add_meter(conn: sa.Connection, esiid: str = "10443720000000001") -> str:
    conn.execute(
        meters.insert().values(
            esiid=esiid,
            meter_serial="M-1",
            tdsp_duns="1039940674000",
            ror_duns="0000000000001",
            customer_id=None,
            hardware_version="1.0",
            firmware_version="2.0",
            han_capable=True,
            active=True,
        )
    )
    return esiid


def _add_device(conn: sa.Connection, device_id: str, esiid: str, status: DeviceStatus) -> None:
    conn.execute(
        han_devices.insert().values(
            device_id=device_id,
            esiid=esiid,
            mac=MAC,
            install_code_enc=b"\x00",
            link_key_enc=b"\x00",
            device_type="IHD",
            description="kitchen display",
            owner_party_id="0000000000001",
            owner_role="rep",
            status=status.value,
            status_at=1.0,
            created_at=1.0,
        )
    )


def test_upgrade_of_empty_database_matches_model(engine: sa.Engine) -> None:
    """Upgrading an empty database to head yields every model table and no schema differences."""
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    assert set(metadata.tables) <= _table_names(engine)
    assert schema.check_schema(engine) == []


def test_upgrade_twice_is_harmless(engine: sa.Engine) -> None:
    """A second upgrade to head changes nothing and keeps the rows already written."""
    schema.upgrade(engine)
    with engine.begin() as conn:
        esiid = _add_meter(conn)
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    assert schema.check_schema(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(meters.c.esiid)).scalars().all() == [esiid]


def test_requests_accepted_before_warnings_were_kept_read_as_an_empty_list(
    engine: sa.Engine,
) -> None:
    """A message request stored before migration 0006 upgrades with an empty warnings list."""
    schema.upgrade(engine, "0005")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO message_requests (request_id, category, party_id, party_role, "
                "created_at, destination, cluster, zcl, fields, targets, state) VALUES "
                "('req_old', 'STM', 'p', 'rep', 1.0, 'esi', 1795, :zcl, '{}', 1, 'sent')"
            ),
            {"zcl": b"\x01"},
        )
    schema.upgrade(engine)
    assert schema.check_schema(engine) == []
    with engine.connect() as conn:
        kept = conn.execute(
            sa.text("SELECT warnings FROM message_requests WHERE request_id = 'req_old'")
        ).scalar()
    assert kept == "[]"


def test_reasons_hold_the_longest_a_head_end_may_send_after_an_upgrade(engine: sa.Engine) -> None:
    """Migration 0007 widens device and history reasons to the protocol's 1000 characters."""
    schema.upgrade(engine, "0006")
    with engine.begin() as conn:
        esiid = _add_meter(conn)
        _add_device(conn, "dev-1", esiid, DeviceStatus.ADD_PENDING)
        history = {"device_id": "dev-1", "esiid": esiid, "event": "add", "at": 1.0, "actor": "p"}
        conn.execute(device_history.insert().values(status="Add Pending", reason="r", **history))
    schema.upgrade(engine)
    assert schema.check_schema(engine) == []
    assert han_devices.c.reason.type.length == device_history.c.reason.type.length == MAX_REASON
    with engine.begin() as conn:
        for table in ("han_devices", "device_history"):
            [reason] = [c for c in sa.inspect(conn).get_columns(table) if c["name"] == "reason"]
            assert reason["type"].length == MAX_REASON, table
        conn.execute(han_devices.update().values(reason="x" * MAX_REASON))
        conn.execute(
            device_history.insert().values(status="Add Failed", reason="y" * MAX_REASON, **history)
        )
    with engine.connect() as conn:
        assert conn.execute(sa.select(han_devices.c.reason)).scalar_one() == "x" * MAX_REASON
        kept = sa.select(device_history.c.reason).order_by(device_history.c.history_id)
        assert conn.execute(kept).scalars().all() == ["r", "y" * MAX_REASON]


def test_delivery_descriptions_hold_a_head_end_reason_whole_after_an_upgrade(
    engine: sa.Engine,
) -> None:
    """Migration 0008 widens delivery descriptions to a 1000-character reason in hangw's words."""
    schema.upgrade(engine, "0007")
    delivery = {"request_id": "req_1", "esiid": "1", "mac": "", "code": "RQA", "at": 1.0}
    with engine.begin() as conn:
        conn.execute(delivery_statuses.insert().values(description="accepted", **delivery))
        conn.execute(
            deliveries.insert().values(
                request_id="req_1",
                esiid="1",
                mac="",
                tdsp_duns="T",
                chunk=0,
                status="RQA",
                status_desc="",
                status_at=1.0,
            )
        )
    schema.upgrade(engine)
    assert schema.check_schema(engine) == []
    longest = f"the meter did not take the frame (failed at the head-end: {'é' * MAX_REASON})"
    with engine.begin() as conn:
        for model in (deliveries.c.status_desc, delivery_statuses.c.description):
            [found] = [
                c for c in sa.inspect(conn).get_columns(model.table.name) if c["name"] == model.name
            ]
            assert len(longest) <= found["type"].length == model.type.length, model
        conn.execute(delivery_statuses.insert().values(description=longest, **delivery))
    with engine.connect() as conn:
        kept = sa.select(delivery_statuses.c.description).order_by(delivery_statuses.c.status_id)
        assert conn.execute(kept).scalars().all() == ["accepted", longest]
        assert conn.execute(sa.select(deliveries.c.request_id)).scalars().all() == ["req_1"]


def test_check_schema_reports_a_missing_index(engine: sa.Engine) -> None:
    """check_schema names an index the model has and the database lacks."""
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_meters_ror_duns"))
    diffs = schema.check_schema(engine)
    assert [(diff[0], diff[1].name) for diff in diffs] == [("add_index", "ix_meters_ror_duns")]


def test_check_schema_reports_a_changed_partial_index_predicate(engine: sa.Engine) -> None:
    """check_schema notices when the live-MAC index covers other statuses than the model's."""
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX uq_han_devices_live_mac"))
        conn.execute(
            sa.text(
                "CREATE UNIQUE INDEX uq_han_devices_live_mac ON han_devices (mac) "
                "WHERE status IN ('Device Added')"
            )
        )
    diffs = schema.check_schema(engine)
    assert [(diff[0], diff[1].name) for diff in diffs] == [
        ("modify_index_where", "uq_han_devices_live_mac")
    ]


def test_live_mac_index_allows_one_slot_holding_device_per_mac(engine: sa.Engine) -> None:
    """A second live device with a MAC is refused; devices in slot-freeing statuses don't count."""
    schema.upgrade(engine)
    with engine.begin() as conn:
        esiid = _add_meter(conn)
        for number, status in enumerate(sorted(SLOT_FREEING)):
            _add_device(conn, f"freed-{number}", esiid, status)
        _add_device(conn, "live-1", esiid, DeviceStatus.DEVICE_ADDED)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        _add_device(conn, "live-2", esiid, DeviceStatus.ADD_ACKNOWLEDGED)
    with engine.begin() as conn:
        conn.execute(
            han_devices.update()
            .where(han_devices.c.device_id == "live-1")
            .values(status=DeviceStatus.DEVICE_REMOVED.value)
        )
        _add_device(conn, "live-2", esiid, DeviceStatus.ADD_ACKNOWLEDGED)
    with engine.connect() as conn:
        live = conn.execute(
            sa.select(han_devices.c.device_id).where(
                han_devices.c.status != DeviceStatus.DEVICE_REMOVED.value,
                han_devices.c.device_id.like("live-%"),
            )
        )
        assert live.scalars().all() == ["live-2"]


def test_foreign_key_to_meters_is_enforced(engine: sa.Engine) -> None:
    """A HAN device on an ESI ID that is not in the meter registry is refused."""
    schema.upgrade(engine)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        _add_device(conn, "orphan", "no-such-esiid", DeviceStatus.ADD_ACKNOWLEDGED)


def test_downgrade_to_base_drops_every_table(engine: sa.Engine) -> None:
    """Downgrading to base removes every store table and forgets the revision."""
    schema.upgrade(engine)
    schema.downgrade(engine, "base")
    assert _table_names(engine) - {"alembic_version"} == set()
    assert schema.current_revision(engine) is None


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    """A migrated SQLite file is left in WAL journal mode, seen even by a plain connection."""
    path = tmp_path / "deeper" / "hangw.sqlite"
    schema.upgrade(f"sqlite:///{path}")
    assert path.is_file()
    plain = sqlite3.connect(path)
    try:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        plain.close()


def test_environment_migrates_from_a_url_alone(tmp_path: Path) -> None:
    """The packaged environment upgrades a database named only by the URL in its config."""
    url = f"sqlite:///{tmp_path / 'by-url' / 'hangw.sqlite'}"
    command.upgrade(schema.alembic_config(url), "head")
    engine = schema.make_engine(url)
    try:
        assert schema.current_revision(engine) == schema.head_revision()
        assert schema.check_schema(engine) == []
    finally:
        engine.dispose()


def test_sqlite_connections_get_the_pragmas(tmp_path: Path) -> None:
    """make_engine's SQLite connections get foreign keys, NORMAL sync, a timeout, default temp."""
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'new-dir' / 'hangw.sqlite'}")
    schema.configure_sqlite(engine)  # a second call must not stack a second listener
    try:
        with engine.connect() as conn:
            pragma = conn.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert pragma("PRAGMA busy_timeout").scalar() == 5000
            assert pragma("PRAGMA temp_store").scalar() == 0  # DEFAULT: files when large
    finally:
        engine.dispose()
    assert (tmp_path / "new-dir").is_dir()


def test_hot_lookups_use_their_indexes(tmp_path: Path) -> None:
    """The live-MAC, slot-holder and latest-command lookups search an index, never scan."""
    from hangw import devices

    engine = schema.make_engine(f"sqlite:///{tmp_path / 'plan.sqlite'}")
    schema.upgrade(engine)
    statements = {
        "uq_han_devices_live_mac": (devices._SELECT_LIVE_MAC, {"b_mac": MAC}),
        "ix_han_devices_esiid": (devices._SELECT_SLOT_HOLDERS, {"b_esiid": "1"}),
        "ix_outbox_device_id_outbox_id": (
            devices._SELECT_DEVICE_WITH_COMMAND,
            {"b_device_id": "dev_1"},
        ),
    }
    try:
        with engine.connect() as conn:
            for index, (statement, params) in statements.items():
                compiled = statement.compiled(engine.dialect)
                values = {**compiled.defaults, **params}
                positional = tuple(values[name] for name in compiled.names)
                plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.sql}", positional)
                details = " | ".join(row[3] for row in plan)
                assert index in details and "SCAN han_devices" not in details, details
                assert "SCAN outbox" not in details, details
    finally:
        engine.dispose()


def test_an_esiid_history_is_read_through_its_devices_indexes(tmp_path: Path) -> None:
    """The ESI ID history searches devices by ESI ID, then history by device; it scans neither."""
    from hangw import devices

    engine = schema.make_engine(f"sqlite:///{tmp_path / 'plan.sqlite'}")
    schema.upgrade(engine)
    try:
        with engine.connect() as conn:
            compiled = devices._SELECT_ESIID_HISTORY.compile(engine)
            positional = tuple(
                "10443720000000001" if name == "b_esiid" else value
                for name, value in compiled.params.items()
            )
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", positional)
            details = " | ".join(row[3] for row in plan)
        assert "ix_han_devices_esiid" in details, details
        assert "ix_device_history_device_id_history_id" in details, details
        assert "SCAN han_devices" not in details and "SCAN device_history" not in details, details
        indexes = {index["name"] for index in sa.inspect(engine).get_indexes("device_history")}
        assert "ix_device_history_esiid" not in indexes
    finally:
        engine.dispose()
