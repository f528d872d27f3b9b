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
- events past KINWIRE_EVENT_RETENTION_S are pruned (server/events.py `prune`); on PostgreSQL,
  where `events` is partitioned by week, the weeks ahead are made and a week wholly past the
  retention has its users' heads recorded in batches and is then dropped whole
  (server/event_partitions.py);
- visits still `scheduled` after their window ended are marked `missed`;
- recordings past their facility's retention are deleted, blob then row, each audited
  (server/recordings.py `expire`);
- every JANUS_SWEEP_EVERY_S, Janus-carried visits that ended with `.mjr` files and no
  recording (their ending process failed or stopped mid-conversion) have them kept
  (server/janus_recordings.py `sweep`);
- unpaid hosted checkouts a day past their page's expiry are deleted (billing/checkout.py
  `prune`; paid ones stay with their purchases);
- login attempt counters untouched for two days are forgotten (server/attempts.py `prune`: one
  statement, on a table that holds only recent attempts; a no-op where Redis keeps them);
- every ORPHANS_EVERY_S (a listing of both blob stores is not for every pass), blobs that no
  recording or photo row references, put more than KINWIRE_ORPHAN_GRACE_S ago, are deleted
  and audited (server/orphans.py).
Every process still closes its own sockets whose session expired, and deletes its own stale
`.partial` files (audited; server/orphans.py), since both are per process.
/metrics counts batches and rows by job (kinwire_housekeeping_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, bindparam, select

from billing import checkout
from common.broker import Broker
from common.metrics import Counters
from server import event_partitions, events, mail, orphans, push, resets
from server.events import Outbox
from signalling import janus_presence, visits
from signalling.tables import visits as visits_table
from store import Store

if TYPE_CHECKING:
    from server.attempts import Attempts
    from server.janus_recordings import JanusRecordings
    from server.recordings import Recordings

log = logging.getLogger("kinwire.housekeeping")
LEASE = "housekeeping"
SOCKETS_EVERY_S = 30.0  # expired sessions' sockets: a walk over every socket, so not each pass
ORPHANS_EVERY_S = 600.0  # orphan blobs and stale .partial files: listings, so seldom
PARTITIONS_EVERY_S = 600.0  # PostgreSQL: the weeks of `events` ahead (four are kept made)
REMIND_EVERY_S = 60.0  # visit reminder emails: a minute late at most
JANUS_SWEEP_EVERY_S = 60.0  # a listing of the Janus recordings folder: not each pass


def missed_scan(now: datetime, limit: int) -> Select:
    """Visits still scheduled after their window, oldest first. The status is written into the
    SQL, not bound: a generic plan (PostgreSQL's for a prepared statement) can use the partial
    index ix_visits_scheduled_end only then."""
    t = visits_table
    scheduled = bindparam("scheduled", "scheduled", literal_execute=True)
    return (select(t.c.id).where(t.c.status == scheduled, t.c.end_at <= now)
            .order_by(t.c.end_at).limit(limit))


async def mark_missed(store: Store, broker: Broker, now: datetime, limit: int) -> int:
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
    def __init__(self, store: Store, broker: Broker, clock: Callable[[], datetime], *,
                 node_id: str, lease_s: float, batch_rows: int, retention_s: float,
                 metrics: Counters, per_process: Callable[[datetime], None],
                 attempts: Attempts | None = None, recordings: Recordings | None = None,
                 janus_recordings: JanusRecordings | None = None,
                 blobs: dict[str, Any] | None = None, partials: tuple[Path, ...] = (),
                 in_use: Callable[[Path], bool] = lambda path: False,
                 orphan_grace_s: float = 86_400.0,
                 orphans_every_s: float = ORPHANS_EVERY_S,
                 wall: Callable[[], datetime] = orphans.real_now,
                 remind: Callable[[Any, datetime, int], Awaitable[int]] | None = None) -> None:
        self.store, self.broker, self.clock = store, broker, clock
        self.node_id, self.lease_s, self.batch_rows = node_id, lease_s, batch_rows
        self.retention_s, self.metrics, self.per_process = retention_s, metrics, per_process
        self.attempts = attempts  # server.attempts counters (SQL or Redis), or None
        self.recordings = recordings  # server.recordings.Recordings, or None
        # server.janus_recordings.JanusRecordings (KINWIRE_MEDIA_ENGINE=janus), or None
        self.janus_recordings = janus_recordings
        # orphans (server/orphans.py): the blob stores by kind, this process's .partial
        # folders, whether a file there is a recording this process is writing now
        self.blobs, self.partials, self.in_use = blobs or {}, partials, in_use
        self.orphan_grace_s, self.orphans_every_s = orphan_grace_s, orphans_every_s
        self.wall = wall  # ages of blobs and files: the machine's clock (server/orphans.py)
        self.remind = remind  # visit reminder emails (server/mail.py Notifier), or None
        self._reminded_at = self._janus_swept_at = -float("inf")
        self.holding = False
        # PostgreSQL: events are partitioned by week and retired a week at a time
        self.retention = (event_partitions.Retention(store, batch_rows)
                          if getattr(store, "dialect", None) == "postgresql" else None)
        self._sockets_at = time.monotonic()
        self._partials_at = self._orphans_at = -float("inf")  # the first pass sweeps
        self._partitions_at = -float("inf")
        self._partitions_refused: set[str] = set()  # weeks whose partition could not be made

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
        if self.partials and time.monotonic() - self._partials_at >= self.orphans_every_s:
            self._partials_at = time.monotonic()
            await self._batches("partials", lambda: orphans.sweep_partials(
                self.store, list(self.partials), now, self.orphan_grace_s, self.in_use,
                self.wall), stop,
                once=True)
        if not await self._hold():
            return
        cutoff = now - timedelta(seconds=self.retention_s)
        if self.retention is not None and \
                time.monotonic() - self._partitions_at >= PARTITIONS_EVERY_S:
            self._partitions_at = time.monotonic()  # weeks are made four weeks ahead
            await self._batches("partitions", lambda: event_partitions.ensure_ahead(
                self.store, now, self._partitions_refused), stop, once=True)
        await self._batches("prune", lambda: self._prune(cutoff), stop)
        await self._batches("missed", lambda: mark_missed(self.store, self.broker, now,
                                                          self.batch_rows), stop)
        if self.recordings is not None:
            await self._batches("recordings", lambda: self.recordings.expire(
                now, self.batch_rows), stop)
        if self.janus_recordings is not None and \
                time.monotonic() - self._janus_swept_at >= JANUS_SWEEP_EVERY_S:
            self._janus_swept_at = time.monotonic()  # a listing of its folder: one batch
            await self._batches("janus_recordings", lambda: self.janus_recordings.sweep(
                now, self.batch_rows), stop, once=True)
        if self.attempts is not None:
            await self._batches("attempts", lambda: self._prune_attempts(now), stop)
        await self._batches("mail", lambda: self._prune_mail(now), stop)
        await self._batches("janus_handles", lambda: self._prune_janus_handles(now), stop)
        await self._batches("checkouts", lambda: self._prune_checkouts(now), stop)
        if self.remind is not None and time.monotonic() - self._reminded_at >= REMIND_EVERY_S:
            self._reminded_at = time.monotonic()
            await self._batches("reminders", lambda: self.remind(self.store, now,
                                                                 self.batch_rows), stop)
        if self.blobs and time.monotonic() - self._orphans_at >= self.orphans_every_s:
            self._orphans_at = time.monotonic()
            await self._batches("orphans", lambda: orphans.sweep_blobs(
                self.store, self.blobs, now, self.orphan_grace_s, self.batch_rows, self.wall),
                stop,
                once=True)

    async def _prune_attempts(self, now: datetime) -> int:
        async with self.store.write() as conn:
            return await self.attempts.prune(conn, now)

    async def _prune_mail(self, now: datetime) -> int:
        """Sent emails past their keeping, and password-reset tokens a day past expiry."""
        async with self.store.write() as conn:
            return (await mail.prune(conn, now, self.batch_rows)
                    + await push.prune(conn, now, mail.KEEP_SENT, self.batch_rows)
                    + await resets.prune(conn, now))

    async def _prune_janus_handles(self, now: datetime) -> int:
        async with self.store.write() as conn:
            return await janus_presence.prune_stale(conn, now, self.batch_rows)

    async def _prune_checkouts(self, now: datetime) -> int:
        async with self.store.write() as conn:
            return await checkout.prune(conn, now, self.batch_rows)

    async def _prune(self, cutoff: datetime) -> int:
        if self.retention is not None:
            return await self.retention.step(cutoff)
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
                       stop: asyncio.Event, once: bool = False) -> None:
        """Batches of one job until one comes back short (or the process stops, or it
        fails: the next pass carries on where this one stopped). `once`: one batch only
        (a sweep that lists a whole store: the next sweep carries on)."""
        while not stop.is_set():
            try:
                rows = await batch()
            except Exception:
                log.exception("housekeeping: a %s batch failed; retrying next pass", job)
                return
            self.metrics.inc("kinwire_housekeeping_batches_total", job=job)
            self.metrics.inc("kinwire_housekeeping_rows_total", rows, job=job)
            if rows < self.batch_rows or once:
                return
