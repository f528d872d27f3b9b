"""Blocks that only their owner lifts (issue 17, finding 1).

Adversary: the blocked parties themselves, lying with their own requests. Staff block a
connection; the family (or the person's kiosk session) then calls /block, which used to
overwrite the single `blocked_by` slot with itself, and /unblock, which then cleared the
staff block. Also: requests sent all at once (a storm of party block/unblock racing the staff
block on PostgreSQL's row locks), and every block and unblock left on the audit log.
"""

from __future__ import annotations

import asyncio

from tests.integration.test_roles import build_world, ok
from tests.support.helpers import Api


async def _audit(api: Api, staff, connection: str) -> list[dict]:
    r = await api.call("GET", "/audit?limit=100", staff)
    return [e for e in ok(r, 200)["entries"] if e["target"] == connection]


async def _blocked(api: Api, who, connection: str) -> bool:
    r = await api.call("GET", "/connections", who)
    return next(c for c in ok(r, 200)["connections"] if c["id"] == connection)["blocked"]


async def test_a_party_cannot_lift_a_staff_block(api: Api) -> None:
    world = await build_world(api)
    link = world.ids["connection"]
    ok(await api.call("POST", f"/connections/{link}/block", world.staff), 200)
    for party in (world.family, world.person):
        r = await api.call("POST", f"/connections/{link}/unblock", party)
        assert r.status == 403 and r.code == "forbidden", r
        # The finding: the party's own /block overwrote the staff block, its /unblock lifted it.
        r = await api.call("POST", f"/connections/{link}/block", party)
        assert ok(r, 200)["connection"]["blocked"] is True
        r = await api.call("POST", f"/connections/{link}/unblock", party)
        shown = ok(r, 200)["connection"]
        assert shown["blocked"] is True and shown["blocked_sides"] == ["staff"], shown
        assert shown["blocked_by"] == world.staff.id
        r = await api.call("POST", f"/connections/{link}/unblock", party)
        assert r.status == 403 and r.code == "forbidden", r
    r = await api.call("POST", "/messages", world.family, key="after-block",
                       json={"to": world.person.id, "body": "still blocked?"})
    assert r.status == 403, r
    assert await _blocked(api, world.family, link)
    # Staff lift their own block: now the connection is open again.
    r = await api.call("POST", f"/connections/{link}/unblock", world.staff)
    assert ok(r, 200)["connection"]["blocked"] is False
    actions = [(e["action"], e["actor_role"], e["details"]["side"])
               for e in reversed(await _audit(api, world.staff, link))]
    assert actions == [
        ("connection.block", "staff", "staff"),
        ("connection.block", "family", "family"), ("connection.unblock", "family", "family"),
        ("connection.block", "person", "person"), ("connection.unblock", "person", "person"),
        ("connection.unblock", "staff", "staff")], actions


async def test_each_party_keeps_its_own_block(api: Api) -> None:
    world = await build_world(api)
    link = world.ids["connection"]
    ok(await api.call("POST", f"/connections/{link}/block", world.family), 200)
    ok(await api.call("POST", f"/connections/{link}/block", world.person), 200)
    r = await api.call("POST", f"/connections/{link}/unblock", world.family)
    assert ok(r, 200)["connection"]["blocked_sides"] == ["person"]
    # Staff cannot lift a party's block either: only its owner does.
    r = await api.call("POST", f"/connections/{link}/unblock", world.staff)
    assert r.status == 403 and r.code == "forbidden", r
    r = await api.call("POST", f"/connections/{link}/unblock", world.person)
    assert ok(r, 200)["connection"]["blocked"] is False


async def test_a_storm_of_party_requests_never_lifts_the_staff_block(api: Api) -> None:
    world = await build_world(api)
    link = world.ids["connection"]
    calls = [api.call("POST", f"/connections/{link}/block", world.staff)]
    for _ in range(6):
        for party in (world.family, world.person):
            for action in ("block", "unblock"):
                calls.append(api.call("POST", f"/connections/{link}/{action}", party))
    replies = await asyncio.gather(*calls)
    assert replies[0].status == 200, replies[0]
    assert all(r.status in (200, 403) for r in replies), [r for r in replies if r.status >= 500]
    for party in (world.family, world.person):  # whatever the parties left, lift it
        await api.call("POST", f"/connections/{link}/unblock", party)
    r = await api.call("GET", "/connections", world.staff)
    shown = next(c for c in ok(r, 200)["connections"] if c["id"] == link)
    assert shown["blocked"] is True and shown["blocked_sides"] == ["staff"], shown
