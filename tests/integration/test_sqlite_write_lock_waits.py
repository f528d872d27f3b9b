"""The inline SQLite writer (store/inline.py) never sleeps on the event loop: while
another process holds SQLite's write lock, a write waits asynchronously (the loop keeps serving
others) up to the busy timeout, then runs; past the timeout it fails as `database is locked`."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from store import Store
from tests.conftest import fresh_sqlite


def hold_write_lock(path: str) -> sqlite3.Connection:
    """Another writer (a plain sqlite3 connection, as another process would be) holding the
    write lock until it is rolled back."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


async def ticks_while(work) -> tuple[object, int, float]:
    """Run `work` while a task counts loop turns every 10 ms: (result, ticks, longest gap)."""
    ticks, longest, stop = 0, 0.0, asyncio.Event()

    async def tick() -> None:
        nonlocal ticks, longest
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            ticks, longest = ticks + 1, max(longest, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        stop.set()
        await ticker
    return result, ticks, longest


async def test_a_locked_database_is_waited_for_off_the_loop(tmp_path, sqlite_template) -> None:
    url = fresh_sqlite(sqlite_template, tmp_path)
    path = make_url(url).database
    store = Store(url, sqlite_inline_writes=True, busy_timeout_ms=3000)
    try:
        async with store.write() as conn:  # the writer connection exists before the lock
            await conn.execute(text("CREATE TABLE probe (n INTEGER)"))
        other = hold_write_lock(path)
        asyncio.get_running_loop().call_later(0.4, other.rollback)

        async def write() -> float:
            started = time.perf_counter()
            async with store.write() as conn:
                await conn.execute(text("INSERT INTO probe VALUES (1)"))
            return time.perf_counter() - started

        waited, ticks, longest = await ticks_while(write())
        assert waited >= 0.35, "the write did not wait for the other writer's lock"
        assert ticks >= 20, f"the loop stalled while waiting: {ticks} ticks"
        assert longest < 0.2, f"the loop was blocked for {longest:.3f} s"
        async with store.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM probe"))).scalar_one() == 1

        # Held past the busy timeout: the write fails (then succeeds once the lock is free).
        store_short = Store(url, sqlite_inline_writes=True, busy_timeout_ms=200)
        other = hold_write_lock(path)
        try:
            with pytest.raises(Exception, match="database is locked"):
                async with store_short.write() as conn:
                    await conn.execute(text("INSERT INTO probe VALUES (2)"))
            other.rollback()
            async with store_short.write() as conn:
                await conn.execute(text("INSERT INTO probe VALUES (3)"))
        finally:
            other.close()
            await store_short.close()
    finally:
        await store.close()
