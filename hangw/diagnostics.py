"""Pings and meter reads through the head-end: is a meter (its ESI) or a HAN device reachable
right now, and what does the meter's register say?

The market asked for this and never had it: when a device does not show a price, a REP or a
customer can ask whether the meter answers, which firmware it runs, and whether the device is
joined and answering; and read the meter on demand (Metering cluster Read Attributes) instead of
waiting for the next day's interval data. The question goes to the TDSP's adapter as a query (not
through the outbox: someone is waiting), after the same authorization as reading the ESI ID's
devices.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import sep1
from adapters.commands import (
    MeterReading,
    PingDevice,
    PingEsi,
    PingResult,
    Query,
    QueryFailed,
    QueryResult,
    ReadMeter,
)
from adapters.interfaces import IHeadEndAdapter
from hangw.devices import DeviceService
from hangw.domain import Party
from hangw.problems import Problem
from sep1.messages import METERING, ReadAttributesResponse

#: What an on-demand read asks the meter: Current Summation Delivered, Instantaneous Demand,
#: and the Unit of Measure, Multiplier and Divisor that say how to read them.
READ_ATTRIBUTES = (0x0000, 0x0400, 0x0300, 0x0301, 0x0302)
#: Unit of Measure (ZCL Metering 0x0300) kWh and kW, binary (0x80 would be the same in BCD).
KWH = 0x00


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

    async def read_meter(self, party: Party, esiid: str) -> dict[str, Any]:
        """Read the meter now: its register in Wh and its demand in W (None when the meter does
        not give it), scaled by the unit, multiplier and divisor it reports; ``read_at`` is when
        the meter answered and ``asked_at`` when the gateway asked, both POSIX seconds."""
        meter = await self._devices.authorized_meter(party, esiid)
        asked_at = time.time()
        result = await self._query(meter.tdsp_duns, ReadMeter(esiid, READ_ATTRIBUTES))
        if not isinstance(result, MeterReading):
            raise HeadEndCouldNotAnswer(
                f"TDSP {meter.tdsp_duns} answered the meter read with something else"
            )
        values = _read_values(meter.tdsp_duns, result)
        summation = values.get("current_summation_delivered")
        if summation is None:
            raise HeadEndCouldNotAnswer(
                f"TDSP {meter.tdsp_duns}: the meter did not give its current summation delivered"
            )
        demand = values.get("instantaneous_demand")
        return {
            "esiid": esiid,
            "current_summation_delivered_wh": _scaled(summation, values),
            "instantaneous_demand_w": None if demand is None else _scaled(demand, values),
            "read_at": result.read_at,
            "asked_at": asked_at,
        }

    async def _query(self, tdsp_duns: str, query: Query) -> QueryResult:
        adapter = self._adapters.get(tdsp_duns)
        if adapter is None:
            raise HeadEndCouldNotAnswer(f"no adapter is configured for TDSP {tdsp_duns}")
        try:
            return await adapter.query(query)
        except (QueryFailed, ConnectionError) as failure:
            raise HeadEndCouldNotAnswer(f"TDSP {tdsp_duns}: {failure}; try again later") from None

    async def _ask(self, tdsp_duns: str, query: Query) -> PingResult:
        result = await self._query(tdsp_duns, query)
        if not isinstance(result, PingResult):
            raise HeadEndCouldNotAnswer(f"TDSP {tdsp_duns} answered the ping with something else")
        return result


def _read_values(tdsp_duns: str, reading: MeterReading) -> dict[str, int]:
    """The attributes the meter gave, by name, once its unit is known to be kWh (or kW)."""
    try:
        response = sep1.decode(METERING, reading.zcl)
    except sep1.DecodeError as error:
        raise HeadEndCouldNotAnswer(
            f"TDSP {tdsp_duns}: the meter's answer could not be decoded: {error}"
        ) from None
    if not isinstance(response, ReadAttributesResponse):
        raise HeadEndCouldNotAnswer(
            f"TDSP {tdsp_duns}: the meter answered with {type(response).__name__}, "
            "not Read Attributes Response"
        )
    values = response.values()
    unit = values.get("unit_of_measure", KWH)
    if unit != KWH:
        raise HeadEndCouldNotAnswer(
            f"TDSP {tdsp_duns}: the meter reports unit of measure 0x{unit:02X}, "
            "not kWh in binary (0x00)"
        )
    if values.get("divisor") == 0:
        raise HeadEndCouldNotAnswer(f"TDSP {tdsp_duns}: the meter gave divisor 0")
    return values


def _scaled(raw: int, values: Mapping[str, int]) -> int | float:
    """A raw summation (kWh) or demand (kW) as Wh or W: raw x multiplier / divisor x 1000, with
    multiplier and divisor 1 when the meter does not give them; an int when it is whole."""
    exact = Fraction(raw * values.get("multiplier", 1) * 1000, values.get("divisor", 1))
    return exact.numerator if exact.denominator == 1 else round(float(exact), 3)


def _result_json(result: PingResult) -> dict[str, Any]:
    return {
        "reachable": result.reachable,
        "reason": result.reason,
        "firmware_version": result.firmware_version or None,
        "rtt_ms": result.rtt_ms or None,
        "asked_at": time.time(),
    }
