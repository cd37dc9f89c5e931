"""What the ``hangw`` command modules share: the error a command stops with, the store, and the
local files a command reads or writes.

A command that goes over the API reads its input files and opens its output file before it asks
the API anything: a missing or unwritable file is reported as what it is, not as an API that
cannot be reached, and nothing is sent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa

from hangw import config as config_module


class CommandError(Exception):
    """The command cannot go on: ``hangw.cli.main`` prints ``hangw: <message>`` and exits 1."""


def open_engine(config: config_module.Config) -> sa.Engine:
    """The store's engine with its schema brought up to date; CommandError when it cannot be."""
    from hangw.store import schema

    try:
        engine = schema.make_engine(config.store_url)
    except OSError as error:  # the SQLite file's directory: gateway.state_dir may be a file
        raise CommandError(
            f"cannot make the directory {error.filename} for the store: {error.strerror} "
            f"(check gateway.state_dir and store.url in {config.source})"
        ) from None
    try:
        schema.upgrade(engine)
    except sa.exc.SQLAlchemyError as error:
        engine.dispose()
        raise CommandError(config_module.store_problem(config, error)) from None
    return engine


def read_esiids(path: str) -> list[str]:
    """The ESI IDs in a file (``-``: standard input), one per line; ``#`` starts a comment line."""
    name = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CommandError(f"{name} is not a text file of ESI IDs (one per line, UTF-8)") from None
    except OSError as error:
        raise CommandError(f"cannot read {name}: {error.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@contextmanager
def output_file(path: str) -> Iterator[BinaryIO]:
    """``path`` open for writing (``-``: standard output); CommandError when it cannot be.

    Open it before asking the API. When the command fails after that, the file is removed, so no
    empty or partial file is left to be taken for an answer.
    """
    if path == "-":
        yield sys.stdout.buffer
        return
    try:
        handle = open(path, "wb")
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror}") from None
    try:
        with handle:
            yield handle
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
