"""The `hangw` CLI: registering a party from its certificate, and the API commands over real TLS."""

from __future__ import annotations

import io
import re
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from hangw import certs, cli
from hangw.client import Client, Identity
from tests.gateway_harness import E_OTHER_TDSP, E_OWN, INSTALL_CODE, Harness
from tests.test_api_provisioning import wait_for_status

OTHER_TDSP = "957877905"  # the TDSP of E_OTHER_TDSP in tests/data/meters.csv


def cli_config(harness: Harness, tmp_path: Path) -> Path:
    """A TOML file naming the harness's state directory (and so its store and certificates)."""
    path = tmp_path / "cli.toml"
    path.write_text(f'[gateway]\nstate_dir = "{harness.config.state_dir}"\n')
    return path


def run_cli(*argv: str) -> object:
    """Run the synchronous CLI in a thread, so the reactor keeps serving the gateway."""
    return deferToThread(cli.main, list(argv))


@pytest_twisted.ensureDeferred
async def test_party_add_admits_a_certificate_from_another_ca(
    harness: Harness, tmp_path: Path
) -> None:
    """A TDSP's own certificate is refused at the handshake until `hangw party add` registers it."""
    foreign_ca = certs.make_ca(time.time())
    issued = certs.issue_client_cert(
        foreign_ca, party_id=OTHER_TDSP, role="tdsp", name="other-tdsp", now=time.time()
    )
    (tmp_path / "t.pem").write_bytes(issued.cert_pem)
    (tmp_path / "t-key.pem").write_bytes(issued.key_pem)
    identity = Identity(
        tmp_path / "t.pem", tmp_path / "t-key.pem", harness.config.cert_dir / "ca.pem"
    )
    path = f"/v1/esiids/{E_OTHER_TDSP}/han-devices"

    client = Client(f"https://localhost:{harness.api_port}", identity)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await deferToThread(client.request, "GET", path)
    client.close()

    config = cli_config(harness, tmp_path)
    assert await run_cli("--config", str(config), "party", "add", str(tmp_path / "t.pem")) == 0
    await harness.gateway.registry.refresh()
    client = Client(f"https://localhost:{harness.api_port}", identity)
    status, body = await deferToThread(client.request, "GET", path)
    client.close()
    assert status == 200 and body["esiid"] == E_OTHER_TDSP


@pytest_twisted.ensureDeferred
async def test_party_add_refuses_what_it_cannot_register(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a certificate, a missing file, or a nameless certificate without flags: refused."""
    config = str(cli_config(harness, tmp_path))
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert await run_cli("--config", config, "party", "add", str(tmp_path / "junk.pem")) == 1
    assert "is not a PEM certificate" in capsys.readouterr().err
    assert await run_cli("--config", config, "party", "add", str(tmp_path / "none.pem")) == 1
    assert "cannot read" in capsys.readouterr().err
    nameless = tmp_path / "server.pem"
    nameless.write_bytes(certs.issue_server_cert(certs.make_ca(time.time()), time.time()).cert_pem)
    assert await run_cli("--config", config, "party", "add", str(nameless)) == 2
    assert "--party-id and --role" in capsys.readouterr().err
    assert (
        await run_cli(
            "--config", config, "party", "add", str(nameless), "--role", "hsp", "--party-id", "77"
        )
        == 0
    )
    assert "registered hsp 77" in capsys.readouterr().out


@pytest_twisted.ensureDeferred
async def test_api_commands_provision_list_show_history_remove(
    harness: Harness,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI drives a device from provisioning to removal over the API, printing each answer."""
    config = str(cli_config(harness, tmp_path))
    api = ["--api", f"https://localhost:{harness.api_port}", "--as", "demo-rep-a"]
    monkeypatch.setattr("sys.stdin", io.StringIO(INSTALL_CODE + "\n"))  # piped, not in argv
    code = await run_cli(
        "--config", config, "provision", E_OWN, "--mac", "00:0D:6F:00:0A:1B:2C:3D",
        "--install-code", "-", "--type", "thermostat", *api,
    )  # fmt: skip
    out = capsys.readouterr().out
    printed = re.search(rf"^(dev_[0-9a-f]+) on {E_OWN}: Add Acknowledged$", out, re.MULTILINE)
    assert code == 0 and printed is not None, out
    assert INSTALL_CODE not in out
    device_id = printed.group(1)
    await wait_for_status(harness.caller("demo-rep-a"), device_id, "Device Added")

    assert await run_cli("--config", config, "list", E_OWN, *api) == 0
    listed = capsys.readouterr().out
    assert device_id in listed and "000D6F000A1B2C3D" in listed and "Device Added" in listed
    assert await run_cli("--config", config, "show", device_id, *api) == 0
    shown = capsys.readouterr().out
    assert shown.count("Add Acknowledged") == 2 and "Meter Ready" in shown
    assert (
        await run_cli("--config", config, "remove", device_id, "--reason", "customer moved", *api)
        == 0
    )
    assert "Remove Acknowledged (customer moved)" in capsys.readouterr().out
    assert await run_cli("--config", config, "history", E_OWN, *api) == 0
    assert "Remove Acknowledged" in capsys.readouterr().out


@pytest_twisted.ensureDeferred
async def test_api_command_refusal_exits_1_with_the_problem(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused request prints the problem's title and detail on stderr and exits 1."""
    config = str(cli_config(harness, tmp_path))
    api = ["--api", f"https://localhost:{harness.api_port}", "--as", "demo-rep-b"]
    assert await run_cli("--config", config, "list", E_OWN, *api) == 1
    err = capsys.readouterr().err
    assert "403" in err and "no HAN access" in err


def test_certs_init_writes_private_keys_0600_over_a_stale_temporary_file(tmp_path: Path) -> None:
    """A world-readable .tmp left by an interrupted run does not pass its mode to a private key."""
    directory = tmp_path / "certs"
    directory.mkdir()
    for name in ("ca-key.pem", "server-key.pem", "demo-rep-a-key.pem"):
        stale = directory / f"{name}.tmp"
        stale.write_text("left over")
        stale.chmod(0o666)
    certs.init_dev_identity(directory, now=time.time())
    for name in ("ca-key.pem", "server-key.pem", "demo-rep-a-key.pem"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
        assert not (directory / f"{name}.tmp").exists()
