"""The `hangw` CLI: registering a party from its certificate, and the API commands over real TLS."""

from __future__ import annotations

import io
import re
import socket
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


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hangw.toml"
    path.write_text(text)
    return str(path)


def test_unusable_client_certificates_or_api_url_are_said_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key of another party, a file that is not PEM, or an API URL that is not https://host:port
    exit 1 with a sentence naming the problem, not a traceback; no key is shown."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    cert_dir = tmp_path / "state" / "certs"
    certs.init_dev_identity(cert_dir, now=time.time())
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    rep_a, rep_b_key = str(cert_dir / "demo-rep-a.pem"), str(cert_dir / "demo-rep-b-key.pem")
    for options, said in (
        (["--cert", rep_a, "--key", rep_b_key], "the key does not belong to the certificate"),
        (["--cert", str(junk)], f"cannot use the client certificate {junk}"),
        (["--ca", str(junk)], f"cannot use {junk} as the CA to trust"),
        (["--api", "http://localhost:8443"], "--api: the API URL must be https://host:port"),
        (["--api", "https://localhost:99999"], "with a port from 1 to 65535"),
    ):
        assert cli.main(["--config", config, "list", E_OWN, *options]) == 1, options
        err = capsys.readouterr().err
        assert err.startswith("hangw: ") and said in err, err
        assert "Traceback" not in err and "PRIVATE KEY" not in err


def test_store_commands_say_when_the_store_cannot_be_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """party list, party add and usage files on a store that cannot be opened exit 1 naming the
    store's URL and the key to check, as meters import does."""
    config = write_config(
        tmp_path,
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[store]\nurl = "sqlite:///{tmp_path}"\n',
    )
    issued = certs.issue_client_cert(
        certs.make_ca(time.time()), party_id=OTHER_TDSP, role="tdsp", name="t", now=time.time()
    )
    (tmp_path / "t.pem").write_bytes(issued.cert_pem)
    for command in (
        ["party", "list"],
        ["party", "add", str(tmp_path / "t.pem")],
        ["usage", "files"],
    ):
        assert cli.main(["--config", config, *command]) == 1, command
        err = capsys.readouterr().err
        assert f"hangw: cannot use the store at sqlite:///{tmp_path}" in err, err
        assert "check store.url in" in err


def test_a_store_on_a_postgresql_that_is_down_is_said_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store URL to a PostgreSQL that does not answer: exit 1, the URL shown without password."""
    pytest.importorskip("psycopg")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://hangw:s3cret@127.0.0.1:{port}/hangw"
    config = write_config(tmp_path, f'[store]\nurl = "{url}"\n')
    assert cli.main(["--config", config, "party", "list"]) == 1
    err = capsys.readouterr().err
    assert f"cannot use the store at postgresql+psycopg://hangw:***@127.0.0.1:{port}" in err
    assert "OperationalError" in err and "s3cret" not in err and "Traceback" not in err


def test_a_state_dir_that_is_a_file_is_said_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gateway.state_dir naming a regular file: certs init and party list exit 1 saying which
    directory could not be made and which keys to check."""
    state = tmp_path / "state"
    state.write_text("a file, not a directory")
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{state}"\n')
    assert cli.main(["--config", config, "certs", "init"]) == 1
    err = capsys.readouterr().err
    assert f"hangw: cannot write the certificates in {state / 'certs'}" in err, err
    assert "api.cert_dir and gateway.state_dir" in err
    assert cli.main(["--config", config, "party", "list"]) == 1
    err = capsys.readouterr().err
    assert f"hangw: cannot make the directory {state} for the store" in err, err


def test_certs_init_names_a_damaged_certificate_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate in the cert dir that is not PEM stops certs init with its path and the cure."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["--config", config, "certs", "init"]) == 0
    capsys.readouterr()
    for name in ("demo-hsp.pem", "ca-key.pem"):
        damaged = tmp_path / "state" / "certs" / name
        kept = damaged.read_bytes()
        damaged.write_bytes(kept[: len(kept) // 2])
        assert cli.main(["--config", config, "certs", "init"]) == 1
        err = capsys.readouterr().err
        assert f"hangw: {damaged} is not a readable PEM" in err, err
        assert "run `hangw certs init` again" in err and "Traceback" not in err
        damaged.write_bytes(kept)
