"""Install codes and link keys: encrypted at rest, and never in a log line or an error."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from structlog.testing import capture_logs
from twisted.internet import reactor

from adapters.commands import ProvisionDevice
from hangw.config import ConfigError
from hangw.devices import AddDeviceRequest
from hangw.gateway import Gateway
from hangw.installcodes import InstallCodeError, derive_link_key, parse_install_code
from hangw.logs import redact_secrets
from hangw.secrets import SecretBox, load_or_create_key
from hangw.store.model import han_devices
from tests.gateway_harness import E_OWN, INSTALL_CODE, TDSP
from tests.service_harness import make_service, resolve
from tests.test_provisioning_service import REP

LINK_KEY_HEX = "66B6900981E1EE3CA4206B6B861C02BB"  # sep1-wire.md's vector for INSTALL_CODE


def secrets_in(text: str) -> list[str]:
    found = []
    for secret in (INSTALL_CODE, LINK_KEY_HEX, INSTALL_CODE[:16], LINK_KEY_HEX[:16]):
        if secret.lower() in text.lower():
            found.append(secret)
    return found


def test_provisioning_logs_no_secret(tmp_path: Path) -> None:
    """Adding a device and building its command logs neither the install code nor the link key."""
    service, _ = make_service(tmp_path / "s.sqlite")
    with capture_logs() as events:
        device = resolve(
            service.add_device(
                REP, E_OWN, AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
            )
        )
        (command,) = service.store.transaction(service.pending_commands_thd, TDSP, 10, frozenset())
    assert events, "provisioning logs something"
    assert not secrets_in(json.dumps(events, default=str))
    assert isinstance(command, ProvisionDevice)
    assert command.install_code == bytes.fromhex(INSTALL_CODE)
    assert command.link_key == bytes.fromhex(LINK_KEY_HEX)
    assert not secrets_in(repr(command)) and not secrets_in(repr(device))


def test_secrets_are_encrypted_at_rest(tmp_path: Path) -> None:
    """The SQLite file holds neither the install code nor the link key in the clear."""
    service, _ = make_service(tmp_path / "s.sqlite")
    resolve(
        service.add_device(
            REP, E_OWN, AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
        )
    )
    row = service.store.transaction(lambda conn: conn.execute(sa.select(han_devices)).one())
    assert bytes.fromhex(INSTALL_CODE) not in row.install_code_enc
    service.store.engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("s.sqlite*"))
    assert bytes.fromhex(INSTALL_CODE) not in raw and bytes.fromhex(LINK_KEY_HEX) not in raw
    assert INSTALL_CODE.encode() not in raw


def test_sealed_value_opens_only_in_its_own_row() -> None:
    """A sealed value copied to another device's row does not open."""
    box = SecretBox(b"\x01" * 32)
    sealed = box.seal(b"secret", "dev_a")
    assert box.open(sealed, "dev_a") == b"secret"
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        box.open(sealed, "dev_b")
    assert "01" not in repr(box)


def test_bad_install_code_errors_do_not_echo_it() -> None:
    """A refused install code is described, never quoted."""
    bad = INSTALL_CODE[:-1] + "6"
    for text in (bad, "ZZ" + INSTALL_CODE[2:], INSTALL_CODE[:10]):
        with pytest.raises(InstallCodeError) as refusal:
            parse_install_code(text)
        assert INSTALL_CODE[:10].lower() not in str(refusal.value).lower()


def test_install_code_vector_gives_the_published_link_key() -> None:
    """The public vector of sep1-wire.md derives its published link key."""
    assert derive_link_key(parse_install_code(INSTALL_CODE)).hex().upper() == LINK_KEY_HEX


def test_key_file_is_private(tmp_path: Path) -> None:
    """The store key is created once, mode 0600, and read back the same."""
    path = tmp_path / "k" / "store.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key


def test_log_redaction_is_a_second_line_of_defence() -> None:
    """An event key named like a secret is replaced before rendering."""
    event = redact_secrets(None, "info", {"event": "x", "install_code": "AB", "link_key": "CD"})
    assert event == {"event": "x", "install_code": "<redacted>", "link_key": "<redacted>"}


async def start_without_the_key(running: Any) -> str:
    """Stop the gateway, lose its store key and start it again: the refusal, naming the key
    file, and no new key made in its place."""
    running.close()
    await running.gateway.stopService()
    key_path = running.config.store_key_path
    key_path.unlink()
    with pytest.raises(ConfigError, match=r"store\.key_file") as refusal:
        Gateway(running.config, reactor)
    assert not key_path.exists()
    return str(refusal.value)


@pytest_twisted.ensureDeferred
async def test_a_lost_store_key_stops_start_up_instead_of_making_a_new_one(tmp_path: Path) -> None:
    """With devices in the store and the key file gone, the gateway refuses to start, saying why."""
    from tests.conftest import start_gateway

    running = await start_gateway(tmp_path / "state")
    status, _ = await running.caller("demo-rep-a").call(
        "POST",
        f"/v1/esiids/{E_OWN}/han-devices",
        {"mac": "000D6F0600000001", "install_code": INSTALL_CODE, "device_type": "thermostat"},
    )
    assert status == 202
    refusal = await start_without_the_key(running)
    assert "restore the key file" in refusal


@pytest_twisted.ensureDeferred
async def test_a_lost_store_key_with_only_webhooks_stops_start_up(tmp_path: Path) -> None:
    """With no devices but a webhook (its secret sealed with the key), start-up refuses too."""
    from tests.conftest import start_gateway

    running = await start_gateway(tmp_path / "state")
    status, _ = await running.caller("demo-rep-a").call(
        "POST", "/v1/webhooks", {"url": "https://127.0.0.1:9/hook"}
    )
    assert status == 201
    refusal = await start_without_the_key(running)
    assert "webhook signing secrets" in refusal


def test_a_secret_sealed_with_another_key_does_not_block_the_outbox(tmp_path: Path) -> None:
    """A provision whose install code cannot be opened is set aside; the next one still goes."""
    service, _ = make_service(tmp_path / "s.sqlite")
    add = AddDeviceRequest("000D6F0000000001", INSTALL_CODE, "thermostat")
    first = resolve(service.add_device(REP, E_OWN, add))
    service._box = SecretBox(b"\x02" * 32)  # as if the key file had been replaced
    resolve(
        service.add_device(REP, E_OWN, AddDeviceRequest("000D6F0000000002", INSTALL_CODE, "other"))
    )
    with capture_logs() as events:
        commands = service.store.transaction(service.pending_commands_thd, TDSP, 10, frozenset())
    assert [c.mac for c in commands] == ["000D6F0000000002"]
    assert [e["device"] for e in events if e["event"] == "outbox.secret_unreadable"] == [
        first.device_id
    ]
    assert not secrets_in(json.dumps(events, default=str))


def test_no_new_store_key_while_the_store_cannot_be_reached(tmp_path: Path) -> None:
    """With the key file gone and the database down, start-up stops and makes no new key."""
    from hangw.certs import init_dev_identity
    from tests.gateway_harness import make_test_config

    config = make_test_config(tmp_path / "state")
    init_dev_identity(config.cert_dir, now=time.time())
    unreachable = "postgresql+psycopg://hangw:s3cret-pw@127.0.0.1:9/hangw"  # nothing listens
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, url=unreachable))
    with pytest.raises(ConfigError, match=r"store\.key_file") as refusal:
        Gateway(config, reactor)
    assert "cannot be reached" in str(refusal.value)
    assert "s3cret-pw" not in str(refusal.value)
    assert not config.store_key_path.exists()
