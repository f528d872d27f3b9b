"""An aiosqlite connection whose statements run inline on the event loop, for SQLite's writer.

aiosqlite runs every statement on a worker thread: two thread switches per statement (queue
put, then a wake-up of the loop). A message send is ~17 statements, and profiling the durable
sends benchmark showed half the event loop's busy time in that hand-off (docs/BENCHMARKS.md,
"Durable sends"). SQLite itself takes microseconds per statement here (WAL: statements write
to the page cache; only COMMIT goes to the disk), so for the one writer connection running the
statement on the loop is cheaper than handing it over.

The loop blocks while a statement runs; two cases would make that long, and both are kept off
the loop:
- Another process holds the write lock: SQLite's own busy handler would sleep in the
  statement. The connection's busy timeout is 0 instead, and a statement refused with
  SQLITE_BUSY outside a transaction (the `BEGIN IMMEDIATE` that takes the lock; nothing was
  done) is retried here with `asyncio.sleep` until `busy_timeout_ms` has passed, so the loop
  serves everyone else meanwhile. Inside a transaction the lock is already held (WAL: a
  writer's statements and COMMIT take no further lock), so nothing there waits on others.
- COMMIT, which fsyncs the WAL (synchronous=FULL, store/__init__.py) and may run a
  checkpoint: it runs on a worker thread, one hop and one fsync per transaction (a
  group-committed batch of sends) rather than two hops per statement.
Readers keep their threads.

This reaches past aiosqlite's public API (its worker queue `_tx`, `_execute`, `_connect`,
`_running`, `_connection`), so pyproject.toml pins aiosqlite to the versions it was checked
against and `check_aiosqlite` refuses, at import, one whose internals differ.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import aiosqlite


def check_aiosqlite(connection_class: type = aiosqlite.Connection) -> None:
    """RuntimeError, naming the version, when `connection_class` lacks what InlineConnection
    replaces or calls (an aiosqlite upgrade that changed them must fail loudly, not run
    statements on a thread nobody started)."""
    missing = [name for name in ("_execute", "_connect", "__await__", "stop", "close")
               if not callable(getattr(connection_class, name, None))]
    probe = connection_class.__new__(connection_class)
    try:
        connection_class.__init__(probe, lambda: None, 64)
    except Exception as exc:  # its constructor no longer takes (connector, iter_chunk_size)
        missing.append(f"__init__(connector, iter_chunk_size): {exc!r}")
    else:
        missing += [name for name in ("_tx", "_running", "_connection")
                    if not hasattr(probe, name)]
    probe.__dict__.setdefault("_connection", None)  # its __del__ reads it; nothing was opened
    if missing:
        raise RuntimeError(
            f"aiosqlite {getattr(aiosqlite, '__version__', '?')} is not the one store/inline.py "
            f"was written for (missing: {', '.join(missing)}); pin aiosqlite as pyproject.toml "
            f"says or set KINWIRE_DB_SQLITE_INLINE_WRITES=0")


class _RunNow:
    """Stands in for aiosqlite's queue to its worker thread: runs the call at once. (SQLAlchemy
    puts its isolation-level change on that queue directly.)"""

    def put_nowait(self, item: tuple[Any, Any]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


def _busy(exc: sqlite3.OperationalError) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class InlineConnection(aiosqlite.Connection):
    def __init__(self, path: str, busy_timeout_ms: int = 5000) -> None:
        super().__init__(lambda: sqlite3.connect(path, check_same_thread=False), 64)
        self._tx = _RunNow()  # no worker thread is ever started
        self._busy_s = busy_timeout_ms / 1000

    def __await__(self):
        return self._connect().__await__()

    async def _execute(self, fn, *args, **kwargs):
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        name = getattr(fn, "__name__", "")
        if name == "commit":
            return await asyncio.to_thread(fn, *args, **kwargs)
        if self._connection.in_transaction or name == "executemany":
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_s
        pause = 0.001
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                left = deadline - loop.time()
                if not _busy(exc) or left <= 0:
                    raise
                await asyncio.sleep(min(pause, left))  # another process writes: wait, off-loop
                pause = min(pause * 2, 0.05)

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def creator(path: str, busy_timeout_ms: int = 5000):
    """For create_async_engine(async_creator=...). The engine must set the connection's own
    busy timeout to 0 (PRAGMA busy_timeout), so that waits happen here, off the loop."""
    check_aiosqlite()  # at the store's start, before any statement

    async def connect() -> InlineConnection:
        return await InlineConnection(path, busy_timeout_ms)
    return connect
