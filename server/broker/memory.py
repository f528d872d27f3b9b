"""The broker for one process: the embedded default, and the fast double in tests.

It is as strict as RedisBroker: every payload goes through the msgpack codec (a payload that
cannot be encoded raises TypeError; each subscription decodes its own copy), subscriptions have
the same bounded queues and Gap markers, and presence and leases expire by ttl. Time comes from
an injectable monotonic `clock`, so tests move it forward instead of sleeping.

Contract (see server.broker): delivery is at most once per subscription and in publish order;
`publish` returns after the payload is in every current subscription's queue, so a subscription
made after `publish` returned never sees it. Every operation is atomic (one event loop, no
awaits inside). After `close()` every operation raises BrokerUnavailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from server.broker import BrokerUnavailable, codec
from server.broker.recent import RecentEvents
from server.broker.subscription import QueuedSubscription

SWEEP_INTERVAL_S = 1.0


class MemoryBroker:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._channels: dict[str, set[QueuedSubscription]] = {}
        self._presence: dict[str, dict[str, float]] = {}  # key -> member -> expires_at
        self._touched: dict[str, dict[str, float]] = {}  # key -> member -> last touched at
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (holder, expires_at)
        self._epochs: dict[str, int] = {}  # name -> the last grant's epoch
        self._sweep_at = clock() + SWEEP_INTERVAL_S
        self._closed = False
        self.recent = RecentEvents()  # what this process published lately (recent.py)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        data = codec.encode(payload)
        self._check_open()
        for subscription in self._channels.get(channel, ()):
            subscription.push(data)

    async def subscribe(self, channel: str, *, queue_max: int = 1024) -> QueuedSubscription:
        self._check_open()
        subscription = QueuedSubscription(channel, queue_max, self._unsubscribe)
        subscription.live = True
        self._channels.setdefault(channel, set()).add(subscription)
        return subscription

    async def _unsubscribe(self, subscription: QueuedSubscription) -> None:
        subscriptions = self._channels.get(subscription.channel)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._channels[subscription.channel]

    async def touch(self, key: str, member: str, ttl_s: float) -> None:
        self._check_open()
        now = self._now()
        self._presence.setdefault(key, {})[member] = now + _positive(ttl_s)
        self._touched.setdefault(key, {})[member] = now

    async def leave(self, key: str, member: str) -> None:
        self._check_open()
        for held in (self._presence, self._touched):
            members = held.get(key)
            if members is not None:
                members.pop(member, None)
                if not members:
                    del held[key]

    async def present(self, key: str) -> set[str]:
        self._check_open()
        now = self._now()
        members = self._presence.get(key, {})
        return {member for member, expires_at in members.items() if expires_at > now}

    async def renewed(self, key: str) -> dict[str, float | None]:
        now = self._now()
        present = await self.present(key)
        touched = self._touched.get(key, {})
        return {member: now - touched[member] for member in present}

    async def acquire(self, name: str, holder: str, ttl_s: float) -> int:
        self._check_open()
        ttl_s = _positive(ttl_s)
        now = self._now()
        if self._holder(name, now) is not None:
            return 0  # like SET NX: even the current holder must renew, not re-acquire
        self._leases[name] = (holder, now + ttl_s)
        self._epochs[name] = self._epochs.get(name, 0) + 1
        return self._epochs[name]

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        self._check_open()
        ttl_s = _positive(ttl_s)
        now = self._now()
        if self._holder(name, now) != holder:
            return False
        self._leases[name] = (holder, now + ttl_s)
        return True

    async def release(self, name: str, holder: str) -> bool:
        self._check_open()
        if self._holder(name, self._now()) != holder:
            return False
        del self._leases[name]
        return True

    async def holder(self, name: str) -> str | None:
        self._check_open()
        return self._holder(name, self._now())

    async def ping(self) -> None:
        self._check_open()

    async def close(self) -> None:
        """End every subscription and refuse further use; idempotent."""
        self._closed = True
        for subscriptions in self._channels.values():
            for subscription in subscriptions:
                subscription.end()
        self._channels.clear()
        self._presence.clear()
        self._touched.clear()
        self._leases.clear()

    def _holder(self, name: str, now: float) -> str | None:
        lease = self._leases.get(name)
        if lease is None or lease[1] <= now:
            return None
        return lease[0]

    def _now(self) -> float:
        now = self._clock()
        if now >= self._sweep_at:
            self._sweep(now)
        return now

    def _sweep(self, now: float) -> None:
        # Redis forgets expired keys by itself; without this, members and leases nobody asks
        # about again would stay here for the life of the process.
        self._sweep_at = now + SWEEP_INTERVAL_S
        for key in list(self._presence):
            members = self._presence[key]
            for member in [m for m, expires_at in members.items() if expires_at <= now]:
                del members[member]
                self._touched.get(key, {}).pop(member, None)
            if not members:
                del self._presence[key]
                self._touched.pop(key, None)
        for name in [n for n, (_, expires_at) in self._leases.items() if expires_at <= now]:
            del self._leases[name]

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("broker is closed")


def _positive(ttl_s: float) -> float:
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    return ttl_s
