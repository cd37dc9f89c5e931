"""Every table of the store, in SQLAlchemy Core (the Alembic migrations follow this file)."""

from __future__ import annotations

import sqlalchemy as sa

from hangw.provisioning import SLOT_HOLDING

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

#: Market participants and customers that may call the API, each known by its certificate.
parties = sa.Table(
    "parties",
    metadata,
    sa.Column("party_id", sa.String(64), primary_key=True),  # DUNS, or a customer number
    sa.Column("role", sa.String(16), nullable=False),  # tdsp | rep | hsp | customer
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("cert_fingerprint", sa.String(64), nullable=False, unique=True),  # SHA-256 hex
    sa.Column("created_at", sa.Float, nullable=False),
)

#: The meter registry: one row per ESI ID.
meters = sa.Table(
    "meters",
    metadata,
    sa.Column("esiid", sa.String(64), primary_key=True),
    sa.Column("meter_serial", sa.String(64), nullable=False),
    sa.Column("tdsp_duns", sa.String(16), nullable=False, index=True),
    sa.Column("ror_duns", sa.String(16), nullable=False, index=True),
    sa.Column("customer_id", sa.String(64), nullable=True, index=True),
    sa.Column("hardware_version", sa.String(32), nullable=False),
    sa.Column("firmware_version", sa.String(32), nullable=False),
    sa.Column("han_capable", sa.Boolean, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)

#: "The device holds a slot", written exactly as the partial index on MAC says it: SQLite uses a
#: partial index only for a query that repeats its WHERE clause (literal values, not parameters).
LIVE_STATUS = sa.text(
    "status IN ({})".format(", ".join(f"'{status.value}'" for status in sorted(SLOT_HOLDING)))
)

#: HAN devices; ``status`` is a DeviceStatus display name and changes only through the table.
han_devices = sa.Table(
    "han_devices",
    metadata,
    sa.Column("device_id", sa.String(32), primary_key=True),
    sa.Column("esiid", sa.String(64), sa.ForeignKey("meters.esiid"), nullable=False, index=True),
    sa.Column("mac", sa.String(16), nullable=False),  # EUI-64, 16 upper-case hex digits
    sa.Column("install_code_enc", sa.LargeBinary, nullable=False),  # AES-GCM, never logged
    sa.Column("link_key_enc", sa.LargeBinary, nullable=False),  # AES-GCM, never logged
    sa.Column("device_type", sa.String(32), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("owner_party_id", sa.String(64), nullable=False),
    sa.Column("owner_role", sa.String(16), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("status_at", sa.Float, nullable=False),
    # as long as a head-end's reason may be (the adapter protocol's 1000 characters; 0007)
    sa.Column("reason", sa.String(1000), nullable=False, server_default=""),
    sa.Column("deadline", sa.Float, nullable=True, index=True),  # when the running timer fires
    sa.Column("created_at", sa.Float, nullable=False),
    # one slot-holding device per MAC across the whole market
    sa.Index(
        "uq_han_devices_live_mac",
        "mac",
        unique=True,
        sqlite_where=LIVE_STATUS,
        postgresql_where=LIVE_STATUS,
    ),
)

#: One row per status change (and per TDSP acknowledgement, which keeps the status).
device_history = sa.Table(
    "device_history",
    metadata,
    sa.Column("history_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(32), sa.ForeignKey("han_devices.device_id"), nullable=False),
    # not indexed: an ESI ID's history is read through its devices (migration 0005)
    sa.Column("esiid", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    # as han_devices.reason: a head-end's reason whole (migration 0007)
    sa.Column("reason", sa.String(1000), nullable=False, server_default=""),
    sa.Index("ix_device_history_device_id_history_id", "device_id", "history_id"),
)

#: A customer's grant of HAN access on one ESI ID to a HAN service provider.
grants = sa.Table(
    "grants",
    metadata,
    sa.Column("grant_id", sa.String(32), primary_key=True),
    sa.Column("esiid", sa.String(64), sa.ForeignKey("meters.esiid"), nullable=False, index=True),
    sa.Column("hsp_party_id", sa.String(64), nullable=False, index=True),
    sa.Column("granted_by", sa.String(64), nullable=False),
    sa.Column("granted_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

#: Answers already given to POSTs that carried an Idempotency-Key.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("party_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

#: Commands waiting for their adapter; written in the same transaction as the state change.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("outbox_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tdsp_duns", sa.String(16), nullable=False),
    sa.Column("command_id", sa.String(40), nullable=False, unique=True),
    sa.Column("device_id", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # provision | deprovision
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retired_at", sa.Float, nullable=True),
    sa.Index("ix_outbox_pending", "tdsp_duns", "retired_at", "outbox_id"),
    # a device's latest command, which every head-end report is checked against
    sa.Index("ix_outbox_device_id_outbox_id", "device_id", "outbox_id"),
)


head_end_events = sa.Table(
    "head_end_events",
    metadata,
    # Events a head-end sent that changed the store (provisioning reports, meter events), by the
    # head-end's event id, written in the transaction that applied them: a copy resent after the
    # gateway crashed before its acknowledgement went out gets the same answer, applied once.
    sa.Column("tdsp_duns", sa.String(16), primary_key=True),
    sa.Column("event_id", sa.String(100), primary_key=True),
    # NULL: applied (or stale, ignored); for a batch of events, the JSON list of refusals
    sa.Column("refusal", sa.Text, nullable=True),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
)


#: An integer key that autoincrements on SQLite (INTEGER PRIMARY KEY) and PostgreSQL (BIGSERIAL).
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: Named lists of ESI IDs a party sends to together (a demand-response program).
esiid_groups = sa.Table(
    "esiid_groups",
    metadata,
    sa.Column("party_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("party_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("esiid", sa.String(64), primary_key=True),
)

#: One row per messaging request: PRM, LCE, STM, and the cancellations CLE, CAL, CSM.
message_requests = sa.Table(
    "message_requests",
    metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("category", sa.String(3), nullable=False),
    sa.Column("party_id", sa.String(64), nullable=False),
    sa.Column("party_role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # the issuer event id (PRM, LCE, CLE) or message id (STM, CSM) the devices see
    sa.Column("issuer_event_id", sa.BigInteger, nullable=True),
    # "<party>:<category>:<issuer_event_id>" for PRM, LCE and STM: unique per sender
    sa.Column("event_key", sa.String(120), nullable=True, unique=True),
    sa.Column("cancellation_id", sa.String(32), nullable=True, unique=True),
    sa.Column("cancels_request_id", sa.String(32), nullable=True, index=True),
    sa.Column("device_class", sa.Integer, nullable=True),
    sa.Column("enrollment_group", sa.Integer, nullable=True),
    sa.Column("start_at", sa.Float, nullable=True),  # POSIX; the event's (or price's) start
    sa.Column("end_at", sa.Float, nullable=True),  # NULL: until changed
    sa.Column("destination", sa.String(8), nullable=False),  # all | esi
    sa.Column("cluster", sa.Integer, nullable=False),
    sa.Column("zcl", sa.LargeBinary, nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # the accepted SE 1.0 fields, JSON
    sa.Column("group_name", sa.String(64), nullable=True),
    sa.Column("targets", sa.Integer, nullable=False),  # ESI IDs
    sa.Column("state", sa.String(16), nullable=False),  # queued | sent | settled
    sa.Column("cancelled_by", sa.String(32), nullable=True),  # the CLE/CAL/CSM request
    sa.Column("superseded_by", sa.String(32), nullable=True),
    # what hangw noticed as it accepted the request (JSON list of sentences; migration 0006)
    sa.Column("warnings", sa.Text, nullable=False, server_default=sa.text("'[]'")),
    sa.Index("ix_message_requests_party_id_created_at", "party_id", "created_at"),
    sa.Index("ix_message_requests_issuer_event_id", "issuer_event_id"),
)

#: How long a delivery's status description may be: a head-end's reason, which the adapter
#: protocol lets be 1000 characters, inside hangw's words ("the meter did not take the frame
#: (failed at the head-end: ...)"; migration 0008).
DESCRIPTION_LENGTH = 1100

#: One delivery (MessageStatusID) per ESI ID of a request (mac ''), and per device (mac set)
#: once the device is known: registered on the meter, or heard from.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("delivery_id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("esiid", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(16), nullable=False),  # '' for the ESI ID itself
    sa.Column("tdsp_duns", sa.String(16), nullable=False),
    sa.Column("chunk", sa.Integer, nullable=False),  # which fan-out command carries it
    sa.Column("status", sa.String(3), nullable=False),
    sa.Column("status_desc", sa.String(DESCRIPTION_LENGTH), nullable=False),
    sa.Column("status_at", sa.Float, nullable=False),
    sa.Column("settled_at", sa.Float, nullable=True),  # first CON, STR, OPT or FLR
    sa.Column("deadline", sa.Float, nullable=True),  # FLR if not settled by then
    sa.UniqueConstraint("request_id", "esiid", "mac"),
    sa.Index("ix_deliveries_request_id_chunk", "request_id", "chunk"),
    sa.Index("ix_deliveries_esiid", "esiid"),
    sa.Index("ix_deliveries_deadline", "deadline"),
)

#: The message log: one row per status a delivery took (what the SMT log columns show).
delivery_statuses = sa.Table(
    "delivery_statuses",
    metadata,
    sa.Column("status_id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("esiid", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(16), nullable=False),
    sa.Column("code", sa.String(3), nullable=False),
    sa.Column("description", sa.String(DESCRIPTION_LENGTH), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_delivery_statuses_request_id_status_id", "request_id", "status_id"),
    sa.Index("ix_delivery_statuses_esiid", "esiid"),
)

#: Fan-out commands waiting for their head-end: ``chunk`` of ``request_id``'s deliveries.
message_outbox = sa.Table(
    "message_outbox",
    metadata,
    sa.Column("outbox_id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("tdsp_duns", sa.String(16), nullable=False),
    sa.Column("command_id", sa.String(48), nullable=False, unique=True),
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("chunk", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retired_at", sa.Float, nullable=True),
    sa.Index("ix_message_outbox_pending", "tdsp_duns", "retired_at", "outbox_id"),
)

#: Webhook subscriptions: where a party wants its device and message status changes posted.
webhook_subscriptions = sa.Table(
    "webhook_subscriptions",
    metadata,
    sa.Column("subscription_id", sa.String(32), primary_key=True),
    sa.Column("party_id", sa.String(64), nullable=False, index=True),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("secret_enc", sa.LargeBinary, nullable=False),  # AES-GCM, never logged
    sa.Column("state", sa.String(16), nullable=False),  # active | parked | deleted
    sa.Column("parked_reason", sa.String(1000), nullable=False, server_default=""),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

#: The notification outbox: each change for each subscription, posted in this order.
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("notification_id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("subscription_id", sa.String(32), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float, nullable=True),
    sa.Index(
        "ix_notifications_subscription_id_sent_at_notification_id",
        "subscription_id",
        "sent_at",
        "notification_id",
    ),
)

# -- the usage store -----------------------------------------------------------------------------

#: One row per ESI ID, operating day and channel: the day's intervals packed as little-endian
#: int32 Wh (a missing interval packs as 0), bitmasks of the missing and the estimated intervals
#: (bit k of byte k // 8 is interval k; NULL when no interval is), the day total and VEE flags.
usage_days = sa.Table(
    "usage_days",
    metadata,
    sa.Column("esiid", sa.String(64), nullable=False),
    sa.Column("day", sa.Integer, nullable=False),  # the local operating day as YYYYMMDD
    sa.Column("channel", sa.SmallInteger, nullable=False),  # 4 consumption, 1 generation
    sa.Column("tdsp_duns", sa.String(16), nullable=False),
    sa.Column("start_utc", sa.BigInteger, nullable=False),  # local midnight as POSIX seconds
    sa.Column("intervals", sa.SmallInteger, nullable=False),  # 92, 96 or 100
    sa.Column("wh", sa.LargeBinary, nullable=False),
    sa.Column("missing", sa.LargeBinary, nullable=True),
    sa.Column("estimated", sa.LargeBinary, nullable=True),
    sa.Column("total_wh", sa.BigInteger, nullable=False),  # the sum of the present intervals
    sa.Column("missing_count", sa.SmallInteger, nullable=False),
    sa.Column("estimated_count", sa.SmallInteger, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),  # hangw.usage.vee bits
    sa.Column("version", sa.String(96), nullable=False),  # creation timestamp ':' transaction id
    sa.Column("file_id", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("esiid", "day", "channel", name="pk_usage_days"),
)

#: Every delivered file and what became of it.
usage_files = sa.Table(
    "usage_files",
    metadata,
    sa.Column("file_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("tdsp_duns", sa.String(16), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # cli | drop:<TDSP DUNS>
    sa.Column("state", sa.String(16), nullable=False),  # loaded | rejected
    sa.Column("reason", sa.Text, nullable=False, server_default=""),  # why a whole file failed
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("loaded", sa.Integer, nullable=False),  # new ESI ID-days
    sa.Column("replaced", sa.Integer, nullable=False),  # newer versions of stored ones
    sa.Column("unchanged", sa.Integer, nullable=False),  # the store already had these or newer
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("flagged", sa.Integer, nullable=False),  # stored with at least one VEE flag
    sa.Column("imported_at", sa.Float, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
)

#: Each rejected record (or line) of a file: where and why.
usage_rejections = sa.Table(
    "usage_rejections",
    metadata,
    sa.Column("file_id", sa.Integer, nullable=False, index=True),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("esiid", sa.String(64), nullable=False, server_default=""),
    sa.Column("day", sa.Integer, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
)

#: Midnight register reads (the meter's cumulative Wh at the start of a local day).
register_reads = sa.Table(
    "register_reads",
    metadata,
    sa.Column("esiid", sa.String(64), nullable=False),
    sa.Column("day", sa.Integer, nullable=False),  # YYYYMMDD: the read at this day's midnight
    sa.Column("channel", sa.SmallInteger, nullable=False),
    sa.Column("reading_wh", sa.BigInteger, nullable=False),
    sa.Column("loaded_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("esiid", "day", "channel", name="pk_register_reads"),
)

#: Bulk report jobs (up to 50,000 ESI IDs), their progress and where the CSV result is kept.
usage_jobs = sa.Table(
    "usage_jobs",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("party_id", sa.String(64), nullable=False, index=True),
    sa.Column("report", sa.String(16), nullable=False),  # interval | daily | monthly
    sa.Column("params", sa.Text, nullable=False),  # JSON: esiids, from, to, channel
    sa.Column("state", sa.String(16), nullable=False),  # queued | running | done | failed
    sa.Column("esiids", sa.Integer, nullable=False),
    sa.Column("esiids_done", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("result_path", sa.String(1000), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),  # the result is deleted after this
)
