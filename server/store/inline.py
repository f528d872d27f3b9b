"""An aiosqlite connection whose statements run inline on the event loop, for SQLite's writer.

aiosqlite runs every statement on a worker thread: two thread switches per statement (queue
put, then a wake-up of the loop). A message send is ~17 statements, and profiling the durable
sends benchmark showed half the event loop's busy time in that hand-off (docs/BENCHMARKS.md,
"Durable sends"). SQLite itself takes microseconds per statement here (WAL, synchronous=NORMAL:
a commit does not fsync), so for the one writer connection running the statement on the loop is
cheaper than handing it over.

The cost: the loop blocks while a statement runs. That is short, except when another process
holds the write lock (`BEGIN IMMEDIATE` then waits up to the busy timeout) or a WAL checkpoint
runs; hence opt-in (`KINWIRE_DB_SQLITE_INLINE_WRITES`), and readers keep their threads.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite


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


class InlineConnection(aiosqlite.Connection):
    def __init__(self, path: str) -> None:
        super().__init__(lambda: sqlite3.connect(path, check_same_thread=False), 64)
        self._tx = _RunNow()  # no worker thread is ever started

    def __await__(self):
        return self._connect().__await__()

    async def _execute(self, fn, *args, **kwargs):
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def creator(path: str):
    """For create_async_engine(async_creator=...)."""
    async def connect() -> InlineConnection:
        return await InlineConnection(path)
    return connect
