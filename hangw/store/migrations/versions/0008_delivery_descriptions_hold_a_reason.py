"""Widen a delivery's status description to hold a head-end's reason whole.

A head-end may give a delivery status a reason of up to 1000 characters, and hangw puts its own
words around it ("the meter did not take the frame (failed at the head-end: ...)"): in 500
characters, the end of a long reason was cut off, in the deliveries and in the message log.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_COLUMNS = (("deliveries", "status_desc"), ("delivery_statuses", "description"))


def upgrade() -> None:
    _descriptions(sa.String(1100), was=sa.String(500))


def downgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(
            f"UPDATE {table} SET {column} = substr({column}, 1, 500) WHERE length({column}) > 500"
        )
    _descriptions(sa.String(500), was=sa.String(1100))


def _descriptions(type_: sa.String, *, was: sa.String) -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=type_, existing_type=was, existing_nullable=False)
