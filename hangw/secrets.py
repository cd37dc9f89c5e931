"""Install codes and link keys at rest: AES-256-GCM with a key from a file or the config.

The sealed form is ``nonce (12 bytes) || ciphertext+tag``; the additional data binds a sealed value
to its row (the device id), so a value copied into another row does not open.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32


class SecretKeyError(Exception):
    """The key file is missing, unreadable or not 64 hex digits."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the store key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], context.encode())


def load_or_create_key(path: Path) -> bytes:
    """Read the 64-hex-digit key in ``path``, creating it (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(os.urandom(KEY_BYTES).hex() + "\n")
    try:
        key = bytes.fromhex(path.read_bytes().decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError too: bytes that are no text at all
        raise SecretKeyError(f"{path} does not hold a hex key") from None
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"{path} must hold {KEY_BYTES * 2} hex digits")
    return key
