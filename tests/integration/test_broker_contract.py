"""The broker contract (server.broker), run against MemoryBroker and RedisBroker alike, plus the
Redis-only behaviour: two processes, and losing and regaining the server."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from server.broker import Broker, BrokerUnavailable, Gap, Subscription
from server.broker.memory import MemoryBroker
from server.broker.redis import RedisBroker
from server.http.metrics import Metrics

REDIS_URL = "redis://127.0.0.1:6379/0"
RECEIVE_TIMEOUT_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@dataclass
class Kit:
    broker: Broker
    advance: Callable[[float], Awaitable[None]]  # let this much broker time pass


@pytest.fixture
def namespace() -> str:
    return f"test-broker-{secrets.token_hex(6)}"


async def forget(namespace: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Kit]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now_s += seconds

        memory = MemoryBroker(clock=clock)
        yield Kit(memory, advance)
        await memory.close()
    else:
        redis = RedisBroker(REDIS_URL, namespace=namespace)
        yield Kit(redis, asyncio.sleep)  # Redis keeps its own time: really wait
        await redis.close()
        await forget(namespace)


async def receive(subscription: Subscription) -> dict[str, Any] | Gap:
    return await asyncio.wait_for(anext(aiter(subscription)), RECEIVE_TIMEOUT_S)


async def test_publish_subscribe_round_trip(kit: Kit) -> None:
    subscription = await kit.broker.subscribe("user.1")
    payload = {"type": "event", "seq": 7, "data": {"text": "hi", "photo": b"\x00\xff"}, "n": None}
    await kit.broker.publish("user.1", payload)
    assert await receive(subscription) == payload


async def test_every_subscription_gets_its_own_copy(kit: Kit) -> None:
    first = await kit.broker.subscribe("user.1")
    second = await kit.broker.subscribe("user.1")
    sent = {"items": [1, 2], "nested": {"k": "v"}}
    await kit.broker.publish("user.1", sent)
    sent["items"].append(3)  # the publisher's dict is not shared either
    got_first = await receive(first)
    assert isinstance(got_first, dict)
    got_first["items"].append(99)
    got_first["nested"]["k"] = "changed"
    assert await receive(second) == {"items": [1, 2], "nested": {"k": "v"}}


@pytest.mark.parametrize(
    "payload",
    [{"x": object()}, {"x": {1, 2}}, {"x": 2**70}, ["not", "a", "dict"]],
    ids=["object", "set", "int-too-big", "not-a-dict"],
)
async def test_unencodable_payload_raises_type_error(kit: Kit, payload: Any) -> None:
    with pytest.raises(TypeError):
        await kit.broker.publish("user.1", payload)


async def test_payloads_arrive_in_publish_order(kit: Kit) -> None:
    subscription = await kit.broker.subscribe("user.1", queue_max=1000)
    for seq in range(1000):
        await kit.broker.publish("user.1", {"seq": seq})
    received = [await receive(subscription) for _ in range(1000)]
    assert received == [{"seq": seq} for seq in range(1000)]


async def test_concurrent_publishes_arrive_in_the_order_they_started(kit: Kit) -> None:
    """Publishes started together (Redis sends them as pipelines) arrive in start order, each
    once, and each caller returns once its own is accepted."""
    subscription = await kit.broker.subscribe("user.1", queue_max=1000)
    await asyncio.gather(*(kit.broker.publish("user.1", {"seq": seq}) for seq in range(600)))
    received = [await receive(subscription) for _ in range(600)]
    assert received == [{"seq": seq} for seq in range(600)]


async def test_nothing_published_before_subscribe_is_delivered(kit: Kit) -> None:
    await kit.broker.publish("user.1", {"seq": 1})
    first = await kit.broker.subscribe("user.1")
    await kit.broker.publish("user.1", {"seq": 2})
    # The channel is already subscribed now; a second subscription must still start fresh.
    second = await kit.broker.subscribe("user.1")
    await kit.broker.publish("user.1", {"seq": 3})
    assert [await receive(first), await receive(first)] == [{"seq": 2}, {"seq": 3}]
    assert await receive(second) == {"seq": 3}


async def test_closed_subscription_gets_nothing(kit: Kit) -> None:
    closed = await kit.broker.subscribe("user.1")
    open_ = await kit.broker.subscribe("user.1")
    await kit.broker.publish("user.1", {"seq": 1})
    await closed.close()
    await closed.close()  # idempotent
    await kit.broker.publish("user.1", {"seq": 2})
    assert [await receive(open_), await receive(open_)] == [{"seq": 1}, {"seq": 2}]
    assert [item async for item in closed] == []


async def test_resubscribe_after_last_subscription_closed(kit: Kit) -> None:
    subscription = await kit.broker.subscribe("user.1")
    await subscription.close()
    again = await kit.broker.subscribe("user.1")
    await kit.broker.publish("user.1", {"seq": 1})
    assert await receive(again) == {"seq": 1}


async def test_fan_out_and_channel_isolation(kit: Kit) -> None:
    subscriptions = [await kit.broker.subscribe("user.1") for _ in range(3)]
    other = await kit.broker.subscribe("user.2")
    await kit.broker.publish("user.1", {"to": 1})
    await kit.broker.publish("user.2", {"to": 2})
    for subscription in subscriptions:
        assert await receive(subscription) == {"to": 1}
    assert await receive(other) == {"to": 2}


async def test_overflow_yields_one_gap_then_carries_on(kit: Kit) -> None:
    slow = await kit.broker.subscribe("user.1", queue_max=10)
    witness = await kit.broker.subscribe("user.1", queue_max=1000)
    for seq in range(100):
        await kit.broker.publish("user.1", {"seq": seq})
    # The witness got all 100, so every one of them has been pushed to the slow one too.
    assert [await receive(witness) for _ in range(100)] == [{"seq": seq} for seq in range(100)]
    assert slow.backlog <= 10 + 1
    assert await receive(slow) == Gap("overflow")
    assert [await receive(slow) for _ in range(10)] == [{"seq": seq} for seq in range(90, 100)]
    await kit.broker.publish("user.1", {"seq": 100})
    assert await receive(slow) == {"seq": 100}


async def test_broker_close_ends_subscriptions(kit: Kit) -> None:
    subscription = await kit.broker.subscribe("user.1")
    waiting = asyncio.ensure_future(anext(aiter(subscription), "ended"))
    await asyncio.sleep(0)
    await kit.broker.close()
    assert await asyncio.wait_for(waiting, RECEIVE_TIMEOUT_S) == "ended"
    with pytest.raises(BrokerUnavailable):
        await kit.broker.publish("user.1", {"seq": 1})
    await kit.broker.close()  # idempotent


async def test_presence_touch_leave_and_expiry(kit: Kit) -> None:
    await kit.broker.touch("visit.9", "alice", 10)
    await kit.broker.touch("visit.9", "bob", 10)
    await kit.broker.touch("visit.9", "carol", 0.2)
    assert await kit.broker.present("visit.9") == {"alice", "bob", "carol"}
    assert await kit.broker.present("visit.10") == set()
    await kit.broker.leave("visit.9", "alice")
    await kit.broker.leave("visit.9", "nobody")
    assert await kit.broker.present("visit.9") == {"bob", "carol"}
    await kit.advance(0.3)
    assert await kit.broker.present("visit.9") == {"bob"}
    await kit.broker.touch("visit.9", "carol", 10)  # touching again makes it present again
    assert await kit.broker.present("visit.9") == {"bob", "carol"}


async def test_presence_touch_extends(kit: Kit) -> None:
    await kit.broker.touch("visit.9", "alice", 0.4)
    await kit.advance(0.25)
    await kit.broker.touch("visit.9", "alice", 0.4)
    await kit.advance(0.25)
    assert await kit.broker.present("visit.9") == {"alice"}


async def test_renewed_says_how_long_ago_each_member_was_touched(kit: Kit) -> None:
    """The meter's proof of a process's liveness (signalling/meters.py): the seconds since its
    last touch, by the broker's own clock, so no two processes' clocks are compared."""
    await kit.broker.touch("nodes", "a", 10)
    await kit.broker.touch("nodes", "b", 0.5)
    await kit.advance(0.3)
    await kit.broker.touch("nodes", "a", 10)
    ages = await kit.broker.renewed("nodes")
    assert set(ages) == {"a", "b"}
    assert 0 <= ages["a"] < 0.25 and 0.29 <= ages["b"] < 0.55, ages  # float sums; Redis waits
    await kit.advance(0.3)
    assert set(await kit.broker.renewed("nodes")) == {"a"}  # b's lease ran out
    await kit.broker.leave("nodes", "a")
    assert await kit.broker.renewed("nodes") == {}
    await kit.broker.touch("nodes", "a", 10)  # back: touched just now, not when it left
    assert (await kit.broker.renewed("nodes"))["a"] < 0.25


async def test_lease_one_holder_at_a_time(kit: Kit) -> None:
    broker = kit.broker
    assert await broker.acquire("meter.5", "a", 0.3)
    assert not await broker.acquire("meter.5", "b", 0.3)
    assert not await broker.acquire("meter.5", "a", 0.3)  # SET NX: the holder renews instead
    assert not await broker.renew("meter.5", "b", 0.3)
    assert not await broker.release("meter.5", "b")
    assert await broker.renew("meter.5", "a", 0.3)
    await kit.advance(0.4)
    assert not await broker.renew("meter.5", "a", 0.3)  # expired: gone for its old holder too
    assert await broker.acquire("meter.5", "b", 10)
    assert not await broker.release("meter.5", "a")
    assert await broker.release("meter.5", "b")
    assert not await broker.release("meter.5", "b")
    assert await broker.acquire("meter.5", "a", 10)


async def test_lease_holder_is_read_and_lapses(kit: Kit) -> None:
    """`holder` names the current holder, None once the ttl passed; releasing on behalf of a
    dead holder frees only a lease that holder still has (another took it meanwhile: kept)."""
    broker = kit.broker
    assert await broker.holder("relay:v") is None
    assert await broker.acquire("relay:v", "node-a", 0.3)
    assert await broker.holder("relay:v") == "node-a"
    await kit.advance(0.4)
    assert await broker.holder("relay:v") is None
    assert await broker.acquire("relay:v", "node-b", 10)
    assert not await broker.release("relay:v", "node-a")  # the dead one's: long gone
    assert await broker.holder("relay:v") == "node-b"


async def test_lease_grants_carry_rising_epochs(kit: Kit) -> None:
    """Each grant's epoch is above every earlier grant's of the name (a holder that lost its
    lease is told apart from its successor by it: fencing, signalling/meters.py); a refused
    acquire returns 0, and other names count on their own."""
    broker = kit.broker
    first = await broker.acquire("meter.6", "a", 0.3)
    assert first >= 1
    assert await broker.acquire("meter.6", "b", 0.3) == 0
    await kit.advance(0.4)  # expired, not released: the next grant is still a later one
    second = await broker.acquire("meter.6", "b", 10)
    assert await broker.release("meter.6", "b")
    third = await broker.acquire("meter.6", "a", 10)
    assert first < second < third
    assert await broker.acquire("meter.7", "a", 10) >= 1


async def test_lease_renew_extends(kit: Kit) -> None:
    assert await kit.broker.acquire("meter.5", "a", 0.5)
    await kit.advance(0.3)
    assert await kit.broker.renew("meter.5", "a", 0.5)
    await kit.advance(0.3)
    assert not await kit.broker.acquire("meter.5", "b", 0.5)


async def test_ttl_must_be_positive(kit: Kit) -> None:
    with pytest.raises(ValueError):
        await kit.broker.touch("visit.9", "alice", 0)
    with pytest.raises(ValueError):
        await kit.broker.acquire("meter.5", "a", -1)


async def test_ping(kit: Kit) -> None:
    await kit.broker.ping()


async def test_queue_max_must_be_positive(kit: Kit) -> None:
    with pytest.raises(ValueError):
        await kit.broker.subscribe("user.1", queue_max=0)


# Redis only ---------------------------------------------------------------------------------


async def test_two_redis_brokers_see_each_others_publishes(namespace: str) -> None:
    one = RedisBroker(REDIS_URL, namespace=namespace)
    two = RedisBroker(REDIS_URL, namespace=namespace)
    try:
        on_one = await one.subscribe("user.1")
        on_two = await two.subscribe("user.1")
        await one.publish("user.1", {"from": "one"})
        await two.publish("user.1", {"from": "two"})
        for subscription in (on_one, on_two):
            assert [await receive(subscription), await receive(subscription)] == [
                {"from": "one"},
                {"from": "two"},
            ]
        assert await two.acquire("meter.5", "two", 10)
        assert not await one.acquire("meter.5", "one", 10)
        await one.touch("visit.9", "alice", 10)
        assert await two.present("visit.9") == {"alice"}
    finally:
        await one.close()
        await two.close()
        await forget(namespace)


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


async def test_redis_restart_raises_then_gaps_and_resumes(private_redis: PrivateRedis) -> None:
    op_timeout_s = 0.5
    metrics = Metrics()
    broker = RedisBroker(private_redis.url, op_timeout_s=op_timeout_s, backoff_s_max=0.4,
                         metrics=metrics)
    try:
        subscription = await broker.subscribe("user.1")
        await broker.publish("user.1", {"seq": 1})
        assert await receive(subscription) == {"seq": 1}

        private_redis.kill()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await broker.publish("user.1", {"seq": 2})
        with pytest.raises(BrokerUnavailable):
            await broker.ping()
        assert time.monotonic() - started < 2 * op_timeout_s + 0.5

        with pytest.raises(BrokerUnavailable):
            await broker.renew("meter:v1", "a", 5)

        private_redis.start()
        assert await asyncio.wait_for(anext(aiter(subscription)), 5) == Gap("reconnected")
        await broker.publish("user.1", {"seq": 3})
        assert await receive(subscription) == {"seq": 3}
        assert await broker.acquire("meter:v1", "a", 5) >= 1
        # /metrics saw it all (docs/operations.md): the outage, the failures, the grant.
        assert metrics.counter_value("kinwire_broker_reconnects_total") == 1
        assert metrics.counter_value("kinwire_broker_down_seconds_total") > 0
        assert metrics.counter_value("kinwire_broker_publish_failures_total") == 1
        assert metrics.counter_value("kinwire_leases_total", kind="meter", op="renew",
                                     result="error") == 1
        assert metrics.counter_value("kinwire_leases_total", kind="meter", op="acquire",
                                     result="ok") == 1
    finally:
        await broker.close()


async def test_concurrent_publishes_to_a_lost_redis_all_raise_in_time(
        private_redis: PrivateRedis) -> None:
    op_timeout_s = 0.4
    broker = RedisBroker(private_redis.url, op_timeout_s=op_timeout_s)
    try:
        await broker.publish("user.1", {"seq": 0})
        private_redis.kill()
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(broker.publish("user.1", {"seq": seq}) for seq in range(50)),
            return_exceptions=True)
        assert all(isinstance(o, BrokerUnavailable) for o in outcomes), outcomes
        assert time.monotonic() - started < op_timeout_s + 0.5
    finally:
        await broker.close()


async def test_subscribe_raises_when_redis_is_down(private_redis: PrivateRedis) -> None:
    broker = RedisBroker(private_redis.url, op_timeout_s=0.3)
    private_redis.kill()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("user.1")
        assert time.monotonic() - started < 1.0
    finally:
        await broker.close()


async def test_silent_pubsub_connection_counts_as_lost(private_redis: PrivateRedis) -> None:
    broker = RedisBroker(private_redis.url, op_timeout_s=0.5, health_interval_s=0.1)
    admin = Redis.from_url(private_redis.url)
    try:
        subscription = await broker.subscribe("user.1")
        await asyncio.sleep(0.5)  # idle, but answered health PINGs keep the connection
        await broker.publish("user.1", {"seq": 1})
        assert await receive(subscription) == {"seq": 1}

        # Paused, Redis answers nothing: the reader must notice without any socket error.
        await admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        assert await asyncio.wait_for(anext(aiter(subscription)), 5) == Gap("reconnected")
        await broker.publish("user.1", {"seq": 2})
        assert await receive(subscription) == {"seq": 2}
    finally:
        await admin.aclose()
        await broker.close()
