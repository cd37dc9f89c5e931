"""Prometheus metrics of the gateway, in one registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

registry = CollectorRegistry(auto_describe=True)

api_requests = Counter(
    "hangw_api_requests", "API requests answered", ["method", "status"], registry=registry
)
device_transitions = Counter(
    "hangw_device_transitions", "HAN device status changes", ["status"], registry=registry
)
outbox_sent = Counter(
    "hangw_outbox_commands_sent",
    "Commands handed to an adapter and accepted",
    ["tdsp_duns", "kind"],
    registry=registry,
)
outbox_failures = Counter(
    "hangw_outbox_send_failures",
    "Commands an adapter could not take (retried)",
    ["tdsp_duns"],
    registry=registry,
)
outbox_pending = Gauge(
    "hangw_outbox_pending", "Commands waiting for their adapter", ["tdsp_duns"], registry=registry
)
head_end_events = Counter(
    "hangw_head_end_events",
    "Events from head-ends, by kind (delivery_status, inbound_frame, meter_event) and outcome",
    ["tdsp_duns", "kind", "outcome"],
    registry=registry,
)
messages_accepted = Counter(
    "hangw_messages_accepted",
    "Messaging requests accepted (PRM, LCE, STM and cancellations), by sender role",
    ["role"],
    registry=registry,
)
deliveries_changed = Counter(
    "hangw_delivery_statuses",
    "Statuses taken by message deliveries, by status code (RQA ... FLR)",
    ["code"],
    registry=registry,
)
inbound_unmatched = Counter(
    "hangw_inbound_frames_unmatched",
    "Frames from devices that answer no delivery the gateway knows (or ask for something)",
    registry=registry,
)

store_jobs = Counter(
    "hangw_store_jobs", "Units of database work run (each in its own savepoint)", registry=registry
)
store_commits = Counter(
    "hangw_store_transactions", "Database transactions committed or rolled back", registry=registry
)
store_batch = Histogram(
    "hangw_store_batch_jobs",
    "Jobs group-committed in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=registry,
)
store_wait = Histogram(
    "hangw_store_queue_wait_seconds",
    "Time a job waited for a writer thread (the first job of each batch)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=registry,
)


def render() -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
