"""`kinwire_db_pool_wait_seconds`: how long transactions waited for a connection, on both
databases.

Adversary: requests sent all at once to a pool too small for them: the wait must show in the
histogram (it was invisible: only the requests' own latency grew)."""

from __future__ import annotations

import asyncio
import re

from sqlalchemy import text

from store import Store


async def test_waits_for_a_busy_pool_are_measured(db_url: str) -> None:
    store = Store(db_url, pool_size=1)
    waits: list[float] = []
    store.on_wait = waits.append
    holding = asyncio.Event()

    async def hold() -> None:
        async with store.write() as conn:
            await conn.execute(text("SELECT 1"))
            holding.set()
            await asyncio.sleep(0.3)

    async def queued() -> None:
        await holding.wait()
        async with store.write() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.gather(hold(), queued())
    finally:
        await store.close()
    assert len(waits) == 2
    # The queued transaction waited out the holder's 0.3 s; the first one only for its
    # connection (opening it took 0.203 s once under a loaded full run: no fixed bound there).
    first, queued_s = waits
    assert queued_s >= 0.25 and first < queued_s, waits


async def test_the_wait_is_exported(client) -> None:
    """The app's store reports to /metrics (its start-up transactions count already)."""
    async with client.get("/metrics") as r:
        body = await r.text()
    found = re.search(r"^kinwire_db_pool_wait_seconds_count (\d+)$", body, re.M)
    assert found and int(found.group(1)) > 0, body[-600:]
