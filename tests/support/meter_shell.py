"""One real meter process (M, signalling/meters.py) on the real store, driven by hand: its clock
and the broker's are injected, and the test runs each meter pass, each liveness renewal of the
other processes and M's liveness look (Meters._keep_alive) at the instant it chooses, so an
interleaving is certain. The visit is live from the start (bench/load_visits.make_visits)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bench.load_visits import Pair, make_visits
from billing import ledger
from billing.tables import ledger_transfers
from server.broker.memory import MemoryBroker
from server.events import Outbox
from server.schema import utcnow
from signalling import visits
from signalling.leases import Lease
from signalling.meters import NODES, Meters, VisitMeter
from signalling.tables import visits as visits_table
from store import Store

NODE_LEASE_S = 3.0  # the processes' liveness lease; each renews it every second here


class Clock:
    """Seconds since the test began, as the meter's datetimes and the broker's floats."""

    def __init__(self) -> None:
        self.base, self.t = utcnow(), 0.0

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.t)


@dataclass
class Shell:
    store: Store
    broker: MemoryBroker
    meters: Meters
    vm: VisitMeter
    pair: Pair
    clock: Clock

    @property
    def t(self) -> float:
        return self.clock.t

    async def at(self, t: float, *alive: str, look: bool = True) -> None:
        """Move the clock to `t`; the processes `alive` renew their liveness lease then; M's
        liveness loop looks (it notes each one's last renewal), unless `look` is False."""
        self.clock.t = t
        for node in alive:
            await self.broker.touch(NODES, node, NODE_LEASE_S)
        if look:
            await self.meters.alive()

    async def meter_pass(self) -> bool:
        return await self.vm._pass()

    async def row(self) -> Any:
        async with self.store.read() as conn:
            return await visits.get(conn, self.pair.visit_id)

    async def connected_s(self) -> float:
        return (await self.row()).meter["connected_s"]

    async def minutes_debited(self) -> int:
        async with self.store.read() as conn:
            rows = await conn.execute(ledger_transfers.select().where(
                ledger_transfers.c.kind == "visit_minute",
                ledger_transfers.c.ref == self.pair.visit_id))
            return len(rows.all())

    async def invariants(self) -> list[str]:
        async with self.store.read() as conn:
            return await ledger.check_invariants(conn)

    async def write(self, change: Callable[..., Awaitable[Any]]) -> None:
        """`change(conn, sink, visit_id, now)` in one transaction (visits.join and the like)."""
        async with self.store.write() as conn:
            await change(conn, Outbox(), self.pair.visit_id, self.clock.now())


@asynccontextmanager
async def metered_visit(db_url: str, *, minute_s: float = 60.0,
                        **seats: Any) -> AsyncIterator[Shell]:
    """A live visit whose row holds `seats` (family_node=..., media=..., ...), and M ready to
    meter it (its lease taken)."""
    clock = Clock()
    broker = MemoryBroker(clock=lambda: clock.t)
    store = Store(db_url)

    async def nobody(_who: str, _kind: str, _data: dict) -> None:
        return None

    meters = Meters(store, broker, clock.now, minute_s=minute_s, lease_s=600.0, node_id="M",
                    sink=Outbox, push_live=nobody, node_lease_s=NODE_LEASE_S)
    try:
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        [pair] = await make_visits(db_url, 1, credits=500, status="live", started_s=30)
        async with store.write() as conn:
            await conn.execute(visits_table.update()
                               .where(visits_table.c.id == pair.visit_id)
                               .values(media_changed_at=clock.now(), **seats))
        lease = Lease(broker, f"meter:{pair.visit_id}", "M", 600.0)
        vm = VisitMeter(meters, pair.visit_id, await lease.acquire(), lease)
        yield Shell(store, broker, meters, vm, pair, clock)
    finally:
        await meters.stop()
        await broker.close()
        await store.close()
