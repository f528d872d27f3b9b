"""Driver-level statements inside the caller's SQLAlchemy transaction, for the hot paths.

Why: profiling the durable sends benchmark (docs/BENCHMARKS.md, "Durable sends") put most of a
send's CPU in SQLAlchemy's per-statement machinery (compiled-cache lookup, execution context,
result proxy, greenlet switches) and aiosqlite's hand-off, not in the database: SQLite ran the
same 12 statements in a fifth of the time. A `Raw` runs plain SQL on the transaction's own
DBAPI connection:
- on SQLite's inline writer (store/inline.py), straight on the sqlite3 connection, on
  the loop: the statements of a transaction never wait for a lock (it is held);
- anywhere else (PostgreSQL, SQLite on aiosqlite's thread), through `exec_driver_sql`, which
  skips compiling but keeps SQLAlchemy's transaction start, error wrapping and pool
  invalidation, so a dead database still reads as `unavailable` (store is_unavailable).

SQL is written once with `?` placeholders; PostgreSQL gets `$1..$n`. Values go through the
columns' own SQLAlchemy type processors (`bind`, `read`), so a row written here is stored exactly
as one written through Core (UTC datetimes, JSON text, booleans), and read back the same way.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Column, Executable, Select, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from store.inline import InlineConnection


# Both memoised: pure functions of the statements and columns written in the code (and of the
# one or two dialects of a process's engines), so the caches grow with the code, not traffic.
@functools.cache
def _dollar(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$n` (our statements have no `?` in literals)."""
    head, *rest = sql.split("?")
    return head + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))


@functools.cache
def _processor(column: Column, dialect: Dialect, way: str) -> Callable[[Any], Any] | None:
    kind = column.type
    return (kind.bind_processor(dialect) if way == "bind"
            else kind.result_processor(dialect, None))


class Insert:
    """INSERT INTO table (names) VALUES (?, ...) [ON CONFLICT (conflict) DO NOTHING], built at
    import from our own table definitions (never from input: each name must be a column), with
    its columns' bind processors looked up once per dialect."""

    def __init__(self, table: Table, names: Sequence[str], conflict: Sequence[str] = ()) -> None:
        self.columns = [table.c[name] for name in names]  # KeyError for a non-column
        for name in conflict:
            table.c[name]
        sql = (f"INSERT INTO {table.name} ({', '.join(names)})"  # noqa: S608
               f" VALUES ({', '.join('?' * len(names))})")
        self.sql = sql + (f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING" if conflict
                          else "")
        self._binders: dict[str, list[Callable[[Any], Any] | None]] = {}

    def binders(self, dialect: Dialect) -> list[Callable[[Any], Any] | None]:
        made = self._binders.get(dialect.name)
        if made is None:
            made = self._binders[dialect.name] = [_processor(c, dialect, "bind")
                                                  for c in self.columns]
        return made


class Query:
    """A Core SELECT, UPDATE or INSERT (named `bindparam`s, no RETURNING) compiled once per
    dialect and run as driver SQL: its parameters bound and its columns read back through their
    SQLAlchemy types, rows as named tuples. For hot statements too shaped for hand-written SQL
    (a whole row, FOR UPDATE, JSON): no per-call building, compiling or execution context."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._plans: dict[str, tuple] = {}

    def plan(self, dialect: Dialect) -> tuple:
        """(sql, [(name, bind processor)], row type | None, [result processors])."""
        made = self._plans.get(dialect.name)
        if made is None:
            compiled = self.statement.compile(dialect=dialect)
            names = list(compiled.positiontup or ())
            binds = [(n, compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect))
                     for n in names]
            columns = (list(self.statement.selected_columns)
                       if isinstance(self.statement, Select) else [])
            shape = namedtuple("Row", [c.key for c in columns]) if columns else None
            reads = [c.type.dialect_impl(dialect).result_processor(dialect, None)
                     for c in columns]
            made = self._plans[dialect.name] = (str(compiled), binds, shape, reads)
        return made

    def values(self, dialect: Dialect, params: dict[str, Any]) -> list[Any]:
        """`params` ({bindparam name: value}) in the compiled order, bound as their types."""
        return [params[name] if bind is None or params[name] is None else bind(params[name])
                for name, bind in self.plan(dialect)[1]]

    def row(self, dialect: Dialect, raw_row: Sequence[Any]) -> Any:
        """A row as the driver returned it, as a named tuple of the values Core would give."""
        _, _, shape, reads = self.plan(dialect)
        return shape(*(v if read is None else read(v)
                       for v, read in zip(raw_row, reads, strict=True)))


class Raw:
    __slots__ = ("_conn", "_db", "dialect")

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self.dialect = conn.dialect
        driver = conn.sync_connection.connection.driver_connection
        self._db = driver._connection if isinstance(driver, InlineConnection) else None

    def values(self, insert: Insert, values: Sequence[Any]) -> tuple:
        """One row's `values` for `insert`'s columns, each bound as its column's type."""
        return tuple(value if bind is None or value is None else bind(value)
                     for bind, value in zip(insert.binders(self.dialect), values, strict=True))

    def read(self, column: Column, value: Any) -> Any:
        """A value of `column` as the driver returned it, as Core would return it."""
        process = _processor(column, self.dialect, "result")
        return value if process is None else process(value)

    async def query(self, query: Query, params: dict[str, Any]) -> list[Any]:
        """`query`'s rows (named tuples) with `params` ({bindparam name: value}); [] for a
        statement that returns none."""
        sql, _, shape, _ = query.plan(self.dialect)
        values = query.values(self.dialect, params)
        if shape is None:
            await self.run(sql, values)
            return []
        return [query.row(self.dialect, row) for row in await self.rows(sql, values)]

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self._db is not None:
            return self._db.execute(sql, params).fetchall()
        return [tuple(r) for r in await self._driver(sql, tuple(params))]

    async def row(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        if self._db is not None:
            return self._db.execute(sql, params).fetchone()
        got = (await self._driver(sql, tuple(params))).first()
        return None if got is None else tuple(got)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """A statement without RETURNING; the number of rows it changed."""
        if self._db is not None:
            return self._db.execute(sql, params).rowcount
        return (await self._driver(sql, tuple(params))).rowcount

    async def run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if self._db is not None:
            self._db.executemany(sql, rows)
            return
        await self._driver(sql, [tuple(r) for r in rows])

    async def _driver(self, sql: str, params: Sequence[Any] | list[tuple]):
        # a list of tuples is executemany; one statement's values go as a tuple
        text = _dollar(sql) if self.dialect.name == "postgresql" else sql
        return await self._conn.exec_driver_sql(text, params)


# The statement interface's driver calls (store/statement.py); Insert, Query and Raw above go
# once every domain module declares Statements.
def inline(conn: AsyncConnection):
    """The sqlite3 connection under `conn` when it is the inline writer, else None."""
    driver = conn.sync_connection.connection.driver_connection
    return driver._connection if isinstance(driver, InlineConnection) else None


async def rows(conn: AsyncConnection, sql: str, values: Sequence[Any]) -> list[Sequence[Any]]:
    db = inline(conn)
    if db is not None:
        return db.execute(sql, values).fetchall()
    return (await conn.exec_driver_sql(sql, tuple(values))).all()


async def run(conn: AsyncConnection, sql: str, values: Sequence[Any] = ()) -> int:
    """A statement without RETURNING; the number of rows it changed."""
    db = inline(conn)
    if db is not None:
        return db.execute(sql, values).rowcount
    return (await conn.exec_driver_sql(sql, tuple(values))).rowcount


async def run_many(conn: AsyncConnection, sql: str, rows_: list[Sequence[Any]]) -> None:
    db = inline(conn)
    if db is not None:
        db.executemany(sql, rows_)
        return
    await conn.exec_driver_sql(sql, [tuple(r) for r in rows_])
