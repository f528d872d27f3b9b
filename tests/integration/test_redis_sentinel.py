"""Kinwire on Redis watched by Sentinel (Debian's redis-sentinel: three sentinels, a master and
a replica, private, one deployment for the module), through REDIS_URL=redis+sentinel://...

Adversary: the master killed (SIGKILL) under load; the sentinels notice within
down-after-milliseconds (1 s here), elect a leader and promote the replica. Kinwire must find
the new master by itself (every new connection asks the sentinels) and carry on: publishes,
live delivery and meters resume within a bound measured here; no acknowledged message is lost
and no minute is billed twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from server.broker import BrokerUnavailable, Gap
from server.broker.redis import RedisBroker
from server.schema import utcnow
from tests.integration.test_crash import nodes_started as kinwire_processes
from tests.integration.test_faults import Sender, check_books, metered_pair, minute_debits, until
from tests.support.redis_engines import Sentinels, _wait

MINUTE_S = 0.5
LEASE_S = 2.0
# Detection (1 s) + election and promotion (1-2 s) + the clients' reconnect backoff (at most
# 2 s) + slack for a loaded 2-core machine. Measured figures are printed (docs/deploy.md).
RESUME_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    deployment = Sentinels(tmp_path_factory.mktemp("sentinel"), replicas=1)
    deployment.start()
    yield deployment
    deployment.stop()


def fail_over(deployment: Sentinels) -> tuple[float, int]:
    """SIGKILL the master; returns when it was killed (monotonic) and its port."""
    port = deployment.current_master_port()
    deployment.server_on(port).kill()
    return time.monotonic(), port


def wait_promoted(deployment: Sentinels, old_port: int) -> float:
    """Seconds until the sentinels name another master (from now)."""
    started = time.monotonic()
    _wait(lambda: deployment.current_master_port() != old_port, "the sentinels fail over",
          RESUME_WITHIN_S)
    return time.monotonic() - started


def rejoin(deployment: Sentinels, old_port: int) -> None:
    """The killed server comes back as a replica of the new master (the deployment is whole
    again for the next test)."""
    server = deployment.server_on(old_port)
    master = deployment.current_master_port()
    server.args = ["--replicaof", "127.0.0.1", str(master)]
    server.start()

    def replicating() -> bool:
        info = server.client().info("replication")
        if info.get("role") == "master":  # seen once under load (a full run at load ~10):
            # it came back a master; point it at the sentinels' master again
            server.client().execute_command("REPLICAOF", "127.0.0.1",
                                            str(deployment.current_master_port()))
            return False
        return info.get("master_link_status") == "up"

    _wait(replicating, "the old master replicates the new one")
    _wait(deployment.whole, "the sentinels count it as a healthy replica", 30)


async def test_broker_follows_the_failover(sentinels: Sentinels) -> None:
    broker = RedisBroker(sentinels.url, namespace="s1", op_timeout_s=0.5, backoff_s_max=1.0)
    try:
        subscription = await broker.subscribe("user.1")
        await broker.publish("user.1", {"n": 1})
        assert await asyncio.wait_for(anext(aiter(subscription)), 5) == {"n": 1}
        assert await broker.acquire("meter:v1", "one", 30) >= 1

        killed_at, old = fail_over(sentinels)
        published_at = None
        while published_at is None:
            try:
                await broker.publish("user.1", {"n": 2})
                published_at = time.monotonic()
            except BrokerUnavailable:
                assert time.monotonic() - killed_at < RESUME_WITHIN_S, "publishes never resumed"
                await asyncio.sleep(0.1)
        # The subscription learns it may have missed signals, then gets what follows. (The
        # payload published above may be lost: the subscription may not be back yet.)
        got = [await asyncio.wait_for(anext(aiter(subscription)), RESUME_WITHIN_S)]
        while got[-1] != {"n": 3}:
            await broker.publish("user.1", {"n": 3})
            got.append(await asyncio.wait_for(anext(aiter(subscription)), RESUME_WITHIN_S))
        assert Gap("reconnected") in got, got
        delivered_at = time.monotonic()
        # The lease may or may not have reached the replica before the kill: either it is
        # still held, or a new grant gets a later epoch on the new master.
        assert await broker.renew("meter:v1", "one", 30) or \
            await broker.acquire("meter:v1", "one", 30) >= 1
        print(f"sentinel failover: publishes resumed {published_at - killed_at:.1f} s and "
              f"delivery {delivered_at - killed_at:.1f} s after the master was killed")
    finally:
        await broker.close()
    rejoin(sentinels, old)


async def test_two_processes_carry_on_through_a_failover(sentinels: Sentinels, pg_db: str,
                                                         tmp_path: Path) -> None:
    async with kinwire_processes(pg_db, sentinels.url, tmp_path,
                                 KINWIRE_VISIT_MINUTE_S=str(MINUTE_S),
                                 KINWIRE_METER_LEASE_S=str(LEASE_S)) as nodes, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        a, b = nodes
        family, person, visit_id = await metered_pair(http, a, b, pg_db)
        senders = [Sender("family", http, family, person.account_id, nodes, via_ws=False),
                   Sender("person", http, person, family.account_id, nodes, via_ws=False,
                          node_index=1)]
        stop = asyncio.Event()
        sending = [asyncio.create_task(s.run(stop)) for s in senders]
        try:
            await until(lambda: all(len(s.acked) >= 3 for s in senders), 10,
                        "no traffic before the failover")
            await until_debits(pg_db, visit_id, 2)
            killed_at, old = fail_over(sentinels)
            await asyncio.to_thread(wait_promoted, sentinels, old)  # the loop carries on
            promoted_s, promoted_wall = time.monotonic() - killed_at, utcnow()
            # Live delivery resumed: a message sent now reaches the other process's socket.
            live_s, probe = None, 0
            while live_s is None:
                probe += 1
                if person.ws.closed:
                    # The broker's outage lapsed the processes' liveness leases: a socket whose
                    # visit party another process's meter dropped meanwhile is closed with 1012
                    # (server/app.py, rejoin_dropped), and a client reconnects, as this one does.
                    await person.connect()
                key, body = f"probe{probe}", f"probe {probe}"
                message_id = await senders[0].send_one(key, body)  # retried under its key
                senders[0].acked[key] = message_id
                if await arrives(person, body, 1.0):
                    live_s = time.monotonic() - killed_at
                assert time.monotonic() - killed_at < RESUME_WITHIN_S, \
                    f"live delivery never resumed (the person's socket closed: {person.ws.closed})"
            # Meters resumed: a minute debited after the sentinels promoted the replica. While
            # the broker was away each process's liveness lease lapsed, so the meter may have
            # dropped the other process's party; its socket is closed then, and the client
            # reconnects and rejoins (docs/visits.md, "Trust"), as the parties do here.
            billed_s, rejoined_at = None, 0.0
            while billed_s is None:
                debits = await minute_debits(pg_db, visit_id)
                if debits and debits[-1].at >= promoted_wall:
                    billed_s = time.monotonic() - killed_at
                elif time.monotonic() - rejoined_at > 1.0:
                    rejoined_at = time.monotonic()
                    await rejoin_visit([family, person], visit_id)
                assert time.monotonic() - killed_at < RESUME_WITHIN_S, "billing never resumed"
                await asyncio.sleep(0.1)
            before = sum(len(s.acked) for s in senders)
            await until(lambda: sum(len(s.acked) for s in senders) > before + 2, 10,
                        "no message acknowledged after the failover")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*sending), 15)
        finally:
            for task in sending:
                task.cancel()
        counts = await check_books(pg_db, senders, visit_id)  # none lost, none twice
        print(f"sentinel failover under load: promoted {promoted_s:.1f} s, live delivery "
              f"back {live_s:.1f} s, a minute billed again {billed_s:.1f} s after the kill; "
              f"{counts}; failed send attempts {[s.failures for s in senders]}")
        await family.close()
        await person.close()
    rejoin(sentinels, old)


async def until_debits(db: str, visit_id: str, n: int) -> None:
    deadline = time.monotonic() + 15
    while len(await minute_debits(db, visit_id)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} minutes billed"
        await asyncio.sleep(0.1)


async def arrives(peer, body: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while body not in peer.bodies():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def rejoin_visit(peers: list, visit_id: str) -> None:
    """What a visit client does when its socket closed or the visit paused: (re)connect, join,
    report its media."""
    for peer in peers:
        if peer.ws is None or peer.ws.closed:
            await peer.connect()
        await peer.call("visit.join", visit_id=visit_id)
        await peer.call("visit.media", visit_id=visit_id, state="connected")
