"""The async shell around billing/meter.py: one task per metered visit, on one process.

Who runs a meter: the process holding the visit's lease in the broker (`meter:<visit>`). A
process claims a visit when one of its sockets joins it or when its scanner (every half lease)
finds a visit in a call with a free lease: so when the holder dies, another process takes the
meter over within about one lease period, from the state stored on the visit row. A process
that stops on purpose (a drain, server/http/drain.py) releases its leases and announces each one on
the meters channel (`{"handover": visit}`): the others claim it at once, not a lease later.

Liveness: every process touches its node id in the broker's presence set `nodes` every third
of `node_lease_s` (Meters._keep_alive): its liveness lease. The visit row names the process
holding each party's socket; a party whose process's lease has run out is absent. A pass asks
the broker which processes are alive first, and drops a dead process's parties from the row
in its transaction (visits.drop, conditional on that process still holding them); the liveness
loop wakes any meter whose parties' process it no longer sees. A process always counts itself
alive; when the broker cannot answer, other processes' parties are not billed (nor dropped)
until it can.

Proof: a dead process is found only when its lease runs out, seconds after its death. So a
call held by another process (meter.Facts.remote) is billed only up to that process's last
renewal: `broker.renewed` says how long ago each process touched (by the broker's clock), and
`Meters.proof` keeps when that was on this process's clock (a little early: the time of asking,
less the age). Every pass feeds it to the meter as meter.Proven; a meter whose next minute
waits for a proof (meter.proof_wanted) is woken as soon as one covers it, looked for every
twelfth of `node_lease_s` while any meter waits.

A process whose own lease lapsed (no touch for a whole lease: a partition) may have had its
parties dropped by another's meter: when it touches again it calls `on_lapse` (server/app.py:
the sockets whose party was dropped reconnect and rejoin).

What it does, in one transaction per pass (VisitMeter): reads what is known of the call from
the visit row (any process may have recorded it, with its instant), feeds the pure meter those
facts (meter.Observed: the meter decides, by its trust model, whether the call is connected)
and the clock, and performs the actions: debit a minute through the ledger
(idempotent on its key), end the visit, store the meter's state; after the commit, push
warnings and ticks to both parties. It never cancels itself inside a database call: stopping
is a flag checked between passes. One task renews every running meter's lease.

Fencing: a lease alone cannot stop a holder that was paused (SIGSTOP, a long GC, a partition)
past its lease, nor two holders after a broker failover that lost the lease key. So a meter
writes only under its epoch: its first pass raises the visit row's `meter_epoch` to the larger
of the row's epoch + 1 and the broker's grant epoch, and every later pass reads the row only
`WHERE meter_epoch = <its epoch>` (locking it), so a holder superseded since finds no row,
rolls back and stops: no debit, no state, no push. The row, not the broker, is the authority
(a failover can lose the broker's epoch counter too); the broker's epoch keeps a new grant
ahead of everything that counter saw. Lease operations that fail (the broker away or erring)
are counted by the broker (kinwire_leases_total), logged here and retried: the scan claims
again, the renewal task renews again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger, meter
from billing.ledger import LedgerError, SystemAccount
from common.broker import Broker, Subscription
from common.metrics import Counters
from signalling import visits
from signalling.leases import Lease
from signalling.tables import visits as visits_table
from store import Record, Statement, Store

log = logging.getLogger("kinwire.meters")
DEBIT_ATTEMPTS_MAX = 5
# At most this many meters use the store at once (fewer than the default pool of 10, which
# must keep connections for requests). A burst of meters (a block's visits going live together,
# a process taking over thousands) queues here, in order, instead of on the connection pool,
# whose timeout stopped them all with errors (docs/BENCHMARKS.md, "Meters").
STORE_TURNS = 8
CHANNEL = "meters"
RENEW_CHUNK = 200  # lease renewals in flight at once
ENDED_KEPT, ENDED_KEEP_S = 10_000, 60.0  # remembered ends: far longer than a cached check
PROOF_KEPT_LEASES = 20  # a dead process's last renewal is kept this many leases (for its meters)

# A pass's own statements, compiled once (store/statement.py): every live visit runs them
# every minute. The row is locked first (FOR UPDATE), see MeterPass.run.
_t = visits_table
_WHOLE_ROW = Statement(select(_t).where(_t.c.id == bindparam("p_id")).with_for_update())
_PRESENCE = Statement(select(
    _t.c.status, _t.c.ended_at, _t.c.end_reason, _t.c.media_changed_at, _t.c.family_media,
    _t.c.person_media, _t.c.family_node, _t.c.person_node, _t.c.person_sending,
    _t.c.server_media, _t.c.server_node, _t.c.media_server, _t.c.first_stop_at).where(
        _t.c.id == bindparam("p_id"), _t.c.meter_epoch == bindparam("p_epoch"))
    .with_for_update())
NODES = "nodes"  # the broker presence key of the processes' liveness leases
_KEEP_STATE = Statement(_t.update().where(_t.c.id == bindparam("p_id"),
                                          _t.c.meter_epoch == bindparam("p_epoch"))
                        .values(meter=bindparam("p_meter")))
# The pass has applied the stops the row recorded (visits.first_stop_at).
_STOPS_READ = Statement(_t.update().where(_t.c.id == bindparam("p_id"),
                                          _t.c.meter_epoch == bindparam("p_epoch"))
                        .values(first_stop_at=None))
_TAKE_EPOCH = Statement(_t.update().where(_t.c.id == bindparam("p_id"))
                        .values(meter_epoch=bindparam("p_epoch")))
LEASE_ERROR_LOG_S = 60.0  # a broker that keeps failing is logged once a minute, with a count


class Fenced(Exception):
    """The visit row carries a later holder's epoch: this meter's lease was lost."""


def in_call_scan(now: datetime) -> Select:
    """The visits in a call (each process's scan, every half lease). The statuses are written
    into the SQL, not bound: only then can SQLite use the partial index ix_visits_in_call_end
    (its WHERE is those literals), and PostgreSQL in a generic plan too."""
    return select(_t.c.id).where(
        _t.c.status.in_(bindparam("in_call", visits.IN_CALL, expanding=True,
                                  literal_execute=True)),
        _t.c.end_at > now - timedelta(days=1))


class Sink(visits.EventSink, Protocol):
    async def signal(self, broker: Broker) -> None: ...


class _NoMetrics:
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def observe(self, name: str, seconds: float) -> None: ...


def ts(moment: datetime) -> float:
    return moment.timestamp()


class Meters:
    def __init__(self, store: Store, broker: Broker, clock: Callable[[], datetime], *,
                 minute_s: float, lease_s: float, node_id: str,
                 sink: Callable[[], Sink],
                 push_live: Callable[[str, str, dict[str, Any]], Awaitable[Any]],
                 metrics: Counters | None = None, node_lease_s: float = 3.0) -> None:
        # metrics: anything with inc(name, **labels) and observe(name, s); None counts nothing
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.store, self.broker, self.clock = store, broker, clock
        self.minute_s, self.lease_s, self.node_id = minute_s, lease_s, node_id
        self.sink, self.push_live = sink, push_live
        self.node_lease_s = node_lease_s
        self.on_lapse: Callable[[], Awaitable[Any]] | None = None
        # node -> when it last renewed its liveness lease, on this clock (see Proof above)
        self.proof: dict[str, float] = {}
        # meters whose minute fell due unproven: woken when a proof covers it
        self.awaiting: set[VisitMeter] = set()
        self._lease_errors = 0  # failed lease operations since the last log line
        self._lease_error_logged: float | None = None  # monotonic
        self._touched_at: float | None = None  # monotonic, the last touch that went through
        self.running: dict[str, VisitMeter] = {}
        self.turns = asyncio.Semaphore(STORE_TURNS)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._subscription: Subscription | None = None
        # Visits whose end this process heard of on the meters channel, with when (monotonic):
        # the gateway drops its cached "in a call" for them (server/gateway/ops.py).
        self.ended: dict[str, float] = {}
        self.on_end: Callable[[str], Awaitable[None]] | None = None

    def heard_end(self, visit_id: str) -> None:
        now = time.monotonic()
        if len(self.ended) >= ENDED_KEPT:  # older ends: every cache entry has expired since
            self.ended = {v: at for v, at in self.ended.items() if now - at < ENDED_KEEP_S}
        self.ended[visit_id] = now

    async def announce_end(self, visit_id: str) -> None:
        """Tell every process (this one too) that the visit ended. `on_end` (the Janus fleet's
        room destruction, server/app.py) runs here, on the process that ended it, beside."""
        self.heard_end(visit_id)
        if self.on_end is not None:
            self._spawn(self.on_end(visit_id), f"ended-{visit_id}")
        with contextlib.suppress(Exception):
            await self.broker.publish(CHANNEL, {"ended": visit_id})

    async def alive(self) -> tuple[set[str], bool]:
        """The processes whose liveness lease is current (this one always), and whether the
        broker answered: if not, the others are unknown and treated as not alive. Notes when
        each last renewed (`proof`)."""
        asked = ts(self.clock())
        try:
            ages = await self.broker.renewed(NODES)
        except Exception:
            return {self.node_id}, False
        forget = asked - PROOF_KEPT_LEASES * self.node_lease_s
        proof = {node: at for node, at in self.proof.items() if node in ages or at > forget}
        for node, age in ages.items():
            if age is not None and asked - age > proof.get(node, float("-inf")):
                proof[node] = asked - age
        self.proof = proof
        return set(ages) | {self.node_id}, True

    def proven(self, nodes: set[str]) -> float | None:
        """Until when all of `nodes` are known to have been alive (None: one never seen)."""
        if not nodes:
            return None
        known = [self.proof.get(node) for node in nodes]
        return None if None in known else min(known)

    def _wake_proven(self) -> None:
        for running in list(self.awaiting):
            proven = self.proven(running.remote)
            if proven is not None and proven >= running.proof_wanted - meter.EPSILON_S:
                running.wake()

    async def _watch_proofs(self) -> None:
        """While a meter's next minute waits for a proof, look for one often (see Proof)."""
        while not self._stop.is_set():
            await self._pause(self.node_lease_s / 12)
            if self.awaiting:
                await self.alive()
                self._wake_proven()

    async def _keep_alive(self) -> None:
        """This process's liveness lease; and wake the meters whose parties' process is gone."""
        while not self._stop.is_set():
            touched = False  # the broker away: the next try is a third of a lease away
            with contextlib.suppress(Exception):
                await self.broker.touch(NODES, self.node_id, self.node_lease_s)
                touched = True
            if touched:
                now = time.monotonic()
                lapsed = self._touched_at is not None \
                    and now - self._touched_at >= self.node_lease_s
                self._touched_at = now
                if lapsed and self.on_lapse is not None:
                    log.warning("this process's liveness lease lapsed; its parties may have "
                                "been dropped elsewhere")
                    self._spawn(self.on_lapse(), "node-lapsed")
            alive, known = await self.alive()
            for running in list(self.running.values()):
                if running.holders - alive and (known or running.state.connected):
                    running.wake()
            self._wake_proven()
            await self._pause(self.node_lease_s / 3)

    async def start(self) -> None:
        self._spawn(self._keep_alive(), "node-liveness")
        self._spawn(self._watch_proofs(), "node-proofs")
        self._spawn(self._scan(), "meter-scan")
        self._spawn(self._listen(), "meter-pokes")
        self._spawn(self._keep_leases(), "meter-leases")

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

    def lease_error(self, op: str, visit_id: str, error: Exception) -> None:
        """A lease operation failed (counted by the broker): log it, at most once a minute
        while the broker keeps failing; the caller retries on its next round."""
        self._lease_errors += 1
        now = time.monotonic()
        if self._lease_error_logged is None or now - self._lease_error_logged >= LEASE_ERROR_LOG_S:
            log.warning("meter lease %s failed for visit %s: %r (%d failure(s) since the last "
                        "report; retried)", op, visit_id, error, self._lease_errors)
            self._lease_error_logged, self._lease_errors = now, 0

    async def claim(self, visit_id: str) -> bool:
        if self._stop.is_set() or visit_id in self.running:
            return False
        lease = Lease(self.broker, f"meter:{visit_id}", self.node_id, self.lease_s)
        try:
            epoch = await lease.acquire()
        except Exception as error:  # whoever holds it carries on; the scan claims again
            self.lease_error("claim", visit_id, error)
            return False
        if not epoch:
            return False
        if visit_id in self.running:  # claimed twice concurrently by this very process
            return False
        running = VisitMeter(self, visit_id, int(epoch), lease)
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
                if isinstance(item.get("ended"), str):
                    self.heard_end(item["ended"])
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
                    rows = (await conn.execute(in_call_scan(now))).scalars().all()
                for visit_id in rows:
                    await self.claim(visit_id)
                # (Visits nobody joined are marked missed by server/housekeeping.py.)
            except Exception:
                log.exception("meter scan failed; retrying")
            await self._pause(self.lease_s / 2)

    async def _keep_leases(self) -> None:
        """Every third of a lease: renew every running meter's lease (queued ones too: a burst
        can queue longer than a lease), and look at the rows of the paused ones in one query.

        One task for all, instead of each meter waking for its own: 10,000 meters woke 5,000
        times a second for their leases alone, more than their debits cost (docs/BENCHMARKS.md,
        "Meters")."""
        while not self._stop.is_set():
            await self._pause(self.lease_s / 3)
            running = list(self.running.values())
            for start in range(0, len(running), RENEW_CHUNK):
                await asyncio.gather(*(vm.renew() for vm in running[start:start + RENEW_CHUNK]))
            try:
                await self._look_at_paused([vm for vm in running if vm.paused()])
            except Exception:
                log.exception("meter lease pass: could not read paused visits; retrying")

    async def _look_at_paused(self, paused: list[VisitMeter]) -> None:
        """Wake the paused meters whose visit went live or ended.

        Pokes bring presence changes; one may be lost (the broker away). While a visit is
        connected that costs nothing: its next minute's pass reads the row before it debits,
        and a pause or an end found there is applied at its own instant. While it is paused a
        lost poke would leave it running unbilled, hence this look."""
        t = visits_table
        for start in range(0, len(paused), 1000):
            chunk = {vm.visit_id: vm for vm in paused[start:start + 1000]}
            async with self.store.read() as conn:
                changed = (await conn.execute(select(t.c.id).where(
                    t.c.id.in_(list(chunk)), t.c.status != "paused", t.c.status != "open",
                    t.c.status != "scheduled"))).scalars().all()
            for visit_id in changed:
                chunk[visit_id].wake()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))


class VisitMeter:
    """One visit's meter on this process, while it holds the lease.

    Each pass is ONE write transaction (store.write_grouped): read the visit row, feed the pure
    meter what changed and the clock, and carry out its actions inside it: the minute's debit
    with its balance event, the end, and the meter's state, written once at the pass's end. A
    minute costs one transaction, not four (a read, a `Persist` of the pending minute, the
    debit, a `Persist` after it: docs/BENCHMARKS.md, "Meters"): the pending state needs no
    record of its own, since it commits or rolls back with the debit, and a retried or
    taken-over pass debits the same minute under the same key. The new state is adopted only
    after the commit; pushes go out after it. A pass runs on a poke (the row changed) or at
    the meter's own `WakeAt`; a lease renewal alone reads and writes nothing."""

    def __init__(self, meters: Meters, visit_id: str, grant: int, lease: Lease) -> None:
        self.m = meters
        self.visit_id = visit_id
        self.grant = grant  # the broker's epoch of this lease grant
        self.lease = lease
        self.epoch: int | None = None  # the fencing epoch taken on the row by the first pass
        self._wake = asyncio.Event()
        self.wake_at: float | None = None
        self._wake_seen: float | None = None  # metrics: the WakeAt already measured
        self.events: deque[meter.Event] = deque()  # carried into the next pass (TakenOver)
        self.config: meter.MeterConfig | None = None
        self.state = meter.MeterState()
        self.done = False
        self.refused: int | None = None  # the minute the ledger refused (insufficient credits)
        self.give_up = False  # the ledger kept failing: the next pass ends the visit `failed`
        self.lost = False  # the lease is gone (another process may hold it): stop, bill no more
        self.holders: set[str] = set()  # the processes holding its parties, as last read
        self.remote: set[str] = set()  # of those, the others whose liveness must be proven
        # who held the family, the person and the server's observation, as last read
        self.seats: tuple[str | None, str | None, str | None] = (None, None, None)
        self.proof_wanted: float | None = None  # meter.proof_wanted, as last adopted
        self.skipped_for: float | None = None  # the due point a timer was last skipped for

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
            self.m.awaiting.discard(self)
            released = await self.lease.release()
            if released and self.m._stop.is_set() and not self.done:
                # Stopped, not finished: whoever hears this carries on billing now.
                with contextlib.suppress(Exception):
                    await self.m.broker.publish(CHANNEL, {"handover": self.visit_id})

    async def _run(self) -> None:
        due = True  # a pass is due: the first, a poke, or the meter's WakeAt
        while not self.done and not self.m._stop.is_set() and not self.lost:
            if due:
                self._wake.clear()  # before looking: a poke during this pass wakes the next
                async with self.m.turns:  # see STORE_TURNS
                    # stopped while queued: hand over, do not bill; lease lost: another bills
                    if self.m._stop.is_set() or self.lost:
                        return
                    if not await self._pass():
                        return
                if self.done:
                    return
            now = ts(self.m.clock())
            timeout = None if self.wake_at is None else max(0.0, self.wake_at - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._observe_lateness()
            due = self._wake.is_set() or (
                self.wake_at is not None and ts(self.m.clock()) >= self.wake_at)
            if due and not self._wake.is_set() and self._unproven_due():
                # The minute falls due, but its start is not proven yet: a pass now would
                # only find that out. The proof's arrival wakes it (Meters._wake_proven); a
                # lease later at the latest, it looks anyway (once per due point: skipped
                # again and again, a proof that never came kept the visit past its window).
                self.wake_at = ts(self.m.clock()) + self.m.node_lease_s
                self.skipped_for = self.proof_wanted
                self.m.awaiting.add(self)
                due = False

    def _unproven_due(self) -> bool:
        """The timer is for the next minute, its due point is not proven yet, and no timer
        was skipped for that due point before."""
        wanted = self.proof_wanted
        if wanted is None or wanted == self.skipped_for or self.wake_at is None \
                or self.wake_at < wanted - meter.EPSILON_S:
            return False
        proven = self.m.proven(self.remote)
        return proven is None or proven < wanted - meter.EPSILON_S

    def paused(self) -> bool:
        """Started, running, and not connected as far as the meter knows."""
        return self.config is not None and not self.done and not self.lost \
            and not self.state.connected

    def _observe_lateness(self) -> None:
        """metrics: once per WakeAt, how long after its instant the meter got to it."""
        due = self.wake_at
        if due is None or due == self._wake_seen:
            return
        now = ts(self.m.clock())
        if now >= due:
            self._wake_seen = due
            self.m.metrics.observe("kinwire_meter_lateness_seconds", now - due)

    async def renew(self) -> None:
        """Keep the lease (Meters._keep_leases); lost: this meter stops at once."""
        # A failed renewal keeps it (signalling/leases.py); if a failover gave it to another,
        # the row's epoch fences this meter's writes.
        kept = await self.lease.keep(lambda error: self.m.lease_error("renew", self.visit_id,
                                                                      error))
        if not kept and not self.lost:
            self.lost = True
            self.state, _ = meter.step(self.config, self.state, meter.LeaseLost(
                ts(self.m.clock()))) if self.config is not None else (self.state, [])
            self.wake()

    async def _pass(self) -> bool:
        """One pass in one transaction, retried (same minute, same key) while its outcome is
        unknown; False if the visit is not in a call."""
        for attempt in range(DEBIT_ATTEMPTS_MAX + 1):
            work = _Pass(self, self.m.sink(), await self.m.alive())
            try:
                in_call = await self.m.store.write_grouped(work.run)
            except Fenced:  # rolled back: nothing written, nothing pushed
                self.m.metrics.inc("kinwire_meter_fenced_total")  # metrics
                log.warning("visit %s: another process took its meter over (epoch %s is "
                            "stale); this one stops", self.visit_id, self.epoch)
                self.lost = True
                return False
            except LedgerError as exc:  # rolled back, the claim of the key with it
                self.m.metrics.inc("kinwire_meter_debits_total", result="refused")  # metrics
                if exc.code == "insufficient_credits" and work.debiting is not None:
                    self.refused = work.debiting
                else:
                    log.error("visit %s minute %s refused: %s", self.visit_id, work.debiting,
                              exc.code)
                    self.give_up = True
                continue
            except Exception:
                if work.debiting is None:
                    raise  # not a debit's doubt (or the end itself failed): the meter stops;
                    # the scan claims the visit again
                # The outcome is unknown; the same key settles it on the next attempt.
                self.m.metrics.inc("kinwire_meter_debits_total", result="unknown")  # metrics
                log.warning("visit %s minute %d: debit outcome unknown (attempt %d)",
                            self.visit_id, work.debiting, attempt + 1)
                await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
                if attempt >= DEBIT_ATTEMPTS_MAX - 1:
                    self.give_up = True  # after as many attempts as before: end it `failed`
                continue
            await work.adopt()
            return in_call
        raise RuntimeError("meter pass kept failing")


class _Pass:
    """One pass's work inside its transaction; its results stay here until the commit."""

    def __init__(self, vm: VisitMeter, sink: Sink, alive: tuple[set[str], bool]) -> None:
        self.vm, self.sink = vm, sink
        self.alive, self.alive_known = alive
        self.holders: set[str] = set()
        self.remote: set[str] = set()
        self.seats = vm.seats
        self.config, self.state = vm.config, vm.state
        self.epoch = vm.epoch
        self.wake_at, self.done = vm.wake_at, vm.done
        self.pushes: list[tuple[str, dict[str, Any]]] = []
        self.debiting: int | None = None  # the minute this pass tried to debit
        self.debited = 0
        self.parties: tuple[str, str] | None = None
        self.stops_read = False  # the row's first_stop_at applied: cleared with the state

    async def run(self, conn: AsyncConnection) -> bool:
        vm = self.vm
        events = deque(vm.events)
        # The visit row is locked first (FOR UPDATE; SQLite's writer is alone anyway), then the
        # event heads: the order a media report's or an end's transaction takes them in, so
        # the two cannot deadlock.
        self.debiting, self.debited, self.pushes = None, 0, []
        if self.config is None:  # the meter's start: the visit, and its stored meter state
            row = await _WHOLE_ROW.first(conn, {"p_id": vm.visit_id})
            if row is None or row.status not in visits.IN_CALL:
                return False
            # Fencing (module doc): this holder's epoch supersedes every earlier holder's.
            self.epoch = max(row.meter_epoch + 1, vm.grant)
            await _TAKE_EPOCH.run(conn, {"p_id": vm.visit_id, "p_epoch": self.epoch})
            self.parties = (row.family_id, row.person_id)
            self.config = meter.MeterConfig(vm.visit_id, row.minute_price, vm.m.minute_s,
                                            ts(row.start_at), ts(row.end_at), media=row.media)
            if row.meter:
                self.state = meter.MeterState.from_dict(row.meter)
                events.append(meter.TakenOver(ts(vm.m.clock())))
            else:
                self.state = meter.MeterState()
        else:
            row = await _PRESENCE.first(conn, {"p_id": vm.visit_id, "p_epoch": self.epoch})
            if row is None:
                raise Fenced(vm.visit_id)
        events += await self._observed(conn, row)
        start = self.state
        family = self.parties[0] if self.parties else vm.family_id
        while events and not self.done:
            event = events.popleft()
            self.state, actions = meter.step(self.config, self.state, event)
            for action in actions:
                if isinstance(action, meter.Debit):
                    events.append(await self._debit(conn, action, family))
                elif isinstance(action, meter.Warn):
                    self.pushes.append(("visit.warning", {"visit_id": vm.visit_id,
                                                          "kind": action.kind}))
                elif isinstance(action, meter.Tick):
                    # paid_s_left and minute_s: the family's screen counts "time left at
                    # your balance" from them (the paid time not yet used, then a minute
                    # for each `price` of the balance), live between ticks.
                    paid_s = self.state.paid_minutes * self.config.minute_s
                    self.pushes.append(("visit.tick", {
                        "visit_id": vm.visit_id, "paid_minutes": action.paid_minutes,
                        "seconds_left": round(action.seconds_left, 3),
                        "balance": action.balance,
                        "paid_s_left": round(max(0.0, paid_s - self.state.connected_s), 3),
                        "minute_s": self.config.minute_s}))
                elif isinstance(action, meter.End):
                    self.done = True
                    now = vm.m.clock()
                    if await visits.end(conn, self.sink, vm.visit_id, action.reason,
                                        now) is not None:
                        # ended here; an end recorded elsewhere was announced there
                        self.pushes.append(("visit.ended", {"visit_id": vm.visit_id,
                                                            "reason": action.reason}))
                elif isinstance(action, meter.WakeAt):
                    self.wake_at = action.at
                # Persist: the state is written once, below, with everything else
        if self.state != start or vm.config is None:
            await _KEEP_STATE.run(conn, {"p_id": vm.visit_id, "p_epoch": self.epoch,
                                         "p_meter": self.state.to_dict()})
        if self.stops_read:
            await _STOPS_READ.run(conn, {"p_id": vm.visit_id, "p_epoch": self.epoch})
        return True

    async def _observed(self, conn: AsyncConnection, row: Record) -> list[meter.Event]:
        """The visit row as events: hang-ups and staff ends, what is known of the call (a dead
        process's parties absent, and dropped from the row), the clock."""
        clock = ts(self.vm.m.clock())
        if row.status == "ended":
            at = ts(row.ended_at) if row.ended_at else clock
            if row.end_reason == "staff_ended":
                return [meter.StaffEnded(at)]
            if row.end_reason == "hung_up":
                return [meter.HungUp(at)]
            self.done = True  # ended by the meter itself, elsewhere: nothing left to do
            return []
        m = self.vm.m
        self.holders = {n for n in (row.family_node, row.person_node, row.server_node) if n}
        held = {n for n in (row.family_node, row.person_node) if n}
        if row.server_media and row.server_node:
            held.add(row.server_node)
        self.remote = held - {m.node_id}
        facts = visits.facts(row, self.alive)
        changed = ts(row.media_changed_at) if row.media_changed_at else clock
        if facts != visits.facts(row):  # a holder is gone (or unknown): from now on
            changed = clock
            if self.alive_known:
                await self._drop_dead(conn, row)
                self.stops_read = True  # the drop's stop, applied now
        facts = replace(facts, remote=bool(self.remote))
        last = self.state.presence_at
        if last is not None and changed < last:
            changed = clock  # news of an older change (say, the broker is back): from now on
        # The call moved since this meter's last pass (meter.py, Presence), maybe coming back
        # to the same facts: a party (or the server's observation) is held by another process
        # (it left its old one, which may have died, or lives on proving nothing about it), or
        # the call stopped since (`first_stop_at`; it may be live again: a party dropped and
        # rejoined, even on the same process, whose renewals never stopped).
        self.seats = (row.family_node, row.person_node,
                      row.server_node if row.server_media else None)
        stop = ts(row.first_stop_at) if row.first_stop_at is not None else None
        self.stops_read = self.stops_read or stop is not None
        if stop is not None and last is not None and stop <= last:
            stop = None  # a stop the meter has applied already
        # the processes that lost a seat since the last pass (a seat empty then, now taken,
        # is a join: its instant is the row's, as the join pokes the meter)
        left = {old for now, old in zip(self.seats, self.vm.seats, strict=True)
                if now is not None and old is not None and old != now}
        moved = self.vm.config is not None and self.state.connected \
            and (bool(left) or stop is not None)
        events: list[meter.Event] = []
        if facts != self.state.facts or moved:
            # What the holders as last read proved, up to the change (or the first stop since);
            # then the change. Not if a party left a live process: its renewals say nothing of
            # the party after the last pass (a dead one's stopped at its death).
            trusted = not left & self.alive
            if left:
                # A party came to another process since the last pass: the row keeps no
                # instant for that (it may have come after the last status change), so from
                # now. (The call stopped and came back on the same processes: from when it came
                # back, `changed`.)
                changed = clock
            bound = changed if stop is None else min(stop, changed)
            before = m.proven(self.vm.remote)
            if self.state.connected and self.state.facts.remote:
                if trusted and before is not None:
                    events.append(meter.Proven(min(before, bound)))
            elif self.state.connected and moved and trusted:
                events.append(meter.Clock(bound))  # held here: connected until it stopped
            # Not live: the call stopped at `changed` (a stall's report backdates it to the last
            # frame, bounded: visits.set_media), so the meter takes back the time since.
            stopped = changed if not meter.is_connected(self.config.media, facts) else None
            events.append(meter.Observed(changed, facts, stopped_at=stopped, moved=moved))
        after = m.proven(self.remote)
        if after is not None:
            events.append(meter.Proven(after))
        return [*events, meter.Clock(clock)]

    async def _drop_dead(self, conn: AsyncConnection, row: Record) -> None:
        """The parties whose process died are absent on the row too (visit.updated)."""
        vm, now = self.vm, self.vm.m.clock()
        family, person = self.parties if self.parties else (vm.family_id, vm.person_id)
        for account, node in ((family, row.family_node), (person, row.person_node)):
            if node is not None and node not in self.alive:
                await visits.drop(conn, self.sink, vm.visit_id, account, now, node=node)
        if row.server_node is not None and row.server_node not in self.alive \
                and row.server_media:
            await visits.observe(conn, self.sink, vm.visit_id, False, now, row.server_node)
            if row.media_server is not None:
                # A Janus server died with the call (signalling/janus_fleet.py): the parties'
                # media went with it; a join now places the room on a live server.
                self.pushes.append(("visit.media_lost", {"visit_id": vm.visit_id}))

    async def _debit(self, conn: AsyncConnection, action: meter.Debit, family: str) -> meter.Event:
        vm = self.vm
        now = vm.m.clock()
        if vm.refused == action.minute:
            return meter.DebitRefused(ts(now), action.minute)
        if vm.give_up:
            return meter.Failed(ts(now))
        self.debiting = action.minute
        done = await ledger.transfer(conn, key=action.key, debit=family,
                                     credit=SystemAccount.VISIT_REVENUE, amount=action.amount,
                                     kind="visit_minute", ref=vm.visit_id, at=now)
        balance = done.debit_balance  # read by the debit itself; None for a repeated key
        if balance is None:
            balance = await ledger.balance(conn, family)
        await self.sink.emit(conn, family, "balance", {"balance": balance}, now)
        self.debited += 1
        return meter.DebitOk(ts(now), action.minute, balance)

    async def adopt(self) -> None:
        """Committed: the meter takes this pass's state, then the pushes go out."""
        vm = self.vm
        if self.parties is not None:
            vm.family_id, vm.person_id = self.parties
        vm.config, vm.state, vm.epoch = self.config, self.state, self.epoch
        vm.wake_at, vm.done, vm.holders = self.wake_at, self.done, self.holders
        vm.remote, vm.seats = self.remote, self.seats
        vm.proof_wanted = None if self.done else meter.proof_wanted(self.config, self.state)
        # Due already and not proven (the pass found out): wait for the proof. Due later: the
        # meter's own timer comes first (VisitMeter._run).
        if vm.proof_wanted is not None and vm.proof_wanted <= ts(vm.m.clock()):
            vm.m.awaiting.add(vm)
        else:
            vm.m.awaiting.discard(vm)
        vm.events.clear()
        if self.debited:
            vm.m.metrics.inc("kinwire_meter_debits_total", self.debited, result="ok")  # metrics
        await self.sink.signal(vm.m.broker)
        if any(kind == "visit.ended" for kind, _ in self.pushes):
            await vm.m.announce_end(vm.visit_id)
        for kind, data in self.pushes:
            for party in (vm.family_id, vm.person_id):
                await vm.m.push_live(party, kind, data)
