"""Relay capacity (signalling/placement.py): two real processes on PostgreSQL and a private
Redis, each with room for one relayed visit."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from signalling import placement
from tests.integration.test_visit_e2e import account_id, visit_now
from tests.support.nodes import Peer, RedisServer, cluster, make_pair


def test_placement_prefers_room_then_fewer_sockets() -> None:
    loads = placement.latest({
        "a|1|0|2|50", "a|2|1|2|50",  # a's older load, then its latest
        "b|7|0|2|3",
        "c|3|2|2|0",  # full
        "junk",  # not a load: ignored
    })
    assert loads["a"].relayed == 1
    assert [load.node for load in placement.candidates(loads)] == ["b", "a"]
    assert [load.node for load in placement.candidates(loads, avoid="b")] == ["a"]
    assert placement.node_of("a/1f2e/3") == "a" and placement.slot_of("a/1f2e/3") == 3


async def metric(http: aiohttp.ClientSession, node, name: str) -> float:
    async with http.get(node.base + "/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_three_visits_at_once_on_two_processes_of_capacity_one(
        pg_db: str, tmp_path: Path) -> None:
    """Adversary: requests all at once. Three families join their relay-mode visits at the
    same moment, on two processes that each advertise room for one: each process's load in
    the broker says "room" to every join, so only the slots can keep the count. Two visits
    are placed, one on each process; the third join is refused with `relay_full` (and the
    family is not left joined); /metrics on each process shows one relayed visit and one
    refusal in all. When one visit ends, its room is free for the refused one."""
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with cluster(pg_db, redis.url, tmp_path, KINWIRE_RELAY_CAPACITY="1",
                           KINWIRE_RELAY_LEASE_S="3") as (a, b), \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            families, visit_ids = [], []
            for i, node in enumerate((a, b, a)):
                family_token, _ = await make_pair(http, a, b, pg_db)
                visit_id, _ = await visit_now(pg_db, await account_id(http, a, family_token),
                                              media="relay")
                family = Peer(http, node, family_token,
                              "kinwire.v1.json" if i % 2 else "kinwire.v1.msgpack")
                await family.connect()
                families.append(family)
                visit_ids.append(visit_id)
            # both processes have advertised their (empty) load by now
            await asyncio.sleep(1.2)
            replies = await asyncio.gather(*(f.call("visit.join", visit_id=v)
                                             for f, v in zip(families, visit_ids, strict=True)))
            refused = [i for i, r in enumerate(replies) if "error" in r]
            assert len(refused) == 1, replies
            error = replies[refused[0]]["error"]
            assert error["code"] == "relay_full" and "join again" in error["message"], error
            placed = [i for i in range(3) if i not in refused]
            for i in placed:
                assert replies[i]["ok"]["media"] == "relay"
            counts = [await metric(http, node, "kinwire_relay_visits") for node in (a, b)]
            assert counts == [1.0, 1.0], "one relayed visit on each process"
            assert [await metric(http, n, "kinwire_relay_capacity") for n in (a, b)] == [1, 1]
            refusals = [await metric(http, node, "kinwire_relay_refused_total")
                        for node in (a, b)]
            assert sum(refusals) == 1.0, refusals
            # the refused family is not left in the call
            again = families[refused[0]]
            status = await again.call("visit.signal", visit_id=visit_ids[refused[0]],
                                      description={"type": "offer", "sdp": "v=0\r\n"})
            assert status["error"]["code"] == "not_joined", status

            # one visit ends (hang-up): its process has room again, and the refused one fits
            first = placed[0]
            left = await families[first].call("visit.leave", visit_id=visit_ids[first])
            assert left["ok"]["ended"]
            async with asyncio.timeout(10):
                while True:
                    reply = await again.call("visit.join", visit_id=visit_ids[refused[0]])
                    if "ok" in reply:
                        break
                    assert reply["error"]["code"] == "relay_full", reply
                    await asyncio.sleep(0.2)
            counts = [await metric(http, node, "kinwire_relay_visits") for node in (a, b)]
            assert counts == [1.0, 1.0], counts
            for family in families:
                await family.close()
    finally:
        redis.stop()
