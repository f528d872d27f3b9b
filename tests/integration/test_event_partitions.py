"""Events partitioned by week on PostgreSQL (server/event_partitions.py, migration 0014):
weeks made ahead by the elected housekeeping, retention by dropping whole weeks.

Adversaries: senders writing events while a week is retired (none may fail or be lost, and no
deadlock with the heads' batches); a week with more users than a batch (the heads are
recorded in bounded transactions before the drop); a client syncing from a dropped week (it
must get `reset`, not a silent gap); a clock far ahead of every week made (its events land in
the default partition and are still read back and pruned); a test whose app runs housekeeping on
a clock months ahead in the run's shared database (the next test must find the weeks as the
migration made them).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import func, select

from server import event_partitions, events
from server.broker.memory import MemoryBroker
from server.event_partitions import WEEK, WEEKS_AHEAD, week_name, week_start
from server.housekeeping import Housekeeping
from server.http.metrics import Metrics
from server.schema import event_heads
from server.schema import events as events_table
from store import Store
from store.migrate import migrate
from store.partitions import partitions, utc
from tests.conftest import PG_ADMIN_URL, reset_postgres
from tests.integration.test_migrate_deploy import at, version
from tests.integration.test_migrate_deploy import empty_pg as empty_database

RETENTION_S = 30 * 86_400


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_store() -> AsyncIterator[Store]:
    """A database of its own: weeks are dropped here, which the run's shared one must keep."""
    name = f"kinwire_parts_{secrets.token_hex(4)}"
    await _admin(f'CREATE DATABASE "{name}"')
    store = Store(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", pool_size=10)
    try:
        await migrate(store)
        yield store
    finally:
        await store.close()
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def emit(store: Store, account: str, n: int, at: datetime) -> None:
    async with store.write() as conn:
        await events.Outbox().emit_many(conn, [(account, "balance", {"balance": i})
                                               for i in range(n)], at)


async def weeks(store: Store) -> dict[str, datetime | None]:
    async with store.read() as conn:
        await utc(conn)
        return {p.name: p.upper for p in await partitions(conn)}


async def heads(store: Store) -> dict[str, tuple[int, int]]:
    async with store.read() as conn:
        rows = await conn.execute(select(event_heads.c.account_id, event_heads.c.last_seq,
                                         event_heads.c.pruned_through))
        return {a: (last, pruned) for a, last, pruned in rows}


async def test_a_week_past_retention_is_dropped_whole_while_senders_write(
        pg_store: Store) -> None:
    store = pg_store
    found = await weeks(store)
    first = min(upper for name, upper in found.items() if name.startswith("events_w")) - WEEK
    assert {"events_before", "events_default"} <= set(found)
    assert found["events_before"] == first, "the old table holds everything before week one"

    # Week one: 7 users (more than a batch of 3), two events each; week two: users 0-2 again.
    users = [f"acc_{i}" for i in range(7)]
    for user in users:
        await emit(store, user, 2, first + timedelta(hours=1))
    for user in users[:3]:
        await emit(store, user, 1, first + WEEK + timedelta(hours=1))

    now = first + WEEK + timedelta(seconds=RETENTION_S) + timedelta(minutes=1)
    metrics = Metrics()
    keeper = Housekeeping(store, MemoryBroker(), lambda: now, node_id="n1", lease_s=3.0,
                          batch_rows=3, retention_s=RETENTION_S, metrics=metrics,
                          per_process=lambda at: None)
    stop, written = asyncio.Event(), []
    # The weeks around `now` exist (housekeeping makes them ahead, pass after pass).
    assert await event_partitions.ensure_ahead(store, now) == WEEKS_AHEAD + 1
    made = await weeks(store)
    assert all(week_name(week_start(now) + k * WEEK) in made for k in range(WEEKS_AHEAD + 1))
    assert await event_partitions.ensure_ahead(store, now) == 0, "made once"

    async def sending() -> None:  # a user writing at `now` all along
        while not stop.is_set():
            await emit(store, "acc_live", 1, now)
            written.append(1)
            await asyncio.sleep(0)

    sender = asyncio.create_task(sending())
    await asyncio.sleep(0.1)
    await keeper.run_pass(asyncio.Event())
    stop.set()
    await sender

    after = await weeks(store)
    assert week_name(first) not in after, "week one is past the retention: dropped whole"
    assert "events_before" not in after, "and so is everything before it"
    assert week_name(first + WEEK) in after, "week two ends within the retention: kept"
    # Week one's 7 users in batches of 3 (3 + 3 + 1 heads), then two drops.
    assert metrics.counter_value("kinwire_housekeeping_rows_total", job="prune") >= 7

    got = await heads(store)
    for user in users[:3]:
        assert got[user] == (3, 2), user  # seq 3 (week two) kept; 1-2 dropped with week one
    for user in users[3:]:
        assert got[user] == (2, 2), user
    async with store.read() as conn:
        left = dict((await conn.execute(
            select(events_table.c.account_id, func.count()).group_by(events_table.c.account_id)
        )).all())
        assert [e.seq for e in await events.since(conn, "acc_0", 0, 100)] == [3]
    # A sync from before seq 2 is answered `reset` (server/gateway/hub.py: since < pruned).
    assert left == {**{u: 1 for u in users[:3]}, "acc_live": len(written)}
    assert written and got["acc_live"] == (len(written), 0), "every send of the sender kept"


async def test_events_beyond_every_week_made_land_in_the_default_and_are_pruned(
        pg_store: Store) -> None:
    store = pg_store
    far = datetime(2031, 5, 1, 12, 30, tzinfo=UTC)  # beyond every week made
    await emit(store, "acc_far", 3, far)
    async with store.read() as conn:
        assert [e.seq for e in await events.since(conn, "acc_far", 0, 100)] == [1, 2, 3]
        in_default = (await conn.exec_driver_sql(
            "SELECT count(*) FROM events_default")).scalar()
    assert in_default == 3

    now = far + timedelta(seconds=RETENTION_S) + timedelta(days=1)
    keeper = Housekeeping(store, MemoryBroker(), lambda: now, node_id="n1", lease_s=3.0,
                          batch_rows=2, retention_s=RETENTION_S, metrics=Metrics(),
                          per_process=lambda at: None)
    await keeper.run_pass(asyncio.Event())
    async with store.read() as conn:
        assert (await conn.exec_driver_sql("SELECT count(*) FROM events")).scalar() == 0
    assert (await heads(store))["acc_far"] == (3, 3)
    made = await weeks(store)
    assert week_name(week_start(now)) in made, "the weeks around the clock were made"


empty_pg = empty_database  # the fixture, here too


async def test_the_migration_keeps_the_events_in_place_and_can_run_again(
        empty_pg: str) -> None:
    """0014 on a database with events: they stay readable in place (events_before, no copy);
    a migration stopped by its lock timeout behind a reader changes nothing and a rerun,
    finding the bound constraint a stopped run had added, succeeds."""
    await at(empty_pg, "0013")
    setup = await asyncpg.connect(empty_pg)
    await setup.execute("""
        INSERT INTO event_heads VALUES ('acc_old', 3, 0);
        INSERT INTO events VALUES ('acc_old', 1, 'balance', '{"balance": 1}', now()),
            ('acc_old', 2, 'balance', '{"balance": 2}', now()),
            ('acc_old', 3, 'balance', '{"balance": 3}', now());
        -- as a run stopped after validating its bound would have left it
        ALTER TABLE events ADD CONSTRAINT events_before_bound CHECK (at < '2999-01-01');""")
    reader = await asyncpg.connect(empty_pg)  # the running version, mid-transaction
    tx = reader.transaction()
    await tx.start()
    await reader.execute("SELECT count(*) FROM events")
    store = Store(empty_pg)
    try:
        with pytest.raises(sqlalchemy_exc.DBAPIError, match="lock timeout"):
            await migrate(store, "0014", lock_timeout_ms=300)
        assert await version(empty_pg) == "0013"
        await tx.commit()
        await migrate(store, "0014", lock_timeout_ms=300)
        assert await version(empty_pg) == "0014"
        assert await setup.fetchval(
            "SELECT relkind::text FROM pg_class WHERE relname = 'events'") == "p"
        assert await setup.fetchval("SELECT count(*) FROM events_before") == 3
        async with store.read() as conn:
            assert [e.seq for e in await events.since(conn, "acc_old", 1, 10)] == [2, 3]
        await emit(store, "acc_old", 1, datetime.now(UTC))  # writes go on, after seq 3
        async with store.read() as conn:
            assert [e.seq for e in await events.since(conn, "acc_old", 0, 10)] == [1, 2, 3, 4]
    finally:
        await store.close()
        await reader.close()
        await setup.close()


async def test_the_shared_database_gets_its_weeks_back_after_a_clock_months_ahead(
        pg_db: str, caplog: pytest.LogCaptureFixture) -> None:
    """An app in a test runs the elected housekeeping on its injected clock. Months ahead, it
    drops today's weeks; without tests/conftest.py's restore_layout, the next test's events of
    this week go to events_default and the week can no longer be made (an ERROR: test_ws_fuzz
    failed so in CI)."""
    store = Store(pg_db)
    try:
        migrated = await weeks(store)
        ahead = datetime.now(UTC) + timedelta(days=120)
        keeper = Housekeeping(store, MemoryBroker(), lambda: ahead, node_id="n1", lease_s=3.0,
                              batch_rows=100, retention_s=RETENTION_S, metrics=Metrics(),
                              per_process=lambda at: None)
        await keeper.run_pass(asyncio.Event())
        assert "events_before" not in await weeks(store), "the clock ahead dropped the weeks"
        # the next test, on the real clock, before its housekeeping has run:
        await emit(store, "acc_now", 1, datetime.now(UTC))
        await event_partitions.ensure_ahead(store, datetime.now(UTC))
        assert "was not made" in caplog.text, "this week cannot be made any more"
    finally:
        await store.close()

    await reset_postgres(pg_db)
    store = Store(pg_db)
    try:
        assert await weeks(store) == migrated
        await emit(store, "acc_now", 1, datetime.now(UTC))
        assert await event_partitions.ensure_ahead(store, datetime.now(UTC)) == 0, \
            "the weeks around the real clock are there"
        async with store.read() as conn:
            assert (await conn.exec_driver_sql(
                "SELECT count(*) FROM events_default")).scalar() == 0
    finally:
        await store.close()
