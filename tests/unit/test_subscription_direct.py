"""QueuedSubscription.direct: payloads handled at push time only while the consumer is idle,
never ahead of one it has yet to take (the fan-out path, server/gateway/hub.py)."""

from __future__ import annotations

import asyncio

from server.broker import codec
from server.broker.memory import MemoryBroker
from server.broker.subscription import QueuedSubscription


async def _noop(_: QueuedSubscription) -> None:
    return None


async def test_direct_takes_payloads_while_consumer_waits_and_keeps_order() -> None:
    sub = QueuedSubscription("c", 8, _noop)
    handled: list[dict] = []
    taken: list[dict] = []

    def direct(data: bytes) -> bool:
        item = codec.decode(data)
        if "live" not in item:
            return False  # left to the consumer
        handled.append(item)
        return True

    sub.direct = direct
    sub.push(codec.encode({"live": 0}))  # no consumer waiting yet: queued
    async def consume() -> None:
        async for item in sub:
            taken.append(item)
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    assert taken == [{"live": 0}] and handled == []
    sub.push(codec.encode({"live": 1}))  # consumer idle: handled at once
    assert handled == [{"live": 1}]
    sub.push(codec.encode({"seq": 5}))  # declined: queued, wakes the consumer
    sub.push(codec.encode({"live": 2}))  # consumer woken, not yet run: must queue behind seq 5
    assert handled == [{"live": 1}]
    await asyncio.sleep(0.01)
    assert taken == [{"live": 0}, {"seq": 5}, {"live": 2}]
    await sub.close()
    sub.push(codec.encode({"live": 3}))  # closed: neither path
    assert handled == [{"live": 1}]
    await asyncio.wait_for(task, 1.0)


async def test_direct_with_memory_broker_delivers_each_once() -> None:
    broker = MemoryBroker()
    sub = await broker.subscribe("user:a", queue_max=16)
    assert isinstance(sub, QueuedSubscription)
    handled: list[int] = []
    sub.direct = lambda data: handled.append(codec.decode(data)["live"]) is None
    taken: list[object] = []
    async def consume() -> None:
        async for item in sub:
            taken.append(item)
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    for i in range(5):
        await broker.publish("user:a", {"live": i})
    await asyncio.sleep(0.01)
    assert handled == [0, 1, 2, 3, 4] and taken == []
    await sub.close()
    await asyncio.wait_for(task, 1.0)
    await broker.close()
