"""Per-user limits shared by every process, in Redis where it is configured.

Without Redis (one process) the hub counts a user's sockets and its Budget meters commands, both
per process. With Redis (several processes) both limits hold for the user across all of them:

- Sockets: one sorted set per user of socket ids scored by expiry (Redis's clock). A Lua script
  drops expired ids, then adds the new one only if the set is under the limit, so sockets opened
  at once on two processes are counted one by one. Each process re-scores its own sockets every
  third of `lease_s` and removes a socket's id when it closes; the ids of a process that died
  expire within `lease_s`.
- Commands: one token bucket per user (rate `per_s`, bursts of twice that), which processes draw
  from in batches of a quarter of a second's rate (SharedBudget), ahead of need, so that a
  command rarely waits on a round trip. A process holds at most a batch and a half, and tokens
  it drew and did not use lapse after BATCH_KEEP_S (so another process may have them): across
  N processes a user gets at most the bucket's burst plus N batches more, never N buckets.

Redis unreachable: each limit falls back to this process's own count (the hub's check, a
per-process Budget), logged once per outage; users are never locked out by the broker.
Keys carry the user's channel name as their hash tag (`kinwire:sockets:{user:<id>}`), so on a
Cluster each script touches one slot, the one of the user's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from server import events
from server.broker import BrokerUnavailable, redis_url
from server.broker.redis import UNAVAILABLE_ERRORS
from server.gateway.client import Budget
from server.settings import Settings

log = logging.getLogger("kinwire.gateway")
T = TypeVar("T")
BATCH_KEEP_S = 1.0  # tokens drawn from the shared bucket and unused by then are dropped
RETRY_S = 1.0  # after Redis failed to answer, the per-process limits alone for this long

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""
# KEYS[1] the user's sockets; ARGV[1] socket id, ARGV[2] limit, ARGV[3] lease in ms.
# Returns 1 when the socket is counted (or already was), 0 when the user is at the limit.
CLAIM_LUA = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
# KEYS[1] the user's sockets; ARGV[1] lease in ms, ARGV[2..] this process's socket ids there.
# Re-adds an id that is missing (Redis restarted, or it was admitted while Redis was down): the
# count is then the truth again, even if above the limit (new sockets wait until it is under).
RENEW_LUA = _NOW_MS + """
local until_ms = now_ms + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
# KEYS[1] the user's bucket; ARGV[1] rate a second, ARGV[2] burst, ARGV[3] tokens wanted.
# Kept in thousandths of a token (integers survive Lua-to-Redis conversion exactly). Returns
# the tokens granted, from 0 to wanted.
TAKE_LUA = _NOW_MS + """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000, tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'milli', 'stamp')
local milli, stamp = tonumber(h[1]) or burst, tonumber(h[2]) or now_ms
if now_ms > stamp then milli = math.min(burst, milli + (now_ms - stamp) * rate) end
local granted = math.min(want, math.floor(milli / 1000))
milli = milli - granted * 1000
redis.call('HSET', KEYS[1], 'milli', milli, 'stamp', math.max(now_ms, stamp))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return granted
"""


class Outage:
    """Logs that Redis could not be reached once per outage, and when it answers again."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, what: str, exc: Exception) -> None:
        if not self.down:
            self.down = True
            log.warning("per-user limits: Redis unreachable (%s: %s); each process limits "
                        "on its own until it answers", what, exc)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.warning("per-user limits: Redis answers again; limits are cluster-wide")


class SharedLimits:
    """The user's sockets and command bucket in Redis at `url` (server/broker/redis_url.py).

    sockets_max: open sockets per user in all; per_s: commands a second per user in all;
    lease_s: a socket id lapses this long after its process last renewed it; op_timeout_s
    bounds each call (past it, the per-process fallback)."""

    def __init__(self, url: str, *, sockets_max: int, per_s: int, lease_s: float,
                 node_id: str, namespace: str = "kinwire", op_timeout_s: float = 0.5) -> None:
        self.sockets_max, self.per_s, self.lease_s = sockets_max, per_s, lease_s
        self.batch = max(1, per_s // 4)
        self._node_id = node_id
        self._prefix = f"{namespace}:"
        self._op_timeout_s = op_timeout_s
        self._redis = redis_url.command_client(
            redis_url.parse(url), pool_max=32, pool_wait_s=op_timeout_s,
            socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
            driver_info=None)
        self._claim = self._redis.register_script(CLAIM_LUA)
        self._renew = self._redis.register_script(RENEW_LUA)
        self._take = self._redis.register_script(TAKE_LUA)
        self.outage = Outage()
        self._retry_at = 0.0
        self._mine: dict[str, set[str]] = {}  # account id -> ids of its sockets here
        self._serial = 0
        self._renewer: asyncio.Task | None = None
        self._closing = False

    def _key(self, kind: str, account_id: str) -> str:
        return f"{self._prefix}{kind}:{{{events.channel(account_id)}}}"

    async def _bounded(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.outage.down and time.monotonic() < self._retry_at:
            # Not asked again for RETRY_S: a Redis that times out would otherwise cost every
            # command op_timeout_s.
            raise BrokerUnavailable("redis: not answering")
        try:
            async with asyncio.timeout(self._op_timeout_s):
                answer = await call()
        except (RedisError, *UNAVAILABLE_ERRORS) as exc:  # any failure: fall back, never lock out
            self.outage.failed(what, exc)
            self._retry_at = time.monotonic() + RETRY_S
            raise BrokerUnavailable(f"redis: {exc!r}") from exc
        self.outage.ok()
        return answer

    async def claim(self, account_id: str) -> str | None:
        """Count a new socket of the user: its id, or None when the user is at the limit.
        Redis not answering: its id too (the caller's own per-process count decides)."""
        self._serial += 1
        socket_id = f"{self._node_id}:{self._serial}"
        try:
            counted = await self._bounded("claim", lambda: self._claim(
                keys=[self._key("sockets", account_id)],
                args=[socket_id, self.sockets_max, _ms(self.lease_s)]))
        except BrokerUnavailable:
            counted = 1  # admitted on this process's count; renewed into the set later
        if not int(counted):
            return None
        # Renewed from now on (never before the script admitted it: a renewal would add it).
        self._mine.setdefault(account_id, set()).add(socket_id)
        return socket_id

    async def release(self, account_id: str, socket_id: str) -> None:
        """The socket closed: it stops counting now (or, Redis down, when its id lapses)."""
        self._forget(account_id, socket_id)
        with contextlib.suppress(BrokerUnavailable):
            await self._bounded("release", lambda: self._redis.zrem(
                self._key("sockets", account_id), socket_id))

    def _forget(self, account_id: str, socket_id: str) -> None:
        mine = self._mine.get(account_id)
        if mine is not None:
            mine.discard(socket_id)
            if not mine:
                del self._mine[account_id]

    async def renew_all(self) -> None:
        """Re-score every socket of this process (one script per user)."""
        for account_id in list(self._mine):
            # Read when sent, not before the loop: an id released meanwhile is not re-added.
            ids = self._mine.get(account_id)
            if not ids:
                continue
            try:
                await self._bounded("renew", lambda a=account_id, s=tuple(ids): self._renew(
                    keys=[self._key("sockets", a)], args=[_ms(self.lease_s), *s]))
            except BrokerUnavailable:
                return  # the next round tries again; the ids lapse meanwhile at worst

    async def take(self, account_id: str, want: int) -> int:
        """Draw up to `want` tokens from the user's shared bucket; BrokerUnavailable if Redis
        does not answer."""
        granted = await self._bounded("take", lambda: self._take(
            keys=[self._key("rate", account_id)], args=[self.per_s, 2 * self.per_s, want]))
        return int(granted)

    def budget(self, account_id: str) -> SharedBudget:
        return SharedBudget(self, account_id)

    async def _renew_forever(self) -> None:
        # Ends on `_closing`, not only on cancel: a cancel that lands inside redis-py during a
        # call may be swallowed there (seen under load: close() then waited forever).
        while not self._closing:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_all()
            except Exception:
                log.exception("per-user limits: renewing this process's sockets failed")

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="limits-renew")

    async def close(self) -> None:
        self._closing = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await redis_url.close(self._redis)


class SharedBudget:
    """A user's command budget on this process, drawn from the user's shared bucket in batches.
    `take` spends a token already drawn (no round trip) and, when few are left, draws the next
    batch in the background, so that a steady sender never waits on Redis; `reserve` waits for
    a draw when none is left. Redis down: this process's own bucket (the memory broker's rule)
    decides."""

    __slots__ = ("_account_id", "_draw", "_empty_until", "_expires", "_limits", "_local",
                 "_tokens")

    def __init__(self, limits: SharedLimits, account_id: str) -> None:
        self._limits = limits
        self._account_id = account_id
        self._tokens = 0
        self._expires = 0.0
        self._empty_until = 0.0  # the shared bucket was empty: refuse without asking until then
        self._draw: asyncio.Task | None = None
        self._local = Budget(limits.per_s)

    def take(self) -> bool:
        if self._tokens <= 0 or time.monotonic() >= self._expires:
            return False
        self._tokens -= 1
        if self._tokens <= self._limits.batch // 2 and self._draw is None:
            self._draw = asyncio.create_task(self._drawn(), name="limits-draw")
        return True

    async def reserve(self) -> bool:
        """Wait for a draw and spend a token of it; False when the shared bucket is empty.
        Commands arriving together on several sockets wait on one draw of a batch: those the
        batch does not cover draw again (before: refused while the bucket still had its burst)."""
        while True:
            if time.monotonic() < self._empty_until:
                return False  # a flood of refused commands costs no round trip each
            if self._draw is None:
                self._draw = asyncio.create_task(self._drawn(), name="limits-draw")
            if not await asyncio.shield(self._draw):
                return self._local.take()
            if self.take():
                return True

    async def _drawn(self) -> bool:
        """Draw a batch into hand; False when Redis did not answer."""
        try:
            granted = await self._limits.take(self._account_id, self._limits.batch)
        except BrokerUnavailable:
            return False
        finally:
            self._draw = None
        now = time.monotonic()
        held = self._tokens if now < self._expires else 0
        self._tokens, self._expires = held + granted, now + BATCH_KEEP_S
        if granted < self._limits.batch:
            self._empty_until = now + (self._limits.batch - granted) / self._limits.per_s
        return True


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def make_limits(settings: Settings, node_id: str) -> SharedLimits | None:
    """Shared limits where Redis is configured; else None (the hub's per-process limits)."""
    if not settings.redis_url:
        return None
    return SharedLimits(settings.redis_url, sockets_max=settings.ws_connections_per_user_max,
                        per_s=settings.ws_commands_per_s,
                        lease_s=settings.ws_connections_lease_s, node_id=node_id)
