"""Install codes and the link keys derived from them (ZigBee Smart Energy 1.0, Annex B.6).

An install code is 6, 8, 12 or 16 bytes followed by its CRC-16/X-25, stored little-endian. The
preconfigured link key is the AES-MMO (Matyas-Meyer-Oseas over AES-128) hash of the code
including its CRC. Pure functions: bytes in, bytes out; the code itself is never put into an
exception message.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .crc import crc16_x25

__all__ = [
    "CODE_LENGTHS",
    "InstallCodeCRCError",
    "InstallCodeLengthError",
    "aes_mmo_hash",
    "check_install_code",
    "crc16_x25",
    "derive_link_key",
]

#: Lengths of the code body, without its two CRC bytes.
CODE_LENGTHS = (6, 8, 12, 16)
BLOCK = 16


class InstallCodeLengthError(ValueError):
    """The code is not 6, 8, 12 or 16 bytes followed by two CRC bytes."""


class InstallCodeCRCError(ValueError):
    """The two trailing bytes are not the CRC-16/X-25 of the code."""


def _as_bytes(code: object) -> bytes:
    """The bytes of a bytes-like code; anything else (hex text, a list) is a TypeError."""
    if not isinstance(code, (bytes, bytearray, memoryview)):
        raise TypeError(f"an install code is bytes, not {type(code).__name__}")
    return bytes(code)


def check_install_code(code: bytes | bytearray | memoryview) -> None:
    """Raise unless ``code`` is a valid code body followed by its little-endian CRC."""
    code = _as_bytes(code)
    if len(code) - 2 not in CODE_LENGTHS:
        raise InstallCodeLengthError(
            f"an install code is 6, 8, 12 or 16 bytes and a 2-byte CRC, not {len(code)} bytes"
        )
    if crc16_x25(code[:-2]) != int.from_bytes(code[-2:], "little"):
        raise InstallCodeCRCError("the install code's CRC-16/X-25 does not match")


def _pad(message: bytes) -> bytes:
    """Annex B.6 padding: a 1 bit, zeros, and the bit length in the last 2 (or 6) bytes."""
    bits = len(message) * 8
    if bits < 1 << 16:
        tail = bits.to_bytes(2, "big")
    else:
        tail = bits.to_bytes(4, "big") + b"\x00\x00"
    zeros = -(len(message) + 1 + len(tail)) % BLOCK
    return message + b"\x80" + bytes(zeros) + tail


def aes_mmo_hash(message: bytes) -> bytes:
    """The AES-MMO hash: H0 = 0; Hi = AES(key=H(i-1), Mi) XOR Mi over the padded message."""
    digest = bytes(BLOCK)
    padded = _pad(message)
    ecb = modes.ECB()
    for start in range(0, len(padded), BLOCK):
        block = padded[start : start + BLOCK]
        enciphered = Cipher(algorithms.AES(digest), ecb).encryptor().update(block)
        # ECB on one whole block: update() returns all of it, finalize() adds nothing
        digest = (int.from_bytes(enciphered) ^ int.from_bytes(block)).to_bytes(BLOCK)
    return digest


def derive_link_key(code: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte preconfigured link key of a checked install code (CRC included)."""
    code = _as_bytes(code)
    check_install_code(code)
    return aes_mmo_hash(code)
