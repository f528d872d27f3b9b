"""Driver SQL on the caller's transaction: the store's own fast path under `Statement`
(store/statement.py) and group commit's savepoints (store/group.py). Nothing outside store/
uses it; domain code declares `Statement`s.

Why: profiling the durable sends benchmark (docs/BENCHMARKS.md, "Durable sends") put most of a
send's CPU in SQLAlchemy's per-statement machinery (compiled-cache lookup, execution context,
result proxy, greenlet switches) and aiosqlite's hand-off, not in the database: SQLite ran the
same 12 statements in a fifth of the time. Here SQL already compiled for the connection's
dialect runs on the transaction's own DBAPI connection:
- on SQLite's inline writer (store/inline.py), straight on the sqlite3 connection, on
  the loop: the statements of a transaction never wait for a lock (it is held);
- on PostgreSQL, straight on the asyncpg connection (SQL compiled for SQLAlchemy's asyncpg
  dialect is asyncpg's own `$n` form), inside the transaction SQLAlchemy began: it begins it
  lazily, on a connection's first statement, so the first statement here begins it as
  SQLAlchemy's own cursor does, and the COMMIT or ROLLBACK stays SQLAlchemy's. A failure is
  handed to SQLAlchemy's own handling, so it is wrapped as its statements' are and a dead
  connection is invalidated with its pool: it still reads as `unavailable`
  (store.is_unavailable). A send's ~11 statements: 1.86 -> 1.42 ms of CPU (docs/BENCHMARKS.md,
  "Sends on PostgreSQL straight on asyncpg"). This reads three private names of SQLAlchemy's
  asyncpg adapter and one of its Connection: `check_asyncpg_adapter` refuses an upgrade that
  moved them, at the store's start;
- anywhere else (SQLite on aiosqlite's thread), through `exec_driver_sql`, which skips
  compiling but keeps SQLAlchemy's transaction start, error wrapping and pool invalidation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from store.inline import InlineConnection


def check_asyncpg_adapter(adapter: type = AsyncAdapt_asyncpg_connection,
                          connection: type = Connection) -> None:
    """RuntimeError, naming the version, when SQLAlchemy's asyncpg adapter or Connection lacks
    what the PostgreSQL path above reads (an upgrade that changed them must fail loudly)."""
    slots = {name for cls in adapter.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = [name for name in ("_transaction", "_connection", "_execute_mutex")
               if name not in slots]
    missing += [f"{cls.__name__}.{name}" for cls, name in (
        (adapter, "_start_transaction"), (adapter, "_handle_exception"),
        (connection, "_handle_dbapi_exception")) if not callable(getattr(cls, name, None))]
    if missing:
        raise RuntimeError(
            f"SQLAlchemy {sqlalchemy.__version__} is not the one store/raw.py was written for "
            f"(missing: {', '.join(missing)}); pin SQLAlchemy as pyproject.toml says")


def target(conn: AsyncConnection) -> tuple[Dialect, sqlite3.Connection | None]:
    """The connection's dialect, and its sqlite3 connection when it is the inline writer (run
    statements straight on it), else None (run them through the `driver_*` calls)."""
    sync = conn.sync_connection
    driver = sync.connection.driver_connection
    return sync.dialect, driver._connection if isinstance(driver, InlineConnection) else None


async def driver_rows(conn: AsyncConnection, sql: str, values: Sequence[Any]) -> list[Any]:
    if (adapter := _asyncpg(conn)) is not None:
        return await _on_asyncpg(conn, adapter, sql, values, lambda pg: pg.fetch(sql, *values))
    return (await conn.exec_driver_sql(sql, tuple(values))).all()


async def driver_run(conn: AsyncConnection, sql: str, values: Sequence[Any]) -> int:
    if (adapter := _asyncpg(conn)) is not None:
        status = await _on_asyncpg(conn, adapter, sql, values,
                                   lambda pg: pg.execute(sql, *values))
        count = status.rpartition(" ")[2]  # "UPDATE 1", "INSERT 0 1"; "SAVEPOINT": none
        return int(count) if count.isdigit() else 0
    return (await conn.exec_driver_sql(sql, tuple(values))).rowcount


async def driver_run_many(conn: AsyncConnection, sql: str, rows: list[Sequence[Any]]) -> None:
    if (adapter := _asyncpg(conn)) is not None:
        await _on_asyncpg(conn, adapter, sql, rows, lambda pg: pg.executemany(sql, rows))
        return
    await conn.exec_driver_sql(sql, [tuple(row) for row in rows])


def _asyncpg(conn: AsyncConnection) -> Any | None:
    """SQLAlchemy's asyncpg adapter of the connection, or None (not PostgreSQL)."""
    adapter = conn.sync_connection.connection.dbapi_connection
    return adapter if isinstance(adapter, AsyncAdapt_asyncpg_connection) else None


async def _on_asyncpg(conn: AsyncConnection, adapter: Any, sql: str, values: Sequence[Any],
                      call: Callable[[Any], Awaitable[Any]]) -> Any:
    """`call(asyncpg connection)` in the transaction SQLAlchemy manages (`sql` and `values`
    name the statement in an error, as SQLAlchemy's do)."""
    try:
        async with adapter._execute_mutex:
            if adapter._transaction is None:
                await adapter._start_transaction()
            return await call(adapter._connection)
    except Exception as exc:
        await conn.run_sync(_raise_as_sqlalchemy, adapter, exc, sql, values)
        raise  # not reached: the above raises
    except BaseException:
        # Cancelled mid-statement: the connection's protocol state is unknown, so it is not
        # used again (SQLAlchemy's own path invalidates it the same way).
        await conn.invalidate()
        raise


def _raise_as_sqlalchemy(sync: Connection, adapter: Any, exc: Exception, sql: str,
                         values: Sequence[Any]) -> None:
    """Raise `exc` as SQLAlchemy's own statements raise it: translated to the DBAPI's error
    class by the adapter, then wrapped (and the connection invalidated if it died)."""
    try:
        adapter._handle_exception(exc)
    except Exception as dbapi_error:
        sync._handle_dbapi_exception(dbapi_error, sql, tuple(values), None, None)


async def run(conn: AsyncConnection, sql: str) -> int:
    """A statement without parameters or RETURNING, either way; the rows it changed."""
    _, db = target(conn)
    if db is not None:
        return db.execute(sql).rowcount
    return await driver_run(conn, sql, ())
