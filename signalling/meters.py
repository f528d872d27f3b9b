"""The async shell around billing/meter.py: one task per metered visit, on one process.

Who runs a meter: the process holding the visit's lease in the broker (`meter:<visit>`). A
process claims a visit when one of its sockets joins it or when its scanner (every half lease)
finds a visit in a call with a free lease: so when the holder dies, another process takes the
meter over within about one lease period, from the state stored on the visit row. A process
that stops on purpose (a drain, server/drain.py) releases its leases and announces each one on
the meters channel (`{"handover": visit}`): the others claim it at once, not a lease later.

What it does: reads the parties' media state from the visit row (any process may have
recorded it, with its instant), feeds the pure meter the resulting events and the clock, and
performs the actions in order: persist the state on the row, debit a minute through the ledger
(idempotent on its key), push warnings and ticks to both parties, end the visit. It never
cancels itself inside a database call: stopping is a flag checked between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select

from billing import ledger, meter
from billing.ledger import LedgerError, SystemAccount
from signalling import visits
from signalling.tables import visits as visits_table

log = logging.getLogger("kinwire.meters")
DEBIT_ATTEMPTS_MAX = 5
# At most this many meters use the store at once (fewer than the default pool of 10, which
# must keep connections for requests). A burst of meters (a block's visits going live together,
# a process taking over thousands) queues here, in order, instead of on the connection pool,
# whose timeout stopped them all with errors (docs/BENCHMARKS.md, "Meters").
STORE_TURNS = 8
CHANNEL = "meters"


class Sink(visits.EventSink, Protocol):
    async def signal(self, broker: Any) -> None: ...


class _NoMetrics:
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def observe(self, name: str, seconds: float) -> None: ...


def ts(moment: datetime) -> float:
    return moment.timestamp()


class Meters:
    def __init__(self, store: Any, broker: Any, clock: Callable[[], datetime], *,
                 minute_s: float, lease_s: float, node_id: str,
                 sink: Callable[[], Sink],
                 push_live: Callable[[str, str, dict[str, Any]], Awaitable[Any]],
                 metrics: Any = None) -> None:
        # metrics: anything with inc(name, **labels) and observe(name, s); None counts nothing
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.store, self.broker, self.clock = store, broker, clock
        self.minute_s, self.lease_s, self.node_id = minute_s, lease_s, node_id
        self.sink, self.push_live = sink, push_live
        self.running: dict[str, VisitMeter] = {}
        self.turns = asyncio.Semaphore(STORE_TURNS)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._subscription: Any = None

    async def start(self) -> None:
        self._spawn(self._scan(), "meter-scan")
        self._spawn(self._listen(), "meter-pokes")

    async def stop(self) -> None:
        self._stop.set()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()
        for running in list(self.running.values()):
            running.wake()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def poke(self, visit_id: str) -> None:
        """Something changed on the visit: wake its meter wherever it runs, or claim it."""
        if visit_id in self.running:
            self.running[visit_id].wake()
            return
        with contextlib.suppress(Exception):
            await self.broker.publish(CHANNEL, {"visit": visit_id})
        await self.claim(visit_id)

    async def claim(self, visit_id: str) -> bool:
        if self._stop.is_set() or visit_id in self.running:
            return False
        try:
            if not await self.broker.acquire(f"meter:{visit_id}", self.node_id, self.lease_s):
                return False
        except Exception:  # broker away: whoever holds it carries on; we try again later
            return False
        if visit_id in self.running:  # claimed twice concurrently by this very process
            return False
        running = VisitMeter(self, visit_id)
        self.running[visit_id] = running
        self._spawn(running.run(), f"meter-{visit_id}")
        return True

    async def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                subscription = await self.broker.subscribe(CHANNEL, queue_max=10_000)
            except Exception:
                await self._pause(1.0)
                continue
            self._subscription = subscription
            async for item in subscription:
                if not isinstance(item, dict):
                    continue
                if item.get("visit") in self.running:
                    self.running[item["visit"]].wake()
                elif isinstance(item.get("handover"), str) and not self._stop.is_set():
                    self._spawn(self.claim(item["handover"]), f"meter-claim-{item['handover']}")
            return

    async def _scan(self) -> None:
        while not self._stop.is_set():
            try:
                now = self.clock()
                async with self.store.read() as conn:
                    rows = (await conn.execute(select(visits_table.c.id).where(
                        visits_table.c.status.in_(visits.IN_CALL),
                        visits_table.c.end_at > now - timedelta(days=1)))).scalars().all()
                for visit_id in rows:
                    await self.claim(visit_id)
                await self._mark_missed(now)
            except Exception:
                log.exception("meter scan failed; retrying")
            await self._pause(self.lease_s / 2)

    async def _mark_missed(self, now: datetime) -> None:
        sink = self.sink()
        async with self.store.write() as conn:
            rows = (await conn.execute(select(visits_table).where(
                visits_table.c.status == "scheduled", visits_table.c.end_at <= now))).all()
            for row in rows:
                await conn.execute(visits_table.update().where(
                    visits_table.c.id == row.id, visits_table.c.status == "scheduled")
                    .values(status="missed", updated_at=now))
                await visits.announce(conn, sink, await visits.get(conn, row.id), now)
        await sink.signal(self.broker)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))


class VisitMeter:
    """One visit's meter on this process, while it holds the lease."""

    def __init__(self, meters: Meters, visit_id: str) -> None:
        self.m = meters
        self.visit_id = visit_id
        self._wake = asyncio.Event()
        self.wake_at: float | None = None
        self._wake_seen: float | None = None  # metrics: the WakeAt already measured
        self.events: deque[meter.Event] = deque()
        self.done = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:
            log.exception("meter of visit %s stopped by an error; another pass retries",
                          self.visit_id)
        finally:
            self.m.running.pop(self.visit_id, None)
            with contextlib.suppress(Exception):
                released = await self.m.broker.release(f"meter:{self.visit_id}", self.m.node_id)
                if released and self.m._stop.is_set() and not self.done:
                    # Stopped, not finished: whoever hears this carries on billing now.
                    await self.m.broker.publish(CHANNEL, {"handover": self.visit_id})

    async def _start(self) -> bool:
        """Load the visit and its stored meter state; False if the visit is not in a call."""
        async with self.m.store.read() as conn:
            row = await visits.get(conn, self.visit_id)
        if row.status not in visits.IN_CALL:
            return False
        self.family_id, self.person_id = row.family_id, row.person_id
        self.config = meter.MeterConfig(self.visit_id, row.minute_price, self.m.minute_s,
                                        ts(row.start_at), ts(row.end_at))
        if row.meter:
            self.state = meter.MeterState.from_dict(row.meter)
            self.events.append(meter.TakenOver(ts(self.m.clock())))
        else:
            self.state = meter.MeterState()
        return True

    async def _run(self) -> None:
        renew_at: float | None = None
        while not self.done and not self.m._stop.is_set():
            self._wake.clear()  # before looking: a poke during this pass wakes the next one
            # One turn covers the start and the first pass, so a burst of new meters does not
            # queue twice (every start first, then every first debit).
            async with self.m.turns:  # see STORE_TURNS
                if self.m._stop.is_set():  # stopped while queued: hand over, do not bill
                    return
                if renew_at is None:
                    if not await self._start():
                        return
                    renew_at = ts(self.m.clock()) + self.m.lease_s / 3
                await self._observe()
                await self._drain()
            if self.done:
                return
            now = ts(self.m.clock())
            if now >= renew_at:
                if not await self._renew():
                    self.events.append(meter.LeaseLost(now))
                    await self._drain()
                    return
                renew_at = now + self.m.lease_s / 3
            deadline = min(x for x in (self.wake_at, renew_at) if x is not None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - now))
            self._observe_lateness()

    def _observe_lateness(self) -> None:
        """metrics: once per WakeAt, how long after its instant the meter got to it."""
        due = self.wake_at
        if due is None or due == self._wake_seen:
            return
        now = ts(self.m.clock())
        if now >= due:
            self._wake_seen = due
            self.m.metrics.observe("kinwire_meter_lateness_seconds", now - due)

    async def _renew(self) -> bool:
        try:
            return await self.m.broker.renew(f"meter:{self.visit_id}", self.m.node_id,
                                             self.m.lease_s)
        except Exception:
            # No broker, no rival: nobody else can take the lease while it is away, and the
            # minute keys make a double debit impossible anyway.
            return True

    async def _observe(self) -> None:
        """Turn the visit row into events: hang-ups and staff ends, and presence changes."""
        async with self.m.store.read() as conn:
            row = await visits.get(conn, self.visit_id)
        if row.status == "ended":
            at = ts(row.ended_at or self.m.clock())
            if row.end_reason == "staff_ended":
                self.events.append(meter.StaffEnded(at))
            elif row.end_reason == "hung_up":
                self.events.append(meter.HungUp(at))
            else:
                self.done = True
            return
        live = row.status == "live"
        changed = ts(row.media_changed_at) if row.media_changed_at else ts(self.m.clock())
        if live and not self.state.connected:
            self.events.append(meter.Live(changed))
        elif not live and self.state.connected:
            self.events.append(meter.Paused(changed))
        self.events.append(meter.Clock(ts(self.m.clock())))

    async def _drain(self) -> None:
        while self.events and not self.done:
            event = self.events.popleft()
            self.state, actions = meter.step(self.config, self.state, event)
            for action in actions:
                await self._perform(action)

    async def _perform(self, action: meter.Action) -> None:
        if isinstance(action, meter.Persist):
            async with self.m.store.write() as conn:
                await conn.execute(visits_table.update().where(
                    visits_table.c.id == self.visit_id).values(meter=action.state.to_dict()))
        elif isinstance(action, meter.Debit):
            self.events.append(await self._debit(action))
        elif isinstance(action, meter.Warn):
            await self._both("visit.warning", {"visit_id": self.visit_id, "kind": action.kind})
        elif isinstance(action, meter.Tick):
            await self._both("visit.tick", {
                "visit_id": self.visit_id, "paid_minutes": action.paid_minutes,
                "seconds_left": round(action.seconds_left, 3), "balance": action.balance})
        elif isinstance(action, meter.End):
            await self._end(action.reason)
        elif isinstance(action, meter.WakeAt):
            self.wake_at = action.at

    async def _debit(self, action: meter.Debit) -> meter.Event:
        for attempt in range(DEBIT_ATTEMPTS_MAX):
            now = self.m.clock()
            sink = self.m.sink()
            try:
                async with self.m.store.write() as conn:
                    await ledger.transfer(conn, key=action.key, debit=self.family_id,
                                          credit=SystemAccount.VISIT_REVENUE,
                                          amount=action.amount, kind="visit_minute",
                                          ref=self.visit_id, at=now)
                    balance = await ledger.balance(conn, self.family_id)
                    await sink.emit(conn, self.family_id, "balance", {"balance": balance}, now)
            except LedgerError as exc:
                self.m.metrics.inc("kinwire_meter_debits_total", result="refused")  # metrics
                if exc.code == "insufficient_credits":
                    return meter.DebitRefused(ts(now), action.minute)
                log.error("visit %s minute %d refused: %s", self.visit_id, action.minute,
                          exc.code)
                return meter.Failed(ts(now))
            except Exception:
                # The outcome is unknown; the same key settles it on the next attempt.
                self.m.metrics.inc("kinwire_meter_debits_total", result="unknown")  # metrics
                log.warning("visit %s minute %d: debit outcome unknown (attempt %d)",
                            self.visit_id, action.minute, attempt + 1)
                await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
                continue
            self.m.metrics.inc("kinwire_meter_debits_total", result="ok")  # metrics
            await sink.signal(self.m.broker)
            return meter.DebitOk(ts(now), action.minute, balance)
        return meter.Failed(ts(self.m.clock()))

    async def _end(self, reason: str) -> None:
        self.done = True
        now = self.m.clock()
        sink = self.m.sink()
        async with self.m.store.write() as conn:
            row = await visits.end(conn, sink, self.visit_id, reason, now)
        await sink.signal(self.m.broker)
        if row is not None:  # ended here; an end recorded elsewhere was announced there
            await self._both("visit.ended", {"visit_id": self.visit_id, "reason": reason})

    async def _both(self, kind: str, data: dict[str, Any]) -> None:
        for party in (self.family_id, self.person_id):
            await self.m.push_live(party, kind, data)
