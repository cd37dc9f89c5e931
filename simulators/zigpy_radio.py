"""A zigpy radio with no hardware behind it, for tests of the coordinator path.

``FakeRadioApplication`` is a real zigpy ControllerApplication whose radio is a list: frames the
stack sends are recorded in ``sent``, frames "received over the air" are injected with
``receive``. Install-code joins are recorded by EUI-64 only (the link key is never kept in a
readable form here or logged).
"""

from __future__ import annotations

from typing import Any

import zigpy.application
import zigpy.config
import zigpy.types as t

__all__ = ["FakeRadioApplication"]


class FakeRadioApplication(zigpy.application.ControllerApplication):
    """A zigpy application whose radio records sent packets instead of transmitting them."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        base = {zigpy.config.CONF_DEVICE: {zigpy.config.CONF_DEVICE_PATH: "/dev/null"}}
        super().__init__({**base, **(config or {})})
        self.sent: list[t.ZigbeePacket] = []
        self.permitted_with_link_key: list[t.EUI64] = []
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def start_network(self) -> None:
        return None

    async def force_remove(self, dev: Any) -> None:
        return None

    async def add_endpoint(self, descriptor: Any) -> None:
        return None

    async def permit_ncp(self, time_s: int = 60) -> None:
        return None

    async def permit_with_link_key(
        self, node: t.EUI64, link_key: t.KeyData, time_s: int = 60
    ) -> None:
        self.permitted_with_link_key.append(node)

    async def reset_network_info(self) -> None:
        return None

    async def write_network_info(self, *, network_info: Any, node_info: Any) -> None:
        return None

    async def load_network_info(self, *, load_devices: bool = False) -> None:
        return None

    async def send_packet(self, packet: t.ZigbeePacket) -> None:
        self.sent.append(packet)

    def receive(self, packet: t.ZigbeePacket) -> None:
        """Deliver a packet as if the radio had heard it."""
        self.packet_received(packet)
