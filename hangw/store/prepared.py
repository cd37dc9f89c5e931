"""Statements of the hot paths: written in SQLAlchemy Core, run straight on the DB-API cursor.

SQLAlchemy's execution layer costs about 15 us a statement on top of the driver's 2 us, and a
provisioning request with its head-end reports runs some twenty statements. A ``Prepared`` keeps
Core as the single place a statement is written (tables, dialects, quoting, paramstyle) and
compiles it once per dialect; each call then goes to the driver with the parameters in the
compiled order. Statements must not need SQLAlchemy's per-call processing: no expanding IN
lists (write the list as literal SQL) and only column types the driver returns as they are
(strings, numbers, bytes; booleans come back as the driver gives them, so callers use ``bool()``).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bound names in the order the driver wants them (positional styles)
    positional: bool
    defaults: Mapping[str, Any]  # values of binds written into the statement (LIMIT 1, + 1)


class Prepared:
    """One Core statement, compiled once per dialect and executed on the DB-API cursor."""

    def __init__(self, statement: sa.ClauseElement, columns: Sequence[str] = ()) -> None:
        """``columns``: for an INSERT, the columns it sets (each bound under its own name)."""
        self.statement = statement
        self._column_keys = list(columns) or None
        self._compiled: dict[str, _Compiled] = {}
        selected = getattr(statement, "selected_columns", None)
        self.columns: tuple[str, ...] = tuple(c.key for c in selected) if selected else ()
        self._row: Any = namedtuple("Row", self.columns, rename=True) if self.columns else None

    def __repr__(self) -> str:
        return f"Prepared({str(self.statement)[:60]!r})"

    def compiled(self, dialect: sa.Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled: Any = self.statement.compile(dialect=dialect, column_keys=self._column_keys)
            sql = str(compiled)
            if "POSTCOMPILE" in sql:
                raise ValueError(f"{self!r} has an expanding parameter; write the list as SQL")
            defaults = {
                name: bind.effective_value
                for name, bind in compiled.binds.items()
                if not bind.required and bind.effective_value is not None
            }
            names = tuple(compiled.positiontup or ())
            found = _Compiled(sql, names, bool(compiled.positional), defaults)
            self._compiled[dialect.name] = found
        return found

    def _arguments(self, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        if compiled.defaults:
            params = {**compiled.defaults, **params}
        if compiled.positional:
            return tuple(params[name] for name in compiled.names)
        return params

    def _cursor(self, conn: sa.Connection) -> tuple[Any, _Compiled]:
        compiled = self.compiled(conn.dialect)
        return conn.connection.driver_connection.cursor(), compiled  # type: ignore[union-attr]

    def execute(self, conn: sa.Connection, params: Mapping[str, Any] | None = None) -> Any:
        """Run once; returns the DB-API cursor (``rowcount`` for writes)."""
        cursor, compiled = self._cursor(conn)
        cursor.execute(compiled.sql, self._arguments(compiled, params or {}))
        return cursor

    def executemany(self, conn: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> int:
        """Run for each mapping in ``rows``; returns the rows the driver reports as changed."""
        cursor, compiled = self._cursor(conn)
        cursor.executemany(compiled.sql, [self._arguments(compiled, row) for row in rows])
        return int(cursor.rowcount)

    def first(self, conn: sa.Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first row as a named tuple (attributes named like the selected columns), or None."""
        row = self.execute(conn, params).fetchone()
        return None if row is None or self._row is None else self._row._make(row)

    def all(self, conn: sa.Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        assert self._row is not None, "all() is for SELECT statements"
        return [self._row._make(row) for row in self.execute(conn, params).fetchall()]

    def scalars(
        self, conn: sa.Connection, params: Mapping[str, Any] | None = None
    ) -> Sequence[Any]:
        """The first column of every row."""
        return [row[0] for row in self.execute(conn, params).fetchall()]
