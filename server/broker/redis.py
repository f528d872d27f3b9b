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
- Leases are plain keys: acquire is SET NX PX; renew and release are compare-and-set Lua
  scripts, each atomic in Redis. Expiry is Redis' own key expiry.
- Keys and channels live under `namespace:` so deployments (and tests) sharing a Redis do not
  see each other.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.broker import BrokerUnavailable, codec
from server.broker.redis_fanout import RedisFanout
from server.broker.subscription import QueuedSubscription

T = TypeVar("T")
UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
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
    """Broker on Redis at `url` (redis://, rediss:// or unix://).

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
    ) -> None:
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
        pool = BlockingConnectionPool.from_url(
            url, max_connections=connections_max, timeout=op_timeout_s, **common
        )
        self._redis = Redis.from_pool(pool)
        # Only a factory for the one pub/sub connection, which RedisFanout owns outright.
        pubsub_pool = ConnectionPool.from_url(url, protocol=2, **common)
        self._fanout = RedisFanout(
            pubsub_pool.make_connection,
            op_timeout_s=op_timeout_s,
            backoff_s_min=backoff_s_min,
            backoff_s_max=backoff_s_max,
            health_interval_s=health_interval_s,
        )
        self._touch = self._redis.register_script(TOUCH_LUA)
        self._present = self._redis.register_script(PRESENT_LUA)
        self._renewed = self._redis.register_script(RENEWED_LUA)
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
                    await self._bounded(self._redis.publish, batch[0][0], batch[0][1])
                else:
                    await self._bounded(self._pipeline_publish, batch)
            except asyncio.CancelledError:  # shutting down: nobody may wait forever
                for _, _, done in batch + self._outgoing:
                    if not done.done():
                        done.set_exception(BrokerUnavailable("redis: publisher stopped"))
                self._outgoing.clear()
                raise
            except Exception as error:  # handed to every waiting publisher of the batch
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

    async def acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """SET NX: False while anyone holds it, the caller included (a holder renews)."""
        key = self._key("lease", name)
        taken = await self._call(self._redis.set, key, holder, nx=True, px=_ms(ttl_s))
        return bool(taken)

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        key = self._key("lease", name)
        renewed = await self._call(self._renew, keys=[key], args=[holder, _ms(ttl_s)])
        return bool(renewed)

    async def release(self, name: str, holder: str) -> bool:
        released = await self._call(self._release, keys=[self._key("lease", name)], args=[holder])
        return bool(released)

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
        await self._redis.aclose()

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
        return f"{self._prefix}channel:{channel}".encode()

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"


def _ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    return max(1, math.ceil(ttl_s * 1000))
