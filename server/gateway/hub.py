"""This process's sockets, grouped by user, each user fed from the broker.

A user with at least one socket here has one Feed: one broker subscription to the user's
channel and one pump task. A signal `{seq}` (or a Gap) makes the pump read the user's events
after what its sockets have been sent and push them in order; `{live: frame}` is pushed as is
(typing, visit signalling); `{revoked: session_id}` closes that session's sockets with 4009.
Sync and the pump take the same per-user lock, so a socket never sees an event twice from the
server, nor out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select

from common.broker import Subscription
from common.errors import Refused
from server import events
from server.broker import Broker, BrokerUnavailable, Gap, codec
from server.broker.subscription import QueuedSubscription
from server.gateway.client import REVOKED, Client
from server.gateway.envelope import encode, push
from server.gateway.limits import SharedLimits
from server.http.metrics import Metrics
from server.schema import event_heads
from store import Statement, Store

if TYPE_CHECKING:
    from server.gateway.client import Budget
    from server.gateway.limits import SharedBudget

log = logging.getLogger("kinwire.gateway")
# A healthy broker confirms a subscription in about a millisecond; past this, a new socket is
# served without it and its feed subscribes in the background (then catches up).
FIRST_SUBSCRIBE_WAIT_S = 0.2
# A socket's first sync within this long of attaching, from the seq its attach read, is
# answered from that read (Hub.sync); later syncs, a client's way to heal, read the store.
ATTACHED_HEAD_FRESH_S = 5.0
# events.head()'s statement, built once: every socket's attach runs it, and building it cost
# more CPU than SQLite took to answer (docs/BENCHMARKS.md, "Connect").
_HEAD = Statement(select(event_heads.c.last_seq)
                  .where(event_heads.c.account_id == bindparam("p_account")))


class Feed:
    def __init__(self, hub: Hub, account_id: str) -> None:
        self.hub = hub
        self.account_id = account_id
        self.clients: set[Client] = set()
        self.budget: Budget | SharedBudget | None = None  # the user's command budget, shared
        self.lock = asyncio.Lock()
        self.subscription: Subscription | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False
        # Set while a broker subscription delivers to this feed: live frames (visit signalling)
        # published before it are lost, so a visit join waits for it (Hub.wait_live).
        self.live = asyncio.Event()

    async def start(self) -> None:
        """Subscribe before the caller reads the user's head of events, when the broker
        answers: every event after that head then arrives as a signal, so the feed needs no
        first catch-up (one store read less per new feed) and a live frame published once
        `auth` is answered is not missed. If the broker is away or slow, the socket is served
        without waiting longer than FIRST_SUBSCRIBE_WAIT_S: the task subscribes later and
        catches up then."""
        first = None
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            async with asyncio.timeout(FIRST_SUBSCRIBE_WAIT_S):
                first = await self.hub.broker.subscribe(events.channel(self.account_id),
                                                        queue_max=1024)
        self.subscription = first
        if first is not None:
            self.live.set()
        self.task = asyncio.create_task(self._run(first), name=f"feed-{self.account_id}")

    async def stop(self) -> None:
        """End the feed without cancelling it mid-query: a task cancelled inside a database
        call leaves its connection to be torn down behind everyone's back. Closing the
        subscription ends the loop at its next step; cancel only a feed that will not end."""
        self.stopping = True
        if self.subscription is not None:
            with contextlib.suppress(BrokerUnavailable):
                await self.subscription.close()
        if self.task is None or self.task.done():
            return
        # An idle feed ends at its next step: let it take that step before arming a timer
        # and a shield (every last socket of a user pays this on close).
        await asyncio.sleep(0)
        if self.task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5.0)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, first: Any = None) -> None:
        """Subscribe (retrying while the broker is away), catch up on what was written
        meanwhile, then follow the signals. A socket never waits on the broker to be served:
        without it, events still reach it by sync and at the next catch-up. `first`, a
        subscription taken before the sockets' head was read, needs no catch-up."""
        delay_s = 0.1
        while not self.stopping:
            if first is not None:
                subscription, first = first, None
                self.subscription = subscription
            else:
                try:
                    subscription = await self.hub.broker.subscribe(
                        events.channel(self.account_id), queue_max=1024)
                except BrokerUnavailable:
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 2.0)
                    continue
                if self.stopping:
                    await subscription.close()
                    return
                self.subscription = subscription
                self.live.set()
                await self._deliver(Gap("subscribed"))
            if isinstance(subscription, QueuedSubscription):
                subscription.direct = self._deliver_live
            async for item in subscription:
                await self._deliver(item)
            self.live.clear()
            return  # the subscription was closed: the feed or the process is stopping

    async def _deliver(self, item: Any) -> None:
        try:
            if isinstance(item, Gap) or "seq" in item:
                await self.catch_up(None if isinstance(item, Gap) else item["seq"])
            elif "live" in item:
                self.fan_out(item["live"])
            elif "revoked" in item:
                for client in list(self.clients):
                    if client.principal and client.principal.session_id == item["revoked"]:
                        client.close(REVOKED, "session revoked")
        except Exception:
            # One bad signal or a store hiccup must not end the user's feed.
            log.exception("feed for %s failed to deliver; the next signal retries",
                          self.account_id)

    def _deliver_live(self, data: bytes) -> bool:
        """A live frame arriving while this feed waits for the next item: pushed now, from
        the broker's reader, rather than by waking the feed's task (which would push it the
        same way, nothing being ahead of it). Anything else is left to the task: False."""
        try:
            item = codec.decode(data)
            if "live" not in item or "seq" in item:
                return False
            self.fan_out(item["live"])
        except Exception:
            log.exception("feed for %s failed to push a live frame", self.account_id)
        return True

    def fan_out(self, frame: dict[str, Any]) -> None:
        encoded: dict[str, str | bytes] = {}
        pushed = 0
        for client in list(self.clients):
            if client.codec not in encoded:
                encoded[client.codec] = encode(client.codec, frame)
            pushed += client.send_encoded(encoded[client.codec])
        self.hub.metrics.inc("kinwire_pushes_total", pushed)  # metrics

    async def catch_up(self, seq: int | None) -> None:
        async with self.lock:
            live = [c for c in self.clients if not c.closing]
            if not live:
                return
            floor = min(c.last_seq for c in live)
            if seq is not None and seq <= floor:
                return
            if seq is not None:
                kept = self._kept(floor, seq)
                if kept is not None:
                    self._push(kept, live)
                    return
            page = self.hub.page_max
            while True:
                async with self.hub.store.read() as conn:
                    batch = await events.since(conn, self.account_id, floor, page)
                self._push(batch, live)
                if len(batch) < page:
                    return
                floor = batch[-1].seq

    def _kept(self, floor: int, seq: int) -> list[events.Event] | None:
        """floor+1 .. seq from the events this process just committed, when it has every one
        of them (a send's push then costs no store read); else None: read the store."""
        kept = self.hub.broker.recent.get(self.account_id)
        if not kept or kept[-1].seq < seq:
            return None
        found = [e for e in kept if e.seq > floor]
        if not found or found[0].seq != floor + 1 or found[-1].seq - floor != len(found):
            return None  # a gap: an event written elsewhere, or not remembered
        return found

    def _push(self, batch: list[events.Event], live: list[Client]) -> None:
        for event in batch:
            frame = push(event.type, event.data, event.seq)
            for client in live:
                if event.seq > client.last_seq and client.send(frame):
                    client.last_seq = event.seq
                    self.hub.metrics.inc("kinwire_pushes_total")  # metrics


class Hub:
    def __init__(self, store: Store, broker: Broker, *, per_user_max: int, page_max: int,
                 metrics: Metrics | None = None, limits: SharedLimits | None = None) -> None:
        self.metrics = metrics or Metrics()  # metrics: kinwire_pushes_total
        self.store = store
        self.broker = broker
        self.per_user_max = per_user_max
        # With Redis: a user's sockets and commands counted across processes (gateway/limits.py)
        self.limits = limits
        self.page_max = page_max
        self.feeds: dict[str, Feed] = {}
        self._feed_locks: dict[str, asyncio.Lock] = {}
        self._ending: set[Feed] = set()  # detached feeds still winding down
        self._cleanups: set[asyncio.Task] = set()

    def count(self) -> int:
        return sum(len(f.clients) for f in self.feeds.values())

    async def attach(self, client: Client) -> None:
        assert client.principal is not None
        account_id = client.principal.account_id
        lock = self._feed_locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            feed = self.feeds.get(account_id)
            if feed is not None and len(feed.clients) >= self.per_user_max:
                raise self._too_many()
            if self.limits is not None:
                # Counted across processes; released in detach (which every socket reaches).
                client.limit_id = await self.limits.claim(account_id)
                if client.limit_id is None:
                    raise self._too_many()
            if feed is None:
                feed = Feed(self, account_id)
                await feed.start()  # subscribed first: events after the head below are signalled
                self.feeds[account_id] = feed
            if feed.budget is None:
                feed.budget = client.budget if self.limits is None \
                    else self.limits.budget(account_id)
            client.budget = feed.budget
            async with feed.lock:
                subscribed = feed.live.is_set()  # before the read: later events are signalled
                client.last_seq = await self._head(account_id)
                if subscribed:
                    client.attached_head = (client.last_seq, time.monotonic())
                feed.clients.add(client)

    def _too_many(self) -> Refused:
        return Refused("too_many_connections",
                       f"At most {self.per_user_max} open connections per user.")

    async def _head(self, account_id: str) -> int:
        """The user's last event seq (0 before the first), as events.head() reads it."""
        # a read by primary key: on the loop on SQLite (Statement.point_read)
        row = await _HEAD.point_read(self.store, {"p_account": account_id})
        return row.last_seq if row else 0

    async def wait_live(self, client: Client, timeout_s: float) -> bool:
        """Wait until the client's feed receives from the broker (at most `timeout_s`); False
        if it does not. Durable events never need this (the feed catches up); live frames do."""
        feed = self.feeds.get(client.principal.account_id) if client.principal else None
        if feed is None:
            return False
        if feed.live.is_set():
            return True  # the usual case: no timer to arm and cancel
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await feed.live.wait()
        return feed.live.is_set()

    async def detach(self, client: Client) -> None:
        if client.principal is None:
            return
        account_id = client.principal.account_id
        if client.limit_id is not None:
            limit_id, client.limit_id = client.limit_id, None
            await self.limits.release(account_id, limit_id)
        lock = self._feed_locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            feed = self.feeds.get(account_id)
            if feed is None or client not in feed.clients:
                return
            feed.clients.discard(client)
            if not feed.clients:
                del self.feeds[account_id]
                self._feed_locks.pop(account_id, None)
                self._ending.add(feed)
                try:
                    await feed.stop()
                finally:
                    if feed.task is None or feed.task.done():
                        self._ending.discard(feed)

    async def sync(self, client: Client, since: int) -> dict[str, Any]:
        assert client.principal is not None
        account_id = client.principal.account_id
        feed = self.feeds[account_id]
        async with feed.lock:
            attached, client.attached_head = client.attached_head, None
            if (attached is not None and since == attached[0] == client.last_seq
                    and feed.live.is_set()
                    and time.monotonic() - attached[1] < ATTACHED_HEAD_FRESH_S):
                # Nothing newer than `since` as of attach, read once the feed was subscribed:
                # every event since is signalled to the feed, which pushes it after this reply
                # (or a Gap makes it read the store). `since` is the head, so never < pruned.
                return {"events": [], "more": False, "seq": since}
            async with self.store.read() as conn:
                last, pruned = await events.head(conn, account_id)
                if since < pruned or since > last:
                    client.last_seq = max(client.last_seq, last)
                    return {"reset": True, "seq": last}
                batch = await events.since(conn, account_id, since, self.page_max)
            if batch:
                client.last_seq = max(client.last_seq, batch[-1].seq)
            more = bool(batch) and batch[-1].seq < last
            return {"events": [{"type": e.type, "seq": e.seq, "data": e.data} for e in batch],
                    "more": more, "seq": batch[-1].seq if batch else since}

    def close_expired(self, now: datetime) -> int:
        """Sockets outlive no session: close those whose session has expired (4009)."""
        closed = 0
        for feed in list(self.feeds.values()):
            for client in list(feed.clients):
                expires = client.principal.expires_at if client.principal else None
                if expires is not None and expires <= now:
                    client.close(REVOKED, "session expired")
                    closed += 1
        return closed

    async def shielded(self, work: Any) -> None:
        """Run `work` to completion even if the caller is cancelled."""
        task = asyncio.create_task(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def stop_all(self) -> None:
        """At shutdown, after the sockets: let every feed finish its current step and end."""
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=10)
        feeds = [*self.feeds.values(), *self._ending]
        self.feeds.clear()
        self._ending.clear()
        await asyncio.gather(*(feed.stop() for feed in feeds), return_exceptions=True)

    def in_visits(self) -> list[Client]:
        """The sockets that joined a visit."""
        return [c for feed in self.feeds.values() for c in feed.clients if c.visits]

    async def close_all(self, code: int, reason: str) -> None:
        for feed in list(self.feeds.values()):
            for client in list(feed.clients):
                client.close(code, reason)

