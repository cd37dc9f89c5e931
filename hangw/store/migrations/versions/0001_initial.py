"""Create the store: parties, meters, HAN devices and history, grants, idempotency keys, outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

# The slot-holding statuses as they stood when this revision was written; a later change to
# hangw.provisioning.SLOT_HOLDING needs a new revision that recreates the index.
LIVE_STATUS = (
    "status IN ('Add Acknowledged', 'Add Pending', 'Device Added', 'Meter Ready', "
    "'Remove Acknowledged', 'Remove Failed', 'Remove Pending', 'Remove Rejected')"
)


def upgrade() -> None:
    op.create_table(
        "parties",
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cert_fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("party_id", name="pk_parties"),
        sa.UniqueConstraint("cert_fingerprint", name="uq_parties_cert_fingerprint"),
    )

    op.create_table(
        "meters",
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("meter_serial", sa.String(64), nullable=False),
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("ror_duns", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("hardware_version", sa.String(32), nullable=False),
        sa.Column("firmware_version", sa.String(32), nullable=False),
        sa.Column("han_capable", sa.Boolean, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("esiid", name="pk_meters"),
    )
    op.create_index("ix_meters_tdsp_duns", "meters", ["tdsp_duns"])
    op.create_index("ix_meters_ror_duns", "meters", ["ror_duns"])
    op.create_index("ix_meters_customer_id", "meters", ["customer_id"])

    op.create_table(
        "han_devices",
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(16), nullable=False),
        sa.Column("install_code_enc", sa.LargeBinary, nullable=False),
        sa.Column("link_key_enc", sa.LargeBinary, nullable=False),
        sa.Column("device_type", sa.String(32), nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("owner_party_id", sa.String(64), nullable=False),
        sa.Column("owner_role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("status_at", sa.Float, nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_han_devices"),
        sa.ForeignKeyConstraint(["esiid"], ["meters.esiid"], name="fk_han_devices_esiid_meters"),
    )
    op.create_index("ix_han_devices_esiid", "han_devices", ["esiid"])
    op.create_index("ix_han_devices_deadline", "han_devices", ["deadline"])
    op.create_index(
        "uq_han_devices_live_mac",
        "han_devices",
        ["mac"],
        unique=True,
        sqlite_where=sa.text(LIVE_STATUS),
        postgresql_where=sa.text(LIVE_STATUS),
    )

    op.create_table(
        "device_history",
        sa.Column("history_id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("history_id", name="pk_device_history"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["han_devices.device_id"], name="fk_device_history_device_id_han_devices"
        ),
    )
    op.create_index("ix_device_history_esiid", "device_history", ["esiid"])
    op.create_index(
        "ix_device_history_device_id_history_id", "device_history", ["device_id", "history_id"]
    )

    op.create_table(
        "grants",
        sa.Column("grant_id", sa.String(32), nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("hsp_party_id", sa.String(64), nullable=False),
        sa.Column("granted_by", sa.String(64), nullable=False),
        sa.Column("granted_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("grant_id", name="pk_grants"),
        sa.ForeignKeyConstraint(["esiid"], ["meters.esiid"], name="fk_grants_esiid_meters"),
    )
    op.create_index("ix_grants_esiid", "grants", ["esiid"])
    op.create_index("ix_grants_hsp_party_id", "grants", ["hsp_party_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("party_id", "key", name="pk_idempotency_keys"),
    )

    op.create_table(
        "outbox",
        sa.Column("outbox_id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("command_id", sa.String(40), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retired_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("outbox_id", name="pk_outbox"),
        sa.UniqueConstraint("command_id", name="uq_outbox_command_id"),
    )
    op.create_index("ix_outbox_pending", "outbox", ["tdsp_duns", "retired_at", "outbox_id"])
    op.create_index("ix_outbox_device_id_outbox_id", "outbox", ["device_id", "outbox_id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("idempotency_keys")
    op.drop_table("grants")
    op.drop_table("device_history")
    op.drop_table("han_devices")
    op.drop_table("meters")
    op.drop_table("parties")
