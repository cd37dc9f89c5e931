"""The registry of parties allowed to call the API, kept in the store and mirrored in memory.

The TLS handshake asks ``is_registered`` synchronously for every client certificate, so the
registry is held in memory and reloaded from the store on start and every few seconds (a party
added with ``hangw party add`` is admitted within that period, without a restart).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from hangw.domain import DUNS, Party, Role
from hangw.store.db import Store
from hangw.store.model import parties

#: The longest party id the store keeps (parties.party_id, meters.customer_id).
MAX_PARTY_ID = 64


def party_id_problem(party_id: str, role: Role) -> str | None:
    """Why ``party_id`` cannot name a party of ``role``, or None when it can.

    TDSPs, REPs and HSPs are known by their DUNS number, 9 or 13 digits, as the meter registry
    gives the TDSP and the ROR. A customer's id is what the registry's customer_id column holds:
    any printable text up to 64 characters, without spaces around it (the import strips them, so
    such an id would match no meter).
    """
    if not party_id.strip():
        return "the party id is blank"
    if role is not Role.CUSTOMER:
        if not DUNS.fullmatch(party_id):
            return f"{role.value} party ids are 9- or 13-digit DUNS numbers, not {party_id!r}"
        return None
    if party_id != party_id.strip() or not party_id.isprintable():
        return f"a customer id must be printable, without spaces around it, not {party_id!r}"
    if len(party_id) > MAX_PARTY_ID:
        return f"a customer id has at most {MAX_PARTY_ID} characters, not {len(party_id)}"
    return None


def describe(party: Party) -> str:
    """``rep 0000000000001 (demo-rep-a)``: a party as messages name it."""
    return f"{party.role.value} {party.party_id} ({party.name})"


class PartyConflict(Exception):
    """The party id or the certificate already belongs to another registration."""

    def __init__(self, party: Party, existing: list[Party]) -> None:
        self.party = party
        self.existing = existing
        clashes = []
        for other in existing:
            what = []
            if other.party_id == party.party_id:
                what.append(f"party id {party.party_id}")
            if other.cert_fingerprint == party.cert_fingerprint:
                what.append("the certificate")
            verb = "are" if len(what) > 1 else "is"
            clashes.append(f"{' and '.join(what)} {verb} already registered as {describe(other)}")
        super().__init__("; ".join(clashes))


@dataclass(frozen=True)
class Registration:
    """What registering a party did: ``replaced`` the registrations it took the place of;
    ``already`` when the same id, role and certificate were registered before (the name may
    have changed)."""

    party: Party
    replaced: tuple[Party, ...] = ()
    already: bool = False


def load_parties_thd(conn: sa.Connection) -> list[Party]:
    return [
        Party(row.party_id, Role(row.role), row.name, row.cert_fingerprint)
        for row in conn.execute(sa.select(parties).order_by(parties.c.party_id))
    ]


def register_party_thd(
    conn: sa.Connection, party: Party, now: float, replace: bool = False
) -> Registration:
    """Register ``party`` (its id, role, name and certificate fingerprint).

    The same id, role and certificate registered already are kept (the name is updated). When
    the id or the certificate belongs to another registration, PartyConflict is raised, unless
    ``replace`` is given: then that registration is removed and reported in ``replaced``.
    """
    rows = conn.execute(
        sa.select(parties).where(
            (parties.c.party_id == party.party_id)
            | (parties.c.cert_fingerprint == party.cert_fingerprint)
        )
    ).all()
    existing = [Party(r.party_id, Role(r.role), r.name, r.cert_fingerprint) for r in rows]
    others = [
        e
        for e in existing
        if (e.party_id, e.role, e.cert_fingerprint)
        != (party.party_id, party.role, party.cert_fingerprint)
    ]
    if others and not replace:
        raise PartyConflict(party, others)
    if not others and existing:
        if existing[0].name != party.name:
            conn.execute(
                parties.update().where(parties.c.party_id == party.party_id).values(name=party.name)
            )
        return Registration(party, already=True)
    conn.execute(
        parties.delete().where(
            (parties.c.party_id == party.party_id)
            | (parties.c.cert_fingerprint == party.cert_fingerprint)
        )
    )
    conn.execute(
        parties.insert().values(
            party_id=party.party_id,
            role=party.role.value,
            name=party.name,
            cert_fingerprint=party.cert_fingerprint,
            created_at=now,
        )
    )
    return Registration(party, replaced=tuple(others))


class PartyRegistry:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_fingerprint: dict[str, Party] = {}

    async def refresh(self) -> None:
        loaded = await self._store.run(load_parties_thd)
        self._by_fingerprint = {party.cert_fingerprint: party for party in loaded}

    def lookup(self, fingerprint: str | None) -> Party | None:
        return self._by_fingerprint.get(fingerprint) if fingerprint else None

    def is_registered(self, fingerprint: str) -> bool:
        return fingerprint in self._by_fingerprint
