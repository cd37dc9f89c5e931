"""Opening an LSE delivery: the LSE texts inside a delivered file, or the reason there are none.

TDSPs deliver LSE files zipped and then PGP-encrypted, and sometimes only one of the two or
neither. What a file is comes from its first bytes, never from its name:

- a zip archive (``PK\\x03\\x04``, or the end record alone of an empty one): every member whose
  name ends in ``.lse`` (any case) is taken, in name order; directories are passed over; any
  other member rejects the whole delivery, so that nothing of it is loaded;
- an OpenPGP message, binary or ASCII-armored: decrypted with the gateway's usage key (the
  ``decrypt`` function, see :mod:`hangw.usage.pgp`), then a zip or an LSE file again;
- otherwise an LSE file, which must begin (after a UTF-8 byte order mark, if any) with a sort
  code line such as ``00000001,``.

Each wrapping is opened once: ``pgp(zip(lse...))``, ``pgp(lse)``, ``zip(lse...)`` and a bare LSE
file are deliveries; an archive in an archive or a message encrypted twice is refused with a
reason. A zip is unpacked in chunks and refused once the bytes it actually unpacks to (not what
its headers claim) pass ``max_unpacked_bytes``.

Bytes in, members out: no file system, no gpg, no logging here.
"""

from __future__ import annotations

import io
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DeliveryRejected", "LseMember", "open_delivery"]

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_ARMOR = b"-----BEGIN PGP MESSAGE-----"
_BOM = b"\xef\xbb\xbf"
#: OpenPGP packet tags a message may begin with: public-key and symmetric-key encrypted session
#: keys, one-pass signature, compressed data, symmetrically encrypted data (with and without
#: integrity protection, and AEAD), literal data.
_MESSAGE_TAGS = frozenset({1, 3, 4, 8, 9, 11, 18, 20})
_SORT_CODE_LINE = re.compile(rb"[0-9]{8},")
_CHUNK = 1 << 20
_EXCERPT = 60


class DeliveryRejected(Exception):
    """The delivery cannot be loaded; the message says why, in words a person can act on."""


@dataclass(frozen=True)
class LseMember:
    """One LSE text of a delivery.

    ``name`` says where it came from: the delivery's name, then ``!`` and the member's path for
    a zip member (``2009-01-01.zip!a/b.lse``). ``data`` is the file as delivered, a UTF-8 byte
    order mark included if it had one.
    """

    name: str
    data: bytes


def open_delivery(
    name: str,
    data: bytes,
    *,
    decrypt: Callable[[bytes], bytes] | None,
    max_unpacked_bytes: int,
) -> list[LseMember]:
    """The LSE members of delivery ``name``; DeliveryRejected with the reason when it has none.

    ``decrypt`` turns an OpenPGP message into its plaintext (raising DeliveryRejected when it
    cannot); None when no usage key is set up. It should itself stop at ``max_unpacked_bytes``
    (:meth:`hangw.usage.pgp.UsageKey.decrypt` takes ``max_bytes``): the plaintext is only
    measured here once it has been returned.
    """
    kind = _kind(data)
    if kind == "pgp":
        if decrypt is None:
            raise DeliveryRejected(
                f"{name} is PGP-encrypted but no usage key is set up to decrypt it; create one "
                "with `hangw usage key init` and give the TDSP the public key "
                "`hangw usage key export` prints"
            )
        plaintext = decrypt(data)
        if len(plaintext) > max_unpacked_bytes:
            raise DeliveryRejected(
                f"{name} decrypts to {len(plaintext):,} bytes, more than the "
                f"{max_unpacked_bytes:,} a delivery may unpack to (usage.max_unpacked_bytes)"
            )
        inner = _kind(plaintext)
        if inner == "pgp":
            raise DeliveryRejected(
                f"{name} is encrypted twice: its decrypted content is another OpenPGP message; "
                "a delivery is encrypted once, to the gateway's usage key"
            )
        if inner == "zip":
            return _open_zip(name, plaintext, max_unpacked_bytes)
        return [_lse(name, plaintext, f"{name} (decrypted)")]
    if kind == "zip":
        return _open_zip(name, data, max_unpacked_bytes)
    if len(data) > max_unpacked_bytes:
        raise DeliveryRejected(
            f"{name} is {len(data):,} bytes, more than the {max_unpacked_bytes:,} a delivery "
            "may hold (usage.max_unpacked_bytes)"
        )
    return [_lse(name, data, name)]


def _kind(data: bytes) -> str:
    """ "zip", "pgp" or "lse" (anything else: the LSE check gives the reason)."""
    if data.startswith(_ZIP_MAGICS) or (
        0 < len(data) < 4 and b"PK\x03\x04".startswith(data) and data != b"P"
    ):
        return "zip"
    if data and _is_binary_pgp(data[0]):
        return "pgp"
    if data.removeprefix(_BOM).lstrip(b" \t\r\n").startswith(_ARMOR):
        return "pgp"
    return "lse"


def _is_binary_pgp(first: int) -> bool:
    if not first & 0x80:
        return False
    tag = first & 0x3F if first & 0x40 else (first >> 2) & 0x0F
    return tag in _MESSAGE_TAGS


def _lse(name: str, data: bytes, where: str) -> LseMember:
    text = data.removeprefix(_BOM)
    if not text:
        raise DeliveryRejected(f"{where} is not an LSE file: it is empty")
    if not _SORT_CODE_LINE.match(text):
        if _kind(data) == "zip":
            raise DeliveryRejected(
                f"{where} is a zip archive, not an LSE file; an archive inside an archive is "
                "not opened: each LSE file goes directly in the delivered zip"
            )
        if _kind(data) == "pgp":
            raise DeliveryRejected(
                f"{where} is an OpenPGP message, not an LSE file; encrypt the whole zip once "
                "rather than the files inside it"
            )
        raise DeliveryRejected(
            f"{where} is not an LSE file: the first line is {_first_line(text)}; an LSE file "
            "begins with a sort code line such as 00000001,..."
        )
    return LseMember(name, data)


def _first_line(text: bytes) -> str:
    line = text.split(b"\n", 1)[0].rstrip(b"\r")
    shown = line[:_EXCERPT].decode("utf-8", "replace")
    return repr(shown) + (" (cut short)" if len(line) > _EXCERPT else "")


def _open_zip(name: str, data: bytes, limit: int) -> list[LseMember]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
        raise DeliveryRejected(
            f"the zip archive {name} is truncated or damaged: {error} ({len(data):,} bytes "
            "received); ask the TDSP to send it again"
        ) from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if not infos:
            raise DeliveryRejected(f"the zip archive {name} is empty: it holds no LSE file")
        seen: set[str] = set()
        for info in infos:
            where = f"{name}!{info.filename}"
            if not info.filename.lower().endswith(".lse"):
                raise DeliveryRejected(
                    f"member {where} is not an LSE file (its name does not end in .lse); the "
                    "delivery is refused whole, nothing of it is loaded"
                )
            if info.filename in seen:
                raise DeliveryRejected(
                    f"the zip archive {name} holds {info.filename} twice; which one is meant "
                    "cannot be told"
                )
            seen.add(info.filename)
            if info.flag_bits & 0x1:
                raise DeliveryRejected(
                    f"member {where} is encrypted with a zip password, which the gateway cannot "
                    "open; the delivery should be PGP-encrypted to the gateway's usage key "
                    "instead"
                )
        declared = sum(info.file_size for info in infos)
        if declared > limit:
            raise _too_big(name, limit, declared)
        members: list[LseMember] = []
        unpacked = 0
        for info in sorted(infos, key=lambda info: info.filename):
            where = f"{name}!{info.filename}"
            chunks: list[bytes] = []
            try:
                with archive.open(info) as stream:
                    while chunk := stream.read(_CHUNK):
                        unpacked += len(chunk)
                        if unpacked > limit:
                            raise _too_big(name, limit)
                        chunks.append(chunk)
            except (
                zipfile.BadZipFile,
                EOFError,
                zlib.error,
                lzma.LZMAError,
                ValueError,
                OSError,
            ) as error:
                raise DeliveryRejected(
                    f"the zip archive {name} is truncated or damaged: member {info.filename} "
                    f"cannot be read ({error}); ask the TDSP to send it again"
                ) from None
            except NotImplementedError as error:
                raise DeliveryRejected(
                    f"member {where} is packed in a way the gateway cannot unpack ({error}); "
                    "use deflate (the usual zip compression) or no compression"
                ) from None
            members.append(_lse(where, b"".join(chunks), f"member {where}"))
        return members


def _too_big(name: str, limit: int, declared: int | None = None) -> DeliveryRejected:
    what = (
        f"declares {declared:,} bytes unpacked, more than"
        if declared is not None
        else "unpacks to more than"
    )
    return DeliveryRejected(
        f"the zip archive {name} {what} the {limit:,} bytes a delivery may unpack to "
        "(usage.max_unpacked_bytes); refused as a possible zip bomb"
    )
