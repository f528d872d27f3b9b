"""A party back on another process, with the same facts as before, is billed again only from
its return (signalling/meters.py, `moved`; billing/meter.py, "Presence").

The adversary: process A, holding the family's socket, dies; the family's client reconnects on
process B before any meter pass has seen A gone. The visit row then reads as before (both
connected, held by processes other than the meter's) but names B for the family. B has been
renewing its liveness lease all along, on its own time: its renewals prove B alive, not that
the family was on it. Before, the meter's next pass took B's latest renewal as proof for the
whole stretch since A's last one and billed the gap between A's death and the family's return
(found by the billing simulator, seed 3220298586, visit 486).

One real meter process (M) on the real store, with its clock and the broker's injected: every
pass is run by hand at a chosen instant, so the interleaving is certain."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench.load_visits import make_visits
from billing import ledger
from server.broker.memory import MemoryBroker
from server.events import Outbox
from server.schema import utcnow
from signalling import visits
from signalling.leases import Lease
from signalling.meters import NODES, Meters, VisitMeter
from signalling.tables import visits as visits_table
from store import Store

NODE_LEASE_S = 3.0


class Clock:
    """Seconds since the test began, for the meter (as datetimes) and the broker (as floats);
    only offsets from the real start time are used."""

    def __init__(self) -> None:
        self.base, self.t = utcnow(), 0.0

    def now(self):
        return self.base + timedelta(seconds=self.t)


@pytest.mark.parametrize(("seat", "old_holder"), [("family", "died"), ("family", "lives"),
                                                  ("relay", "died")])
async def test_the_gap_between_leaving_a_process_and_the_return_elsewhere_is_not_billed(
        db_url: str, seat: str, old_holder: str) -> None:
    """`family`, `died`: A dies at 10.5 holding the family (its last renewal at 10); the family
    is back on B at 12. A's renewals still prove the family up to 10 (it left A only by A's
    death), and B's count from the pass that found the family there (13). `lives`: A lives on
    (the family's socket there lost, its new one on B taking the seat before A noticed): A's
    renewals say nothing of the family after the last pass (8). `relay`: in relay mode A is the
    process relaying the call (the server's observation); the relay is placed again on B."""
    clock = Clock()
    broker = MemoryBroker(clock=lambda: clock.t)
    store = Store(db_url)

    async def nobody(_who: str, _kind: str, _data: dict) -> None:
        return None

    meters = Meters(store, broker, clock.now, minute_s=60.0, lease_s=600.0, node_id="M",
                    sink=Outbox, push_live=nobody, node_lease_s=NODE_LEASE_S)
    try:
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        [pair] = await make_visits(db_url, 1, credits=500, status="live", started_s=30)
        visit_id = pair.visit_id
        # The family's socket on A, the kiosk's on P; or in relay mode both on P, A relaying.
        seats = (dict(family_node="A", person_node="P") if seat == "family" else
                 dict(family_node="P", person_node="P", media="relay", server_media=True,
                      server_node="A"))
        async with store.write() as conn:
            await conn.execute(visits_table.update().where(visits_table.c.id == visit_id)
                               .values(media_changed_at=clock.now(), **seats))
        lease = Lease(broker, f"meter:{visit_id}", "M", 600.0)
        vm = VisitMeter(meters, visit_id, await lease.acquire(), lease)

        async def at(t: float, *alive: str) -> None:
            """Move the clock to `t`; the processes `alive` renew their liveness lease then, and
            M's liveness loop looks (Meters._keep_alive: it notes each one's last renewal)."""
            clock.t = t
            for node in alive:
                await broker.touch(NODES, node, NODE_LEASE_S)
            await meters.alive()

        async def connected_s() -> float:
            async with store.read() as conn:
                return (await visits.get(conn, visit_id)).meter["connected_s"]

        a = ("A",) if old_holder == "lives" else ()
        for second in range(11):  # A and P renew every second; B, up already, too
            await at(float(second), "A", "P", "B")
            if second in (0, 8):
                assert await vm._pass()
        assert await connected_s() == pytest.approx(8.0)  # up to A's renewal then
        # The family is back on B at 12, before A's lease (touched at 10, 3 s) ran out, and
        # says so: the row names B, the facts read as before.
        await at(11.0, "P", "B", *a)
        await at(12.0, "P", "B", *a)
        family = pair.family.account_id
        async with store.write() as conn:
            if seat == "family":
                await visits.join(conn, Outbox(), visit_id, family, clock.now(), node="B")
                await visits.set_media(conn, Outbox(), visit_id, family, True, clock.now(),
                                       node="B")
            else:  # the new relay sees the media from both
                await visits.observe(conn, Outbox(), visit_id, True, clock.now(), node="B")
        async with store.read() as conn:
            row = await visits.get(conn, visit_id)
        moved = (row.family_node, row.family_media) if seat == "family" else (
            row.server_node, row.server_media)
        assert (row.status, *moved) == ("live", "B", "connected" if seat == "family" else True)
        await at(13.0, "P", "B", *a)
        assert await vm._pass()
        for second in (14.0, 15.0, 16.0):
            await at(second, "P", "B", *a)
        assert await vm._pass()
        # Before, B's renewals carried the time on from the last proof: 16 s either way.
        proven_on_a = 10.0 if old_holder == "died" else 8.0
        assert await connected_s() == pytest.approx(proven_on_a + (16.0 - 13.0))
    finally:
        await meters.stop()
        await broker.close()
        await store.close()
