"""Development identities: a CA, the API's server certificate and client certificates for parties.

`hangw certs init` makes them with `cryptography` (ECDSA P-256). A party's certificate names it:
the common name is the party's name, the organizational unit its role and the user id (UID) its
DUNS number or customer number, so `hangw party add CERT.pem` can register it without flags.
Existing files are kept: running `certs init` again returns the same identities, so registered
fingerprints stay valid. Private keys are written mode 0600 and never printed or logged.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEMO_PARTIES",
    "CertificateAuthority",
    "DamagedFileError",
    "DemoParty",
    "IssuedCert",
    "IssuedParty",
    "fingerprint",
    "init_dev_identity",
    "issue_client_cert",
    "load_ca",
    "party_from_cert",
]

VALID_DAYS = 825
#: Allow for clocks that run a little behind the issuer's.
BACKDATE = datetime.timedelta(hours=1)
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")
ROLES = ("tdsp", "rep", "hsp", "customer")


@dataclass(frozen=True)
class DemoParty:
    name: str
    role: str
    party_id: str


#: The parties `certs init` makes: one TDSP, two REPs, one HAN service provider, one customer.
DEMO_PARTIES = (
    DemoParty("demo-tdsp", "tdsp", "1039940674000"),
    DemoParty("demo-rep-a", "rep", "0000000000001"),
    DemoParty("demo-rep-b", "rep", "0000000000002"),
    DemoParty("demo-hsp", "hsp", "0000000000003"),
    DemoParty("demo-customer", "customer", "CUST-0001"),
)


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)


@dataclass(frozen=True)
class IssuedParty:
    """A party's certificate on disk, as `certs init` reports it."""

    name: str
    role: str
    party_id: str
    fingerprint: str
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class NamedParty:
    party_id: str
    role: str
    name: str


class DamagedFileError(ValueError):
    """A certificate or key file in the certificate directory cannot be read; the message names
    it and says what to do."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(
            f"{path} is not a readable PEM {what} (damaged, or not written whole): move it "
            "aside and run `hangw certs init` again to make a new one"
        )


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise DamagedFileError(path, "certificate") from None


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex (what the listener pins)."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    return certificate.fingerprint(hashes.SHA256()).hex()


def party_from_cert(cert_pem: bytes) -> NamedParty:
    """The party a certificate names (UID, OU, CN); ValueError when it names none."""
    subject = x509.load_pem_x509_certificate(cert_pem).subject

    def one(oid: x509.ObjectIdentifier) -> str | None:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else None

    party_id, role, name = one(NameOID.USER_ID), one(NameOID.ORGANIZATIONAL_UNIT_NAME), None
    name = one(NameOID.COMMON_NAME)
    if not party_id or role not in ROLES:
        raise ValueError("the certificate subject names no party (UID and OU=role)")
    return NamedParty(party_id, role, name or party_id)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(now: float) -> tuple[datetime.datetime, datetime.datetime]:
    start = datetime.datetime.fromtimestamp(now, datetime.UTC) - BACKDATE
    return start, start + datetime.timedelta(days=VALID_DAYS)


def _name(common_name: str, extra: Iterable[x509.NameAttribute] = ()) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hangw development"),
            *extra,
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(now: float) -> CertificateAuthority:
    key = _new_key()
    name = _name("hangw development CA")
    start, end = _validity(now)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def _issue(
    ca: CertificateAuthority,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    now: float,
    alt_names: list[x509.GeneralName] | None = None,
) -> IssuedCert:
    key = _new_key()
    start, end = _validity(now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())
    return IssuedCert(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def server_names(hosts: Iterable[str] = ()) -> list[x509.GeneralName]:
    """What the server certificate is valid for: localhost, the loopback addresses, and each of
    ``hosts`` (``api.host``) that names one host or address (a wildcard address names none)."""
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
    for host in hosts:
        name: x509.GeneralName
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = x509.DNSName(host.lower())
        else:
            if address.is_unspecified:
                continue
            name = x509.IPAddress(address)
        if name not in names:
            names.append(name)
    return names


def issue_server_cert(
    ca: CertificateAuthority, now: float, hosts: Iterable[str] = ()
) -> IssuedCert:
    """The API's certificate: valid for localhost, the loopback addresses and ``hosts``."""
    alt_names = server_names(hosts)
    return _issue(ca, _name("localhost"), ExtendedKeyUsageOID.SERVER_AUTH, now, alt_names)


def _names_of(path: Path) -> list[x509.GeneralName]:
    try:
        extension = _read_certificate(path).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return []
    return list(extension.value)


def issue_client_cert(
    ca: CertificateAuthority, *, party_id: str, role: str, name: str, now: float
) -> IssuedCert:
    """A client certificate that names its party (UID = party id, OU = role, CN = name)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    subject = _name(
        name,
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.USER_ID, party_id),
        ],
    )
    return _issue(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, now)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    mode = 0o600 if private else 0o644
    # A file left by an interrupted run would keep its own mode (O_CREAT sets it only for a new
    # file): remove it, and make the file anew, so a private key is never readable by others.
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def load_ca(directory: Path) -> CertificateAuthority:
    """The CA in ``directory`` (ca.pem and ca-key.pem); DamagedFileError when one is unreadable."""
    certificate = _read_certificate(directory / "ca.pem")
    key_path = directory / "ca-key.pem"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: it needs a password
        raise DamagedFileError(key_path, "private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DamagedFileError(key_path, "EC private key")
    return CertificateAuthority(certificate, key)


def _expired(path: Path, now: float) -> bool:
    return _read_certificate(path).not_valid_after_utc.timestamp() < now + 86400


def init_dev_identity(directory: Path, now: float, hosts: Iterable[str] = ()) -> list[IssuedParty]:
    """Make (or keep) the CA, the server certificate and the demo parties' certificates.

    A file that exists and is still valid for a day is kept; so is everything a new CA would not
    invalidate. The server certificate is made anew when it does not name each of ``hosts``
    (the API's ``api.host``, so that clients reach it by that name). Returns the demo parties
    with their certificate paths and fingerprints. A file that cannot be read as PEM raises
    DamagedFileError, which names it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    renew_all = not ca_path.exists() or not (directory / "ca-key.pem").exists()
    renew_all = renew_all or _expired(ca_path, now)
    if renew_all:
        ca = make_ca(now)
        _write(directory / "ca-key.pem", _key_pem(ca.key), private=True)
        _write(ca_path, ca.certificate.public_bytes(serialization.Encoding.PEM))
    else:
        ca = load_ca(directory)

    def fresh(cert_path: Path, key_path: Path) -> bool:
        return (
            not renew_all
            and cert_path.exists()
            and key_path.exists()
            and not _expired(cert_path, now)
        )

    server, server_key = directory / "server.pem", directory / "server-key.pem"
    needed = server_names(hosts)
    if not fresh(server, server_key) or any(n not in _names_of(server) for n in needed):
        issued = issue_server_cert(ca, now, hosts)
        _write(server_key, issued.key_pem, private=True)
        _write(server, issued.cert_pem + ca.certificate.public_bytes(serialization.Encoding.PEM))

    parties = []
    for demo in DEMO_PARTIES:
        cert_path, key_path = directory / f"{demo.name}.pem", directory / f"{demo.name}-key.pem"
        if not fresh(cert_path, key_path):
            issued = issue_client_cert(
                ca, party_id=demo.party_id, role=demo.role, name=demo.name, now=now
            )
            _write(key_path, issued.key_pem, private=True)
            _write(cert_path, issued.cert_pem)
        parties.append(
            IssuedParty(
                demo.name,
                demo.role,
                demo.party_id,
                _read_certificate(cert_path).fingerprint(hashes.SHA256()).hex(),
                cert_path,
                key_path,
            )
        )
    return parties
