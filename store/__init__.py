"""The store: one SQL code path over SQLite (embedded default) and PostgreSQL (at scale).

Contract
- `write()` yields a connection inside a transaction that already holds the right to write:
  on SQLite `BEGIN IMMEDIATE` through the single writer connection (writers of this process
  queue on an asyncio lock, other processes wait up to the busy timeout), so a transaction
  never fails half-way for want of the write lock; on PostgreSQL a plain transaction whose
  conditional UPDATEs take row locks. It commits when the block exits, rolls back on error.
- `write_grouped(work)` runs `work(conn)` like `write()`, but on SQLite concurrent calls share
  one transaction, each in its own savepoint (group commit, store/group.py); it returns
  only after the COMMIT.
- `read()` yields a connection inside a read-only snapshot (SQLite WAL readers never block the
  writer).
- Durable commits (`durable=True`, the default): when a write's block or `write_grouped` returns,
  its COMMIT is on disk. SQLite runs `synchronous=FULL` in WAL mode: each COMMIT fsyncs the WAL,
  so a group-committed batch shares one fsync. On PostgreSQL it depends on the server's
  `synchronous_commit` and `fsync`, which `store/safety.py` checks at start.
  `durable=False` is `synchronous=NORMAL` on SQLite: a power cut or OS crash may roll back
  the last commits, already acknowledged (docs/operations.md, "Durability").
- Statements: domain code writes SQLAlchemy Core. A hot one is declared once as a
  `Statement` (store/statement.py), which the store compiles once per dialect and runs as
  driver SQL on the SQLite fast paths; cold ones go through `conn.execute`. No SQL text is
  written outside store/ (tests/unit/test_sql_stays_in_the_store.py names the two
  administrative exceptions).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from store import raw
from store.group import GroupCommit
from store.inline import creator
from store.statement import Record as Record  # a row, re-exported
from store.statement import Statement as Statement  # the statement interface, re-exported
from store.statement import insert_new as insert_new

T = TypeVar("T")
# The execution option under which every connection of a Store carries its event_watchers.
EVENT_WATCHERS = "kinwire_event_watchers"


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached or answered too late (a fault to
    retry), as opposed to a refused or wrong statement (a bug)."""
    if isinstance(exc, TimeoutError | ConnectionError | sqlalchemy_exc.TimeoutError):
        return True  # a statement, a connection attempt or a pool wait ran out of time
    return isinstance(exc, sqlalchemy_exc.DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, sqlalchemy_exc.InterfaceError)
        or isinstance(exc.orig, TimeoutError | ConnectionError))


def async_url(url: str) -> str:
    """Map the documented DATABASE_URL forms onto SQLAlchemy's async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ValueError(f"unsupported database URL {url!r}")


# DATABASE_URL's `?pool_mode=transaction`: PostgreSQL is reached through a pooler in
# transaction mode (PgBouncer), which gives each transaction whichever server connection is
# free. Statements prepared under a name on one server connection are then missing, or their
# name already taken, on the next: asyncpg's numbered `__asyncpg_stmt_N__` failed with
# "prepared statement ... already exists" (tests/integration/test_pgbouncer.py). So nothing is
# cached
# across transactions and every statement is prepared unnamed, which PostgreSQL replaces at the
# next Parse: a statement's Parse and Execute run inside one transaction (SQLAlchemy always
# begins one), so on the same server connection. Costs one more round trip a statement.
POOL_MODES = ("session", "transaction")


def pool_mode(url: str) -> str:
    """The `pool_mode` query parameter of a PostgreSQL URL (`session`, the default: a direct
    connection or a session pooler), or ValueError."""
    mode = make_url(url).query.get("pool_mode", "session")
    if mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {', '.join(POOL_MODES)}, not {mode!r}")
    return mode


def _postgresql_connect_args(url: str) -> tuple[str, dict]:
    """The URL without Kinwire's own parameters, and the driver arguments they ask for."""
    plain = make_url(url).difference_update_query(["pool_mode"])
    if pool_mode(url) != "transaction":
        return plain.render_as_string(hide_password=False), {}
    return plain.render_as_string(hide_password=False), {
        "statement_cache_size": 0,  # asyncpg's own cache
        "prepared_statement_cache_size": 0,  # SQLAlchemy's, per connection
        "prepared_statement_name_func": lambda: "",  # the unnamed statement
    }


def _sqlite_engine(url: str, *, begin: str, pool_size: int, busy_timeout_ms: int,
                   durable: bool, options: dict[str, Any], inline: bool = False,
                   writer: bool = False) -> AsyncEngine:
    # inline: statements run on the event loop, not aiosqlite's thread (store/inline.py)
    extra = {"async_creator": creator(make_url(url).database, busy_timeout_ms)} if inline else {}
    # Inline, SQLite must not sleep on the loop waiting for the lock: the connection retries
    # asynchronously instead (store/inline.py).
    sqlite_busy_ms = 0 if inline else busy_timeout_ms
    engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool, pool_size=pool_size,
                                 max_overflow=0, pool_timeout=60, hide_parameters=True,
                                 execution_options=options, **extra)

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the driver, decide when a transaction begins (SQLAlchemy's
        # documented recipe), so that it can be BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: the COMMIT fsyncs the WAL before it returns (NORMAL only syncs at checkpoints,
        # so a power cut may undo commits already acknowledged).
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        if writer:
            # Group commit wraps each send in a SAVEPOINT (store/group.py), and SQLite
            # keeps the pages a savepoint changes in a statement journal: past 64 KiB (about
            # 16 pages; a batch of sends touches hundreds) it spilled to a temporary file,
            # two pwrite() calls a page on every send (docs/BENCHMARKS.md, "Sends after the
            # merges"). In memory it costs no system calls. That journal only undoes a failed
            # work inside its transaction and is never read after a crash (the WAL is), so
            # durability is unchanged. It also keeps this connection's temporary tables in
            # memory; the writer makes none beyond the small ones of its bounded statements.
            cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn):
        conn.exec_driver_sql(begin)

    return engine


class Store:
    """`timeout_s` (PostgreSQL) bounds each wait on the database: for a connection from the
    pool, for a new connection, for one statement. A stalled or unreachable database then fails
    the operation (`is_unavailable()` says so) instead of holding the request; None keeps the
    defaults of 30 s a statement or pool wait and 10 s a connection attempt."""

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 5000,
                 timeout_s: float | None = None, group_max: int = 1,
                 sqlite_inline_writes: bool = False, durable: bool = True) -> None:
        self.url = async_url(url)
        self.durable = durable
        self.timeout_s = timeout_s
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        # What else reads each transaction's events as they are written (server/events.py):
        # the email notifier, added by create_app when email is on. Every connection reaches
        # this list through its engine's execution options (EVENT_WATCHERS).
        self.event_watchers: list[Any] = []
        options = {EVENT_WATCHERS: self.event_watchers}
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _sqlite_engine(self.url, begin="BEGIN IMMEDIATE", pool_size=1,
                                          busy_timeout_ms=busy_timeout_ms, durable=durable,
                                          options=options, inline=sqlite_inline_writes,
                                          writer=True)
            self._reader = _sqlite_engine(self.url, begin="BEGIN", pool_size=4,
                                          busy_timeout_ms=busy_timeout_ms, durable=durable,
                                          options=options)
        else:
            # hide_parameters: an error's text never carries bound values (message bodies).
            # No pool_pre_ping: it cost a round trip on every checkout (~13% of a send's
            # samples). A connection found dead when used fails that one request as
            # `unavailable` (is_unavailable; clients retry with their idempotency key), and
            # SQLAlchemy then invalidates the whole pool, so the retry gets a fresh connection.
            raw.check_asyncpg_adapter()  # at the store's start, before any statement
            plain, pooler_args = _postgresql_connect_args(self.url)
            self._writer = create_async_engine(
                plain, pool_size=pool_size, max_overflow=0,
                hide_parameters=True, execution_options=options,
                pool_timeout=timeout_s or 30,
                connect_args={"timeout": timeout_s or 10, "command_timeout": timeout_s or 30,
                              **pooler_args})
            self._reader = self._writer
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # metrics: called with the seconds each read() or write() waited for its connection
        # (a free one in the pool, or a new one; on SQLite, writes also for the one writer)
        self.on_wait: Callable[[float], None] | None = None
        # Group commit (store/group.py) on SQLite, whose writes take turns on one
        # connection; PostgreSQL runs each batched write in its own transaction, in parallel on
        # the pool, and groups WAL flushes itself (docs/messaging.md, "Group commit").
        self.group = GroupCommit(self, max_batch=group_max if self.dialect == "sqlite" else 1)
        # store/quickread.py's read-only sqlite3 connection: opened on the first point read,
        # False where there is none (PostgreSQL, an in-memory database, or it failed to open).
        self.quick_reader: sqlite3.Connection | bool | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        if self._write_lock is None:
            async with self._writer.connect() as conn:
                self._waited(started)
                async with conn.begin():
                    yield conn
            return
        async with self._write_lock, self._writer.connect() as conn:
            self._waited(started)  # on SQLite: for this process's one writer
            async with conn.begin():
                yield conn

    def _waited(self, started: float) -> None:
        if self.on_wait is not None:
            self.on_wait(time.perf_counter() - started)

    async def write_grouped(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work(conn)` in a write transaction maybe shared with other concurrent calls, each in
        its own savepoint; returns (or raises) once that transaction has committed."""
        return await self.group.run(work)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        async with self._reader.connect() as conn:
            self._waited(started)
            async with conn.begin():
                yield conn

    async def ping(self) -> None:
        async with self._reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.group.close()
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()
