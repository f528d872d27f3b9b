"""The one lease helper (signalling/leases.py) that meters and relays hold their broker leases
with (issue 20, item 4).

Adversaries: a rival process that holds or takes the lease (the holder must learn it lost it),
a broker that goes away mid-lease (the holder keeps its lease, and says so once), and a copy
of the lease rules written again beside the helper.
"""

from __future__ import annotations

import re
from pathlib import Path

from server.broker import BrokerUnavailable
from server.broker.memory import MemoryBroker
from signalling.leases import Lease
from signalling.placement import leases

ROOT = Path(__file__).resolve().parents[2]


class Away(MemoryBroker):
    """A broker whose lease operations fail while `away`."""

    away = False

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        if self.away:
            raise BrokerUnavailable("away")
        return await super().renew(name, holder, ttl_s)

    async def release(self, name: str, holder: str) -> bool:
        if self.away:
            raise BrokerUnavailable("away")
        return await super().release(name, holder)


async def test_a_lease_is_kept_through_an_outage_and_lost_to_a_rival() -> None:
    now = [0.0]
    broker = Away(clock=lambda: now[0])
    mine = Lease(broker, "meter:v1", "node-a", 3.0)
    rival = Lease(broker, "meter:v1", "node-b", 3.0)
    first = await mine.acquire()
    assert first >= 1 and await rival.acquire() == 0
    errors: list[Exception] = []
    assert await mine.keep(errors.append) is True and errors == []
    broker.away = True
    assert await mine.keep(errors.append) is True, "no broker, no rival: kept"
    assert [type(e) for e in errors] == [BrokerUnavailable]
    assert await mine.release() is False, "a release that fails lapses instead"
    broker.away = False
    now[0] = 10.0  # past the ttl: the rival takes it, with a later epoch (the fence)
    assert await rival.acquire() > first
    assert await mine.keep(errors.append) is False, "lost to the rival"
    assert await mine.release() is False and await rival.release() is True


async def test_a_relayed_visit_holds_its_lease_and_its_slot() -> None:
    broker = MemoryBroker()
    visit, slot = leases(broker, "node-a", "v1", "node-a/ab12/0", 0, 3.0)
    assert (visit.name, visit.holder) == ("relay:v1", "node-a/ab12/0")
    assert (slot.name, slot.holder) == ("relay-slot:node-a:0", "v1")
    assert await slot.acquire() and await visit.acquire()
    assert await broker.holder("relay-slot:node-a:0") == "v1"
    assert await visit.release() and await slot.release()
    assert await broker.holder("relay:v1") is None


# Lease rules written outside the helper: a broker lease call of its own, or a release whose
# errors are swallowed on the spot (the helper's release already is best effort).
COPY = re.compile(r"broker\.(renew|acquire)\(|suppress\(Exception\):\s*\n\s*(await\s+)?"
                  r"[\w.]*broker\.release\(")


def lease_copies(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted((root / "signalling").rglob("*.py"))
            if p.name != "leases.py" and COPY.search(p.read_text())]


def test_meters_and_relays_hold_leases_only_through_the_helper(tmp_path: Path) -> None:
    assert lease_copies(ROOT) == []
    (tmp_path / "signalling").mkdir()
    (tmp_path / "signalling" / "old.py").write_text(
        "        with contextlib.suppress(Exception):\n"
        "            await self.r.broker.release(name, holder)\n")
    assert lease_copies(tmp_path) == ["signalling/old.py"], "the scan finds the old form"
