"""The broker for several processes, on Redis (redis.asyncio).

Contract (see server.broker), and how Redis gives it:
- `publish` is one PUBLISH; it returns once Redis accepted the payload (delivered to the
  subscribed connections' buffers). It is never retried: a retry after a lost reply could deliver
  twice, and delivery is at most once. Pub/sub is fire-and-forget: a process that is
  disconnected misses payloads, and its subscriptions get Gap("reconnected") when it is back.
- Ordering is per channel from one publisher: a publish awaited before the next one started
  reached Redis first, and Redis forwards in the order it received. Publishes are queued and
  sent in that order, those that wait together as one pipeline (one write, one round trip:
  a burst of signals costs a fraction of a PUBLISH each); subscriptions share one pub/sub
  connection per process (RedisFanout), which preserves Redis' order.
- Every Redis call is bounded by `op_timeout_s`; a lost, refusing or slow Redis raises
  BrokerUnavailable. Other Redis errors (a script bug, WRONGTYPE) propagate as they are.
- Presence is a sorted set per key: member -> expiry in milliseconds of the *Redis server's*
  clock (TIME inside the scripts), so processes with skewed clocks agree. The key itself
  expires with its last member, so abandoned keys do not accumulate.
- Leases are plain keys: acquire is a Lua script doing SET NX PX and, when it took, INCR of
  the lease's epoch counter (kept a week after the last grant); renew and release are
  compare-and-set Lua scripts, each atomic in Redis. Expiry is Redis' own key expiry.
- Keys and channels live under `namespace:` so deployments (and tests) sharing a Redis do not
  see each other.
- REDIS_URL may name one server, a Sentinel-watched master or a Cluster (redis_url.py). On a
  Cluster: publish is SPUBLISH and subscriptions SSUBSCRIBE on the channel's master
  (redis_shards.py), so a send reaches one node, not all of them; and a name's keys and channel
  carry it as a hash tag (`kinwire:lease:{meter:v1}`, `kinwire:epoch:{meter:v1}`), so a
  lease's key and its epoch counter share a slot, as a script needs. On one server or Sentinel
  the names stay untagged, as before (processes of two releases agree on lease names while a
  rolling upgrade runs).
- Lease operations are counted in `metrics` (kinwire_leases_total, by kind: the name up to
  its first ':'; op; result ok/refused/error); failed publishes in
  kinwire_broker_publish_failures_total; pub/sub reconnects and time down by RedisFanout.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.metrics import Counters
from server.broker import BrokerUnavailable, codec, redis_url
from server.broker.recent import RecentEvents
from server.broker.redis_fanout import RedisFanout, _NoMetrics
from server.broker.redis_shards import ShardedFanout
from server.broker.subscription import QueuedSubscription

T = TypeVar("T")
# A Cluster mid-failover answers CLUSTERDOWN/TRYAGAIN, or has no node for a slot: unavailable
# too, for as long as the promotion takes.
UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError,
                      ClusterDownError, TryAgainError, RedisClusterException)
PUBLISH_BATCH_MAX = 256  # publishes in one pipeline (each a few hundred bytes to ~5 KB)

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""
# KEYS[1] presence key, KEYS[2] its touch times; ARGV[1] member, ARGV[2] ttl in ms.
TOUCH_LUA = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], now_ms)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)
for _, member in ipairs(gone) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
"""
)
# KEYS[1] presence key.
PRESENT_LUA = (
    _NOW_MS
    + """
return redis.call('ZRANGE', KEYS[1], string.format('(%d', now_ms), '+inf', 'BYSCORE')
"""
)
# KEYS[1] presence key, KEYS[2] its touch times: {member, ms since its touch or -1, ...}.
RENEWED_LUA = (
    _NOW_MS
    + """
local members = redis.call('ZRANGE', KEYS[1], string.format('(%d', now_ms), '+inf', 'BYSCORE')
local out = {}
if #members == 0 then return out end
local touched = redis.call('HMGET', KEYS[2], unpack(members))
for i, member in ipairs(members) do
  out[2 * i - 1] = member
  out[2 * i] = touched[i] and (now_ms - tonumber(touched[i])) or -1
end
return out
"""
)
# KEYS[1] lease key, KEYS[2] its epoch counter; ARGV[1] holder, ARGV[2] ttl in ms. Returns the
# grant's epoch, or 0 when the lease is held.
ACQUIRE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 604800000)
  return epoch
end
return 0
"""
# KEYS[1] lease key; ARGV[1] holder, ARGV[2] ttl in ms.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease key; ARGV[1] holder.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBroker:
    """Broker on the Redis deployment `url` names (server/broker/redis_url.py).

    op_timeout_s: bound on every Redis call (and on connecting); past it, BrokerUnavailable.
    namespace: prefix of every key and channel.
    connections_max: command connections (pub/sub uses one more); a caller waits for a free
      one within op_timeout_s.
    backoff_s_min, backoff_s_max: pub/sub reconnect delay, doubling from min up to max.
    health_interval_s: a silent pub/sub connection is PINGed after this long, and counted as
      lost after twice this long.
    """

    def __init__(
        self,
        url: str,
        *,
        op_timeout_s: float = 1.0,
        namespace: str = "kinwire",
        connections_max: int = 64,
        backoff_s_min: float = 0.1,
        backoff_s_max: float = 2.0,
        health_interval_s: float = 5.0,
        metrics: Counters | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.recent = RecentEvents()  # what this process published lately (recent.py)
        self._op_timeout_s = op_timeout_s
        self._prefix = f"{namespace}:"
        # No retries inside redis-py: a retried PUBLISH could deliver twice, and the caller's
        # deadline is op_timeout_s, not (retries x timeout).
        common: dict[str, Any] = {
            "socket_timeout": op_timeout_s,
            "socket_connect_timeout": op_timeout_s,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            # No CLIENT SETINFO on connect: two round trips and a read of the package's
            # metadata for every new connection, which a burst (100 visits joining at once)
            # opens by the dozen (docs/BENCHMARKS.md, "Signalling").
            "driver_info": None,
        }
        target = redis_url.parse(url)
        self._cluster = target.kind == "cluster"
        self._redis = redis_url.command_client(target, pool_max=connections_max,
                                               pool_wait_s=op_timeout_s, **common)
        fanout_options: dict[str, Any] = {
            "op_timeout_s": op_timeout_s, "backoff_s_min": backoff_s_min,
            "backoff_s_max": backoff_s_max, "health_interval_s": health_interval_s,
            "metrics": self.metrics}
        self._fanout: RedisFanout | ShardedFanout
        if self._cluster:
            self._fanout = ShardedFanout(
                self._redis,
                lambda host, port: redis_url.node_connection(target, host, port, protocol=2,
                                                             **common),
                **fanout_options)
        else:
            # Only a factory for the one pub/sub connection, which RedisFanout owns outright.
            self._connect = redis_url.connection_factory(target, protocol=2, **common)
            self._fanout = RedisFanout(self._connect, **fanout_options)
        self._spublish = self._cluster
        self._touch = self._redis.register_script(TOUCH_LUA)
        self._present = self._redis.register_script(PRESENT_LUA)
        self._renewed = self._redis.register_script(RENEWED_LUA)
        self._acquire = self._redis.register_script(ACQUIRE_LUA)
        self._renew = self._redis.register_script(RENEW_LUA)
        self._release = self._redis.register_script(RELEASE_LUA)
        self._closed = False
        self._outgoing: list[tuple[bytes, bytes, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self._check_open()
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._outgoing.append((self._channel(channel), codec.encode(payload), done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_published(), name="redis-publish")
        try:
            async with asyncio.timeout(self._op_timeout_s):  # queued time included
                await done
        except TimeoutError:
            raise BrokerUnavailable("redis: publish timed out") from None

    async def _send_published(self) -> None:
        """Send queued publishes in order: alone as one PUBLISH, several as one pipeline (no
        MULTI) bounded by op_timeout_s like any call. On failure every publish of the batch
        raises BrokerUnavailable; some of them may have been delivered (at most once)."""
        while self._outgoing:
            batch = self._outgoing[:PUBLISH_BATCH_MAX]
            del self._outgoing[:PUBLISH_BATCH_MAX]
            try:
                if len(batch) == 1:
                    publish = self._redis.spublish if self._spublish else self._redis.publish
                    await self._bounded(publish, batch[0][0], batch[0][1])
                else:
                    await self._bounded(self._pipeline_publish, batch)
            except asyncio.CancelledError:  # shutting down: nobody may wait forever
                for _, _, done in batch + self._outgoing:
                    if not done.done():
                        done.set_exception(BrokerUnavailable("redis: publisher stopped"))
                self._outgoing.clear()
                raise
            except Exception as error:  # handed to every waiting publisher of the batch
                self.metrics.inc("kinwire_broker_publish_failures_total", len(batch))
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _pipeline_publish(self, batch: list[tuple[bytes, bytes, asyncio.Future]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, data, _ in batch:
                if self._spublish:
                    pipe.spublish(channel, data)
                else:
                    pipe.publish(channel, data)
            await pipe.execute()

    async def subscribe(self, channel: str, *, queue_max: int = 1024) -> QueuedSubscription:
        """A live subscription (see RedisFanout); BrokerUnavailable if Redis cannot confirm it
        within op_timeout_s."""
        self._check_open()
        return await self._fanout.subscribe(self._channel(channel), channel, queue_max)

    async def touch(self, key: str, member: str, ttl_s: float) -> None:
        await self._call(self._touch, keys=[self._key("presence", key), self._key("touched", key)],
                         args=[member, _ms(ttl_s)])

    async def leave(self, key: str, member: str) -> None:
        await self._call(self._redis.zrem, self._key("presence", key), member)
        await self._call(self._redis.hdel, self._key("touched", key), member)

    async def present(self, key: str) -> set[str]:
        members = await self._call(self._present, keys=[self._key("presence", key)])
        return {member.decode() for member in members}

    async def renewed(self, key: str) -> dict[str, float | None]:
        flat = await self._call(self._renewed,
                                keys=[self._key("presence", key), self._key("touched", key)])
        return {member.decode(): (ms / 1000 if ms >= 0 else None)
                for member, ms in zip(flat[::2], flat[1::2], strict=True)}

    async def acquire(self, name: str, holder: str, ttl_s: float) -> int:
        """SET NX and the grant's epoch: 0 while anyone holds it, the caller included (a holder
        renews)."""
        epoch = await self._lease("acquire", name, self._acquire,
                                  keys=[self._key("lease", name), self._key("epoch", name)],
                                  args=[holder, _ms(ttl_s)])
        return int(epoch)

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        renewed = await self._lease("renew", name, self._renew,
                                    keys=[self._key("lease", name)], args=[holder, _ms(ttl_s)])
        return bool(renewed)

    async def release(self, name: str, holder: str) -> bool:
        released = await self._lease("release", name, self._release,
                                     keys=[self._key("lease", name)], args=[holder])
        return bool(released)

    async def holder(self, name: str) -> str | None:
        held = await self._call(self._redis.get, self._key("lease", name))
        return held.decode() if held is not None else None

    async def _lease(self, op: str, name: str, script: Any, **kwargs: Any) -> Any:
        """One lease operation, counted by kind and result; an error is counted and raised."""
        kind = name.split(":", 1)[0]
        try:
            result = await self._call(script, **kwargs)
        except Exception:
            self.metrics.inc("kinwire_leases_total", kind=kind, op=op, result="error")
            raise
        self.metrics.inc("kinwire_leases_total", kind=kind, op=op,
                         result="ok" if result else "refused")
        return result

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def close(self) -> None:
        """Stop the pub/sub reader, end every subscription, close all connections; idempotent.
        Afterwards every operation raises BrokerUnavailable."""
        if self._closed:
            return
        self._closed = True
        if self._sender is not None and not self._sender.done():
            await self._sender  # publishes already accepted go out (or fail) first
        await self._fanout.close()
        await redis_url.close(self._redis)
        if not self._cluster:
            await redis_url.close_sentinels(getattr(self._connect, "__self__", None))

    async def _call(self, command: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        self._check_open()
        return await self._bounded(command, *args, **kwargs)

    async def _bounded(self, command: Callable[..., Awaitable[T]], *args: Any,
                       **kwargs: Any) -> T:
        try:
            async with asyncio.timeout(self._op_timeout_s):
                return await command(*args, **kwargs)
        except UNAVAILABLE_ERRORS as error:
            raise BrokerUnavailable(f"redis: {error!r}") from error

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("broker is closed")

    def _channel(self, channel: str) -> bytes:
        return self._key("channel", channel).encode()

    def _key(self, kind: str, name: str) -> str:
        if self._cluster:  # the name is the hash tag: its keys and channel share a slot
            return f"{self._prefix}{kind}:{{{name}}}"
        return f"{self._prefix}{kind}:{name}"


def _ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    return max(1, math.ceil(ttl_s * 1000))
