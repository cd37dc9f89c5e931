"""The `hangw` CLI: registering a party from its certificate, and the API commands over real TLS."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from hangw import certs, cli
from hangw.client import Client, Identity
from tests.gateway_harness import (
    E_OTHER_TDSP,
    E_OWN,
    INSTALL_CODE,
    Harness,
    make_test_config,
    prepare_state,
)
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


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hangw.toml"
    path.write_text(text)
    return str(path)


def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def offline_cli(tmp_path: Path) -> tuple[str, list[str]]:
    """A configuration with the demo certificates, and API options naming a port nothing listens
    on: a command that got as far as the API would say it cannot reach it."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    certs.init_dev_identity(tmp_path / "state" / "certs", now=time.time())
    return config, ["--api", f"https://localhost:{closed_port()}", "--as", "demo-rep-a"]


def assert_refused_offline(
    capsys: pytest.CaptureFixture[str],
    config: str,
    api: list[str],
    cases: list[tuple[list[str], str]],
) -> None:
    """Each command of ``cases`` exits 1 saying what it is given, before the API is reached."""
    for argv, said in cases:
        assert cli.main(["--config", config, *argv, *api]) == 1, argv
        err = capsys.readouterr().err
        assert said in err, err
        assert "cannot reach the API" not in err and "Traceback" not in err


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
    hsp = ["--role", "hsp", "--party-id", "077777777"]
    assert await run_cli("--config", config, "party", "add", str(nameless), *hsp) == 0
    assert "registered hsp 077777777" in capsys.readouterr().out


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
async def test_list_and_history_of_an_esiid_without_devices_say_so_on_stderr(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ESI ID with no devices lists nothing on stdout, says so on stderr, and exits 0."""
    config = str(cli_config(harness, tmp_path))
    api = ["--api", f"https://localhost:{harness.api_port}", "--as", "demo-rep-a"]
    assert await run_cli("--config", config, "list", E_OWN, *api) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and f"no HAN devices on ESI ID {E_OWN}" in printed.err
    assert await run_cli("--config", config, "history", E_OWN, *api) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and f"no HAN history on ESI ID {E_OWN}" in printed.err


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
    port = closed_port()
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


def party_rows(config: str, capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    """`hangw party list` as rows of (role, id, name, fingerprint)."""
    capsys.readouterr()
    assert cli.main(["--config", config, "party", "list"]) == 0
    return [line.split() for line in capsys.readouterr().out.splitlines()]


def test_party_add_refuses_the_id_or_certificate_of_another_party(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id or a certificate registered to another party is refused naming that party, and
    nothing changes; with --replace it is replaced and the replaced party is printed."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["--config", config, "certs", "init"]) == 0
    before = party_rows(config, capsys)
    hsp, rep_a = tmp_path / "state/certs/demo-hsp.pem", tmp_path / "state/certs/demo-rep-a.pem"
    tdsp_id, rep_a_id = "1039940674000", "0000000000001"

    add_hsp_as_tdsp = ["--config", config, "party", "add", str(hsp), "--party-id", tdsp_id]
    assert cli.main(add_hsp_as_tdsp) == 1
    err = capsys.readouterr().err
    assert f"party id {tdsp_id} is already registered as tdsp {tdsp_id} (demo-tdsp)" in err, err
    assert "the certificate is already registered as hsp 0000000000003 (demo-hsp)" in err
    assert "--replace" in err
    other_id = ["--config", config, "party", "add", str(rep_a), "--party-id", "0000000000009"]
    assert cli.main(other_id) == 1
    err = capsys.readouterr().err
    assert f"the certificate is already registered as rep {rep_a_id} (demo-rep-a)" in err, err
    assert party_rows(config, capsys) == before

    assert cli.main([*add_hsp_as_tdsp, "--replace"]) == 0
    out = capsys.readouterr().out
    assert f"replaced tdsp {tdsp_id} (demo-tdsp), certificate sha256 " in out, out
    assert "replaced hsp 0000000000003 (demo-hsp)" in out
    assert f"registered hsp {tdsp_id} (demo-hsp)" in out
    after = {row[1]: row for row in party_rows(config, capsys)}
    assert after[tdsp_id][0] == "hsp" and "0000000000003" not in after


def test_party_add_of_the_same_registration_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adding a certificate again with the id and role it is registered with is a no-op, exit 0."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["--config", config, "certs", "init"]) == 0
    before = party_rows(config, capsys)
    rep_b = str(tmp_path / "state/certs/demo-rep-b.pem")
    assert cli.main(["--config", config, "party", "add", rep_b]) == 0
    assert "already registered: rep 0000000000002 (demo-rep-b)" in capsys.readouterr().out
    assert party_rows(config, capsys) == before


@pytest.mark.parametrize(
    ("role", "party_id", "said"),
    [
        ("hsp", "77", "hsp party ids are 9- or 13-digit DUNS numbers, not '77'"),
        ("rep", "12345678901", "9- or 13-digit DUNS number"),
        ("tdsp", "", "the party id is blank"),
        ("customer", "   ", "the party id is blank"),
        ("customer", " CUST-0002", "without spaces around it"),
        ("customer", "C" * 65, "at most 64 characters"),
    ],
)
def test_party_add_refuses_an_id_the_role_cannot_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str, party_id: str, said: str
) -> None:
    """A DUNS party id that is not 9 or 13 digits, a blank id, or a customer id that no meter
    could carry is refused with exit 2 before the store is touched."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    pem = tmp_path / "p.pem"
    pem.write_bytes(certs.issue_server_cert(certs.make_ca(time.time()), time.time()).cert_pem)
    argv = ["--config", config, "party", "add", str(pem), "--role", role, "--party-id", party_id]
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_party_add_takes_a_customer_id_as_the_meter_registry_has_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A customer is registered under the customer id of the meter registry, not a DUNS number."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    pem = tmp_path / "c.pem"
    pem.write_bytes(certs.issue_server_cert(certs.make_ca(time.time()), time.time()).cert_pem)
    argv = ["--config", config, "party", "add", str(pem), "--role", "customer"]
    assert cli.main([*argv, "--party-id", "CUST-0002"]) == 0
    assert "registered customer CUST-0002 (CUST-0002)" in capsys.readouterr().out


def test_certs_init_again_renews_its_own_parties_but_never_replaces_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """certs init run again keeps its registrations, re-registers a demo party whose certificate
    it made anew, and refuses (exit 1, naming it) to replace a party added with party add."""
    config = write_config(tmp_path, f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["--config", config, "certs", "init"]) == 0
    assert cli.main(["--config", config, "certs", "init"]) == 0
    assert "all registered as parties" in capsys.readouterr().out
    before = {row[2]: row for row in party_rows(config, capsys)}

    (tmp_path / "state/certs/demo-hsp.pem").unlink()
    assert cli.main(["--config", config, "certs", "init"]) == 0
    assert "demo-hsp's new certificate replaces its earlier one" in capsys.readouterr().out
    renewed = {row[2]: row for row in party_rows(config, capsys)}
    assert renewed["demo-hsp"][3] != before["demo-hsp"][3]
    assert renewed["demo-rep-a"] == before["demo-rep-a"]

    head_end = certs.issue_client_cert(
        certs.make_ca(time.time()),
        party_id="1039940674000",
        role="tdsp",
        name="Example-head-end",
        now=time.time(),
    )
    (tmp_path / "head-end.pem").write_bytes(head_end.cert_pem)
    add = ["--config", config, "party", "add", str(tmp_path / "head-end.pem"), "--replace"]
    assert cli.main(add) == 0
    capsys.readouterr()
    assert cli.main(["--config", config, "certs", "init"]) == 1
    err = capsys.readouterr().err
    assert "demo-tdsp is not registered: party id 1039940674000 is already registered as " in err
    assert "tdsp 1039940674000 (Example-head-end)" in err
    assert {row[2] for row in party_rows(config, capsys)} >= {"Example-head-end", "demo-rep-a"}


class Terminal(io.StringIO):
    """Standard input as a terminal (so the install code is asked for at a prompt)."""

    def isatty(self) -> bool:
        return True


def test_ctrl_c_at_the_install_code_prompt_sends_nothing_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at the prompt exits 130 saying nothing was sent (not that the request goes on),
    and an empty install code piped in is refused before the API is asked."""
    config, api = offline_cli(tmp_path)
    provision = ["--config", config, "provision", E_OWN, "--mac", "000D6F000A1B2C3D", *api]

    def interrupted(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", interrupted)
    assert cli.main(provision) == 130
    err = capsys.readouterr().err
    assert "nothing was sent" in err and "goes on in the gateway" not in err, err

    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main([*provision, "--install-code", "-"]) == 2
    err = capsys.readouterr().err
    assert "no install code given; nothing was sent" in err and "cannot reach" not in err, err


def server_names(cert_dir: Path) -> list[x509.GeneralName]:
    """The names the API's server certificate is valid for."""
    certificate = x509.load_pem_x509_certificate((cert_dir / "server.pem").read_bytes())
    return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_certs_init_names_api_host_in_the_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server certificate made without api.host is made anew naming it (with localhost and the
    loopback addresses); a wildcard api.host adds no name."""
    cert_dir = tmp_path / "state" / "certs"
    certs.init_dev_identity(cert_dir, now=time.time())
    assert x509.DNSName("gw.example.test") not in server_names(cert_dir)
    state = f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
    config = write_config(tmp_path, state + '[api]\nhost = "gw.example.test"\n')
    assert cli.main(["--config", config, "certs", "init"]) == 0
    names = server_names(cert_dir)
    assert x509.DNSName("gw.example.test") in names and x509.DNSName("localhost") in names
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in names
    wildcard = write_config(tmp_path, state + '[api]\nhost = "0.0.0.0"\n')
    assert cli.main(["--config", wildcard, "certs", "init"]) == 0
    assert server_names(cert_dir) == names  # kept: it names everything needed


@pytest_twisted.ensureDeferred
async def test_the_cli_reaches_the_api_at_api_host_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --api the CLI calls https://<api.host>:<api.port>, which the server certificate of
    certs init names: a gateway listening on 127.0.0.2 only is reached."""
    from hangw.gateway import Gateway

    state = tmp_path / "state"
    toml = f'[gateway]\nstate_dir = "{state}"\n[api]\nhost = "127.0.0.2"\n'
    assert cli.main(["--config", write_config(tmp_path, toml), "certs", "init"]) == 0
    config = make_test_config(state)
    config = dataclasses.replace(config, api=dataclasses.replace(config.api, host="127.0.0.2"))
    prepare_state(config)
    gateway = Gateway(config, reactor)
    gateway.startService()
    try:
        port = (await gateway.api_service._waitingForPort).getHost().port
        await gateway.registry.refresh()
        cli_toml = write_config(tmp_path, toml + f"port = {port}\n")
        capsys.readouterr()
        assert await run_cli("--config", cli_toml, "list", E_OWN, "--as", "demo-rep-a") == 0, (
            capsys.readouterr().err
        )
    finally:
        await gateway.stopService()


def test_a_wildcard_api_host_is_called_at_localhost() -> None:
    """0.0.0.0 and :: listen everywhere: the CLI calls localhost; an IPv6 host is bracketed."""
    from hangw.client import default_api_url

    assert default_api_url("0.0.0.0", 8443) == "https://localhost:8443"
    assert default_api_url("::", 8443) == "https://localhost:8443"
    assert default_api_url("::1", 8443) == "https://[::1]:8443"
    assert default_api_url("gw.example.test", 9443) == "https://gw.example.test:9443"
