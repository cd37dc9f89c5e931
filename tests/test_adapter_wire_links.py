"""The two ends of an adapter-protocol connection in memory (the harness of
test_adapter_wire_batches): how each side treats frames it cannot read, frames that come after it
refused or replaced a connection, and events the gateway refuses."""

from __future__ import annotations

from pathlib import Path

from tests.test_adapter_wire_batches import Wire


def test_the_client_refuses_a_frame_nested_too_deep_and_closes(tmp_path: Path) -> None:
    """A frame of deeply nested arrays from the gateway gets an error and a close from the
    client library, not an exception out of its receiver; the client then dials again."""
    wire = Wire(tmp_path)
    first = wire.client.link
    assert first is not None and wire.adapter._link is not None
    wire.adapter._link.sendString(b"[" * 200_000 + b"]" * 200_000)
    wire.settle()
    [error] = wire.gateway.of_type(wire.gateway.received, "error")
    assert error["reason"] == "malformed frame: arrays or objects nested too deep"
    assert wire.client.link is None and first.transport.disconnected  # type: ignore[union-attr]
    wire.settle(seconds=2)
    assert wire.client.link is not None and wire.client.link is not first
    assert wire.adapter.connected
