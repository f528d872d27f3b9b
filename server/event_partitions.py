"""Events partitioned by week on PostgreSQL (migration 0014), and retention by dropping whole
partitions instead of deleting rows.

`events` is a range-partitioned table on `at`: one partition a week (`events_wYYYYMMDD`, from
Monday 00:00 UTC), `events_before` (the table as it was before the migration: everything before
the first week), and `events_default` (any row no week holds: a clock set far ahead, or weeks
not made in time). Each partition has its own primary key (account_id, seq); the parent has
none, because a partitioned table's unique keys must contain `at`. Sequence numbers stay unique
per user because they are taken from `event_heads` under its row lock (server/events.py).

The elected housekeeping (server/housekeeping.py) keeps `WEEKS_AHEAD` weeks made ahead of its
clock, and for each week wholly past the retention: records per user how far the week's events
went (`event_heads.pruned_through`, in bounded batches, so that a `sync` from before gets
`reset`), then drops the partition, waiting at most `DROP_LOCK_TIMEOUT_MS` for its lock (a drop
that would wait longer is tried again on the next pass). `events_before` and `events_default`
are pruned by batched DELETE as before, and `events_before` dropped whole once its last row is
past the retention. SQLite keeps one table pruned by DELETE (server/events.py `prune`).

This module is the policy; the catalog read and the DDL are store/partitions.py's, the heads'
batches SQLAlchemy Core.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, MetaData, Table, bindparam, func, select, update

from server import events as events_module
from server.schema import event_heads
from server.schema import events as events_table
from store import Store
from store import partitions as partitions_sql
from store.partitions import Partition, partitions

log = logging.getLogger("kinwire.events")

WEEK = timedelta(days=7)
WEEKS_AHEAD = 4
DROP_LOCK_TIMEOUT_MS = 2000
LIST_FRESH_S = 60.0
BEFORE, DEFAULT = "events_before", "events_default"

def week_start(at: datetime) -> datetime:
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def week_name(start: datetime) -> str:
    return f"events_w{start:%Y%m%d}"


async def ensure_ahead(store: Store, now: datetime, refused: set[str] | None = None) -> int:
    """Make the weeks from `now`'s through `WEEKS_AHEAD` ahead that do not exist yet; how many
    were made. A week whose rows already sit in the default partition cannot be made (they
    would have to move): it is logged, and its rows keep going to the default partition.
    `refused`: the caller's names of weeks already logged so (logged once, not every pass)."""
    refused = set() if refused is None else refused
    made = 0
    async with store.read() as conn:
        await partitions_sql.utc(conn)
        existing = await partitions(conn)
    names = {p.name for p in existing}
    floor = next((p.upper for p in existing if p.name == BEFORE), None)
    start = week_start(now)
    for _ in range(WEEKS_AHEAD + 1):
        if week_name(start) not in names and (floor is None or start >= floor):
            try:
                async with store.write() as conn:
                    await partitions_sql.utc(conn)
                    await partitions_sql.lock_timeout(conn, DROP_LOCK_TIMEOUT_MS)
                    await partitions_sql.create(conn, week_name(start), start, start + WEEK)
                made += 1
            except Exception:
                if week_name(start) not in refused:
                    refused.add(week_name(start))
                    log.exception("events: the partition for the week of %s was not made; "
                                  "its events go to events_default", start.date())
        start += WEEK
    return made


# How far a dropped week's events went, per user (a sync from before then gets `reset`).
_RECORD_HEAD = update(event_heads).where(
    event_heads.c.account_id == bindparam("b_id"),
    event_heads.c.pruned_through < bindparam("b_seq")).values(pruned_through=bindparam("b_seq"))


def _table(name: str) -> Table:
    """A partition as a table of its own, with the events' columns."""
    return Table(name, MetaData(), *(Column(c.name, c.type, primary_key=c.primary_key)
                                     for c in events_table.columns))


class Retention:
    """Retention on a partitioned `events`, one bounded step a call (housekeeping runs steps
    until one comes back short). Keeps, per expired week, how far its heads were recorded: a
    process that takes the housekeeping lease over starts that week's heads again (recording
    them twice changes nothing)."""

    def __init__(self, store: Store, batch_rows: int) -> None:
        self.store, self.batch_rows = store, batch_rows
        self.cursors: dict[str, str] = {}
        # The partitions as last read: a pass (every few seconds) need not read the catalog,
        # since weeks end a week apart. Read again after LIST_FRESH_S, after a drop, and
        # after any failure (another process may have dropped one meanwhile).
        self._found: list[Partition] = []
        self._found_at = -float("inf")

    async def step(self, cutoff: datetime) -> int:
        try:
            return await self._step(cutoff)
        except Exception:
            self._found_at = -float("inf")
            raise

    async def _step(self, cutoff: datetime) -> int:
        if time.monotonic() - self._found_at >= LIST_FRESH_S:
            async with self.store.read() as conn:
                await partitions_sql.utc(conn)
                self._found = await partitions(conn)
            self._found_at = time.monotonic()
        expired = [p for p in self._found if p.upper is not None and p.upper <= cutoff]
        if expired:
            return await self._retire(expired[0].name)
        pruned = 0
        async with self.store.write() as conn:  # one transaction for both, each bounded
            for p in self._found:
                if p.name in (BEFORE, DEFAULT):
                    pruned += await events_module.prune(conn, cutoff, self.batch_rows,
                                                        table=_table(p.name))
        return pruned

    async def _retire(self, name: str) -> int:
        """One batch of the week's heads (accounts in id order, as senders lock them), or,
        when every head is recorded, the drop."""
        after = self.cursors.get(name, "")
        week = _table(partitions_sql.checked(name))
        async with self.store.write() as conn:
            rows = (await conn.execute(
                select(week.c.account_id, func.max(week.c.seq))
                .where(week.c.account_id > after).group_by(week.c.account_id)
                .order_by(week.c.account_id).limit(self.batch_rows))).all()
            if rows:
                # Locked in id order first, the order senders take heads in: no deadlock
                # with a send.
                await conn.execute(
                    select(event_heads.c.account_id)
                    .where(event_heads.c.account_id.in_([r[0] for r in rows]))
                    .order_by(event_heads.c.account_id).with_for_update())
                await conn.execute(_RECORD_HEAD, [{"b_id": r[0], "b_seq": int(r[1])}
                                                  for r in rows])
        if len(rows) == self.batch_rows:
            self.cursors[name] = rows[-1][0]
            return self.batch_rows
        try:
            async with self.store.write() as conn:
                await partitions_sql.lock_timeout(conn, DROP_LOCK_TIMEOUT_MS)
                await partitions_sql.drop(conn, name)
        except Exception:
            log.warning("events: dropping %s waited too long for its lock; next pass", name)
            self._found_at = -float("inf")
            return 0
        self.cursors.pop(name, None)
        self._found_at = -float("inf")
        log.info("events: dropped %s (past the retention)", name)
        return self.batch_rows  # there may be another week to retire
