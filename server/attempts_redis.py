"""The attempt counters (server/attempts.py) in Redis, where Redis is configured: the same
keys, limits, leases and back-off, decided for all of an attempt's keys at once by one Lua
script (Redis runs a script alone, so attempts sent all at once are counted one by one), and
shared by every process. Times are the app's clock (passed in, as the SQL counters take it),
in milliseconds; each key expires by itself PRUNE_AFTER after it was last counted. A back-off
alert still goes on the facility's audit log, in the store."""

from __future__ import annotations

import math
from datetime import datetime

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server.attempts import ATTEMPT_LEASE_S, MESSAGES, PRUNE_AFTER, Attempts, Key, alert
from server.broker import BrokerUnavailable, redis_url
from store import Store

# KEYS: the attempt's keys in order. ARGV: now, lease, keep (ms), then per key its window
# (ms), limit (-1: none), backoff (0/1), single (0/1). Returns {0} when every key took the
# attempt, else {index, 'busy' | 'over', wait ms} for the first that refused (none counted).
RESERVE_LUA = """
local now, lease, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rows = {}
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local window, limit = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local backoff, single = ARGV[at + 3] == '1', ARGV[at + 4] == '1'
  local h = redis.call('HMGET', key, 'count', 'start', 'busy', 'next')
  local count, start = tonumber(h[1]) or 0, tonumber(h[2]) or now
  local busy, nxt = tonumber(h[3]) or 0, tonumber(h[4]) or 0
  local stale = start <= now - window
  if single and busy > now then return {i, 'busy', busy - now} end
  if not stale then
    if backoff then
      if nxt > now then return {i, 'over', nxt - now} end
    elseif limit >= 0 and count >= limit then
      return {i, 'over', start + window - now}
    end
  end
  rows[i] = {stale, count, start, nxt, single}
end
for i, key in ipairs(KEYS) do
  local r = rows[i]
  if r[1] then
    redis.call('HSET', key, 'count', 1, 'start', now, 'next', 0)
  else
    redis.call('HSET', key, 'count', r[2] + 1, 'start', r[3])
  end
  if r[5] then redis.call('HSET', key, 'busy', now + lease) end
  redis.call('PEXPIRE', key, keep)
end
return {0}
"""

# KEYS as above. ARGV: now (ms), succeeded (0/1), back-off base (ms), then per key: single,
# backoff (0/1), limit (-1: none), window (ms). Releases the leases; a success takes its attempt
# back; a failure past a back-off key's limit sets its back-off, in the same step as the lease
# is released (else another attempt could start in between). Returns each key's count.
SETTLE_LUA = """
local now, succeeded, base = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local counts = {}
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local single, backoff = ARGV[at + 1] == '1', ARGV[at + 2] == '1'
  local limit, window = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local count = tonumber(redis.call('HGET', key, 'count') or '-1')
  if count >= 0 then
    if single then redis.call('HSET', key, 'busy', 0) end
    if succeeded then
      if count > 0 then
        count = count - 1
        redis.call('HSET', key, 'count', count)
      end
    elseif backoff and limit >= 0 and count >= limit then
      local delay = math.min(base * 2 ^ math.min(count - limit, 20), window)
      redis.call('HSET', key, 'next', now + delay)
    end
  end
  counts[i] = count
end
return counts
"""


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class RedisAttempts(Attempts):
    """Attempts counted in Redis at `url`; every call bounded by `op_timeout_s` (past it, or
    with Redis down, BrokerUnavailable: the login answers 503 and may be retried)."""

    def __init__(self, url: str, window_s: float, backoff_base_s: float = 30.0, *,
                 namespace: str = "kinwire", op_timeout_s: float = 1.0) -> None:
        super().__init__(window_s, backoff_base_s)
        target = redis_url.parse(url)
        self._redis = redis_url.command_client(
            target, pool_max=64, pool_wait_s=op_timeout_s, socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s, driver_info=None)
        # One script decides all of an attempt's keys: on a Cluster they must share a slot, so
        # they all carry one hash tag (one node counts every login attempt; they are few).
        tag = "{attempts}:" if target.kind == "cluster" else ""
        self._prefix = f"{namespace}:attempt:{tag}"
        self._reserve = self._redis.register_script(RESERVE_LUA)
        self._settle = self._redis.register_script(SETTLE_LUA)

    def _names(self, keys: list[Key]) -> list[str]:
        return [self._prefix + key.name for key in keys]

    async def reserve(self, store: Store, keys: list[Key], now: datetime) -> None:
        keys = sorted(keys, key=lambda k: k.name)
        args: list[int] = [_ms(now), int(ATTEMPT_LEASE_S * 1000),
                           int(PRUNE_AFTER.total_seconds() * 1000)]
        for key in keys:
            args += [int(self._window(key).total_seconds() * 1000),
                     -1 if key.limit is None else key.limit, int(key.backoff), int(key.single)]
        try:
            answer = await self._reserve(keys=self._names(keys), args=args)
        except RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        if int(answer[0]) == 0:
            return
        key, kind, wait_ms = keys[int(answer[0]) - 1], answer[1], int(answer[2])
        if kind in (b"busy", "busy"):
            raise Refused(key.busy, MESSAGES[key.busy], retry_after_s=1)
        raise Refused(key.over, MESSAGES[key.over],
                       retry_after_s=max(1, math.ceil(wait_ms / 1000)))

    async def settle(self, store: Store, keys: list[Key], now: datetime, *, succeeded: bool,
                     facility_id: str | None = None, target: str | None = None,
                     actor_id: str = "system") -> None:
        keys = sorted(keys, key=lambda k: k.name)
        args: list[int] = [_ms(now), int(succeeded),
                           int(self.backoff_base.total_seconds() * 1000)]
        for key in keys:
            args += [int(key.single), int(key.backoff), -1 if key.limit is None else key.limit,
                     int(self._window(key).total_seconds() * 1000)]
        try:
            counts = await self._settle(keys=self._names(keys), args=args)
        except RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        crossed = [(key, int(count)) for key, count in zip(keys, counts, strict=True)
                   if not succeeded and key.backoff and int(count) == key.limit]
        if crossed:
            async with store.write() as conn:
                for key, count in crossed:
                    await alert(conn, key, count, now, facility_id=facility_id,
                                actor_id=actor_id, target=target)

    async def prune(self, conn: AsyncConnection, now: datetime) -> int:
        return 0  # each key expires by itself (PEXPIRE in RESERVE_LUA)

    async def close(self) -> None:
        await redis_url.close(self._redis)
