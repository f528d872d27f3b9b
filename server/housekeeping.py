"""Housekeeping: the periodic work on the database that one process does for all.

Which process: the one holding the `housekeeping` lease in the broker (the in-memory broker's
one process; with Redis, whichever claimed it first). It renews the lease every third of
KINWIRE_HOUSEKEEPING_LEASE_S and does a pass each time; when it dies another claims the free
lease within one lease period, and when it stops on purpose it releases the lease at once. The
lease saves work, it does not guard correctness: two processes pruning or sweeping at once (a
holder paused past its lease) delete the same rows and make the same conditional updates.

What a pass does, each job in batches of at most KINWIRE_HOUSEKEEPING_BATCH_ROWS rows, one short
transaction each (until a batch comes back short), so that no transaction holds the locks
senders need for long, however far behind it is:
- events past KINWIRE_EVENT_RETENTION_S are pruned (server/events.py `prune`);
- visits still `scheduled` after their window ended are marked `missed`;
- recordings past their facility's retention are deleted, blob then row, each audited
  (server/recordings.py `expire`);
- login attempt counters untouched for two days are forgotten (server/attempts.py `prune`: one
  statement, on a table that holds only recent attempts; a no-op where Redis keeps them).
Every process still closes its own sockets whose session expired (that is per process).
/metrics counts batches and rows by job (kinwire_housekeeping_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, select

from server import events
from server.events import Outbox
from signalling import visits
from signalling.tables import visits as visits_table

log = logging.getLogger("kinwire.housekeeping")
LEASE = "housekeeping"
SOCKETS_EVERY_S = 30.0  # expired sessions' sockets: a walk over every socket, so not each pass


def missed_scan(now: datetime, limit: int) -> Select:
    """Visits still scheduled after their window, oldest first. The status is written into the
    SQL, not bound: a generic plan (PostgreSQL's for a prepared statement) can use the partial
    index ix_visits_scheduled_end only then."""
    t = visits_table
    scheduled = bindparam("scheduled", "scheduled", literal_execute=True)
    return (select(t.c.id).where(t.c.status == scheduled, t.c.end_at <= now)
            .order_by(t.c.end_at).limit(limit))


async def mark_missed(store: Any, broker: Any, now: datetime, limit: int) -> int:
    """Mark at most `limit` visits still scheduled after their window `missed` (the oldest
    first, through ix_visits_scheduled_end) and announce each; how many."""
    sink = Outbox()
    t = visits_table
    async with store.write() as conn:
        due = (await conn.execute(missed_scan(now, limit))).scalars().all()
        marked = 0
        for visit_id in due:
            changed = await conn.execute(t.update().where(t.c.id == visit_id,
                                                          t.c.status == "scheduled")
                                         .values(status="missed", updated_at=now))
            if changed.rowcount:
                marked += 1
                await visits.announce(conn, sink, await visits.get(conn, visit_id), now)
    await sink.signal(broker)
    return marked


class Housekeeping:
    def __init__(self, store: Any, broker: Any, clock: Callable[[], datetime], *,
                 node_id: str, lease_s: float, batch_rows: int, retention_s: float,
                 metrics: Any, per_process: Callable[[datetime], None],
                 attempts: Any = None, recordings: Any = None) -> None:
        self.store, self.broker, self.clock = store, broker, clock
        self.node_id, self.lease_s, self.batch_rows = node_id, lease_s, batch_rows
        self.retention_s, self.metrics, self.per_process = retention_s, metrics, per_process
        self.attempts = attempts  # server.attempts counters (SQL or Redis), or None
        self.recordings = recordings  # server.recordings.Recordings, or None
        self.holding = False
        self._sockets_at = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Passes every third of the lease until `stop`; never cancelled, so that no database
        call is cut in half. Releases the lease on the way out."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease_s / 3)
                if stop.is_set():
                    return
                await self.run_pass(stop)
        finally:
            if self.holding:
                with contextlib.suppress(Exception):
                    await self.broker.release(LEASE, self.node_id)
                self.holding = False

    async def run_pass(self, stop: asyncio.Event) -> None:
        now = self.clock()
        if time.monotonic() - self._sockets_at >= SOCKETS_EVERY_S:
            self._sockets_at = time.monotonic()
            try:
                self.per_process(now)
            except Exception:
                log.exception("housekeeping: closing expired sockets failed")
        if not await self._hold():
            return
        cutoff = now - timedelta(seconds=self.retention_s)
        await self._batches("prune", lambda: self._prune(cutoff), stop)
        await self._batches("missed", lambda: mark_missed(self.store, self.broker, now,
                                                          self.batch_rows), stop)
        if self.recordings is not None:
            await self._batches("recordings", lambda: self.recordings.expire(
                now, self.batch_rows), stop)
        if self.attempts is not None:
            await self._batches("attempts", lambda: self._prune_attempts(now), stop)

    async def _prune_attempts(self, now: datetime) -> int:
        async with self.store.write() as conn:
            return await self.attempts.prune(conn, now)

    async def _prune(self, cutoff: datetime) -> int:
        async with self.store.write() as conn:
            return await events.prune(conn, cutoff, self.batch_rows)

    async def _hold(self) -> bool:
        try:
            if self.holding:
                self.holding = await self.broker.renew(LEASE, self.node_id, self.lease_s)
            if not self.holding:
                self.holding = bool(await self.broker.acquire(LEASE, self.node_id,
                                                             self.lease_s))
                if self.holding:
                    log.info("housekeeping: this process does it now")
        except Exception:
            # Broker away: nobody can be sure of the lease, so nobody works; back next pass.
            log.warning("housekeeping: cannot reach the broker for the lease; skipping a pass")
            self.holding = False
        return self.holding

    async def _batches(self, job: str, batch: Callable[[], Awaitable[int]],
                       stop: asyncio.Event) -> None:
        """Batches of one job until one comes back short (or the process stops, or it
        fails: the next pass carries on where this one stopped)."""
        while not stop.is_set():
            try:
                rows = await batch()
            except Exception:
                log.exception("housekeeping: a %s batch failed; retrying next pass", job)
                return
            self.metrics.inc("kinwire_housekeeping_batches_total", job=job)
            self.metrics.inc("kinwire_housekeeping_rows_total", rows, job=job)
            if rows < self.batch_rows:
                return
