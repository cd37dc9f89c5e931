"""Opening LSE deliveries (plain, zipped, PGP-encrypted) and the gateway's usage key in GnuPG."""

from __future__ import annotations

import argparse
import base64
import functools
import io
import re
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hangw.config import from_mapping
from hangw.usage.delivery import DeliveryRejected, LseMember, open_delivery
from hangw.usage.pgp import UsageKey, UsageKeyError, cmd_key_export, cmd_key_init, encrypt_for

LIMIT = 1 << 20
LSE = (
    b"00000001,1000000000000000,4,20080510000000,20080510235900,Y,N\r\n"
    b"00000003,UNIQUETRANID0123456789\r\n"
    b"10000000,68.29,A,,69.17,A,,67.99,A,,67.99,A,,\r\n"
)
OTHER_LSE = LSE.replace(b"1000000000000000", b"1000000000000001")


def zipped(*members: tuple[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def rejection(name: str, data: bytes, **kwargs: object) -> str:
    """The reason open_delivery gives for refusing ``data``."""
    options: dict[str, object] = {"decrypt": None, "max_unpacked_bytes": LIMIT, **kwargs}
    with pytest.raises(DeliveryRejected) as refused:
        open_delivery(name, data, **options)  # type: ignore[arg-type]
    return str(refused.value)


# -- GnuPG: keys in tmp_path, and no gpg-agent left behind -----------------------------------


def agents_for(paths: list[Path]) -> list[str]:
    """Command lines of running gpg-agents whose home is (under) one of ``paths``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        command = " ".join(a.decode("utf-8", "replace") for a in argv if a)
        if "gpg-agent" in command and any(str(p) in command for p in paths):
            found.append(command)
    return found


@pytest.fixture
def usage_keys(tmp_path: Path, gnupg: None) -> Iterator[Callable[[str], UsageKey]]:
    """Makes UsageKeys in tmp_path; closes them and checks no gpg-agent of theirs is left."""
    made: list[UsageKey] = []
    homedirs: list[Path] = [tmp_path]

    def make(name: str) -> UsageKey:
        key = UsageKey(tmp_path / name / "gnupg")
        made.append(key)
        homedirs.append(key.gpg_homedir)
        return key

    yield make
    for key in made:
        key.close()
    deadline = time.monotonic() + 5
    while agents_for(homedirs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agents_for(homedirs) == []


@pytest.fixture
def gateway_key(usage_keys: Callable[[str], UsageKey]) -> UsageKey:
    key = usage_keys("gateway")
    key.init("hangw usage key (test)")
    return key


def opened(name: str, data: bytes, key: UsageKey | None = None) -> list[LseMember]:
    decrypt = None if key is None else functools.partial(key.decrypt, max_bytes=LIMIT)
    return open_delivery(name, data, decrypt=decrypt, max_unpacked_bytes=LIMIT)


# -- plain and zipped ------------------------------------------------------------------------


def test_plain_lse_passes_through() -> None:
    """A bare LSE file (with or without a UTF-8 BOM) comes back as one member, bytes unchanged."""
    assert opened("a.lse", LSE) == [LseMember("a.lse", LSE)]
    with_bom = b"\xef\xbb\xbf" + LSE
    assert opened("b.txt", with_bom) == [LseMember("b.txt", with_bom)]


def test_zip_members_in_name_order() -> None:
    """A zip's .lse members (any case) come in name order; directories are passed over."""
    data = zipped(("z.lse", LSE), ("day/", b""), ("day/A.LSE", OTHER_LSE))
    assert opened("delivery.bin", data) == [
        LseMember("delivery.bin!day/A.LSE", OTHER_LSE),
        LseMember("delivery.bin!z.lse", LSE),
    ]


def test_truncated_zip_is_rejected() -> None:
    """A zip cut short (its end, or all but its first bytes) is refused as truncated or damaged."""
    data = zipped(("a.lse", LSE * 50), ("b.lse", OTHER_LSE))
    for cut in (len(data) - 10, len(data) // 2, 3):
        reason = rejection("cut.zip", data[:cut])
        assert "the zip archive cut.zip is truncated or damaged" in reason


@pytest.mark.parametrize("at", [9, 2])
def test_damaged_lzma_member_is_rejected(at: int) -> None:
    """An LZMA-packed member whose stream (or its properties' size) is damaged is refused."""
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_LZMA) as archive:
        archive.writestr("a.lse", LSE * 50)
    data = bytearray(packed.getvalue())
    start = 30 + len("a.lse")  # the member's data follows its local header and name
    for i in range(start + at, start + at + (31 if at == 9 else 1)):
        data[i] ^= 0x5A if at == 9 else 0xFF
    reason = rejection("d.zip", bytes(data))
    assert "the zip archive d.zip is truncated or damaged: member a.lse cannot be read" in reason


def test_empty_zip_is_rejected() -> None:
    """An empty zip archive (only directories, or nothing at all) is refused: no LSE file."""
    assert "is empty: it holds no LSE file" in rejection("e.zip", zipped())
    assert "is empty: it holds no LSE file" in rejection("d.zip", zipped(("day/", b"")))


def test_foreign_member_rejects_the_whole_delivery() -> None:
    """A zip holding anything but .lse files is refused whole, naming the foreign member."""
    data = zipped(("a.lse", LSE), ("payroll.xls", b"\xd0\xcf\x11\xe0"))
    reason = rejection("d.zip", data)
    assert "member d.zip!payroll.xls is not an LSE file" in reason
    assert "nothing of it is loaded" in reason


def test_lse_member_that_is_not_lse_is_named() -> None:
    """A member named .lse that is not LSE text (or is an archive) is refused with its name."""
    reason = rejection("d.zip", zipped(("a.lse", LSE), ("b.lse", b"ESIID,kWh\n1,2\n")))
    assert "member d.zip!b.lse is not an LSE file: the first line is 'ESIID,kWh'" in reason
    nested = rejection("d.zip", zipped(("inner.lse", zipped(("a.lse", LSE)))))
    assert "member d.zip!inner.lse is a zip archive" in nested


def test_zip_bomb_is_refused() -> None:
    """A zip unpacking past max_unpacked_bytes is refused, and so is one whose headers lie."""
    bomb = zipped(("a.lse", LSE), ("big.lse", LSE + b"0" * (4 * LIMIT)))
    assert len(bomb) < LIMIT // 50
    assert "possible zip bomb" in rejection("bomb.zip", bomb)
    # Claim 100 bytes for big.lse in its local header and the central directory.
    claimed = (4 * LIMIT + len(LSE)).to_bytes(4, "little")
    lying = bomb.replace(claimed, (100).to_bytes(4, "little"))
    assert lying.count((100).to_bytes(4, "little")) >= 2
    reason = rejection("lying.zip", lying)
    assert "possible zip bomb" in reason or "truncated or damaged" in reason
    assert "lying.zip" in reason


def test_password_zip_is_rejected() -> None:
    """A zip member marked as zip-password-encrypted is refused, pointing at PGP instead."""
    data = bytearray(zipped(("a.lse", LSE), compression=zipfile.ZIP_STORED))
    # zipfile cannot write encrypted members: set bit 0 of the general purpose flags by hand.
    central = data.index(b"PK\x01\x02")
    data[6] |= 0x1
    data[central + 8] |= 0x1
    reason = rejection("p.zip", bytes(data))
    assert "member p.zip!a.lse is encrypted with a zip password" in reason


def test_not_an_lse_file_names_its_first_line() -> None:
    """A file that is neither zip, PGP nor LSE is refused, quoting (a short piece of) line one."""
    reason = rejection("usage.csv", b"ESIID,Date,kWh\r\n1000,2024-01-01,3.2\r\n")
    assert "usage.csv is not an LSE file: the first line is 'ESIID,Date,kWh'" in reason
    long_line = rejection("x.lse", b"x" * 500 + b"\n")
    assert "(cut short)" in long_line and "x" * 100 not in long_line
    assert "is empty" in rejection("empty.lse", b"")


# -- PGP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
def test_pgp_zip_and_pgp_lse(gateway_key: UsageKey, armor: bool) -> None:
    """pgp(zip(lse, lse)) and pgp(lse), binary or armored, open with the gateway's usage key."""
    public = gateway_key.export_public()
    inner = zipped(("2.lse", OTHER_LSE), ("1.lse", LSE))
    message = encrypt_for(public, inner, armor=armor)
    assert message.startswith(b"-----BEGIN PGP MESSAGE-----") == armor
    assert opened("d.zip.pgp", message, gateway_key) == [
        LseMember("d.zip.pgp!1.lse", LSE),
        LseMember("d.zip.pgp!2.lse", OTHER_LSE),
    ]
    single = encrypt_for(public, LSE, armor=armor)
    assert opened("d.lse.asc", single, gateway_key) == [LseMember("d.lse.asc", LSE)]


def test_wrong_pgp_key_is_named(usage_keys: Callable[[str], UsageKey]) -> None:
    """A message encrypted to another key is refused naming that key and the gateway's own."""
    ours, theirs = usage_keys("gateway"), usage_keys("elsewhere")
    our_fingerprint = ours.init("gateway")
    theirs.init("elsewhere")
    message = encrypt_for(theirs.export_public(), zipped(("a.lse", LSE)))
    reason = rejection("d.pgp", message, decrypt=ours.decrypt)
    their_subkey = theirs._key().encryption_key_ids[0]
    assert f"encrypted for key 0x{their_subkey}" in reason
    assert f"not for this gateway's usage key (fingerprint {our_fingerprint}" in reason
    assert "`hangw usage key export`" in reason


def test_pgp_without_usage_key_is_rejected() -> None:
    """A PGP delivery with no usage key set up is refused, saying how to make one."""
    reason = rejection("d.pgp", b"-----BEGIN PGP MESSAGE-----\n\nhQIMA...\n")
    assert "no usage key is set up" in reason
    assert "hangw usage key init" in reason


def test_damaged_pgp_is_rejected(gateway_key: UsageKey) -> None:
    """Corrupted or truncated ciphertext, and non-OpenPGP bytes, are refused with a reason."""
    lse = b"".join(LSE.replace(b"68.29", f"{i:05}".encode()) for i in range(20000))
    message = encrypt_for(gateway_key.export_public(), lse)
    middle = len(message) // 2
    corrupted = message[:middle] + bytes([message[middle] ^ 0xFF]) + message[middle + 1 :]
    short = encrypt_for(gateway_key.export_public(), LSE * 2000)  # compressed: a few hundred bytes
    for reason in (
        rejection("c.pgp", corrupted, decrypt=gateway_key.decrypt),
        rejection("t.pgp", message[:middle], decrypt=gateway_key.decrypt),
        # cut off after the session key the usage key opens: the rest of the message is missing
        *(rejection("s.pgp", short[:cut], decrypt=gateway_key.decrypt) for cut in (100, 300)),
        # cut inside the session key packet, just after the usage key's id
        rejection("s.pgp", short[:11], decrypt=gateway_key.decrypt),
        rejection("s.pgp", short[:-25], decrypt=gateway_key.decrypt),
    ):
        assert "integrity check" in reason or "truncated or damaged" in reason
        assert "ask the TDSP to send it again" in reason
    garbage = rejection("g.pgp", b"\x85garbage after a PKESK tag", decrypt=gateway_key.decrypt)
    assert "not a readable OpenPGP message" in garbage


def test_decrypt_stops_at_max_bytes(gateway_key: UsageKey) -> None:
    """A small message that decompresses past max_unpacked_bytes is stopped while decrypting."""
    message = encrypt_for(gateway_key.export_public(), LSE + b"0" * (8 * LIMIT))
    assert len(message) < LIMIT // 10
    assert "decrypts to more than 1,048,576 bytes" in rejection(
        "b.pgp", message, decrypt=functools.partial(gateway_key.decrypt, max_bytes=LIMIT)
    )


def test_no_secret_key_material_in_any_message(
    usage_keys: Callable[[str], UsageKey], gateway_key: UsageKey
) -> None:
    """No refusal or key error ever carries the secret key, armored or as its raw scalars."""
    armored = subprocess.run(
        [
            *("gpg", "--homedir", str(gateway_key.gpg_homedir), "--batch"),
            *("--pinentry-mode", "loopback", "--passphrase", ""),
            *("--armor", "--export-secret-keys"),
        ],
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "PRIVATE KEY BLOCK" in armored
    secrets: list[str] = [
        line for line in armored.splitlines() if len(line) >= 16 and ":" not in line
    ]
    for key_file in (gateway_key.home / "private-keys-v1.d").glob("*.key"):
        stored = key_file.read_bytes()
        # The agent's extended key format, "(d #<hex>#)", or the older canonical "(1:d32:<raw>)".
        extended = re.search(rb"\(d #([0-9A-Fa-f]+)#\)", stored)
        canonical = re.search(rb"\(1:d(\d+):", stored)
        if extended is not None:
            d = bytes.fromhex(extended[1].decode())
        else:
            assert canonical is not None, "an unprotected secret key holds its scalar d"
            d = stored[canonical.end() : canonical.end() + int(canonical[1])]
        assert len(d) == 32
        secrets += [d.hex(), d.hex().upper(), base64.b64encode(d).decode()[:20]]

    other = usage_keys("other")
    other.init("other")
    public = gateway_key.export_public()
    message = encrypt_for(public, zipped(("a.lse", LSE)))
    messages = [
        rejection("w.pgp", encrypt_for(other.export_public(), LSE), decrypt=gateway_key.decrypt),
        rejection("c.pgp", message[:-30] + b"\0" * 30, decrypt=gateway_key.decrypt),
        rejection("t.pgp", message[:40], decrypt=gateway_key.decrypt),
        rejection("n.pgp", message),
        rejection(
            "x.zip", encrypt_for(public, zipped(("x.xls", LSE))), decrypt=gateway_key.decrypt
        ),
        rejection("l.pgp", encrypt_for(public, b"not lse"), decrypt=gateway_key.decrypt),
    ]
    with pytest.raises(UsageKeyError) as again:
        gateway_key.init("again")
    messages.append(str(again.value))
    for text in messages:
        for secret in secrets:
            assert secret not in text


def test_long_gnupg_home_works(usage_keys: Callable[[str], UsageKey]) -> None:
    """A home too long for gpg-agent's socket paths is reached through a short link."""
    key = usage_keys("a-rather-long-directory-name-" * 3)
    assert len(str(key.home)) + len("/S.gpg-agent.browser") > 107
    assert key.gpg_homedir != key.home
    key.init("long")
    assert key.gpg_homedir.resolve() == key.home
    assert opened("d.pgp", encrypt_for(key.export_public(), LSE), key) == [LseMember("d.pgp", LSE)]


def test_key_init_refuses_to_replace_unless_asked(gateway_key: UsageKey) -> None:
    """init refuses an existing key; replace=True moves the old home aside and makes a new key."""
    first = gateway_key.fingerprint()
    assert gateway_key.exists()
    with pytest.raises(UsageKeyError, match="already holds a usage key"):
        gateway_key.init("again")
    second = gateway_key.init("again", replace=True)
    assert second != first and gateway_key.fingerprint() == second
    assert (gateway_key.home.stat().st_mode & 0o777) == 0o700
    aside = list(gateway_key.home.parent.glob("gnupg.replaced-*"))
    assert len(aside) == 1
    with UsageKey(aside[0]) as old:
        assert old.fingerprint() == first


def test_cli_key_init_and_export(
    tmp_path: Path, gnupg: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`usage key init` prints the fingerprint and public key file; export prints or writes it."""
    config = from_mapping({"gateway": {"state_dir": str(tmp_path / "state")}})
    try:
        assert cmd_key_export(config, argparse.Namespace(out=None)) == 1
        assert "hangw usage key init" in capsys.readouterr().err
        assert cmd_key_init(config, argparse.Namespace(uid=None, replace=False)) == 0
        said = capsys.readouterr().out
        fingerprint = UsageKey(config.gnupg_home).fingerprint()
        assert " ".join(re.findall("....", fingerprint)) in said
        assert str(config.gnupg_home / "usage-key.asc") in said
        assert cmd_key_init(config, argparse.Namespace(uid=None, replace=False)) == 1
        assert "already holds a usage key" in capsys.readouterr().err
        assert cmd_key_export(config, argparse.Namespace(out=None)) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        out = tmp_path / "tdsp.asc"
        assert cmd_key_export(config, argparse.Namespace(out=str(out))) == 0
        assert out.read_text() == printed
        assert (config.gnupg_home / "usage-key.asc").read_text() == printed
    finally:
        UsageKey(config.gnupg_home).close()
    assert agents_for([tmp_path]) == []
