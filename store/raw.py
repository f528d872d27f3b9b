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
- anywhere else (PostgreSQL, SQLite on aiosqlite's thread), through `exec_driver_sql`, which
  skips compiling but keeps SQLAlchemy's transaction start, error wrapping and pool
  invalidation, so a dead database still reads as `unavailable` (store is_unavailable).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from store.inline import InlineConnection


def target(conn: AsyncConnection) -> tuple[Dialect, sqlite3.Connection | None]:
    """The connection's dialect, and its sqlite3 connection when it is the inline writer (run
    statements straight on it), else None (run them through the `driver_*` calls)."""
    sync = conn.sync_connection
    driver = sync.connection.driver_connection
    return sync.dialect, driver._connection if isinstance(driver, InlineConnection) else None


async def driver_rows(conn: AsyncConnection, sql: str, values: Sequence[Any]) -> list[Any]:
    return (await conn.exec_driver_sql(sql, tuple(values))).all()


async def driver_run(conn: AsyncConnection, sql: str, values: Sequence[Any]) -> int:
    return (await conn.exec_driver_sql(sql, tuple(values))).rowcount


async def driver_run_many(conn: AsyncConnection, sql: str, rows: list[Sequence[Any]]) -> None:
    await conn.exec_driver_sql(sql, [tuple(row) for row in rows])


async def run(conn: AsyncConnection, sql: str) -> int:
    """A statement without parameters or RETURNING, either way; the rows it changed."""
    _, db = target(conn)
    if db is not None:
        return db.execute(sql).rowcount
    return await driver_run(conn, sql, ())
