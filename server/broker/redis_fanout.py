"""Redis pub/sub for a whole process: one connection, one reader task, local fan-out.

A process may hold 10k subscriptions, so they never get a Redis connection each. The reader
task owns the one pub/sub connection: it SUBSCRIBEs a channel when its first local subscription
appears, UNSUBSCRIBEs when the last one closes, and hands each message to the local
subscriptions of its channel (each decodes its own copy).

Guarantees
- `subscribe` returns once the subscription is live: it sends a PING with a unique token after
  the SUBSCRIBE and turns the subscription on when the reader reads that token's pong. Redis
  answers in order on one connection, so every payload published before `subscribe` was called
  arrives before the pong (not delivered) and every one published after it returned arrives
  after (delivered, unless the connection drops or the queue overflows).
- When the connection drops the reader reconnects with capped exponential backoff, re-subscribes
  every channel that has local subscriptions and, as Redis confirms each channel, pushes
  Gap("reconnected") into that channel's live subscriptions before any new payload.
- A connection that stays silent is PINGed every `health_interval_s`; no answer within another
  interval counts as a drop, so a half-open TCP connection cannot stall delivery for long.
- `sharded`: SSUBSCRIBE/SUNSUBSCRIBE (Redis 7 sharded pub/sub, on one cluster node: see
  redis_shards.py), one channel per command since a command's channels must share a slot.
  A channel the server drops on its own (its slot moved, the node became a replica) and every
  channel of a lost connection are reported to `on_lost`, which may move them to another
  node's fan-out (`take`, `adopt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from common.metrics import Counters
from server.broker import BrokerUnavailable
from server.broker.subscription import RECONNECTED, QueuedSubscription

log = logging.getLogger(__name__)

# What a lost or slow Redis raises; ResponseError and friends are RedisErrors too, and in the
# reader they are treated like a drop (reconnect) rather than killing delivery for the process.
DOWN_ERRORS = (RedisError, OSError, TimeoutError, BrokerUnavailable)
SUBSCRIBE_CHANNELS_PER_COMMAND_MAX = 512


class _NoMetrics:
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...


class RedisFanout:
    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        op_timeout_s: float,
        backoff_s_min: float,
        backoff_s_max: float,
        health_interval_s: float,
        sharded: bool = False,
        on_lost: Callable[[RedisFanout, list[bytes]], None] | None = None,
        metrics: Counters | None = None,
    ) -> None:
        self._new_connection = connect
        self._sharded = sharded
        self._sub, self._unsub = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded \
            else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._message = b"smessage" if sharded else b"message"
        self._subscribed = b"ssubscribe" if sharded else b"subscribe"
        self._on_lost = on_lost
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self._op_timeout_s = op_timeout_s
        self._backoff_s_min = backoff_s_min
        self._backoff_s_max = backoff_s_max
        self._health_interval_s = health_interval_s
        # wire channel -> its local subscriptions (a dict keeps them in subscribe order)
        self._channels: dict[bytes, dict[QueuedSubscription, None]] = {}
        self._on_wire: set[bytes] = set()  # SUBSCRIBEd on the current connection
        self._gap_due: set[bytes] = set()  # re-subscribed, confirmation (and Gap) pending
        self._barriers: dict[bytes, tuple[QueuedSubscription, asyncio.Future[None]]] = {}
        self._tokens = itertools.count()
        self._conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        # Every write to the pub/sub connection goes through this lock, so _on_wire always
        # matches the order of SUBSCRIBE/UNSUBSCRIBE/PING on the wire.
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def subscribe(self, wire: bytes, channel: str, queue_max: int) -> QueuedSubscription:
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        subscription = QueuedSubscription(channel, queue_max, functools.partial(self._drop, wire))
        self._start_reader()
        self._channels.setdefault(wire, {})[subscription] = None
        token = b"kinwire-live-%d" % next(self._tokens)
        barrier = asyncio.get_running_loop().create_future()
        self._barriers[token] = (subscription, barrier)
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._connected.wait()
                async with self._send_lock:
                    conn = self._live_connection()
                    if wire not in self._on_wire:
                        await conn.send_command(self._sub, wire)
                        self._on_wire.add(wire)
                    await conn.send_command("PING", token)
                await barrier
        except BaseException as error:
            self._barriers.pop(token, None)
            subscription.end()
            await self._drop(wire, subscription)
            if isinstance(error, DOWN_ERRORS):
                raise BrokerUnavailable(f"subscribe failed: {error!r}") from error
            raise
        return subscription

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
            self._reader = None
        for subscriptions in self._channels.values():
            for subscription in subscriptions:
                subscription.end()
        self._channels.clear()

    async def _drop(self, wire: bytes, subscription: QueuedSubscription) -> None:
        subscriptions = self._channels.get(wire)
        if subscriptions is None or subscription not in subscriptions:
            return
        del subscriptions[subscription]
        if subscriptions:
            return
        del self._channels[wire]
        if self._closed:
            return
        try:
            async with asyncio.timeout(self._op_timeout_s), self._send_lock:
                # A new subscription may have claimed the channel while we waited for the lock.
                if self._conn is None or wire not in self._on_wire or wire in self._channels:
                    return
                self._on_wire.discard(wire)
                await self._conn.send_command(self._unsub, wire)
        except DOWN_ERRORS:
            # The connection is going down; its replacement will not subscribe this channel.
            pass

    @property
    def channels(self) -> list[bytes]:
        return list(self._channels)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def take(self, wire: bytes) -> dict[QueuedSubscription, None]:
        """Give up a channel's subscriptions (to move them to another node's fan-out); the
        server is not told (the connection is gone, or the server dropped the channel)."""
        self._on_wire.discard(wire)
        self._gap_due.discard(wire)
        return self._channels.pop(wire, {})

    async def adopt(self, wire: bytes, subscriptions: dict[QueuedSubscription, None]) -> None:
        """Take over subscriptions of another fan-out: they get Gap("reconnected") once this
        connection confirms the channel (signals may have been missed while it moved)."""
        if self._closed:
            for subscription in subscriptions:
                subscription.end()
            return
        for subscription in subscriptions:
            subscription.rebind(functools.partial(self._drop, wire))
        self._channels.setdefault(wire, {}).update(subscriptions)
        self._gap_due.add(wire)
        self._start_reader()
        with contextlib.suppress(*DOWN_ERRORS):
            async with asyncio.timeout(self._op_timeout_s), self._send_lock:
                if self._conn is not None and wire not in self._on_wire:
                    await self._conn.send_command(self._sub, wire)
                    self._on_wire.add(wire)
        # Not connected: the next connection subscribes it (and the Gap follows).

    def _start_reader(self) -> None:
        if self._reader is None and not self._closed:
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name="kinwire-broker-pubsub"
            )

    def _live_connection(self) -> AbstractConnection:
        if self._conn is None:
            raise BrokerUnavailable("pub/sub connection lost")
        return self._conn

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay_s = self._backoff_s_min
        had_connection = False
        down_since: float | None = None  # the connection was lost then (monotonic)
        while True:
            started = loop.time()
            try:
                conn = await self._connect(gap_due=had_connection)
            except DOWN_ERRORS as error:
                # One line per outage, not one per attempt.
                level = logging.WARNING if delay_s == self._backoff_s_min else logging.DEBUG
                log.log(level, "broker pub/sub: connect failed: %r", error)
            except Exception:
                log.exception("broker pub/sub: unexpected error while connecting")
            else:
                if down_since is not None:
                    self.metrics.inc("kinwire_broker_reconnects_total")
                    self.metrics.inc("kinwire_broker_down_seconds_total",
                                     loop.time() - down_since)
                    log.warning("broker pub/sub: reconnected after %.1f s",
                                loop.time() - down_since)
                had_connection = True
                try:
                    await self._pump(conn)
                except DOWN_ERRORS as error:
                    log.warning("broker pub/sub: connection lost: %r", error)
                except Exception:
                    log.exception("broker pub/sub: unexpected error; reconnecting")
                finally:
                    await self._disconnect(conn)
                    down_since = loop.time()
                    if self._on_lost is not None and self._channels:
                        self._on_lost(self, list(self._channels))
                if loop.time() - started > self._backoff_s_max:
                    delay_s = self._backoff_s_min  # a connection that lived was not a flap
                    continue
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self._backoff_s_max)

    async def _connect(self, *, gap_due: bool) -> AbstractConnection:
        conn = self._new_connection()
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await conn.connect()
                async with self._send_lock:
                    wires = list(self._channels)
                    step = SUBSCRIBE_CHANNELS_PER_COMMAND_MAX
                    for start in range(0, len(wires), step):
                        chunk = wires[start : start + step]
                        if self._sharded:  # one channel a command: a command's share a slot
                            await conn.send_packed_command(
                                conn.pack_commands([(self._sub, w) for w in chunk]))
                        else:
                            await conn.send_command(self._sub, *chunk)
                    self._on_wire = set(wires)
                    # adopted channels owe their Gap even on a first connection
                    self._gap_due = set(wires) if gap_due else self._gap_due & set(wires)
                    self._conn = conn
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        self._connected.set()
        return conn

    async def _disconnect(self, conn: AbstractConnection) -> None:
        self._connected.clear()
        self._conn = None
        self._on_wire.clear()
        for _, barrier in self._barriers.values():
            if not barrier.done():
                barrier.set_exception(BrokerUnavailable("pub/sub connection lost"))
        await conn.disconnect(nowait=True)

    async def _pump(self, conn: AbstractConnection) -> None:
        pinged = False
        while True:
            frame = await conn.read_response(timeout=self._health_interval_s)
            if frame is not None:
                pinged = False
                self._dispatch(frame)
            elif pinged:
                raise BrokerUnavailable("pub/sub connection silent")
            else:
                pinged = True
                async with asyncio.timeout(self._op_timeout_s), self._send_lock:
                    await conn.send_command("PING")

    def _dispatch(self, frame: object) -> None:
        if not isinstance(frame, list):
            # Outside subscribed mode (no channels left) PING answers plainly.
            self._pass_barrier(frame)
            return
        kind = frame[0]
        if kind == self._message:
            for subscription in self._channels.get(frame[1], ()):
                if subscription.live:
                    subscription.push(frame[2])
        elif kind == b"pong":
            self._pass_barrier(frame[1])
        elif kind == b"sunsubscribe" and frame[1] in self._on_wire:
            # Not asked for (_drop takes a channel off _on_wire first): the server dropped it,
            # its slot lives elsewhere now.
            self._on_wire.discard(frame[1])
            if self._on_lost is not None and frame[1] in self._channels:
                self._on_lost(self, [frame[1]])
        elif kind == self._subscribed and frame[1] in self._gap_due:
            self._gap_due.discard(frame[1])
            for subscription in self._channels.get(frame[1], ()):
                if subscription.live:
                    subscription.mark_gap(RECONNECTED)

    def _pass_barrier(self, token: object) -> None:
        entry = self._barriers.pop(token, None) if isinstance(token, bytes) else None
        if entry is None:
            return
        subscription, barrier = entry
        subscription.live = not subscription.closed
        if not barrier.done():
            barrier.set_result(None)
