"""Two real server processes sharing one PostgreSQL and one (private) Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.support.nodes import Peer, RedisServer, cluster, make_pair, post
from tests.support.processes import wait_ready


@asynccontextmanager
async def two_nodes_and_a_pair(pg_db: str, tmp_path: Path) -> AsyncIterator[tuple]:
    """Nodes A and B on a private Redis; a family on A (JSON), a person on B (msgpack)."""
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with cluster(pg_db, redis.url, tmp_path) as (a, b), \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            family_token, person_token = await make_pair(http, a, b, pg_db)
            family = Peer(http, a, family_token, "kinwire.v1.json")
            person = Peer(http, b, person_token, "kinwire.v1.msgpack")
            await family.connect()
            await person.connect()
            yield redis, http, (a, b), family, person
            await family.close()
            await person.close()
    finally:
        redis.stop()


async def test_two_processes_exchange_messages_live(pg_db: str, tmp_path: Path) -> None:
    async with two_nodes_and_a_pair(pg_db, tmp_path) as (_, http, _nodes, family, person):
        for i in range(5):
            who, other = (family, person) if i % 2 == 0 else (person, family)
            status, r = await post(http, who.node, "/messages", who.token,
                                   {"to": other.account_id, "body": f"hello {i}"},
                                   **{"Idempotency-Key": f"m{i}"})
            assert status == 201, r
            deadline = asyncio.get_running_loop().time() + 5
            while f"hello {i}" not in other.bodies():
                assert asyncio.get_running_loop().time() < deadline, \
                    f"message {i} never reached the other process live"
                await asyncio.sleep(0.02)
        assert family.bodies() == ["hello 1", "hello 3"]
        assert person.bodies() == ["hello 0", "hello 2", "hello 4"]


async def test_redis_outage_loses_nothing(pg_db: str, tmp_path: Path) -> None:
    async with two_nodes_and_a_pair(pg_db, tmp_path) as (redis, http, (a, b), family, person):
        family_id, person_id = family.account_id, person.account_id
        redis.stop()
        outage_started = asyncio.get_running_loop().time()
        async with http.get(a.base + "/readyz") as r:
            assert r.status == 503, "readiness reports the broker outage"
        async with http.get(a.base + "/healthz") as r:
            assert r.status == 200, "the process itself is alive"
        sent = []
        for i in range(200):
            who, to = (family, person_id) if i % 2 == 0 else (person, family_id)
            status, r = await post(http, who.node, "/messages", who.token,
                                   {"to": to, "body": f"outage {i}"},
                                   **{"Idempotency-Key": f"o{i}"})
            assert status == 201, r
            sent.append(f"outage {i}")
        await asyncio.sleep(max(0.0, 10 - (asyncio.get_running_loop().time()
                                           - outage_started)))
        await redis.start()
        for node in (a, b):
            await wait_ready(node.base, node.proc)
        for peer in (family, person):
            assert not peer.ws.closed, f"socket closed during the outage: {peer.ws.close_code}"
        await family.sync()
        await person.sync()
        assert family.duplicates == 0 and person.duplicates == 0
        assert family.bodies() == [s for i, s in enumerate(sent) if i % 2 == 1]
        assert person.bodies() == [s for i, s in enumerate(sent) if i % 2 == 0]
