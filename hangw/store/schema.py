"""Creating and upgrading the store's schema, and the engine the rest of the daemon uses.

The Alembic environment ships inside the package (``hangw/store/migrations``); no alembic.ini is
needed: the configuration is built here. ``hangw.store.model`` is the source of truth and
``check_schema`` reports where a live database differs from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hangw.store.model import metadata

#: The Alembic script directory shipped with the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Set on every new SQLite connection (the store's writers add WRITER_SQLITE_PRAGMAS).
SQLITE_PRAGMAS: tuple[str, ...] = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
)
#: Set on a store writer's own SQLite connection. temp_store=MEMORY keeps the statement journals
#: of the group commit's savepoints off the disk: as files in /var/tmp they cost an open, an
#: unlink and a write per page. Only there: other connections stage whole usage deliveries in
#: temporary tables, which must be free to spill to disk.
WRITER_SQLITE_PRAGMAS: tuple[str, ...] = ("PRAGMA temp_store=MEMORY",)
#: What undoes WRITER_SQLITE_PRAGMAS before a writer's connection goes back to the pool.
WRITER_SQLITE_RESETS: tuple[str, ...] = ("PRAGMA temp_store=DEFAULT",)


def _set_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin: otherwise sqlite3
    # begins them only at the first write, and SAVEPOINTs (group commit) would not nest.
    dbapi_connection.isolation_level = None


#: The execution option that makes a SQLite transaction take the write lock when it begins.
WRITES = "hangw_writes"


def _begin_sqlite(conn: sa.Connection) -> None:
    # A transaction that reads before it writes must hold the write lock from its start: begun
    # deferred, its first write fails at once (SQLITE_BUSY_SNAPSHOT, which no busy timeout waits
    # out) whenever another connection committed since its first read, and so does every later
    # write of the transaction: a whole group-committed batch of the store's writer would fail.
    # BEGIN IMMEDIATE waits (busy_timeout) for the lock instead.
    immediate = conn.get_execution_options().get(WRITES, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def configure_sqlite(engine: sa.Engine) -> None:
    """Make every new connection of a SQLite engine use WAL, foreign keys and a busy timeout.

    Does nothing for other databases, and nothing more when called twice on one engine.
    """
    if engine.dialect.name != "sqlite":
        return
    if not sa.event.contains(engine, "connect", _set_sqlite_pragmas):
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
        sa.event.listen(engine, "begin", _begin_sqlite)


def _sqlite_file(url: sa.URL) -> Path | None:
    """The file a SQLite URL names, or None for an in-memory or URI-style database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


def make_engine(url: str) -> sa.Engine:
    """Create the engine for ``url``; for a SQLite file, create its directory, set the pragmas."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed)
    configure_sqlite(engine)
    return engine


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for the packaged migrations, optionally with a database URL."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        # ConfigParser interpolation would otherwise trip over a '%' in a password
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@contextmanager
def _engine_for(engine_or_url: sa.Engine | str) -> Iterator[sa.Engine]:
    if isinstance(engine_or_url, sa.Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _run(engine_or_url: sa.Engine | str, step: Any, revision: str) -> None:
    with _engine_for(engine_or_url) as engine, engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        step(config, revision)


def upgrade(engine_or_url: sa.Engine | str, revision: str = "head") -> None:
    """Bring the database up to ``revision`` (the newest by default); a no-op when already there."""
    _run(engine_or_url, command.upgrade, revision)


def downgrade(engine_or_url: sa.Engine | str, revision: str) -> None:
    """Take the database back to ``revision`` (``"base"`` drops every table of the store)."""
    _run(engine_or_url, command.downgrade, revision)


def head_revision() -> str | None:
    """The newest revision shipped with the package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None when it has never been migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: sa.Engine) -> list[Any]:
    """The differences between the live database and ``hangw.store.model`` (empty when in step).

    Each entry is an Alembic autogenerate diff, e.g. ``("add_table", Table)`` or
    ``("remove_index", Index)``; column-level changes come as lists of such tuples. Alembic does
    not look at the predicate of a partial index, so a differing one is added here as
    ``("modify_index_where", Index, live_predicate, model_predicate)``.
    """
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = list(compare_metadata(context, metadata))
        diffs.extend(_compare_index_predicates(conn))
        return diffs


_QUOTED = re.compile(r"'((?:[^']|'')*)'")


def _same_predicate(dialect: str, live: str, model: str) -> bool:
    if dialect == "sqlite":  # SQLite keeps the text as it was written
        return " ".join(live.split()) == " ".join(model.split())
    # Other databases hand back a rewritten expression (PostgreSQL: "= ANY (ARRAY[...])" with
    # casts); compare the literals the predicates name, which is what a status list changes.
    return sorted(_QUOTED.findall(live)) == sorted(_QUOTED.findall(model))


def _compare_index_predicates(conn: sa.Connection) -> list[Any]:
    dialect = conn.dialect.name
    option = f"{dialect}_where"
    inspector = sa.inspect(conn)
    diffs: list[Any] = []
    for table in metadata.sorted_tables:
        partial = (
            [
                index
                for index in table.indexes
                if index.dialect_options[dialect].get("where") is not None
            ]
            if dialect in ("sqlite", "postgresql")
            else []
        )
        if not partial or not inspector.has_table(table.name):
            continue
        live = {found["name"]: found for found in inspector.get_indexes(table.name)}
        for index in partial:
            if index.name not in live:
                continue  # compare_metadata already reports it missing
            model_where = str(
                index.dialect_options[dialect]["where"].compile(
                    dialect=conn.dialect, compile_kwargs={"literal_binds": True}
                )
            )
            live_where = live[index.name].get("dialect_options", {}).get(option)
            live_text = None if live_where is None else str(live_where)
            if live_text is None or not _same_predicate(dialect, live_text, model_where):
                diffs.append(("modify_index_where", index, live_text, model_where))
    return diffs
