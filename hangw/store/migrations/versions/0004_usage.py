"""The usage store: interval days, delivered files and their rejections, register reads, jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=False),
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("start_utc", sa.BigInteger, nullable=False),
        sa.Column("intervals", sa.SmallInteger, nullable=False),
        sa.Column("wh", sa.LargeBinary, nullable=False),
        sa.Column("missing", sa.LargeBinary, nullable=True),
        sa.Column("estimated", sa.LargeBinary, nullable=True),
        sa.Column("total_wh", sa.BigInteger, nullable=False),
        sa.Column("missing_count", sa.SmallInteger, nullable=False),
        sa.Column("estimated_count", sa.SmallInteger, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("version", sa.String(96), nullable=False),
        sa.Column("file_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("esiid", "day", "channel", name="pk_usage_days"),
    )
    op.create_table(
        "usage_files",
        sa.Column("file_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("loaded", sa.Integer, nullable=False),
        sa.Column("replaced", sa.Integer, nullable=False),
        sa.Column("unchanged", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Integer, nullable=False),
        sa.Column("imported_at", sa.Float, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_usage_files_sha256", "usage_files", ["sha256"])
    op.create_table(
        "usage_rejections",
        sa.Column("file_id", sa.Integer, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False, server_default=""),
        sa.Column("day", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_usage_rejections_file_id", "usage_rejections", ["file_id"])
    op.create_table(
        "register_reads",
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=False),
        sa.Column("reading_wh", sa.BigInteger, nullable=False),
        sa.Column("loaded_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("esiid", "day", "channel", name="pk_register_reads"),
    )
    op.create_table(
        "usage_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("report", sa.String(16), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("esiids", sa.Integer, nullable=False),
        sa.Column("esiids_done", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("result_path", sa.String(1000), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
    )
    op.create_index("ix_usage_jobs_party_id", "usage_jobs", ["party_id"])


def downgrade() -> None:
    op.drop_index("ix_usage_jobs_party_id", "usage_jobs")
    op.drop_table("usage_jobs")
    op.drop_table("register_reads")
    op.drop_index("ix_usage_rejections_file_id", "usage_rejections")
    op.drop_table("usage_rejections")
    op.drop_index("ix_usage_files_sha256", "usage_files")
    op.drop_table("usage_files")
    op.drop_table("usage_days")
