"""Prometheus metrics of the gateway, in one registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
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


def render() -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
