"""A real hangw gateway for tests: temporary state, dev certificates, test meters, real TLS."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from hangw import certs
from hangw.client import ApiError, Client, Identity
from hangw.config import Config, from_mapping
from hangw.domain import Party, Role
from hangw.meters import parse_meter_csv, upsert_meters_thd
from hangw.parties import register_party_thd
from hangw.store import schema
from hangw.store.db import Store

DATA = Path(__file__).parent / "data"
TDSP = "1039940674000"
REP_A = "0000000000001"
REP_B = "0000000000002"
HSP = "0000000000003"
CUSTOMER = "CUST-0001"
E_OWN = "10443720000000001"  # ROR REP_A, customer CUST-0001
E_OTHER = "10443720000000002"  # ROR REP_B, no customer
E_OLD_FIRMWARE = "10443720000000003"
E_REMOVED = "10443720000000004"
E_OTHER_TDSP = "10443720000000005"  # ROR REP_A, another TDSP

#: Valid install codes (public vectors' codes and codes with correct CRC-16/X-25).
INSTALL_CODE = "83FED3407A939723A5C639B26916D505C3B5"
INSTALL_CODE_2 = "11223344556677884AF7"


def make_test_config(state_dir: Path, **provisioning: Any) -> Config:
    simulator = {
        "kind": "simulator",
        "ack_delay_s": 0.01,
        "pending_delay_s": 0.02,
        "meter_ready_delay_s": 0.02,
        "join_delay_s": 0.03,
    }
    simulator.update(provisioning.pop("simulator", {}))
    adapter = provisioning.pop("adapter", None) or simulator
    usage = provisioning.pop("usage", {})
    messaging = provisioning.pop("messaging", {})
    return from_mapping(
        {
            "usage": usage,
            "messaging": messaging,
            "gateway": {"state_dir": str(state_dir)},
            "api": {"host": "127.0.0.1", "port": 0, "ops_port": 0, "adapter_port": 0},
            "provisioning": {
                "join_window_s": 60,
                "command_timeout_s": 60,
                "timer_interval_s": 0.05,
                **provisioning,
            },
            "logging": {"level": "debug", "format": "json"},
            "adapters": {TDSP: adapter},
        },
        source="test",
    )


def prepare_state(config: Config) -> dict[str, Any]:
    """Make the dev identity, register the demo parties and load tests/data/meters.csv."""
    issued = certs.init_dev_identity(config.cert_dir, now=time.time())
    engine = schema.make_engine(config.store_url)
    schema.upgrade(engine)
    store = Store(engine, reactor=None)  # type: ignore[arg-type]
    for demo in issued:
        store.transaction(
            register_party_thd,
            Party(demo.party_id, Role(demo.role), demo.name, demo.fingerprint),
            time.time(),
        )
    with open(DATA / "meters.csv", newline="") as handle:
        store.transaction(upsert_meters_thd, parse_meter_csv(handle))
    engine.dispose()
    return {demo.name: demo for demo in issued}


@dataclass
class Caller:
    """One party's HTTPS client; requests run in a thread so the reactor keeps serving."""

    client: Client
    name: str

    def call(self, method: str, path: str, body: Any = None, headers: Any = None) -> Deferred[Any]:
        def run() -> tuple[int, Any]:
            try:
                return self.client.request(method, path, body, headers)
            except ApiError as error:
                return error.status, error.problem

        return deferToThread(run)


@dataclass
class Harness:
    config: Config
    gateway: Any
    api_port: int
    ops_port: int
    issued: dict[str, Any]
    callers: dict[str, Caller] = field(default_factory=dict)
    #: The adapter-protocol port, when a TDSP is configured with kind = "wire".
    adapter_port: int = 0

    def caller(self, name: str) -> Caller:
        if name not in self.callers:
            demo = self.issued[name]
            identity = Identity(
                Path(demo.cert_path), Path(demo.key_path), self.config.cert_dir / "ca.pem"
            )
            self.callers[name] = Caller(
                Client(f"https://localhost:{self.api_port}", identity), name
            )
        return self.callers[name]

    def close(self) -> None:
        for caller in self.callers.values():
            caller.client.close()
