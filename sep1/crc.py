"""CRC-16 over the polynomial 0x1021, bit-reflected (0x8408), table-driven.

Install codes use the X-25 variant (init and final xor 0xFFFF); the IEEE 802.15.4 frame check
sequence uses KERMIT (init 0, no final xor). Same table, different ends.
"""

from __future__ import annotations

__all__ = ["crc16_kermit", "crc16_x25"]


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def _crc16_reflected(data: bytes, init: int, xorout: int) -> int:
    crc = init
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc ^ xorout


def crc16_x25(data: bytes) -> int:
    """CRC-16/X-25: polynomial 0x1021 reflected (0x8408), init 0xFFFF, xorout 0xFFFF."""
    return _crc16_reflected(data, 0xFFFF, 0xFFFF)


def crc16_kermit(data: bytes) -> int:
    """CRC-16/KERMIT, the 802.15.4 FCS: polynomial 0x1021 reflected, init 0, no final xor."""
    return _crc16_reflected(data, 0x0000, 0x0000)
