"""Who may act on an ESI ID and its HAN devices (smt-han.md "Parties").

The ROR of the ESI ID, the TDSP of its meter and its customer have HAN access by right; a HAN
service provider only while the customer's grant is live. Customers may remove any device on
their ESI ID at any time; an HSP may remove only the devices it provisioned.
"""

from __future__ import annotations

from hangw.domain import Device, Meter, Party, Role


def has_han_access(party: Party, meter: Meter, *, live_grant: bool) -> bool:
    """May ``party`` provision devices on, and read the HAN of, this meter's ESI ID?"""
    match party.role:
        case Role.REP:
            return party.party_id == meter.ror_duns
        case Role.TDSP:
            return party.party_id == meter.tdsp_duns
        case Role.CUSTOMER:
            return meter.customer_id is not None and party.party_id == meter.customer_id
        case Role.HSP:
            return live_grant
    return False


def may_remove(party: Party, meter: Meter, device: Device, *, live_grant: bool) -> bool:
    """May ``party`` remove (or withdraw the pending add of) ``device``?"""
    if not has_han_access(party, meter, live_grant=live_grant):
        return False
    if party.role is Role.HSP:
        return device.owner_party_id == party.party_id
    return True


def may_manage_grants(party: Party, meter: Meter) -> bool:
    """Only the customer of the ESI ID grants and revokes HSP access."""
    return party.role is Role.CUSTOMER and party.party_id == meter.customer_id


def hides_identifiers(viewer: Party, device: Device) -> bool:
    """An HSP's devices show no MAC address to the customer (who must not re-provision them)."""
    return hides_identifiers_of(viewer, device.owner_role)


def hides_identifiers_of(viewer: Party, owner_role: Role) -> bool:
    """Does ``viewer`` see no MAC (nor which device holds one) of a device ``owner_role`` added?"""
    return viewer.role is Role.CUSTOMER and owner_role is Role.HSP
