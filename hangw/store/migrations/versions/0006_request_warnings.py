"""Keep what hangw noticed as it accepted a message request, for every later read of it.

The warnings (events superseded, targets with no device that takes the message, a text cut)
were in the POST's answer only: a REP's program that lost that answer, or another person
reading the request later, got ``[]`` from ``GET /v1/messages/{request_id}``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message_requests") as batch:
        batch.add_column(
            sa.Column("warnings", sa.Text, nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("message_requests") as batch:
        batch.drop_column("warnings")
