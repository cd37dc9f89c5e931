"""The market's nouns as plain values: parties and their roles, meters, devices, history."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from hangw.provisioning import DeviceStatus

#: A DUNS number, as TDSPs, REPs and HSPs are known: 9 digits, or 13 (DUNS+4).
DUNS = re.compile(r"[0-9]{9}([0-9]{4})?")


class Role(enum.StrEnum):
    TDSP = "tdsp"
    REP = "rep"
    HSP = "hsp"
    CUSTOMER = "customer"


@dataclass(frozen=True)
class Party:
    """Who is calling: known by the SHA-256 fingerprint of its client certificate."""

    party_id: str  # DUNS for TDSPs, REPs and HSPs; a customer number for customers
    role: Role
    name: str
    cert_fingerprint: str


@dataclass(frozen=True)
class Meter:
    esiid: str
    meter_serial: str
    tdsp_duns: str
    ror_duns: str
    customer_id: str | None
    hardware_version: str
    firmware_version: str
    han_capable: bool
    active: bool


@dataclass(frozen=True)
class HistoryEntry:
    device_id: str
    esiid: str
    status: DeviceStatus
    event: str
    at: float
    actor: str
    reason: str


@dataclass(frozen=True)
class Device:
    """A HAN device as stored, without its secrets (those stay encrypted in the store)."""

    device_id: str
    esiid: str
    mac: str
    device_type: str
    description: str
    owner_party_id: str
    owner_role: Role
    status: DeviceStatus
    status_at: float
    reason: str
    created_at: float


@dataclass(frozen=True)
class Grant:
    grant_id: str
    esiid: str
    hsp_party_id: str
    granted_by: str
    granted_at: float
    revoked_at: float | None
