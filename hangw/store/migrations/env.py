"""Alembic environment for the hangw store.

The target is ``hangw.store.model.metadata``. A caller may hand over an open connection through
``config.attributes["connection"]`` (as ``hangw.store.schema.upgrade`` does); otherwise the URL
in the ``sqlalchemy.url`` option is used.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from hangw.store.model import metadata

config = context.config
target_metadata = metadata


def _is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def run_migrations_offline() -> None:
    """Emit the migrations as SQL for the configured URL without connecting."""
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no sqlalchemy.url configured for offline migrations")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection handed over, or on a new one to the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url configured")
    from hangw.store.schema import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run_on(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
