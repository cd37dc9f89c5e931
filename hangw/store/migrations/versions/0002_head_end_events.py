"""Remember the head-end events that changed the store, so a resent copy is applied once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "head_end_events",
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("refusal", sa.String(1000), nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("tdsp_duns", "event_id", name="pk_head_end_events"),
    )
    op.create_index("ix_head_end_events_received_at", "head_end_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_head_end_events_received_at", table_name="head_end_events")
    op.drop_table("head_end_events")
