"""Install codes as the API receives them: hex text in, checked bytes out, never echoed.

The CRC-16/X-25 check and the AES-MMO link-key derivation are sep1's; this module turns them into
refusals a person can act on, which name the problem but never contain the code.
"""

from __future__ import annotations

import re

from sep1 import installcode as _installcode


class InstallCodeError(ValueError):
    """The install code is not usable; the message never contains the code."""


_SEPARATORS = re.compile(r"[\s:\-]")


def parse_install_code(text: object) -> bytes:
    """Hex text (spaces, ``:`` and ``-`` allowed) to the code bytes including their CRC."""
    if not isinstance(text, str):
        raise InstallCodeError("install_code must be a string of hexadecimal digits")
    digits = _SEPARATORS.sub("", text)
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise InstallCodeError("install_code must contain only hexadecimal digits") from None
    if len(raw) not in (8, 10, 14, 18):
        raise InstallCodeError(
            f"install_code has {len(raw)} bytes; an install code is 6, 8, 12 or 16 bytes "
            "followed by its 2-byte CRC (16, 20, 28 or 36 hex digits)"
        )
    try:
        _installcode.check_install_code(raw)
    except ValueError:
        raise InstallCodeError(
            "install_code fails its CRC-16/X-25 check; re-read the code from the device label"
        ) from None
    return raw


def derive_link_key(code: bytes) -> bytes:
    """The preconfigured link key (AES-MMO hash of the code and its CRC)."""
    return _installcode.derive_link_key(code)
