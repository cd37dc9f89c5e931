"""HAN messaging: groups, requests, deliveries and their statuses, the fan-out outbox, webhooks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # a batch of events answered at once keeps its list of refusals, which can be long
    with op.batch_alter_table("head_end_events") as table:
        table.alter_column("refusal", type_=sa.Text, existing_type=sa.String(1000))
    op.create_table(
        "esiid_groups",
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("party_id", "name", name="pk_esiid_groups"),
    )
    op.create_table(
        "group_members",
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("party_id", "name", "esiid", name="pk_group_members"),
    )
    op.create_table(
        "message_requests",
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("category", sa.String(3), nullable=False),
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("party_role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("issuer_event_id", sa.BigInteger, nullable=True),
        sa.Column("event_key", sa.String(120), nullable=True),
        sa.Column("cancellation_id", sa.String(32), nullable=True),
        sa.Column("cancels_request_id", sa.String(32), nullable=True),
        sa.Column("device_class", sa.Integer, nullable=True),
        sa.Column("enrollment_group", sa.Integer, nullable=True),
        sa.Column("start_at", sa.Float, nullable=True),
        sa.Column("end_at", sa.Float, nullable=True),
        sa.Column("destination", sa.String(8), nullable=False),
        sa.Column("cluster", sa.Integer, nullable=False),
        sa.Column("zcl", sa.LargeBinary, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("group_name", sa.String(64), nullable=True),
        sa.Column("targets", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cancelled_by", sa.String(32), nullable=True),
        sa.Column("superseded_by", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_message_requests"),
        sa.UniqueConstraint("event_key", name="uq_message_requests_event_key"),
        sa.UniqueConstraint("cancellation_id", name="uq_message_requests_cancellation_id"),
    )
    op.create_index(
        "ix_message_requests_cancels_request_id", "message_requests", ["cancels_request_id"]
    )
    op.create_index(
        "ix_message_requests_party_id_created_at", "message_requests", ["party_id", "created_at"]
    )
    op.create_index("ix_message_requests_issuer_event_id", "message_requests", ["issuer_event_id"])
    op.create_table(
        "deliveries",
        sa.Column("delivery_id", _BIG_ID, nullable=False, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(16), nullable=False),
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("chunk", sa.Integer, nullable=False),
        sa.Column("status", sa.String(3), nullable=False),
        sa.Column("status_desc", sa.String(500), nullable=False),
        sa.Column("status_at", sa.Float, nullable=False),
        sa.Column("settled_at", sa.Float, nullable=True),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_deliveries"),
        sa.UniqueConstraint(
            "request_id", "esiid", "mac", name="uq_deliveries_request_id_esiid_mac"
        ),
    )
    op.create_index("ix_deliveries_request_id_chunk", "deliveries", ["request_id", "chunk"])
    op.create_index("ix_deliveries_esiid", "deliveries", ["esiid"])
    op.create_index("ix_deliveries_deadline", "deliveries", ["deadline"])
    op.create_table(
        "delivery_statuses",
        sa.Column("status_id", _BIG_ID, nullable=False, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("esiid", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(16), nullable=False),
        sa.Column("code", sa.String(3), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("status_id", name="pk_delivery_statuses"),
    )
    op.create_index(
        "ix_delivery_statuses_request_id_status_id",
        "delivery_statuses",
        ["request_id", "status_id"],
    )
    op.create_index("ix_delivery_statuses_esiid", "delivery_statuses", ["esiid"])
    op.create_table(
        "message_outbox",
        sa.Column("outbox_id", _BIG_ID, nullable=False, autoincrement=True),
        sa.Column("tdsp_duns", sa.String(16), nullable=False),
        sa.Column("command_id", sa.String(48), nullable=False),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("chunk", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retired_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("outbox_id", name="pk_message_outbox"),
        sa.UniqueConstraint("command_id", name="uq_message_outbox_command_id"),
    )
    op.create_index(
        "ix_message_outbox_pending", "message_outbox", ["tdsp_duns", "retired_at", "outbox_id"]
    )
    op.create_table(
        "webhook_subscriptions",
        sa.Column("subscription_id", sa.String(32), nullable=False),
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("parked_reason", sa.String(1000), nullable=False, server_default=""),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", name="pk_webhook_subscriptions"),
    )
    op.create_index("ix_webhook_subscriptions_party_id", "webhook_subscriptions", ["party_id"])
    op.create_table(
        "notifications",
        sa.Column("notification_id", _BIG_ID, nullable=False, autoincrement=True),
        sa.Column("subscription_id", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("notification_id", name="pk_notifications"),
    )
    op.create_index(
        "ix_notifications_subscription_id_sent_at_notification_id",
        "notifications",
        ["subscription_id", "sent_at", "notification_id"],
    )


def downgrade() -> None:
    for name in (
        "notifications",
        "webhook_subscriptions",
        "message_outbox",
        "delivery_statuses",
        "deliveries",
        "message_requests",
        "group_members",
        "esiid_groups",
    ):
        op.drop_table(name)
    with op.batch_alter_table("head_end_events") as table:
        table.alter_column("refusal", type_=sa.String(1000), existing_type=sa.Text)
