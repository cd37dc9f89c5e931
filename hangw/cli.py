"""hangw: the command-line tool.

Local administration works on the store directly (certificates, parties, the meter registry);
everything a party does (provision, remove, list, history, grants) goes over the HTTPS API with
that party's certificate, exactly as any other client would.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa

from hangw import cli_messaging, cli_usage, cli_usage_store
from hangw import config as config_module
from hangw.cli_common import CommandError, open_engine
from hangw.client import add_api_options

if TYPE_CHECKING:
    from hangw.domain import Party
    from hangw.parties import Registration


def _store(config: config_module.Config) -> Any:
    from hangw.store.db import Store

    return Store(open_engine(config), reactor=None)  # type: ignore[arg-type]  # synchronous use


def cmd_certs_init(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw import certs
    from hangw.domain import Party, Role
    from hangw.parties import PartyConflict

    directory = config.cert_dir
    try:
        issued = certs.init_dev_identity(directory, now=time.time(), hosts=[config.api.host])
    except certs.DamagedFileError as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(
            f"cannot write the certificates in {directory}: {error.strerror} ({error.filename}); "
            f"check api.cert_dir and gateway.state_dir in {config.source}"
        ) from None
    store = _store(config)
    print(f"certificates in {directory}:")
    refused = 0
    for demo in issued:
        party = Party(demo.party_id, Role(demo.role), demo.name, demo.fingerprint)
        print(f"  {demo.role:<9} {demo.party_id:<14} {demo.name:<14} {demo.cert_path}")
        try:
            registration = store.transaction(_register_demo_thd, party, time.time())
        except PartyConflict as conflict:
            refused += 1
            print(
                f"hangw: {demo.name} is not registered: {conflict}; to register it in that "
                f"party's place: hangw party add {demo.cert_path} --replace",
                file=sys.stderr,
            )
            continue
        if registration.replaced:
            print(f"  ({demo.name}'s new certificate replaces its earlier one)")
    if refused:
        return 1
    print("all registered as parties; the CA to trust is", directory / "ca.pem")
    return 0


def _register_demo_thd(conn: sa.Connection, party: Party, now: float) -> Registration:
    """Register a demo party; a new certificate replaces only the demo party's own earlier one
    (same id, role and name), never a party registered with ``hangw party add``."""
    from hangw.parties import PartyConflict, register_party_thd

    try:
        return register_party_thd(conn, party, now)
    except PartyConflict as conflict:
        mine = (party.party_id, party.role, party.name)
        if any((e.party_id, e.role, e.name) != mine for e in conflict.existing):
            raise
        return register_party_thd(conn, party, now, replace=True)


def cmd_party_add(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw import certs
    from hangw.domain import Party, Role
    from hangw.parties import PartyConflict, describe, party_id_problem, register_party_thd

    try:
        pem = Path(args.certificate).read_bytes()
        fingerprint = certs.fingerprint(pem)
    except OSError as error:
        print(f"hangw: cannot read {args.certificate}: {error.strerror}", file=sys.stderr)
        return 1
    except ValueError:
        print(f"hangw: {args.certificate} is not a PEM certificate", file=sys.stderr)
        return 1
    party_id: str | None = None
    role: str | None = None
    name: str | None = None
    try:
        found = certs.party_from_cert(pem)
        party_id, role, name = found.party_id, found.role, found.name
    except ValueError:
        pass  # a certificate from elsewhere: the flags must name the party
    named_by = "the certificate's UID" if args.party_id is None else "--party-id"
    party_id = args.party_id if args.party_id is not None else party_id
    role = args.role or role
    if party_id is None or not role:
        print(
            "hangw: the certificate does not name its party; give --party-id and --role",
            file=sys.stderr,
        )
        return 2
    problem = party_id_problem(party_id, Role(role))
    if problem is not None:
        print(f"hangw: {named_by}: {problem}", file=sys.stderr)
        return 2
    name = args.name or name or party_id
    party = Party(party_id, Role(role), name, fingerprint)
    try:
        registration = _store(config).transaction(
            register_party_thd, party, time.time(), args.replace
        )
    except PartyConflict as conflict:
        print(
            f"hangw: not registered: {conflict}; give --replace to register this certificate "
            "in its place",
            file=sys.stderr,
        )
        return 1
    if registration.already:
        print(f"already registered: {describe(party)}, certificate sha256 {fingerprint}")
        return 0
    for replaced in registration.replaced:
        print(f"replaced {describe(replaced)}, certificate sha256 {replaced.cert_fingerprint}")
    print(f"registered {describe(party)}, certificate sha256 {fingerprint}")
    return 0


def cmd_party_list(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.parties import load_parties_thd

    for party in _store(config).transaction(load_parties_thd):
        print(
            f"{party.role.value:<9} {party.party_id:<14} {party.name:<20} {party.cert_fingerprint}"
        )
    return 0


def cmd_meters_import(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.meters import MeterFileError, parse_meter_file, upsert_meters_thd

    try:
        # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark
        with open(args.file, newline="", encoding="utf-8-sig") as handle:
            parsed = parse_meter_file(handle, args.file)
    except MeterFileError as error:
        print(f"hangw: {error}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as error:
        print(f"hangw: cannot read {args.file}: {error}", file=sys.stderr)
        return 1
    try:
        inserted, updated = _store(config).transaction(
            lambda conn: upsert_meters_thd(
                conn, parsed.meters, time.time(), customers=parsed.customers
            )
        )
    except sa.exc.SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        print(
            f"hangw: nothing was loaded: the store at {config_module.safe_url(config.store_url)} "
            f"refused the meters ({type(cause).__name__}: {str(cause)[:200]})",
            file=sys.stderr,
        )
        return 1
    print(f"{args.file}: {inserted} meter(s) added, {updated} updated")
    return 0


def _client(config: config_module.Config, args: argparse.Namespace) -> Any:
    from hangw.client import Client, Identity, IdentityError, default_api_url

    cert_dir = config.cert_dir
    cert = Path(args.cert) if args.cert else cert_dir / f"{args.as_party}.pem"
    key = Path(args.key) if args.key else cert_dir / f"{args.as_party}-key.pem"
    ca = Path(args.ca) if args.ca else cert_dir / "ca.pem"
    for path in (cert, key, ca):
        if not path.exists():
            raise CommandError(
                f"{path} does not exist (run `hangw certs init`, or give --cert/--key/--ca)"
            )
    url = args.api or default_api_url(config.api.host, config.api.port)
    try:
        return Client(url, Identity(cert, key, ca))
    except IdentityError as error:
        raise CommandError(str(error)) from None
    except ValueError as error:  # the URL
        raise CommandError(f"{'--api' if args.api else 'api.host, api.port'}: {error}") from None


def _print(data: Any, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
        return
    devices = data.get("devices") if isinstance(data, dict) else None
    if devices is not None:
        for d in devices:
            print(f"{d['id']}  {d['mac'] or '(hidden)':<16}  {d['device_type']:<16} {d['status']}")
        if not devices:  # said on stderr: the output stays a list of devices, here none
            print(f"no HAN devices on ESI ID {args.esiid}", file=sys.stderr)
        return
    if isinstance(data, dict) and "history" in data:
        if not data["history"] and "id" not in data:
            print(f"no HAN history on ESI ID {args.esiid}", file=sys.stderr)
        for h in data["history"]:
            print(f"{h['at']}  {h['device_id']}  {h['status']:<20} {h['actor']:<14} {h['reason']}")
        if "id" in data:
            print(f"{data['id']} is {data['status']}")
        return
    if isinstance(data, dict) and "reachable" in data:
        what = data.get("device_id") or f"the meter of {data['esiid']}"
        if data["reachable"]:
            detail = (
                [f"firmware {data['firmware_version']}"] if data.get("firmware_version") else []
            )
            if data.get("rtt_ms"):
                detail.append(f"{data['rtt_ms']:g} ms")
            print(f"{what} answers" + (f" ({', '.join(detail)})" if detail else ""))
        else:
            print(f"{what} does not answer: {data['reason']}")
        return
    if isinstance(data, dict) and "current_summation_delivered_wh" in data:
        demand = data["instantaneous_demand_w"]
        print(
            f"{data['esiid']} at {data['read_at']}: {data['current_summation_delivered_wh']} Wh"
            + ("" if demand is None else f", demand {demand} W")
        )
        return
    if isinstance(data, dict) and "status" in data and "id" in data:
        print(
            f"{data['id']} on {data['esiid']}: {data['status']}"
            + (f" ({data['reason']})" if data.get("reason") else "")
        )
        return
    print(json.dumps(data, indent=2))


def read_install_code(given: str | None) -> str:
    """The install code from the option, or (omitted or ``-``) from a prompt or standard input.

    Typed at a prompt or piped in, the code stays out of the process list and shell history.
    """
    if given is not None and given != "-":
        return given
    if given is None and sys.stdin.isatty():
        return getpass.getpass("install code (hex, from the device label): ")
    return sys.stdin.readline().strip()


def cmd_api(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.client import ApiError

    if args.command == "ping" and not (args.esiid or args.device):
        print("hangw ping: give an ESI ID, or --device DEVICE_ID", file=sys.stderr)
        return 2
    client = _client(config, args)
    install_code = ""
    if args.command == "provision":  # asked before the try below: nothing is sent without it
        try:
            install_code = read_install_code(args.install_code)
        except (KeyboardInterrupt, EOFError) as stop:
            client.close()
            print("\nhangw: no install code given; nothing was sent", file=sys.stderr)
            return 130 if isinstance(stop, KeyboardInterrupt) else 2
        if not install_code:
            client.close()
            print("hangw: no install code given; nothing was sent", file=sys.stderr)
            return 2
    try:
        q = {name: quote(str(value), safe="") for name, value in vars(args).items() if value}
        if args.command in cli_messaging.COMMANDS:
            data = cli_messaging.run(client, args)
            if data is None:
                return 0
        elif args.command == "usage":
            data = cli_usage.run(client, args)
            if data is None:
                return 0
        elif args.command == "provision":
            body = {
                "mac": args.mac,
                "install_code": install_code,
                "device_type": args.type,
                "description": args.description,
            }
            data = client.post(f"/v1/esiids/{q['esiid']}/han-devices", body, str(uuid.uuid4()))
        elif args.command == "remove":
            suffix = f"?{urlencode({'reason': args.reason})}" if args.reason else ""
            data = client.delete(f"/v1/han-devices/{q['device_id']}{suffix}")
        elif args.command == "list":
            data = client.get(f"/v1/esiids/{q['esiid']}/han-devices")
        elif args.command == "show":
            data = client.get(f"/v1/han-devices/{q['device_id']}")
        elif args.command == "history":
            data = client.get(f"/v1/esiids/{q['esiid']}/han-history")
        elif args.command == "ping":
            if args.device:
                data = client.post(f"/v1/han-devices/{q['device']}/ping", {})
            else:
                data = client.post(f"/v1/esiids/{q['esiid']}/ping", {})
        elif args.command == "read":
            data = client.post(f"/v1/esiids/{q['esiid']}/reads", {})
        elif args.command == "grant":
            data = client.post(f"/v1/esiids/{q['esiid']}/grants", {"hsp_party_id": args.hsp})
        elif args.command == "revoke":
            data = client.delete(f"/v1/esiids/{q['esiid']}/grants/{q['hsp']}")
        else:  # pragma: no cover - argparse only offers the commands above
            raise AssertionError(args.command)
    except ApiError as error:
        print(f"hangw: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"hangw: cannot reach the API: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nhangw: stopped waiting; the request goes on in the gateway", file=sys.stderr)
        return 130
    finally:
        client.close()
    _print(data, args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hangw", description="hangw HAN gateway tool")
    parser.add_argument("--config", help="TOML configuration (default: config/hangw.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    certs = sub.add_parser("certs", help="development certificates").add_subparsers(
        dest="action", required=True
    )
    certs.add_parser(
        "init", help="create a dev CA, server and demo party certificates; register the parties"
    )

    party = sub.add_parser("party", help="API parties").add_subparsers(dest="action", required=True)
    add = party.add_parser("add", help="register a party from its client certificate")
    add.add_argument("certificate")
    add.add_argument("--role", choices=["tdsp", "rep", "hsp", "customer"])
    add.add_argument(
        "--party-id", help="its 9- or 13-digit DUNS number (a customer: the customer id)"
    )
    add.add_argument("--name")
    add.add_argument(
        "--replace",
        action="store_true",
        help="take the place of the party that has this id or this certificate now",
    )
    party.add_parser("list", help="list registered parties")

    meters = sub.add_parser("meters", help="meter registry").add_subparsers(
        dest="action", required=True
    )
    imp = meters.add_parser("import", help="load meters from a CSV file")
    imp.add_argument("file")

    def api_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        add_api_options(p)
        return p

    p = api_command("provision", "add a HAN device to an ESI ID")
    p.add_argument("esiid")
    p.add_argument("--mac", required=True)
    p.add_argument(
        "--install-code",
        help="hex digits with their CRC; omit it to be asked, or give - to read standard input "
        "(either keeps the code out of the process list and shell history)",
    )
    p.add_argument("--type", default="in_home_display")
    p.add_argument("--description", default="")
    p = api_command("remove", "remove a HAN device (or withdraw its pending add)")
    p.add_argument("device_id")
    p.add_argument("--reason", default="")
    p = api_command("list", "list the HAN devices of an ESI ID")
    p.add_argument("esiid")
    p = api_command("show", "one device with its history")
    p.add_argument("device_id")
    p = api_command("history", "the consolidated HAN history of an ESI ID")
    p.add_argument("esiid")
    p = api_command("ping", "ask the head-end whether the meter (or --device) answers now")
    p.add_argument("esiid", nargs="?", help="the ESI ID whose meter to ping")
    p.add_argument("--device", help="ping this HAN device (its id) instead of the meter")
    p = api_command("read", "read the meter now: its register (Wh) and demand (W)")
    p.add_argument("esiid")
    p = api_command("grant", "grant a HAN service provider access (customer)")
    p.add_argument("esiid")
    p.add_argument("hsp")
    p = api_command("revoke", "revoke a HAN service provider's access (customer)")
    p.add_argument("esiid")
    p.add_argument("hsp")
    cli_messaging.add_commands(sub, api_command)
    usage_commands = cli_usage.add_commands(sub)
    cli_usage_store.add_store_commands(usage_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as error:
        print(f"hangw: {error}", file=sys.stderr)
        return 2
    handlers = {
        ("certs", "init"): cmd_certs_init,
        ("party", "add"): cmd_party_add,
        ("party", "list"): cmd_party_list,
        ("meters", "import"): cmd_meters_import,
        **cli_usage_store.HANDLERS,
    }
    handler = handlers.get((args.command, getattr(args, "action", "")), cmd_api)
    try:
        return handler(config, args)
    except CommandError as error:
        print(f"hangw: {error}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as error:  # the store failed a command that had opened it
        print(f"hangw: {config_module.store_problem(config, error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
