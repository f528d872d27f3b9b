"""Kinwire on a real 3-master Redis Cluster (private redis-servers in cluster mode, one for the
whole module), through REDIS_URL=redis+cluster://...

Adversaries: the cluster itself, which answers MOVED for a key or channel on another master
(a plain client's leases there failed and were swallowed: 4 of 6 live visits billed 0 minutes)
and broadcasts every plain PUBLISH to every node over its bus; six visits going live at once,
their lease keys and channels spread over all three masters."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from server.broker import BrokerUnavailable
from server.broker.redis import RedisBroker
from tests.integration.test_crash import nodes_started as kinwire_processes
from tests.integration.test_faults import metered_pair, minute_debits
from tests.support.nodes import post
from tests.support.redis_engines import Cluster

MINUTE_S = 0.5
LEASE_S = 2.0
VISITS = 6
# Each visit's first minute is debited when it goes live and the next one MINUTE_S later;
# the bound leaves room for six visits' set-up on a loaded 2-core machine.
BILLED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    deployment = Cluster(tmp_path_factory.mktemp("cluster"), masters=3)
    deployment.start()
    yield deployment
    deployment.stop()


def bus_stats(deployment: Cluster) -> dict[str, int]:
    """Cluster-bus pub/sub messages sent so far by all nodes: `publish` (a PUBLISH broadcast
    to every node) and `publishshard` (an SPUBLISH sent to its shard's replicas)."""
    totals = {"publish": 0, "publishshard": 0}
    for server in deployment.servers:
        info = server.client().cluster("info")
        for kind in totals:
            totals[kind] += int(info.get(f"cluster_stats_messages_{kind}_sent", 0))
    return totals


def masters_of(deployment: Cluster, names: list[bytes]) -> set[int]:
    """The ports of the masters owning these keys' or channels' slots."""
    client = deployment.servers[0].client()
    owners = set()
    for slots in client.execute_command("CLUSTER", "SLOTS"):
        start, end, master = slots[0], slots[1], slots[2]
        for name in names:
            if start <= client.execute_command("CLUSTER", "KEYSLOT", name) <= end:
                owners.add(int(master[1]))
    return owners


async def test_sends_reach_one_master_and_leases_work_on_every_master(
        redis_cluster: Cluster) -> None:
    one = RedisBroker(redis_cluster.url, namespace="t1")
    two = RedisBroker(redis_cluster.url, namespace="t1")
    try:
        channels = [f"user.{i}" for i in range(30)]
        assert len(masters_of(redis_cluster, [one._channel(c) for c in channels])) == 3
        subscriptions = [await one.subscribe(c) for c in channels]
        before = bus_stats(redis_cluster)
        for i, channel in enumerate(channels):
            await two.publish(channel, {"n": i})
        for i, subscription in enumerate(subscriptions):
            assert await asyncio.wait_for(anext(aiter(subscription)), 5) == {"n": i}
        await asyncio.gather(*(two.publish(c, {"again": i}) for i, c in enumerate(channels)))
        for i, subscription in enumerate(subscriptions):
            assert await asyncio.wait_for(anext(aiter(subscription)), 5) == {"again": i}
        after = bus_stats(redis_cluster)
        # No bus message per send, whatever the number of nodes (no replicas here to copy to).
        assert after == before, (before, after)

        # The control: a plain PUBLISH costs one bus message per other node.
        raw = redis_cluster.servers[0].client()
        raw.publish("t1:control", b"x")
        assert bus_stats(redis_cluster)["publish"] - after["publish"] == \
            len(redis_cluster.servers) - 1

        names = [f"meter:v{i}" for i in range(30)]
        assert len(masters_of(redis_cluster, [one._key("lease", n).encode()
                                              for n in names])) == 3
        epochs = [await one.acquire(n, "one", 5) for n in names]
        assert all(e >= 1 for e in epochs)
        assert [await two.acquire(n, "two", 5) for n in names] == [0] * 30
        assert all([await one.renew(n, "one", 5) for n in names])
        assert all([await one.release(n, "one") for n in names])
        again = [await two.acquire(n, "two", 5) for n in names]
        assert [a - e for a, e in zip(again, epochs, strict=True)] == [1] * 30  # epochs rise
        await one.touch("nodes", "one", 5)
        assert await two.present("nodes") == {"one"}
    finally:
        await one.close()
        await two.close()


LEASE_ERRORS = re.compile(r'^kinwire_leases_total\{[^}]*result="error"[^}]*\} (\S+)$', re.M)


async def test_two_processes_bill_every_visit_and_deliver_live(
        redis_cluster: Cluster, pg_db: str, tmp_path: Path) -> None:
    async with kinwire_processes(pg_db, redis_cluster.url, tmp_path,
                                 KINWIRE_VISIT_MINUTE_S=str(MINUTE_S),
                                 KINWIRE_METER_LEASE_S=str(LEASE_S)) as nodes, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        a, b = nodes
        pairs = []
        for i in range(VISITS):  # the family on one process, the person on the other
            pairs.append(await metered_pair(http, *((a, b) if i % 2 else (b, a)), pg_db))
        started = time.monotonic()
        unbilled = {visit for _, _, visit in pairs}
        while unbilled:
            for visit in list(unbilled):
                if len(await minute_debits(pg_db, visit)) >= 2:
                    unbilled.discard(visit)
            assert time.monotonic() - started < BILLED_WITHIN_S, \
                f"{len(unbilled)} of {VISITS} live visits not billed two minutes"
            await asyncio.sleep(0.2)
        print(f"all {VISITS} visits billed two minutes within {time.monotonic() - started:.1f} s")

        for i, (family, person, _) in enumerate(pairs):  # across processes, live
            status, _ = await post(http, family.node, "/messages", family.token,
                                   {"to": person.account_id, "body": f"hi {i}"},
                                   **{"Idempotency-Key": f"c{i}"})
            assert status == 201
        for i, (_, person, _) in enumerate(pairs):
            deadline = time.monotonic() + 5
            while f"hi {i}" not in person.bodies():
                assert time.monotonic() < deadline, f"message {i} never arrived live"
                await asyncio.sleep(0.05)
        for node in nodes:
            async with http.get(node.base + "/metrics") as r:
                text = await r.text()
            assert sum(float(v) for v in LEASE_ERRORS.findall(text)) == 0, text
            assert 'kinwire_leases_total{kind="meter",op="acquire",result="ok"}' in text
        for family, person, _ in pairs:
            await family.close()
            await person.close()


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    deployment = Cluster(tmp_path_factory.mktemp("replicated"), masters=3, replicas=1)
    deployment.start()
    yield deployment
    deployment.stop()


FAILOVER_WITHIN_S = 20.0  # cluster-node-timeout 1 s, then election; a loaded machine


async def test_a_killed_master_s_channels_and_leases_move_to_its_replica(
        replicated_cluster: Cluster) -> None:
    """Adversary: a master SIGKILLed while it holds subscribed channels and lease keys. Its
    replica is promoted; the broker re-homes the channels (Gap, then live payloads) and the
    leases work there (a lease may be lost with the master: a new grant's epoch is later)."""
    # 3 s a call: the first publish finds the cluster's nodes and connects, which took over the
    # default 1 s on a loaded machine (a full run, 2026-12-07); a dead master's calls fail fast
    one = RedisBroker(replicated_cluster.url, namespace="t3", op_timeout_s=3.0,
                      backoff_s_max=1.0)
    two = RedisBroker(replicated_cluster.url, namespace="t3", op_timeout_s=3.0,
                      backoff_s_max=1.0)
    try:
        channels = [f"user.{i}" for i in range(12)]
        subscriptions = [await one.subscribe(c) for c in channels]
        for i, channel in enumerate(channels):
            await two.publish(channel, {"n": i})
        for i, subscription in enumerate(subscriptions):
            assert await asyncio.wait_for(anext(aiter(subscription)), 5) == {"n": i}
        epochs = {c: await one.acquire(f"meter:{c}", "one", 60) for c in channels}

        victim = next(s for s in replicated_cluster.masters()
                      if s.port in masters_of(replicated_cluster,
                                              [one._channel(channels[0])]))
        on_victim = [c for c in channels
                     if masters_of(replicated_cluster, [one._channel(c)]) == {victim.port}]
        victim.kill()
        killed_at = time.monotonic()
        resumed: dict[str, float] = {}
        while len(resumed) < len(channels):
            for i, channel in enumerate(channels):
                if channel in resumed:
                    continue
                try:
                    await two.publish(channel, {"after": i})
                except BrokerUnavailable:  # that master's slots are down until the promotion
                    await asyncio.sleep(0.05)
                    continue
                got = []
                with contextlib.suppress(TimeoutError):
                    while {"after": i} not in got:
                        got.append(await asyncio.wait_for(anext(aiter(subscriptions[i])), 0.5))
                if {"after": i} in got:
                    resumed[channel] = time.monotonic() - killed_at
            assert time.monotonic() - killed_at < FAILOVER_WITHIN_S, \
                f"channels never came back: {sorted(set(channels) - set(resumed))}"
            await asyncio.sleep(0.2)
        for channel in channels:
            held = await one.renew(f"meter:{channel}", "one", 60)
            if not held:  # lost with the master before it reached the replica
                assert await two.acquire(f"meter:{channel}", "two", 60) > 0
            else:
                assert await two.acquire(f"meter:{channel}", "two", 60) == 0
            assert epochs[channel] >= 1
        worst = max(resumed[c] for c in on_victim)
        print(f"cluster master killed: its {len(on_victim)} channels live again within "
              f"{worst:.1f} s; the others' never stopped "
              f"({max(resumed[c] for c in channels if c not in on_victim):.1f} s)")
    finally:
        await one.close()
        await two.close()
