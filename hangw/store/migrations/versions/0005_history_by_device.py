"""Drop the ESI ID index of device_history: an ESI ID's history is read through its devices.

Every status change paid for that index (one more B-tree insert, one more page at commit) only
to serve the consolidated ESI ID history, which finds the same rows through the ESI ID's devices
(han_devices' ESI ID index, then device_history's device index). The column stays.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 06:30:00
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.drop_index("ix_device_history_esiid", table_name="device_history")


def downgrade() -> None:
    op.create_index("ix_device_history_esiid", "device_history", ["esiid"])
