"""Widen a device's reason and its history's to 1000 characters, what a head-end may send.

The adapter protocol lets a provisioning_status carry a reason of up to 1000 characters, and the
columns held 500: PostgreSQL refused a longer one ("value too long"), so the report was never
answered, the head-end sent it again and again, and the device never moved.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 20:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_HISTORY_COLUMNS = "history_id, device_id, esiid, status, event, at, actor, reason"


def upgrade() -> None:
    _reasons(sa.String(1000), was=sa.String(500))


def downgrade() -> None:
    for table in ("han_devices", "device_history"):
        op.execute(f"UPDATE {table} SET reason = substr(reason, 1, 500) WHERE length(reason) > 500")
    _reasons(sa.String(500), was=sa.String(1000))


def _reasons(type_: sa.String, *, was: sa.String) -> None:
    # SQLite alters a column by copying the table and dropping the old one, which it refuses
    # (foreign keys are on) while device_history rows refer to the device: they wait aside.
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:
        op.execute(
            f"CREATE TABLE _device_history_aside AS SELECT {_HISTORY_COLUMNS} FROM device_history"
        )
        op.execute("DELETE FROM device_history")
    for table in ("han_devices", "device_history"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "reason",
                type_=type_,
                existing_type=was,
                existing_nullable=False,
                existing_server_default="",
            )
    if sqlite:
        op.execute(
            f"INSERT INTO device_history ({_HISTORY_COLUMNS}) "
            f"SELECT {_HISTORY_COLUMNS} FROM _device_history_aside ORDER BY history_id"
        )
        op.execute("DROP TABLE _device_history_aside")
