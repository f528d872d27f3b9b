"""The store: one SQL code path over SQLite (embedded default) and PostgreSQL (at scale).

Contract
- `write()` yields a connection inside a transaction that already holds the right to write:
  on SQLite `BEGIN IMMEDIATE` through the single writer connection (writers of this process
  queue on an asyncio lock, other processes wait up to the busy timeout), so a transaction
  never fails half-way for want of the write lock; on PostgreSQL a plain transaction whose
  conditional UPDATEs take row locks. It commits when the block exits, rolls back on error.
- `read()` yields a connection inside a read-only snapshot (SQLite WAL readers never block the
  writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool


def async_url(url: str) -> str:
    """Map the documented DATABASE_URL forms onto SQLAlchemy's async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ValueError(f"unsupported database URL {url!r}")


def _sqlite_engine(url: str, *, begin: str, pool_size: int, busy_timeout_ms: int) -> AsyncEngine:
    engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool, pool_size=pool_size,
                                 max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the driver, decide when a transaction begins (SQLAlchemy's
        # documented recipe), so that it can be BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn):
        conn.exec_driver_sql(begin)

    return engine


class Store:
    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 5000) -> None:
        self.url = async_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _sqlite_engine(self.url, begin="BEGIN IMMEDIATE", pool_size=1,
                                          busy_timeout_ms=busy_timeout_ms)
            self._reader = _sqlite_engine(self.url, begin="BEGIN", pool_size=4,
                                          busy_timeout_ms=busy_timeout_ms)
        else:
            self._writer = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True,
                connect_args={"timeout": 10, "command_timeout": 30})
            self._reader = self._writer
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.begin() as conn:
            yield conn

    async def ping(self) -> None:
        async with self._reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()
