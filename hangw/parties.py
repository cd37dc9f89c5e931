"""The registry of parties allowed to call the API, kept in the store and mirrored in memory.

The TLS handshake asks ``is_registered`` synchronously for every client certificate, so the
registry is held in memory and reloaded from the store on start and every few seconds (a party
added with ``hangw party add`` is admitted within that period, without a restart).
"""

from __future__ import annotations

import sqlalchemy as sa

from hangw.domain import Party, Role
from hangw.store.db import Store
from hangw.store.model import parties


def load_parties_thd(conn: sa.Connection) -> list[Party]:
    return [
        Party(row.party_id, Role(row.role), row.name, row.cert_fingerprint)
        for row in conn.execute(sa.select(parties).order_by(parties.c.party_id))
    ]


def register_party_thd(conn: sa.Connection, party: Party, now: float) -> None:
    """Insert or replace the party with this id (a new certificate replaces the old one)."""
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
