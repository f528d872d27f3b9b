"""The broker port: publish/subscribe, presence and leases between Kinwire processes. Here, in
common/, because every layer that signals or holds a lease (server/, signalling/) is given one.

Two implementations sit side by side in server/broker/: `memory.MemoryBroker` (one process, the
embedded default) and `redis.RedisBroker` (several processes; chosen by REDIS_URL). One contract
test suite (tests/integration/test_broker_contract.py) runs against both.

The broker carries *signals*, never the record: the SQL store is the source of truth, and a
lost signal costs latency (the client resyncs), never data. So the contract is deliberately weak
where Redis pub/sub is weak, and the memory broker is exactly as weak (it encodes every payload
with the same codec and bounds the same queues), so tests on it mean something.

Contract
- Payloads are dicts of msgpack-able values; `publish` encodes them (a payload that cannot be
  encoded raises TypeError in both implementations) and returns after the broker accepted it.
  It raises BrokerUnavailable when the broker cannot be reached; it never blocks for longer
  than the implementation's operation timeout.
- Delivery is at most once per subscription, in publish order per channel from one publisher.
  A payload published before `subscribe` returned is not delivered to that subscription.
- A subscription holds at most `queue_max` undelivered payloads. When a consumer falls further
  behind, the subscription drops its queue and yields one `Gap` marker instead, then carries on:
  the consumer must resync from the store. The same `Gap` marker is yielded after the broker
  connection was lost and regained (signals may have been missed meanwhile).
- Presence: `touch(key, member, ttl_s)` marks a member present until the ttl runs out;
  `present(key)` lists the members still present; `leave(key, member)` removes one at once;
  `renewed(key)` maps each member still present to the seconds since its last touch, by the
  broker's clock (None if the toucher did not record it: a process of an older version), so
  a caller can tell when a member was last proven alive without comparing clocks.
  Each process's liveness lease is its node id in the presence key `nodes`, touched every
  third of KINWIRE_NODE_LEASE_S: a visit party counts only while the process holding its
  socket is present there, and its time counts only up to its last touch (signalling/meters.py,
  docs/visits.md "Trust").
- Leases: `acquire(name, holder, ttl_s)` succeeds for one holder at a time and returns the
  grant's epoch (0 when it did not succeed): the epochs of one name's grants increase, so a
  holder can carry its epoch into its writes and the store can refuse an older one (fencing,
  signalling/meters.py). `renew` extends it only for the current holder; `release` frees it
  only for the current holder; each returns whether it took effect. A lease whose ttl passes
  without renewal is free for another holder. A broker that fails over may lose a lease (two
  holders then believe they hold it) and even the epoch counter: the store's fencing check,
  not the broker, is what keeps a stale holder from writing.
  `holder(name)` is the current holder, or None when the lease is free. Releasing a lease on
  behalf of a holder known to be dead (`release(name, dead_holder)`) is a compare-and-delete:
  it frees the lease only if that holder still has it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from common.errors import BrokerUnavailable  # noqa: F401 (the broker port's error)


@dataclass(frozen=True, slots=True)
class Gap:
    """Signals may have been missed on this subscription: resync from the store."""

    reason: str  # "overflow" | "reconnected"


class Recent(Protocol):
    """What this process published lately, per account (server/broker/recent.py)."""

    def add(self, account_id: str, event: Any) -> None: ...

    def get(self, account_id: str) -> deque[Any] | None: ...


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any] | Gap]: ...

    async def close(self) -> None: ...


class Broker(Protocol):
    # What this process published lately, for its own feeds (server/broker/recent.py).
    recent: Recent

    async def publish(self, channel: str, payload: dict[str, Any]) -> None: ...

    async def subscribe(self, channel: str, *, queue_max: int = 1024) -> Subscription: ...

    async def touch(self, key: str, member: str, ttl_s: float) -> None: ...

    async def leave(self, key: str, member: str) -> None: ...

    async def present(self, key: str) -> set[str]: ...

    async def renewed(self, key: str) -> dict[str, float | None]: ...

    async def acquire(self, name: str, holder: str, ttl_s: float) -> int: ...

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool: ...

    async def release(self, name: str, holder: str) -> bool: ...

    async def holder(self, name: str) -> str | None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
