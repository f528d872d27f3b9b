"""Housekeeping (server/housekeeping.py): on one process, in bounded batches.

Adversaries: a backlog far larger than one batch (one unbounded transaction held the locks
senders need: every batch must stay within its bound); two processes that would both sweep
(only the lease holder may); the holder killed with SIGKILL (the other takes over within the
lease)."""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import func, insert, select

from server.broker.memory import MemoryBroker
from server.housekeeping import LEASE, Housekeeping
from server.http.metrics import Metrics
from server.schema import (
    accounts,
    connections,
    event_heads,
    events,
    facilities,
    utcnow,
    visits,
)
from signalling.janus_presence import HANDLE_STALE_S
from signalling.tables import janus_handles
from store import Store
from store.ids import new_id
from tests.support.nodes import RedisServer, cluster

RETENTION_S = 3600


async def old_events(store: Store, account: str, n: int, *, age_s: float = 2 * 86_400,
                     first_seq: int = 1) -> None:
    """`n` events of `account` written `age_s` ago (past retention), its head after them."""
    at = utcnow() - timedelta(seconds=age_s)
    async with store.write() as conn:
        await conn.execute(insert(events), [
            {"account_id": account, "seq": first_seq + i, "type": "balance",
             "data": {"balance": i}, "at": at} for i in range(n)])
        last = first_seq + n - 1
        if first_seq == 1:
            await conn.execute(insert(event_heads).values(account_id=account, last_seq=last,
                                                          pruned_through=0))
        else:
            await conn.execute(event_heads.update().where(event_heads.c.account_id == account)
                               .values(last_seq=last))


async def count_events(store: Store) -> int:
    async with store.read() as conn:
        return (await conn.execute(select(func.count()).select_from(events))).scalar()


async def a_pass(store: Store, batch_rows: int) -> tuple[Housekeeping, Metrics]:
    """One housekeeping pass over `store` by a process alone (it takes the lease), in batches
    of `batch_rows`; the housekeeper and its metrics."""
    metrics = Metrics()
    keeper = Housekeeping(store, MemoryBroker(), utcnow, node_id="n1", lease_s=3.0,
                          batch_rows=batch_rows, retention_s=RETENTION_S, metrics=metrics,
                          per_process=lambda now: None)
    await keeper.run_pass(asyncio.Event())
    return keeper, metrics


async def test_a_backlog_is_pruned_in_bounded_batches(store: Store) -> None:
    await old_events(store, "acc_a", 95)
    await old_events(store, "acc_b", 40)
    async with store.write() as conn:  # a recent event of acc_a: kept
        await conn.execute(insert(events).values(account_id="acc_a", seq=96, type="balance",
                                                 data={}, at=utcnow()))
    keeper, metrics = await a_pass(store, batch_rows=20)
    assert keeper.holding
    assert await count_events(store) == 1
    batches = metrics.counter_value("kinwire_housekeeping_batches_total", job="prune")
    rows = metrics.counter_value("kinwire_housekeeping_rows_total", job="prune")
    assert rows == 135
    assert batches == 7, "135 rows in batches of at most 20: 6 full ones and a short one"
    async with store.read() as conn:
        heads = dict((await conn.execute(select(event_heads.c.account_id,
                                                event_heads.c.pruned_through))).all())
    assert heads == {"acc_a": 95, "acc_b": 40}


async def test_only_the_lease_holder_keeps_house(store: Store) -> None:
    broker = MemoryBroker()
    await old_events(store, "acc_a", 30)
    first, second = (Housekeeping(store, broker, utcnow, node_id=n, lease_s=3.0, batch_rows=10,
                                  retention_s=RETENTION_S, metrics=Metrics(),
                                  per_process=lambda now: None) for n in ("n1", "n2"))
    await asyncio.gather(first.run_pass(asyncio.Event()), second.run_pass(asyncio.Event()))
    assert [first.holding, second.holding].count(True) == 1
    holder, other = (first, second) if first.holding else (second, first)
    assert holder.metrics.counter_value("kinwire_housekeeping_rows_total", job="prune") == 30
    assert other.metrics.counter_value("kinwire_housekeeping_batches_total", job="prune") == 0
    assert await broker.release(LEASE, holder.node_id)  # the holder stops: the other may
    await other.run_pass(asyncio.Event())
    assert other.holding


async def scheduled_visits(store: Store, ended: int, upcoming: int) -> None:
    """`ended` visits still scheduled after their window, `upcoming` ones before theirs."""
    now = utcnow()
    async with store.write() as conn:
        await conn.execute(insert(facilities).values(id="fac", name="F", timezone="UTC",
                                                     settings={}, created_at=now,
                                                     updated_at=now))
        await conn.execute(insert(accounts), [
            {"id": "fam", "role": "family", "name": "F", "created_at": now, "disabled": False},
            {"id": "per", "role": "person", "facility_id": "fac", "name": "P",
             "created_at": now, "disabled": False}])
        await conn.execute(insert(connections).values(
            id="con", facility_id="fac", family_id="fam", person_id="per", status="approved",
            privileged=False, created_at=now, updated_at=now))
        await conn.execute(insert(visits), [
            {"id": new_id("vis"), "facility_id": "fac", "connection_id": "con",
             "family_id": "fam", "person_id": "per", "booked_by": "fam",
             "start_at": now + timedelta(minutes=m - 30), "end_at": now + timedelta(minutes=m),
             "blocks": 1, "minute_price": 50, "media": "direct", "record": False,
             "status": "scheduled", "created_at": now, "updated_at": now,
             "family_media": "absent", "person_media": "absent"}
            for m in [-1 - i for i in range(ended)] + [10 + i for i in range(upcoming)]])


async def test_visits_nobody_joined_are_marked_missed_in_batches(store: Store) -> None:
    await scheduled_visits(store, ended=25, upcoming=3)
    _, metrics = await a_pass(store, batch_rows=10)
    async with store.read() as conn:
        statuses = dict((await conn.execute(select(visits.c.status, func.count())
                                            .group_by(visits.c.status))).all())
        announced = (await conn.execute(select(func.count()).select_from(events).where(
            events.c.account_id == "fam"))).scalar()
    assert statuses == {"missed": 25, "scheduled": 3}
    assert announced == 25, "each party is told of each missed visit"
    assert metrics.counter_value("kinwire_housekeeping_batches_total", job="missed") == 3
    assert metrics.counter_value("kinwire_housekeeping_rows_total", job="missed") == 25


async def until_pruned(store: Store, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if not await count_events(store):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the old events were not pruned")


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (re.escape("{" + want + "}") if want else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def _scrape(http: aiohttp.ClientSession, node) -> str:
    async with http.get(node.base + "/metrics") as r:
        return await r.text()


async def test_one_process_of_two_prunes_and_the_other_takes_over(pg_db: str,
                                                                  tmp_path: Path) -> None:
    lease_s = 1.5
    redis = RedisServer(tmp_path)
    await redis.start()
    store = Store(pg_db)
    try:
        async with cluster(pg_db, redis.url, tmp_path, KINWIRE_HOUSEKEEPING_LEASE_S=str(lease_s),
                           KINWIRE_HOUSEKEEPING_BATCH_ROWS="50",
                           KINWIRE_EVENT_RETENTION_S=str(RETENTION_S)) as nodes, \
                aiohttp.ClientSession() as http:
            await old_events(store, "acc_a", 500)
            await until_pruned(store)
            scraped = [await _scrape(http, node) for node in nodes]
            pruned = [_metric(t, "kinwire_housekeeping_rows_total", job="prune")
                      for t in scraped]
            assert sorted(pruned) == [0, 500], pruned
            holder = nodes[pruned.index(500)]
            other = nodes[1 - pruned.index(500)]
            batches = _metric(scraped[pruned.index(500)], "kinwire_housekeeping_batches_total",
                              job="prune")
            assert batches >= 10, "500 rows in batches of at most 50"
            assert _metric(scraped[pruned.index(500)], "kinwire_housekeeping_holder") == 1
            assert _metric(scraped[1 - pruned.index(500)], "kinwire_housekeeping_holder") == 0

            holder.proc.send_signal(signal.SIGKILL)
            holder.proc.wait()
            killed_at = asyncio.get_running_loop().time()
            await old_events(store, "acc_a", 120, first_seq=501)
            await until_pruned(store)
            took = asyncio.get_running_loop().time() - killed_at
            text = await _scrape(http, other)
            assert _metric(text, "kinwire_housekeeping_rows_total", job="prune") == 120
            assert _metric(text, "kinwire_housekeeping_holder") == 1
            # The lease runs out, then the survivor's next pass (a third of a lease) claims it.
            assert took <= lease_s + lease_s / 3 + 1.5, took
    finally:
        await store.close()
        redis.stop()


async def test_handles_of_a_janus_server_gone_for_good_are_swept_in_batches(
        store: Store) -> None:
    """Adversary: a Janus server that died for good holding handles (its restart would have
    dropped them; a visit's end drops its visit's): 25 rows untouched for over a day go in
    batches of 10, a live visit's handle touched a minute ago stays."""
    now = utcnow()
    old = now - timedelta(seconds=HANDLE_STALE_S + 60)
    async with store.write() as conn:
        await conn.execute(insert(janus_handles), [
            {"server": "gone", "handle_id": n, "visit_id": "", "session_id": 1, "state": {},
             "updated_at": old} for n in range(25)])
        await conn.execute(insert(janus_handles).values(
            server="alive", handle_id=1, visit_id="vis_live", session_id=2, state={},
            updated_at=now - timedelta(minutes=1)))
    _, metrics = await a_pass(store, batch_rows=10)
    async with store.read() as conn:
        left = (await conn.execute(select(janus_handles.c.server))).scalars().all()
    assert left == ["alive"]
    assert metrics.counter_value("kinwire_housekeeping_batches_total", job="janus_handles") == 3
    assert metrics.counter_value("kinwire_housekeeping_rows_total", job="janus_handles") == 25
