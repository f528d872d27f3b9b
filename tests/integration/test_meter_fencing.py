"""Fencing a stale meter holder (signalling/meters.py, "Fencing"), with two real processes on
PostgreSQL and a private Redis.

Adversary: the holder of a visit's meter is frozen (SIGSTOP) and its lease key is lost, as in a
broker failover that drops keys; the other process takes the meter over and bills on. Then the
lost key comes back naming the frozen holder (the worst case: a stale replica promoted), and
the holder is thawed (SIGCONT) believing it still holds the lease, its next minute overdue.
It must write nothing (no debit, no meter state) and push nothing; the money and the stored
meter state stay right, and billing carries on."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from sqlalchemy import func, select

from billing.tables import ledger_transfers
from server.schema import utcnow
from signalling.tables import visits
from store import Store
from tests.integration.test_crash import meter_holder, nodes_started
from tests.integration.test_faults import (
    Sender,
    check_books,
    metered_pair,
    until,
    until_billed_after,
)
from tests.support.nodes import Node, RedisServer

MINUTE_S = 0.5
LEASE_S = 1.0
TAKEOVER_S = 10.0  # the other's scan every half lease, then its first pass; a loaded machine
FENCED = re.compile(r"^kinwire_meter_fenced_total (\S+)$", re.M)
LEASE = "kinwire:lease:meter:{}"


async def fenced(http: aiohttp.ClientSession, node: Node) -> float:
    async with http.get(node.base + "/metrics") as r:
        found = FENCED.search(await r.text())
    return float(found.group(1)) if found else 0.0


async def meter_row(db: str, visit_id: str) -> tuple[int, int, int]:
    """(meter_epoch, paid_minutes in the stored meter state, minute debits), one snapshot."""
    store = Store(db)
    try:
        # One snapshot for both reads (the meter writes both in one transaction); under READ
        # COMMITTED a pass committing between them would make them disagree.
        async with store.engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="REPEATABLE READ")
            await conn.begin()
            row = (await conn.execute(select(visits.c.meter_epoch, visits.c.meter)
                                      .where(visits.c.id == visit_id))).one()
            debits = (await conn.execute(select(func.count()).select_from(ledger_transfers)
                                         .where(ledger_transfers.c.kind == "visit_minute",
                                                ledger_transfers.c.ref == visit_id))).scalar()
    finally:
        await store.close()
    return row.meter_epoch, (row.meter or {}).get("paid_minutes", 0), debits


async def test_a_thawed_stale_holder_writes_and_pushes_nothing(pg_db: str,
                                                             tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    await redis_server.start()
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        async with nodes_started(pg_db, redis_server.url, tmp_path,
                                 KINWIRE_VISIT_MINUTE_S=str(MINUTE_S),
                                 KINWIRE_METER_LEASE_S=str(LEASE_S),
                                 KINWIRE_DB_TIMEOUT_S="5") as nodes, \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            a, b = nodes
            # Both parties' sockets on A: freezing the meter's holder must not take a party
            # away (a frozen process's parties are absent), so the meter is moved onto B.
            family, person, visit_id = await metered_pair(http, a, a, pg_db)
            # Billed from here: the bound below once started after moving the meter to B,
            # which takes up to 20 lease periods, and failed a loaded run by the minutes of it.
            live_at = time.monotonic()
            key = LEASE.format(visit_id)
            holder = await meter_holder(http, nodes)
            for _ in range(20):
                if holder is b:
                    break
                await client.delete(key)  # A's renewal fails, A stops; whoever claims next
                await asyncio.sleep(LEASE_S)
                holder = await meter_holder(http, nodes)
            assert holder is b, "the meter never moved to B"
            stale_id = await client.get(key)
            senders = [Sender("family", http, family, person.account_id, [a], via_ws=False)]
            stop = asyncio.Event()
            sending = [asyncio.create_task(s.run(stop)) for s in senders]
            try:
                b.proc.send_signal(signal.SIGSTOP)
                stopped_at = utcnow()
                epoch_before, _, _ = await meter_row(pg_db, visit_id)
                await client.delete(key)  # the failover lost it
                took_s = await until_billed_after(pg_db, visit_id, stopped_at, TAKEOVER_S)
                new_id = await client.get(key)
                assert new_id not in (None, stale_id)
                epoch_a, _, _ = await meter_row(pg_db, visit_id)
                assert epoch_a > epoch_before
                # The lost key comes back naming B: its renewals succeed, it believes it holds.
                # It lives 5 leases: with one (it expired as B thawed, a second later) a slow
                # thaw found no key, B stopped without a write, and nothing was there to fence.
                await client.set(key, stale_id, px=int(5 * LEASE_S * 1000))
                await asyncio.sleep(2 * MINUTE_S)  # B's next minute is overdue when it thaws
                b.proc.send_signal(signal.SIGCONT)
                # Unfenced, B's overdue pass would store its stale state (fewer minutes paid
                # than the ledger holds) and A, its renewal refused, would stop: watch the row.
                snapshots = []
                deadline = time.monotonic() + 4 * LEASE_S
                while time.monotonic() < deadline:
                    snapshots.append(await meter_row(pg_db, visit_id))
                    await asyncio.sleep(0.05)
                assert await fenced(http, b) >= 1, "the thawed holder was never fenced"
                # Billing carries on (on A, or B after a fresh claim: a new epoch either way).
                await until_billed_after(pg_db, visit_id, utcnow(), TAKEOVER_S)
                await until(lambda: len(senders[0].acked) >= 3, 10, "no messages sent")
                stop.set()
                await asyncio.wait_for(asyncio.gather(*sending), 15)
            finally:
                b.proc.send_signal(signal.SIGCONT)
                for task in sending:
                    task.cancel()
            for (_, paid, debited), (_, paid_next, _) in itertools.pairwise(snapshots):
                assert paid == debited, f"stored meter state {paid} paid, ledger {debited}"
                assert paid_next >= paid, "the stored meter state went back"
            counts = await check_books(pg_db, senders, visit_id)  # no minute twice or skipped
            assert counts["minutes"] <= (time.monotonic() - live_at) / MINUTE_S + 3
            epoch, paid, debited = await meter_row(pg_db, visit_id)
            assert paid == debited, f"stored meter state says {paid} paid, ledger {debited}"
            assert epoch >= epoch_a
            print(f"takeover billed after {took_s:.1f} s; B fenced "
                  f"{await fenced(http, b):.0f} pass(es); {counts}; epoch {epoch}")
            await family.close()
            await person.close()
    finally:
        await client.aclose()
        redis_server.stop()
