"""Install codes: the CRC-16/X-25 check and the AES-MMO link key, against vectors and zigpy."""

from __future__ import annotations

import random
import warnings

import pytest

import sep1
from sep1.installcode import InstallCodeCRCError, InstallCodeLengthError, aes_mmo_hash

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import zigpy.util

# From sep1-wire.md (zigpy's own tests): install code with CRC -> link key.
VECTORS = [
    ("11223344556677884AF7", "41618FC0C83B0E14A589954B16E31466"),
    ("83FED3407A939723A5C639B26916D505C3B5", "66B6900981E1EE3CA4206B6B861C02BB"),
]


@pytest.mark.parametrize(("code", "key"), VECTORS)
def test_public_vectors(code: str, key: str) -> None:
    """The published install codes pass the CRC check and derive the published link keys."""
    sep1.check_install_code(bytes.fromhex(code))
    assert sep1.derive_link_key(bytes.fromhex(code)) == bytes.fromhex(key)


def test_crc_check_value() -> None:
    """CRC-16/X-25 of "123456789" is the catalogue check value 0x906E."""
    assert sep1.crc16_x25(b"123456789") == 0x906E


def test_random_codes_agree_with_zigpy() -> None:
    """On 300 random codes of every length the link key equals zigpy's convert_install_code."""
    rng = random.Random(20261123)
    for _ in range(300):
        body = rng.randbytes(rng.choice([6, 8, 12, 16]))
        code = body + sep1.crc16_x25(body).to_bytes(2, "little")
        assert sep1.derive_link_key(code) == bytes(zigpy.util.convert_install_code(code))


def test_aes_mmo_agrees_with_zigpy_on_long_messages() -> None:
    """The AES-MMO hash agrees with zigpy's on messages spanning several padded blocks."""
    rng = random.Random(5)
    for size in (0, 1, 13, 14, 15, 16, 17, 31, 32, 100):
        message = rng.randbytes(size)
        assert aes_mmo_hash(message) == bytes(zigpy.util.aes_mmo_hash(message))


def test_bad_codes_are_refused_without_echoing_them() -> None:
    """A wrong length or CRC is refused, and the error never contains the code itself."""
    good = bytes.fromhex(VECTORS[0][0])
    bad_crc = good[:-1] + bytes([good[-1] ^ 0x01])
    with pytest.raises(InstallCodeCRCError) as crc_error:
        sep1.derive_link_key(bad_crc)
    with pytest.raises(InstallCodeLengthError) as length_error:
        sep1.check_install_code(good[:-3])
    for error in (crc_error.value, length_error.value):
        message = str(error).upper()
        assert good[:-2].hex().upper() not in message and "11223344" not in message


def test_a_bytes_like_code_is_checked_and_hashed_as_its_bytes() -> None:
    """A bytearray or memoryview code passes the check and gives the published link key."""
    code, key = (bytes.fromhex(h) for h in VECTORS[0])
    for form in (bytearray(code), memoryview(code)):
        sep1.check_install_code(form)
        assert sep1.derive_link_key(form) == key


def test_a_code_that_is_not_bytes_is_refused_as_such_without_echoing_it() -> None:
    """Hex text, a list of ints or None is a TypeError saying a code is bytes, never the code."""
    text = VECTORS[0][0]
    for call in (sep1.check_install_code, sep1.derive_link_key):
        for bad in (text, text[:10], list(bytes.fromhex(text)), None):
            with pytest.raises(TypeError, match="an install code is bytes") as caught:
                call(bad)  # type: ignore[arg-type]
            message = str(caught.value).upper()
            assert "11223344" not in message and "4AF7" not in message
