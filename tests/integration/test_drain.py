"""Graceful drain (server/http/drain.py): SIGTERM one of two real `kinwire serve` processes on
PostgreSQL and a private Redis while it runs a visit's meter, serves a request and holds
sockets. Its sockets get 1012, the request completes, /readyz says 503, it exits 0, and the
other process carries the meter on at once, with no minute missed or billed twice."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from tests.integration.test_visit_e2e import account_id, debits, visit_now
from tests.support.nodes import Peer, RedisServer, cluster, make_pair

MINUTE_S = 1.0
LEASE_S = 60.0  # a takeover by lease expiry or by the half-lease scan would take 30 s or more
DRAIN_TIMEOUT_S = 10.0
TRICKLE_S = 3.0  # the request in flight sends its body over this long


async def lease_holder(redis: aioredis.Redis, visit_id: str) -> str | None:
    value = await redis.get(f"kinwire:lease:meter:{visit_id}")
    return value.decode() if value else None


async def minutes_billed(db: str, visit_id: str) -> int:
    """Visit minutes in the ledger so far (the full check, with invariants, runs at the end,
    when nothing moves: a read-committed check may see a transfer half-way)."""
    conn = await asyncpg.connect(db)
    try:
        return await conn.fetchval("SELECT count(*) FROM ledger_transfers WHERE "
                                   "kind = 'visit_minute' AND ref = $1", visit_id)
    finally:
        await conn.close()


async def until(predicate, timeout: float, what: str, step: float = 0.01):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert loop.time() < deadline, what
        await asyncio.sleep(step)


async def trickled(body: bytes) -> AsyncIterator[bytes]:
    """The request body in ten pieces over TRICKLE_S: a request in flight for that long."""
    piece = len(body) // 10 + 1
    for i in range(0, len(body), piece):
        yield body[i:i + piece]
        await asyncio.sleep(TRICKLE_S / 10)


async def joined(http, node, token: str, visit_id: str, codec: str) -> Peer:
    peer = Peer(http, node, token, codec)
    await peer.connect()
    reply = await peer.call("visit.join", visit_id=visit_id)
    assert "ok" in reply, reply
    return peer


async def test_sigterm_drains_one_process_and_the_other_bills_on(pg_db: str,
                                                                 tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    await server.start()
    redis = aioredis.from_url(server.url)
    loop = asyncio.get_running_loop()
    try:
        async with cluster(pg_db, server.url, tmp_path, KINWIRE_VISIT_MINUTE_S=str(MINUTE_S),
                           KINWIRE_METER_LEASE_S=str(LEASE_S),
                           KINWIRE_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S)) as (a, b), \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as kept:
            family_token, person_token = await make_pair(http, a, b, pg_db)
            family_id = await account_id(http, a, family_token)
            person_id = await account_id(http, b, person_token)
            visit_id, _ = await visit_now(pg_db, family_id)
            # The family is on A, the person on B; the family's report makes A the meter.
            family = await joined(http, a, family_token, visit_id, "kinwire.v1.json")
            person = await joined(http, b, person_token, visit_id, "kinwire.v1.msgpack")
            bystander = Peer(http, a, person_token, "kinwire.v1.msgpack")  # a plain socket
            await bystander.connect()
            assert "ok" in await family.call("visit.media", visit_id=visit_id, state="connected")
            assert "ok" in await person.call("visit.media", visit_id=visit_id, state="connected")
            a_holder = await until(lambda: lease_holder(redis, visit_id), 5, "nobody metered")

            async def billed(n: int):
                return await minutes_billed(pg_db, visit_id) >= n

            await until(lambda: billed(3), 10, "minutes 1-3 were not billed", step=0.1)
            async with kept.get(a.base + "/healthz") as r:  # a connection kept open to A
                assert r.status == 200

            body = (b'{"to": "%s", "body": "sent while A drains"}' % person_id.encode())
            in_flight = asyncio.create_task(http.post(
                a.base + "/api/v1/messages", data=trickled(body),
                headers={"Authorization": f"Bearer {family_token}",
                         "Idempotency-Key": "in-flight", "Content-Type": "application/json"}))
            await asyncio.sleep(0.3)  # its headers are in: the request is being served
            a.proc.send_signal(signal.SIGTERM)
            sigterm_at = loop.time()

            # The meter moves to B, promptly: B's node id holds the lease, not A's.
            async def taken_over():
                holder = await lease_holder(redis, visit_id)
                return holder if holder not in (None, a_holder) else None

            await until(taken_over, 5, "B never took the meter over")
            takeover_s = loop.time() - sigterm_at
            # Sockets on A are told to reconnect elsewhere.
            for peer in (family, bystander):
                await asyncio.wait_for(peer.reader, 5)
                assert peer.ws.close_code == 1012, peer.ws.close_code
            # A answers 503 on a connection already open and accepts no new one.
            async with kept.get(a.base + "/readyz") as r:
                assert r.status == 503 and (await r.json())["checks"] == {"drain": "draining"}
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(a.base + "/healthz"):
                    raise AssertionError("A accepted a new connection while draining")
            except aiohttp.ClientConnectorError:
                pass
            assert not in_flight.done(), "the request is still being sent"
            async with await asyncio.wait_for(in_flight, 10) as r:
                assert r.status == 201, await r.text()
            await asyncio.wait_for(loop.run_in_executor(None, a.proc.wait), DRAIN_TIMEOUT_S)
            exited_s = loop.time() - sigterm_at
            assert a.proc.returncode == 0
            before = await minutes_billed(pg_db, visit_id)

            # The family's client reconnects, to B, and rejoins: billing resumes there.
            family = await joined(http, b, family_token, visit_id, "kinwire.v1.json")
            assert "ok" in await family.call("visit.media", visit_id=visit_id, state="connected")
            await until(lambda: billed(before + 2), 10, "B did not bill on", step=0.1)
            assert "ok" in await family.call("visit.leave", visit_id=visit_id)
            await family.close()
            await person.close()
        charged = await debits(pg_db, visit_id)
        keys = [t.key for t in charged]
        assert keys == [f"visit:{visit_id}:minute:{k}" for k in range(1, len(keys) + 1)], \
            "every minute once, none missed"
        assert len(keys) >= 5
        print(f"takeover {takeover_s:.3f} s after SIGTERM, exit after {exited_s:.2f} s")
        assert takeover_s < LEASE_S / 20, "the meter was handed over, not left to expire"
        assert TRICKLE_S - 0.5 < exited_s < DRAIN_TIMEOUT_S
    finally:
        await redis.aclose()
        server.stop()
