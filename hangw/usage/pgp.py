"""The gateway's usage key: the OpenPGP key TDSPs encrypt LSE deliveries to, kept by GnuPG.

The key lives in a GnuPG home of its own (``usage.gnupg_home``, by default
``<state_dir>/gnupg``), never in the user's ``~/.gnupg``: every run of ``gpg`` (2.2 or later) gets
``--homedir``, ``--batch --no-tty``, machine-readable status lines and a time limit. The key is an
ed25519 signing primary key with a cv25519 encryption subkey and no passphrase: the daemon must
decrypt unattended, so the home directory's mode 0700 is what guards it.

GnuPG keeps the secret key behind its agent, which ``gpg`` starts on demand and which listens on
Unix sockets in the home (or under ``/run/user/<uid>/gnupg``). A socket path may be at most 107
bytes long, so for a home whose path is too long ``gpg`` is pointed at a short private symbolic
link to it instead (``$TMPDIR/hangw-gnupg-<uid>/<hash>``). :meth:`UsageKey.close` stops the agent
(and removes that link); whoever opens a ``UsageKey`` closes it.

Failures are of two kinds. :class:`~hangw.usage.delivery.DeliveryRejected`: the delivery itself
cannot be decrypted (encrypted for another key, damaged, not an OpenPGP message) and will not
become decryptable by trying again. :class:`UsageKeyError`: the gateway's side is not ready (no
key, gpg missing or too old, a time limit passed, the agent failing); the delivery should be
kept and tried again once that is fixed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import selectors
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from hangw import affinity
from hangw.usage.delivery import DeliveryRejected

if TYPE_CHECKING:
    from hangw.config import Config

__all__ = [
    "UsageKey",
    "UsageKeyError",
    "cmd_key_export",
    "cmd_key_init",
    "encrypt_for",
]

#: ``sun_path`` holds 108 bytes, the terminating NUL included.
_SOCKET_PATH_MAX = 107
#: The longest socket name gpg-agent creates in its socket directory.
_LONGEST_SOCKET = "/S.gpg-agent.browser"
_STATUS = "[GNUPG:] "
_CHUNK = 1 << 20
#: libgpg-error codes (the low 16 bits of an ERROR status) that mean the agent or the key on
#: this side failed, not the message: bad or missing passphrase, timeout, no agent, agent
#: error, no pinentry, canceled, unusable secret key, and the Assuan IPC errors.
_LOCAL_ERROR_CODES = frozenset({11, 54, 62, 77, 78, 85, 99, 177}) | frozenset(range(257, 282))


class UsageKeyError(Exception):
    """The usage key cannot be used or made (not the delivery's fault): the message says why."""


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: bytes
    status: list[list[str]]
    messages: list[str]

    def first(self, keyword: str) -> list[str] | None:
        return next((line for line in self.status if line[0] == keyword), None)

    def all(self, keyword: str) -> list[list[str]]:
        return [line for line in self.status if line[0] == keyword]

    def message(self, about: str = "") -> str:
        """gpg's last human-readable complaint (the last one containing ``about``, if any)."""
        lines = [m.removeprefix("gpg: ").strip() for m in self.messages if m.strip()]
        lines = [m for m in lines if not m.startswith(("WARNING: unsafe", "Note:"))]
        matching = [m for m in lines if about in m]
        if matching:
            return matching[-1]
        return lines[-1] if lines else f"gpg exited with status {self.returncode}"


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Key:
    fingerprint: str
    created: int
    #: The long key ids of its usable encryption subkeys (or of itself) with a secret part here.
    encryption_key_ids: tuple[str, ...]


class UsageKey:
    """The usage key in the GnuPG home ``home``; synchronous (run it in a thread), thread-safe."""

    def __init__(
        self,
        home: Path,
        *,
        gpg: str = "gpg",
        timeout_s: float = 60.0,
        seconds_per_mib: float = 0.5,
    ) -> None:
        self.home = Path(os.path.abspath(home))
        self.gpg = gpg
        #: The time limit of one gpg run, plus ``seconds_per_mib`` per MiB it is given.
        self.timeout_s = timeout_s
        self.seconds_per_mib = seconds_per_mib
        self._found = False  # a key was seen here (decrypt_once_made)

    def __enter__(self) -> UsageKey:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what callers use --------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the home holds a usage key (an encryption key with its secret part)."""
        return bool(self._keys())

    def init(self, uid: str, *, replace: bool = False) -> str:
        """Make a new usage key (no passphrase) and return its fingerprint.

        Refuses when the home already holds one, unless ``replace``: the old home is then moved
        aside to ``<home>.replaced-<UTC time>`` (kept, not deleted, for deliveries already on
        their way) and a new one made.
        """
        if self.exists():
            if not replace:
                raise UsageKeyError(
                    f"{self.home} already holds a usage key ({self.fingerprint()}); replacing it "
                    "means every TDSP must be given the new public key (`--replace`)"
                )
            self.close()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.home.with_name(f"{self.home.name}.replaced-{stamp}")
            count = 1
            while aside.exists():
                count += 1
                aside = self.home.with_name(f"{self.home.name}.replaced-{stamp}-{count}")
            self.home.rename(aside)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        no_passphrase = ["--utf8-strings", "--pinentry-mode", "loopback", "--passphrase", ""]
        made = self._gpg([*no_passphrase, "--quick-gen-key", uid, "ed25519", "sign", "never"])
        created = made.first("KEY_CREATED")
        if made.returncode != 0 or created is None or len(created) < 3:
            raise UsageKeyError(f"gpg could not make the usage key: {made.message()}")
        fingerprint = created[2]
        added = self._gpg(
            [*no_passphrase, "--quick-add-key", fingerprint, "cv25519", "encr", "never"]
        )
        if added.returncode != 0 or added.first("KEY_CREATED") is None:
            raise UsageKeyError(f"gpg could not add the encryption subkey: {added.message()}")
        return fingerprint

    def fingerprint(self) -> str:
        """The usage key's fingerprint (40 hex digits); UsageKeyError when there is none."""
        return self._key().fingerprint

    def export_public(self) -> str:
        """The usage key's public key, ASCII-armored, to give to the TDSPs."""
        fingerprint = self.fingerprint()
        run = self._gpg(
            [
                "--no-autostart",
                "--armor",
                "--export-options",
                "export-minimal",
                "--export",
                fingerprint,
            ]
        )
        if run.returncode != 0 or not run.stdout:
            raise UsageKeyError(f"gpg could not export the public key: {run.message()}")
        return run.stdout.decode("ascii")

    def decrypt_once_made(self, data: bytes, *, max_bytes: int | None = None) -> bytes:
        """``decrypt``, for a gateway whose usage key may be made after it started.

        While the home holds no key, UsageKeyError (the gateway's side, not the delivery's: a
        drop directory keeps the file and tries it again); from the first time a key is found,
        straight to ``decrypt``.
        """
        if not self._found:
            if not self.exists():
                raise UsageKeyError(
                    "an encrypted delivery waits for the gateway's usage key: create it with "
                    "`hangw usage key init` (no restart needed) and give the TDSP the public key "
                    "`hangw usage key export` prints"
                )
            self._found = True
        return self.decrypt(data, max_bytes=max_bytes)

    def decrypt(self, data: bytes, *, max_bytes: int | None = None) -> bytes:
        """The plaintext of OpenPGP message ``data`` (binary or armored), encrypted to this key.

        DeliveryRejected says why a message cannot be decrypted; UsageKeyError that the key or
        GnuPG failed on this side. ``max_bytes`` stops gpg (DeliveryRejected) once the plaintext
        grows past it: a compressed message can unpack to far more than it weighs.
        """
        try:
            run = self._gpg(
                ["--pinentry-mode", "error", "--skip-verify", "--decrypt"],
                data,
                max_output=max_bytes,
            )
        except _TooLarge:
            raise DeliveryRejected(
                f"the OpenPGP message decrypts to more than {max_bytes:,} bytes, more than a "
                "delivery may unpack to (usage.max_unpacked_bytes)"
            ) from None
        if run.returncode == 0 and run.first("DECRYPTION_OKAY") and not _failed(run):
            return run.stdout
        raise self._reason(run)

    def close(self) -> None:
        """Stop the home's gpg-agent, if one runs (gpg starts it again when needed)."""
        alias = _alias_path(self.home)
        homedir = alias if alias is not None and alias.is_symlink() else self.home
        gpgconf = _gpgconf(self.gpg)
        if homedir.is_dir():
            try:
                subprocess.run(
                    [gpgconf, "--homedir", str(homedir), "--kill", "gpg-agent"],
                    env=_environment(),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=self.timeout_s,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                pass  # nothing to stop, or nothing more to be done about it here
        if alias is not None and alias.is_symlink():
            alias.unlink(missing_ok=True)

    @property
    def gpg_homedir(self) -> Path:
        """What ``gpg --homedir`` is given: the home, or a short link to it when it is too long.

        The link is made when gpg is first run, and removed by :meth:`close`.
        """
        return _alias_path(self.home) or self.home

    # -- internals ---------------------------------------------------------------------------

    def _reason(self, run: _Run) -> Exception:
        """Why ``gpg --decrypt`` failed: DeliveryRejected, or UsageKeyError for our side."""
        export_hint = "ask the TDSP to encrypt to the key `hangw usage key export` prints"
        if run.first("BEGIN_DECRYPTION") is None and run.first("PLAINTEXT") is not None:
            return DeliveryRejected(
                f"the OpenPGP message is not encrypted (it is signed or plain data); {export_hint}"
            )
        if run.first("NEED_PASSPHRASE_SYM") is not None and not run.all("ENC_TO"):
            return DeliveryRejected(
                f"the OpenPGP message is encrypted with a passphrase, not to a public key; "
                f"{export_hint}"
            )
        recipients = [line[1] for line in run.all("ENC_TO") if len(line) > 1]
        ours = set(self._key_ids())
        if recipients and not ours.intersection(recipients):
            if not self.exists():
                return UsageKeyError(
                    f"no usage key in {self.home}: create one with `hangw usage key init`"
                )
            key = self._key()
            others = ", ".join(f"0x{key_id}" for key_id in recipients)
            return DeliveryRejected(
                f"the OpenPGP message is encrypted for key {others}, not for this gateway's "
                f"usage key (fingerprint {key.fingerprint}, encryption subkey "
                f"{', '.join('0x' + k for k in key.encryption_key_ids)}); {export_hint}"
            )
        # The key's side failed only when gpg says so: an agent, pinentry or IPC error, or no
        # secret part for one of our key ids. Any other message addressed to the usage key that
        # gpg did not begin to decrypt is the message's fault: cut short inside its session key
        # packet, or (DECRYPTION_KEY: the usage key opened the session key) before the data.
        no_secret = any(len(line) > 1 and line[1] in ours for line in run.all("NO_SECKEY"))
        if _local_error(run) or no_secret:
            return UsageKeyError(
                f"gpg could not use the usage key in {self.home}: "
                f"{run.message('public key decryption failed')}"
            )
        if recipients and run.first("BEGIN_DECRYPTION") is None:
            if run.first("DECRYPTION_KEY") is not None:
                missing = "the usage key opens its session key, but the encrypted data after it"
            else:
                missing = "it is addressed to the usage key, but its session key packet"
            return DeliveryRejected(
                f"the OpenPGP message is truncated or damaged: {missing} is missing or cut "
                "short; ask the TDSP to send it again"
            )
        nodata = run.first("NODATA")
        if nodata is not None and run.first("BEGIN_DECRYPTION") is None:
            what = {
                "1": "it holds no OpenPGP data",
                "2": "it holds no OpenPGP data",
                "3": "an OpenPGP packet was expected but not found",
                "4": "it holds an invalid OpenPGP packet",
            }.get(nodata[1] if len(nodata) > 1 else "", "it holds no usable OpenPGP data")
            return DeliveryRejected(
                f"not a readable OpenPGP message ({what}): truncated, damaged, or not "
                "encrypted with OpenPGP"
            )
        if run.first("BADMDC") is not None:
            return DeliveryRejected(
                "the OpenPGP message fails its integrity check: it was truncated or altered "
                "on the way; ask the TDSP to send it again"
            )
        if run.first("ERROR") is not None and run.first("BEGIN_DECRYPTION") is not None:
            error = run.first("ERROR") or []
            if error[1:2] == ["pkdecrypt_failed"]:
                return DeliveryRejected(
                    "the OpenPGP message's session key cannot be decrypted with the usage key "
                    f"({run.message('public key decryption failed')}): the message is damaged; "
                    "ask the TDSP to send it again"
                )
        if run.first("BEGIN_DECRYPTION") is not None:
            return DeliveryRejected(
                f"the OpenPGP message cannot be decrypted ({run.message()}): it is truncated or "
                "damaged; ask the TDSP to send it again"
            )
        return DeliveryRejected(f"the OpenPGP message cannot be decrypted: {run.message()}")

    def _keys(self) -> list[_Key]:
        """The keys in the home with a usable encryption key whose secret part is here.

        Read from the public listing and the agent's key files (``private-keys-v1.d/<keygrip>
        .key``), so that no agent is started just to look.
        """
        if not (self.home / "pubring.kbx").exists() and not (self.home / "pubring.gpg").exists():
            return []  # and gpg is not asked, which would make the home as it looked
        run = self._gpg(["--no-autostart", "--with-colons", "--with-keygrip", "--list-keys"])
        secrets = self.home / "private-keys-v1.d"
        keys: list[_Key] = []
        primary: list[str] = []  # fingerprint, creation time
        encryption: list[str] = []
        fields: list[str] = []  # the pub or sub record being read
        fingerprint_seen = False

        def finish() -> None:
            if primary and encryption:
                keys.append(_Key(primary[0], int(primary[1] or 0), tuple(encryption)))

        for line in run.stdout.decode("utf-8", "replace").splitlines():
            record = line.split(":")
            if record[0] == "pub":
                finish()
                primary, encryption = [], []
            if record[0] in ("pub", "sub"):
                fields, fingerprint_seen = record, False
            elif record[0] == "fpr" and fields and not fingerprint_seen:
                fingerprint_seen = True
                if fields[0] == "pub":
                    primary = [record[9], fields[5]]
            elif record[0] == "grp" and fields and primary:
                usable = fields[1] not in ("r", "e", "d", "i", "n")
                encrypts = len(fields) > 11 and "e" in fields[11]
                if usable and encrypts and (secrets / f"{record[9]}.key").exists():
                    encryption.append(fields[4])
                fields = []
        finish()
        return keys

    def _key(self) -> _Key:
        keys = self._keys()
        if not keys:
            raise UsageKeyError(
                f"no usage key in {self.home}: create one with `hangw usage key init`"
            )
        return max(keys, key=lambda key: key.created)

    def _key_ids(self) -> list[str]:
        return [key_id for key in self._keys() for key_id in key.encryption_key_ids]

    def _gpg(
        self, args: Sequence[str], data: bytes = b"", *, max_output: int | None = None
    ) -> _Run:
        _check_version(self.gpg)
        homedir = _socket_safe_home(self.home)
        argv = [self.gpg, "--homedir", str(homedir), "--batch", "--no-tty", "--status-fd", "2"]
        timeout = self.timeout_s + self.seconds_per_mib * len(data) / (1 << 20)
        return _run([*argv, *args], data, timeout, max_output)


def encrypt_for(public_key_armored: str, data: bytes, *, armor: bool = False) -> bytes:
    """``data`` encrypted to every key in ``public_key_armored``, as a TDSP would send it.

    The key is imported into a throwaway GnuPG home (its agent stopped and the home removed
    afterwards) and trusted for this one message only (``--trust-model always``).
    """
    home = Path(tempfile.mkdtemp(prefix="hangw-gpg-"))
    key = UsageKey(home)
    try:
        imported = key._gpg(["--no-autostart", "--import"], public_key_armored.encode())
        recipients = sorted({line[2] for line in imported.all("IMPORT_OK") if len(line) > 2})
        if not recipients:
            raise ValueError(f"no OpenPGP public key could be imported: {imported.message()}")
        to = [arg for fingerprint in recipients for arg in ("--recipient", fingerprint)]
        run = key._gpg(
            [
                "--no-autostart",
                "--trust-model",
                "always",
                *(["--armor"] if armor else []),
                *to,
                "--encrypt",
            ],
            data,
        )
        if run.returncode != 0 or run.first("END_ENCRYPTION") is None:
            raise UsageKeyError(f"gpg could not encrypt: {run.message()}")
        return run.stdout
    finally:
        key.close()
        shutil.rmtree(home, ignore_errors=True)


# -- the CLI (wired into `hangw usage key ...`) --------------------------------------------------


def cmd_key_init(config: Config, args: argparse.Namespace) -> int:
    """``hangw usage key init [--uid UID] [--replace]``: make the usage key, show where it is."""
    home = config.gnupg_home
    uid = getattr(args, "uid", None) or f"hangw usage key ({socket.gethostname()})"
    with UsageKey(home) as key:
        try:
            fingerprint = key.init(uid, replace=bool(getattr(args, "replace", False)))
            public = key.export_public()
        except (UsageKeyError, OSError) as error:
            print(f"hangw: {error}", file=sys.stderr)
            return 1
    public_path = home / "usage-key.asc"
    public_path.write_text(public, encoding="ascii")
    print(f"usage key made in {home}")
    print(f"fingerprint: {_spaced(fingerprint)}")
    print(f"its public key, for the TDSPs: {public_path} (or `hangw usage key export`)")
    return 0


def cmd_key_export(config: Config, args: argparse.Namespace) -> int:
    """``hangw usage key export [--out FILE]``: the usage key's public key, ASCII-armored."""
    with UsageKey(config.gnupg_home) as key:
        try:
            fingerprint = key.fingerprint()
            public = key.export_public()
        except UsageKeyError as error:
            print(f"hangw: {error}", file=sys.stderr)
            return 1
    out = getattr(args, "out", None)
    if not out:
        sys.stdout.write(public)
        return 0
    try:
        Path(out).write_text(public, encoding="ascii")
    except OSError as error:
        print(f"hangw: cannot write {out}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"public key of the usage key {_spaced(fingerprint)} written to {out}")
    return 0


def _spaced(fingerprint: str) -> str:
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


# -- running gpg -------------------------------------------------------------------------------


def _failed(run: _Run) -> bool:
    return any(run.first(keyword) for keyword in ("DECRYPTION_FAILED", "BADMDC", "FAILURE"))


def _local_error(run: _Run) -> bool:
    for line in run.all("ERROR"):
        try:
            code = int(line[2]) & 0xFFFF
        except (IndexError, ValueError):
            continue
        if code in _LOCAL_ERROR_CODES:
            return True
    return False


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GNUPGHOME", "GPG_AGENT_INFO")}
    env["LC_ALL"] = "C.UTF-8"  # messages in English, user ids in UTF-8
    env.pop("LANGUAGE", None)
    return env


@lru_cache(maxsize=4)
def _check_version(gpg: str) -> None:
    try:
        out = subprocess.run(
            [gpg, "--version"],
            env=_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        ).stdout.decode("utf-8", "replace")
    except OSError as error:
        raise UsageKeyError(
            f"cannot run {gpg} ({error.strerror}): install GnuPG 2.2 or later (apt-get install "
            "gnupg)"
        ) from None
    found = re.search(r"\(GnuPG\)\s+(\d+)\.(\d+)", out)
    if found is None or (int(found[1]), int(found[2])) < (2, 2):
        version = f"{found[1]}.{found[2]}" if found else "an unknown version"
        raise UsageKeyError(f"{gpg} is {version}; the usage key needs GnuPG 2.2 or later")


def _gpgconf(gpg: str) -> str:
    beside = Path(gpg).with_name("gpgconf")
    if os.sep in gpg and beside.exists():
        return str(beside)
    return shutil.which("gpgconf") or "gpgconf"


def _alias_path(home: Path) -> Path | None:
    """The short link used for ``home``, or None when ``home`` itself is short enough."""
    if len(os.fsencode(home)) + len(_LONGEST_SOCKET) <= _SOCKET_PATH_MAX:
        return None
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"hangw-gnupg-{os.getuid()}" / digest


def _socket_safe_home(home: Path) -> Path:
    alias = _alias_path(home)
    if alias is None:
        return home
    if len(os.fsencode(alias)) + len(_LONGEST_SOCKET) > _SOCKET_PATH_MAX:
        raise UsageKeyError(
            f"the GnuPG home {home} is too long a path for gpg-agent's sockets (at most "
            f"{_SOCKET_PATH_MAX - len(_LONGEST_SOCKET)} bytes), and so is the temporary directory "
            "for a short link to it; set usage.gnupg_home to a shorter path"
        )
    links = alias.parent
    try:
        links.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(links)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UsageKeyError(
            f"{links} (where short links to long GnuPG homes go) is not a private directory of "
            "this user; remove it, or set usage.gnupg_home to a shorter path"
        )
    try:
        target = os.readlink(alias)
    except FileNotFoundError:
        target = None
    except OSError:
        raise UsageKeyError(f"{alias} is in the way of a link to {home}; remove it") from None
    if target != str(home):
        temporary = links / f".{alias.name}.{os.getpid()}.{threading.get_ident()}"
        temporary.unlink(missing_ok=True)
        os.symlink(home, temporary)
        os.replace(temporary, alias)
    return alias


def _run(argv: list[str], data: bytes, timeout: float, max_output: int | None) -> _Run:
    """Run gpg with ``data`` on stdin; status lines come on stderr (``--status-fd 2``)."""
    stdout = bytearray()
    stderr = bytearray()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(),
        )
    except OSError as error:
        raise UsageKeyError(f"cannot run {argv[0]}: {error.strerror}") from None
    affinity.release(process.pid)  # decrypting a big delivery is work for another CPU
    with _reaped(process):
        assert process.stdin and process.stdout and process.stderr
        deadline = time.monotonic() + timeout
        pending = memoryview(data)
        with selectors.DefaultSelector() as selector:
            if pending:
                os.set_blocking(process.stdin.fileno(), False)
                selector.register(process.stdin, selectors.EVENT_WRITE)
            else:
                process.stdin.close()
            selector.register(process.stdout, selectors.EVENT_READ, stdout)
            selector.register(process.stderr, selectors.EVENT_READ, stderr)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UsageKeyError(f"gpg took longer than {timeout:.0f} s and was stopped")
                for ready, _events in selector.select(remaining):
                    if ready.fileobj is process.stdin:
                        try:
                            written = os.write(ready.fd, pending[:_CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            written = len(pending)  # gpg stopped reading: it says why
                        pending = pending[written:]
                        if not pending:
                            selector.unregister(process.stdin)
                            process.stdin.close()
                        continue
                    chunk = os.read(ready.fd, _CHUNK)
                    if not chunk:
                        selector.unregister(ready.fileobj)
                        continue
                    ready.data.extend(chunk)
                    if max_output is not None and len(stdout) > max_output:
                        raise _TooLarge
        try:
            returncode = process.wait(max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            raise UsageKeyError(f"gpg took longer than {timeout:.0f} s and was stopped") from None
    status: list[list[str]] = []
    messages: list[str] = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith(_STATUS):
            status.append(line[len(_STATUS) :].split(" "))
        else:
            messages.append(line)
    return _Run(returncode, bytes(stdout), status, messages)


@contextmanager
def _reaped(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill ``process`` if the block fails, and never leave its pipes or a zombie behind."""
    try:
        yield
    except BaseException:
        process.kill()
        raise
    finally:
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        if process.returncode is None:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
