"""A burst of meters on a small connection pool: every visit gets its first minute, no meter
stops with an error (signalling/meters.py STORE_TURNS; docs/BENCHMARKS.md, "Meters").

Before the meters took turns on the store, 300 meters starting at once on a small pool with a
short pool timeout waited on the pool, timed out, stopped with an error and were reclaimed by
the scan later, over and over."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bench.load_visits import make_visits
from billing import ledger
from billing.tables import ledger_transfers
from server.broker.memory import MemoryBroker
from server.events import Outbox
from server.schema import utcnow
from signalling.meters import STORE_TURNS, Meters
from store import Store

VISITS = 300


async def test_a_burst_of_meters_on_a_small_pool_all_debit(pg_db: str, caplog) -> None:
    # As many connections as meters may use at once: with turns, no meter waits on the pool
    # at all, so the short pool timeout only bites a burst that does not take turns.
    store = Store(pg_db, pool_size=STORE_TURNS, timeout_s=0.1)
    probe = Store(pg_db, pool_size=1)  # the test's own reads, apart from the meters' pool
    broker = MemoryBroker()

    async def nobody(_who: str, _kind: str, _data: dict) -> None:
        return None

    meters = Meters(store, broker, utcnow, minute_s=60, lease_s=6, node_id="burst",
                    sink=Outbox, push_live=nobody)
    try:
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        pairs = await make_visits(pg_db, VISITS, credits=500, status="live", started_s=30)
        await warm(store, STORE_TURNS)
        caplog.set_level(logging.ERROR, logger="kinwire.meters")
        claimed = await asyncio.gather(*(meters.claim(p.visit_id) for p in pairs))
        assert all(claimed)
        deadline = time.monotonic() + 20
        debited = 0
        while debited < VISITS and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            async with probe.read() as conn:
                debited = (await conn.execute(select(func.count()).select_from(
                    ledger_transfers).where(ledger_transfers.c.kind == "visit_minute"))).scalar()
        assert debited == VISITS, f"{debited} of {VISITS} visits got their first minute"
        assert not [r for r in caplog.records if "stopped by an error" in r.getMessage()]
        assert len(meters.running) == VISITS  # none stopped; all wait for their next minute
        async with probe.read() as conn:
            assert await ledger.check_invariants(conn) == []
    finally:
        await meters.stop()
        await broker.close()
        await store.close()
        await probe.close()


async def warm(store: Store, n: int) -> None:
    """Open the pool's `n` write connections first, as in a process already serving: the burst
    is about waiting for a connection, not about opening n of them at once on a loaded host,
    where a connection's start (its TLS probe included) once took longer than the pool's 0.1 s
    timeout, and three meters stopped before their first pass (CI, 2026-12-08)."""
    all_held = asyncio.Barrier(n)

    async def hold() -> None:
        for _ in range(50):
            try:
                async with store.write() as conn:
                    await conn.execute(select(1))
                    await all_held.wait()
                return
            except (TimeoutError, OSError, SQLAlchemyError):  # a start slower than 0.1 s
                await asyncio.sleep(0.05)
        raise AssertionError("could not open the pool's connections")

    await asyncio.gather(*(hold() for _ in range(n)))
