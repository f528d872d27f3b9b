"""Sharded pub/sub on a Redis Cluster: a fan-out (redis_fanout.RedisFanout) per master node.

On a cluster a plain PUBLISH is sent to every node over the cluster bus; SPUBLISH goes to the
master owning the channel's slot only, and SSUBSCRIBE must be sent to that master. So each
process keeps one pub/sub connection per master it has subscriptions on, and routes every
channel by its slot (the cluster client's slot map).

When a master's connection is lost, or the server drops a channel (its slot moved, the master
became a replica after a failover), the channels concerned are re-homed: the slot map is
refreshed and each channel whose slot another master owns now moves there, its subscriptions
with it (they get Gap("reconnected") once the new master confirms it). A master that simply
restarts keeps its channels: its own fan-out reconnects them. Until the cluster has promoted a
replica, re-homing retries with the fan-out's backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisClusterException

from common.metrics import Counters
from server.broker import BrokerUnavailable
from server.broker.redis_fanout import DOWN_ERRORS, RedisFanout
from server.broker.subscription import QueuedSubscription

log = logging.getLogger(__name__)


class ShardedFanout:
    def __init__(
        self,
        cluster: Any,  # redis.asyncio.cluster.RedisCluster: its slot map routes channels
        connect: Callable[[str, int], Any],  # (host, port) -> a new unpooled connection
        *,
        op_timeout_s: float,
        backoff_s_min: float,
        backoff_s_max: float,
        health_interval_s: float,
        metrics: Counters | None = None,
    ) -> None:
        self._cluster = cluster
        self._connect = connect
        self._options = {"op_timeout_s": op_timeout_s, "backoff_s_min": backoff_s_min,
                         "backoff_s_max": backoff_s_max, "health_interval_s": health_interval_s}
        self._backoff_s_max = backoff_s_max
        self.metrics = metrics
        self._fanouts: dict[str, RedisFanout] = {}  # node name (host:port) -> its fan-out
        self._rehoming: asyncio.Task[None] | None = None
        self._lost: dict[RedisFanout, set[bytes]] = {}
        self._closed = False

    async def subscribe(self, wire: bytes, channel: str, queue_max: int) -> QueuedSubscription:
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        try:
            async with asyncio.timeout(self._options["op_timeout_s"]):
                node = await self._owner(wire)
        except (*DOWN_ERRORS, RedisClusterException) as error:
            raise BrokerUnavailable(f"redis cluster: no slot map: {error!r}") from error
        return await self._fanout(node).subscribe(wire, channel, queue_max)

    async def close(self) -> None:
        self._closed = True
        if self._rehoming is not None:
            self._rehoming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rehoming
        for fanout in list(self._fanouts.values()):
            await fanout.close()
        self._fanouts.clear()

    async def _owner(self, wire: bytes) -> Any:
        """The master serving the channel's slot, from the client's slot map."""
        if not self._cluster.nodes_manager.slots_cache:
            await self._cluster.initialize()
        slot = self._cluster.keyslot(wire)
        return self._cluster.nodes_manager.get_node_from_slot(slot)

    def _fanout(self, node: Any) -> RedisFanout:
        fanout = self._fanouts.get(node.name)
        if fanout is None:
            host, port = node.host, node.port
            fanout = RedisFanout(lambda: self._connect(host, port), sharded=True,
                                 on_lost=self._channels_lost, metrics=self.metrics,
                                 **self._options)
            self._fanouts[node.name] = fanout
        return fanout

    def _channels_lost(self, fanout: RedisFanout, wires: list[bytes]) -> None:
        if self._closed:
            return
        self._lost.setdefault(fanout, set()).update(wires)
        if self._rehoming is None or self._rehoming.done():
            self._rehoming = asyncio.get_running_loop().create_task(
                self._rehome(), name="kinwire-broker-rehome")

    async def _rehome(self) -> None:
        """Move lost channels to their slot's master now; retry while their fan-out is down."""
        delay_s = self._options["backoff_s_min"]
        while self._lost and not self._closed:
            try:
                # A fresh slot map: after a failover the promoted replica owns the slots.
                await self._cluster.nodes_manager.initialize()
            except Exception as error:
                log.warning("broker pub/sub: cluster slot map unavailable: %r", error)
            else:
                for fanout, wires in list(self._lost.items()):
                    for wire in list(wires):
                        node = self._cluster.nodes_manager.get_node_from_slot(
                            self._cluster.keyslot(wire))
                        target = self._fanout(node)
                        if wire not in fanout.channels:
                            wires.discard(wire)  # closed meanwhile
                        elif target is not fanout:
                            await target.adopt(wire, fanout.take(wire))
                            wires.discard(wire)
                            log.warning("broker pub/sub: channel moved to %s", node.name)
                        elif fanout.connected:  # same master, back: subscribe it again
                            await fanout.adopt(wire, fanout.take(wire))
                            wires.discard(wire)
                    if not wires:
                        del self._lost[fanout]
            if self._lost:
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._backoff_s_max)
