"""The least a provisioning request could cost on hangwd's own parts: the floor under its rate.

A server built like hangwd (asyncio reactor, pinned to one CPU as ``gateway.cpu = "auto"`` does,
the mutual-TLS listener, a Klein route with a coroutine handler, the store's group-committing
writer on a SQLite file in WAL mode) whose one route does nothing but parse the JSON body, insert
one row and answer 202. No authorization, validation, sealing, history, outbox or head-end.
bench/api_provision.py runs it beside the bare endpoint, so that the ratio hangw reaches can be
read against the ratio its stack allows at all.

    python bench/stack_floor_server.py CERT_DIR PORT FINGERPRINT[,FINGERPRINT...] DB_FILE
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet import asyncioreactor

asyncio.set_event_loop(asyncio.new_event_loop())
asyncioreactor.install(asyncio.get_event_loop())

import sqlalchemy as sa  # noqa: E402
from klein import Klein  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.endpoints import SSL4ServerEndpoint  # noqa: E402

from hangw import affinity  # noqa: E402
from hangw.api.listener import PinnedClientContextFactory  # noqa: E402
from hangw.gateway import MeteredSite  # noqa: E402
from hangw.store.db import Store  # noqa: E402
from hangw.store.prepared import Prepared  # noqa: E402
from hangw.store.schema import make_engine  # noqa: E402

metadata = sa.MetaData()
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("esiid", sa.String, nullable=False),
    sa.Column("mac", sa.String, nullable=False),
)
INSERT = Prepared(devices.insert(), ("esiid", "mac"))


def insert_thd(conn: sa.Connection, esiid: str, mac: str) -> int:
    return int(INSERT.execute(conn, {"esiid": esiid, "mac": mac}).lastrowid)


class Floor:
    app = Klein()

    def __init__(self, store: Store) -> None:
        self.store = store

    @app.route("/v1/esiids/<esiid>/han-devices", methods=["POST"])
    async def add_device(self, request: Any, esiid: str) -> bytes:
        body = json.loads(request.content.read())
        row = await self.store.run(insert_thd, esiid, body["mac"])
        request.setResponseCode(202)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"id": f"dev_{row:016x}", "status": "Add Acknowledged"}).encode()


def main() -> None:
    cert_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    registered, db_file = set(sys.argv[3].split(",")), Path(sys.argv[4])
    affinity.pin("auto")
    engine = make_engine(f"sqlite:///{db_file}")
    metadata.create_all(engine)
    store = Store(engine, cast(Any, reactor))
    store.start()
    reactor.addSystemEventTrigger("before", "shutdown", store.stop)
    tls = PinnedClientContextFactory(
        cert_dir / "server.pem", cert_dir / "server-key.pem", registered.__contains__
    )
    site = MeteredSite(
        Floor(store).app.resource(), max_body_bytes=65536, parsePOSTFormSubmission=False
    )
    SSL4ServerEndpoint(reactor, port, tls, interface="127.0.0.1").listen(site)
    reactor.run()


if __name__ == "__main__":
    main()
