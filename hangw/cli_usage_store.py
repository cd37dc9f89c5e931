"""``hangw usage import|import-reads|files|key``: the usage store's commands that work on the store.

These run on the machine that holds the store (like ``hangw meters import``), not over the API:
a day of LSE files is gigabytes, and the files come from the TDSPs, not from an API party.
A running hangwd may use the store at the same time.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from hangw import config as config_module
from hangw.cli_common import open_engine


def add_store_commands(usage: Any) -> None:
    """Add the commands to the ``hangw usage`` subparsers."""
    p = usage.add_parser("import", help="load ERCOT LSE files (.lse, .zip, PGP-encrypted)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--tdsp", metavar="DUNS", help="the TDSP that sent the files (checked against Sender)"
    )
    p.add_argument("--workers", type=int, default=None, help="parsing processes (default: cores)")
    p.add_argument("--show-rejections", type=int, default=20, metavar="N", help="default 20")
    p = usage.add_parser("import-reads", help="load midnight register reads (CSV, docs/usage.md)")
    p.add_argument("file")
    p = usage.add_parser("files", help="delivered files and what became of them")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--show", type=int, metavar="FILE_ID", help="one file with its rejections")
    p = usage.add_parser("key", help="the gateway's PGP key for encrypted LSE deliveries")
    p.add_argument("key_action", choices=["init", "export"])
    p.add_argument("--uid", default="hangw usage store", help="init: the key's user id")
    p.add_argument("--replace", action="store_true", help="init: replace an existing key")
    p.add_argument("--out", help="export: write the public key to this file")


class Bar:
    """A progress bar on standard error (one line per step when it is not a terminal)."""

    def __init__(self, label: str, out: TextIO = sys.stderr, every: float = 0.2) -> None:
        self.label = label
        self.out = out
        self.every = every
        self._last = 0.0
        self._tenth = 0
        self._tty = out.isatty()

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if self._tty:
            now = time.monotonic()
            if done < total and now - self._last < self.every:
                return
            self._last = now
        else:  # a log, not a screen: a line at each tenth
            tenth = int(share * 10)
            if tenth <= self._tenth:
                return
            self._tenth = tenth
        filled = round(share * 30)
        line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {share * 100:5.1f}%"
        if self._tty:
            self.out.write(f"\r{line}\033[K")
            if done >= total:
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()


def cmd_import(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.usage.pgp import UsageKey

    with UsageKey(config.gnupg_home) as key:
        return _import(config, args, key)


def _import(config: config_module.Config, args: argparse.Namespace, key: Any) -> int:
    from hangw.usage.ingest import Ingest
    from hangw.usage.lse import VeeSettings
    from hangw.usage.pgp import UsageKeyError

    decrypt: Callable[[bytes], bytes] | None = None
    if key.exists():
        decrypt = functools.partial(key.decrypt, max_bytes=config.usage.max_unpacked_bytes)
    engine = open_engine(config)
    failed = 0
    with Ingest(
        VeeSettings(config.usage.spike_ratio, config.usage.zero_run),
        sum_tolerance_wh=config.usage.sum_tolerance_wh,
        decrypt=decrypt,
        max_unpacked_bytes=config.usage.max_unpacked_bytes,
        workers=args.workers,
    ) as ingest:

        def deliveries() -> Iterator[tuple[str, bytes]]:
            nonlocal failed
            for name in args.files:
                try:
                    yield Path(name).name, Path(name).read_bytes()
                except OSError as error:
                    print(f"hangw: cannot read {name}: {error.strerror}", file=sys.stderr)
                    failed += 1

        outcomes = ingest.import_many(
            engine, deliveries(), source="cli", tdsp_duns=args.tdsp, progress=Bar
        )
        while True:
            try:
                outcome = next(outcomes)
            except StopIteration:
                break
            except UsageKeyError as error:
                print(f"hangw: nothing more was loaded: {error}", file=sys.stderr)
                return 1
            except (sa.exc.SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as error:
                # SQLAlchemy's, or the driver's own from the cursor the usage is written with
                cause = getattr(error, "orig", None) or error
                print(
                    f"hangw: a file was not loaded and nothing after it: the store refused it "
                    f"({type(cause).__name__}: {str(cause)[:200]})",
                    file=sys.stderr,
                )
                return 1
            print(outcome.summary())
            for rejection in outcome.rejections[: args.show_rejections]:
                print(f"  line {rejection.line}: {rejection.reason}")
            if outcome.rejected > args.show_rejections:
                print(
                    f"  ... {outcome.rejected - args.show_rejections} more "
                    f"(hangw usage files --show {outcome.file_id})"
                )
            failed += outcome.state == "rejected"
    return 1 if failed else 0


def cmd_import_reads(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.usage.reads import ReadsFileError, load_reads_thd, parse_reads

    try:
        with open(args.file, newline="", encoding="utf-8-sig") as handle:
            reads, rejected = parse_reads(handle, args.file)
    except ReadsFileError as error:
        print(f"hangw: {error}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as error:
        print(f"hangw: cannot read {args.file}: {error}", file=sys.stderr)
        return 1
    engine = open_engine(config)
    with engine.begin() as conn:
        stored = load_reads_thd(conn, reads, time.time(), config.usage.sum_tolerance_wh)
    print(f"{args.file}: {stored} register read(s) loaded, {len(rejected)} rejected")
    for line, reason in rejected[:20]:
        print(f"  line {line}: {reason}")
    return 0


def cmd_files(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.store.model import usage_files, usage_rejections

    engine = open_engine(config)
    with engine.connect() as conn:
        if args.show is not None:
            row = conn.execute(
                sa.select(usage_files).where(usage_files.c.file_id == args.show)
            ).first()
            if row is None:
                print(f"hangw: no delivered file {args.show}", file=sys.stderr)
                return 1
            _print_file(row)
            for rejection in conn.execute(
                sa.select(usage_rejections)
                .where(usage_rejections.c.file_id == args.show)
                .order_by(usage_rejections.c.line)
            ):
                print(f"  line {rejection.line}: {rejection.reason}")
            return 0
        rows = conn.execute(
            sa.select(usage_files).order_by(usage_files.c.file_id.desc()).limit(args.limit)
        ).all()
    for row in reversed(rows):
        _print_file(row)
    return 0


def _print_file(row: Any) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.imported_at))
    if row.state == "rejected":
        print(f"{row.file_id:>6} {when} {row.name}: rejected: {row.reason}")
        return
    print(
        f"{row.file_id:>6} {when} {row.name}: {row.records} records, {row.loaded} loaded, "
        f"{row.replaced} replaced, {row.unchanged} unchanged, {row.rejected} rejected, "
        f"{row.flagged} flagged ({row.source})"
    )


def cmd_key(config: config_module.Config, args: argparse.Namespace) -> int:
    from hangw.usage import pgp

    if args.key_action == "init":
        return pgp.cmd_key_init(config, args)
    return pgp.cmd_key_export(config, args)


HANDLERS: dict[tuple[str, str], Callable[[config_module.Config, argparse.Namespace], int]] = {
    ("usage", "import"): cmd_import,
    ("usage", "import-reads"): cmd_import_reads,
    ("usage", "files"): cmd_files,
    ("usage", "key"): cmd_key,
}
