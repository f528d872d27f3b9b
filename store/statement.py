"""Named statements: how domain code runs a statement on a hot path.

A `Statement` wraps a SQLAlchemy Core statement (select, insert, update or delete, with
`.returning()` where it reads back; named `bindparam`s for its values) declared once, at
import, in the module that owns its table. The store compiles it once per dialect and runs it
as driver SQL on the caller's transaction (store/raw.py: on the loop on SQLite's inline writer,
on asyncpg on PostgreSQL, `exec_driver_sql` elsewhere): no per-call building, compiling or
execution context, which cost more CPU than the database did on every send, billed minute and
join (docs/BENCHMARKS.md, "Durable sends"). Values are bound and rows read back through the
columns' own SQLAlchemy types (UTC datetimes, JSON, booleans), so a row reads and writes
exactly as through `conn.execute`; rows come back as named tuples. Errors are the driver's
through SQLAlchemy's wrapping (except on the inline writer, whose sqlite3 errors are raised as
they are), so a dead database still reads as `unavailable` (store.is_unavailable).

`point_read` is a one-row lookup by a unique key outside any transaction: on SQLite straight on
a read-only connection on the loop (store/quickread.py), elsewhere (or when that connection
cannot serve) in a read transaction of the store's pool.

Cold paths keep `conn.execute(core statement)`; no SQL text is written outside store/
(tests/unit/test_sql_stays_in_the_store.py): administration that needs it (the events
partitions' DDL, backup snapshots) is store/partitions.py's and store/snapshot.py's.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Executable, Insert, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from store import quickread, raw

# A row, read by its columns' names: SQLAlchemy's Row, or the namedtuple a compiled
# statement makes on the fast paths (below). Its columns are the query's, so no one type
# states them: the name says what it is where `Any` would say nothing.
Record: TypeAlias = Any

if TYPE_CHECKING:
    from store import Store

log = logging.getLogger("kinwire.store")
_SQLITE = SQLiteDialect_aiosqlite()  # the store's SQLite driver: same SQL, same type handling
Params = Mapping[str, Any]


def insert_new(table: Table, *conflict: str) -> Insert:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING, the same on both databases: a row whose
    key already exists is skipped (the statement changes 0 rows) instead of failing. Built with
    PostgreSQL's construct; SQLite's compiler renders the clause the same (both dialects'
    tests run every such statement)."""
    return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))


class _Plan:
    """A statement compiled for one dialect: its SQL, how to bind its parameters (in the
    compiled order, repeated names included) and how to read its rows. Binding and reading do
    only what the types need (a send runs a dozen statements: the per-call work shows)."""

    __slots__ = ("constants", "convert", "make", "pick", "reads", "sql")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        names = list(compiled.positiontup or ())
        # the values written in the statement itself (`.values(pruned_through=0)`), bound once
        self.constants: dict[str, Any] = {}
        self.convert: list[tuple[int, Callable[[Any], Any]]] = []  # (position, bind processor)
        for position, name in enumerate(names):
            param = compiled.binds[name]
            bind = param.type.dialect_impl(dialect).bind_processor(dialect)
            if not param.required:
                value = param.effective_value
                self.constants[name] = value if bind is None or value is None else bind(value)
            elif bind is not None:
                self.convert.append((position, bind))
        self.pick: Callable[[Params], tuple] = (
            itemgetter(*names) if len(names) > 1
            else (lambda params, name=names[0]: (params[name],)) if names
            else (lambda params: ()))
        columns = list(getattr(statement, "exported_columns", ()))
        self.reads = [c.type.dialect_impl(dialect).result_processor(dialect, None)
                      for c in columns]
        shape = namedtuple("Row", [c.key for c in columns]) if columns else None
        self.make = shape._make if shape is not None else None
        if not any(self.reads):
            self.reads = []  # rows are made as they come

    def values(self, params: Params) -> Sequence[Any]:
        if self.constants:
            params = {**params, **self.constants}
        got = self.pick(params)
        if not self.convert:
            return got
        bound = list(got)
        for position, bind in self.convert:
            if bound[position] is not None:
                bound[position] = bind(bound[position])
        return bound

    def row(self, got: Sequence[Any]) -> Any:
        if not self.reads:
            return self.make(got)
        return self.make([v if read is None else read(v)
                          for v, read in zip(got, self.reads, strict=True)])


class Statement:
    """A Core statement compiled once per dialect and run as driver SQL (module doc)."""

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: Executable) -> None:
        if isinstance(statement, Insert) and not statement._returning:
            # no implicit RETURNING of a generated key on PostgreSQL: nothing would read it
            statement = statement.inline()
        self.statement = statement
        self._plans: dict[str, _Plan] = {}  # by dialect name: grows with the code, not traffic

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = _Plan(self.statement, dialect)
        return plan

    # Each call below resolves the connection once and runs on the inline writer without
    # another coroutine: a send runs a dozen of them.
    async def rows(self, conn: AsyncConnection, params: Params) -> list[Any]:
        """Every row the statement returns (a SELECT, or a write with RETURNING)."""
        dialect, db = raw.target(conn)
        plan = self._plans.get(dialect.name) or self._plan(dialect)
        values = plan.values(params)
        got = (db.execute(plan.sql, values).fetchall() if db is not None
               else await raw.driver_rows(conn, plan.sql, values))
        return [plan.row(one) for one in got]

    async def first(self, conn: AsyncConnection, params: Params) -> Any:
        """The first row the statement returns, None if none (an UPDATE ... RETURNING whose
        condition held for no row, a SELECT that found nothing)."""
        dialect, db = raw.target(conn)
        plan = self._plans.get(dialect.name) or self._plan(dialect)
        values = plan.values(params)
        got = (db.execute(plan.sql, values).fetchall() if db is not None
               else await raw.driver_rows(conn, plan.sql, values))
        return plan.row(got[0]) if got else None

    async def run(self, conn: AsyncConnection, params: Params) -> int:
        """A write without RETURNING; the number of rows it changed (0: a conditional UPDATE
        whose condition no longer held, an insert_new whose key existed)."""
        dialect, db = raw.target(conn)
        plan = self._plans.get(dialect.name) or self._plan(dialect)
        values = plan.values(params)
        if db is not None:
            return db.execute(plan.sql, values).rowcount
        return await raw.driver_run(conn, plan.sql, values)

    async def run_many(self, conn: AsyncConnection, many: Sequence[Params]) -> None:
        """The write once for each of `many` (one driver call: executemany)."""
        dialect, db = raw.target(conn)
        plan = self._plans.get(dialect.name) or self._plan(dialect)
        rows = [plan.values(params) for params in many]
        if db is not None:
            db.executemany(plan.sql, rows)
        else:
            await raw.driver_run_many(conn, plan.sql, rows)

    async def point_read(self, store: Store, params: Params) -> Any:
        """`first()` on its own, outside any transaction: a lookup by a unique key (it must not
        hold the loop), on SQLite straight on the loop (store/quickread.py), else, or when
        that cannot serve, in a read transaction of the pool."""
        db = quickread.connection(store)
        if db is not None:
            plan = self._plan(_SQLITE)
            try:
                got = db.execute(plan.sql, plan.values(params)).fetchall()  # ends the statement
            except sqlite3.Error as exc:
                log.debug("quick read not served (%s); through the pool", exc)
            else:
                return plan.row(got[0]) if got else None
        async with store.read() as conn:
            return await self.first(conn, params)
