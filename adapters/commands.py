"""What the gateway asks of a head-end and what a head-end reports back.

Plain frozen values, shared by every adapter (in-process simulator, adapter protocol, coordinator),
so an adapter never needs to import the daemon. Secrets (install codes, link keys) are carried as
bytes and are left out of every ``repr``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class HeadEndStatus(enum.StrEnum):
    """Provisioning statuses a head-end reports (the TDSP side of smt-han.md's conditions)."""

    ACKNOWLEDGED = "acknowledged"
    ADD_PENDING = "add-pending"
    METER_READY = "meter-ready"
    DEVICE_JOINED = "device-joined"
    ADD_REJECTED = "add-rejected"
    ADD_FAILED = "add-failed"
    REMOVE_PENDING = "remove-pending"
    REMOVE_REJECTED = "remove-rejected"
    REMOVE_FAILED = "remove-failed"
    DEVICE_REMOVED = "device-removed"


@dataclass(frozen=True)
class ProvisionDevice:
    """Load a device's install code into the meter and open its join window."""

    command_id: str
    esiid: str
    device_id: str
    mac: str
    install_code: bytes = field(repr=False)
    link_key: bytes = field(repr=False)
    join_window_s: int


@dataclass(frozen=True)
class DeprovisionDevice:
    """Remove a device from the meter's HAN."""

    command_id: str
    esiid: str
    device_id: str
    mac: str


Command = ProvisionDevice | DeprovisionDevice


@dataclass(frozen=True)
class ProvisioningReport:
    """A head-end's report about one provisioning or de-provisioning command."""

    command_id: str
    esiid: str
    device_id: str
    status: HeadEndStatus
    reason: str = ""
    #: The TDSP whose head-end sent the report, set by the adapter that received it; the
    #: gateway refuses a report about a meter of another TDSP. Empty: not checked.
    tdsp_duns: str = ""


class ReportRefused(Exception):
    """The gateway will not apply a report: it is about a device the head-end does not serve
    (another TDSP's meter, another ESI ID). Resending it does not help."""
