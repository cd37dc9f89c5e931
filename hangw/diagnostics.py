"""Pings through the head-end: is a meter (its ESI) or a HAN device reachable right now?

The market asked for this and never had it: when a device does not show a price, a REP or a
customer can ask whether the meter answers, which firmware it runs, and whether the device is
joined and answering. The question goes to the TDSP's adapter as a query (not through the
outbox: someone is waiting), after the same authorization as reading the ESI ID's devices.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from adapters.commands import PingDevice, PingEsi, PingResult, Query, QueryFailed
from adapters.interfaces import IHeadEndAdapter
from hangw.devices import DeviceService
from hangw.domain import Party
from hangw.problems import Problem


class HeadEndCouldNotAnswer(Problem):
    status, slug, title = 502, "head-end-could-not-answer", "The TDSP's head-end could not answer"


class Diagnostics:
    def __init__(self, devices: DeviceService, adapters: Mapping[str, IHeadEndAdapter]) -> None:
        self._devices = devices
        self._adapters = adapters

    async def ping_esi(self, party: Party, esiid: str) -> dict[str, Any]:
        meter = await self._devices.authorized_meter(party, esiid)
        result = await self._ask(meter.tdsp_duns, PingEsi(esiid))
        return {"esiid": esiid, **_result_json(result)}

    async def ping_device(self, party: Party, device_id: str) -> dict[str, Any]:
        device, meter = await self._devices.authorized_device(party, device_id)
        result = await self._ask(meter.tdsp_duns, PingDevice(device.esiid, device.mac))
        return {"esiid": device.esiid, "device_id": device_id, **_result_json(result)}

    async def _ask(self, tdsp_duns: str, query: Query) -> PingResult:
        adapter = self._adapters.get(tdsp_duns)
        if adapter is None:
            raise HeadEndCouldNotAnswer(f"no adapter is configured for TDSP {tdsp_duns}")
        try:
            result = await adapter.query(query)
        except (QueryFailed, ConnectionError) as failure:
            raise HeadEndCouldNotAnswer(f"TDSP {tdsp_duns}: {failure}; try again later") from None
        if not isinstance(result, PingResult):
            raise HeadEndCouldNotAnswer(f"TDSP {tdsp_duns} answered the ping with something else")
        return result


def _result_json(result: PingResult) -> dict[str, Any]:
    return {
        "reachable": result.reachable,
        "reason": result.reason,
        "firmware_version": result.firmware_version or None,
        "rtt_ms": result.rtt_ms or None,
        "asked_at": time.time(),
    }
