"""The local end of a subscription, shared by both brokers so overflow behaves identically."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from server.broker import Gap, codec

OVERFLOW = Gap("overflow")
RECONNECTED = Gap("reconnected")


class QueuedSubscription:
    """A bounded queue of encoded payloads for one consumer, iterated with `async for`.

    - At most `queue_max` payloads wait here, as bytes; each is decoded when it is taken, so
      every subscription gets its own copy.
    - `push` never blocks the broker: when the queue is full it is dropped and replaced by one
      pending `Gap("overflow")`, then filling starts again. `mark_gap` drops the queue the same
      way (the consumer resyncs from the store after a Gap, so older signals are superseded).
      So the queue never holds more than `queue_max` payloads and one Gap.
    - `direct`, when set, is offered each payload that arrives while the consumer is idle
      (waiting in `async for`, nothing queued before it): if it returns True it has handled
      the payload, in order, without waking the consumer; else the payload is queued.
    - After `close()` (or the broker closing) iteration ends and nothing more is delivered.
    One task consumes a subscription; pushing happens on the same event loop.
    """

    # No per-instance dict: a process holds one subscription per connected user.
    __slots__ = ("_closed", "_gap", "_on_close", "_payloads", "_waiter", "channel", "direct",
                 "live", "queue_max")

    def __init__(
        self,
        channel: str,
        queue_max: int,
        on_close: Callable[[QueuedSubscription], Awaitable[None]],
    ) -> None:
        if queue_max < 1:
            raise ValueError("queue_max must be at least 1")
        self.channel = channel
        self.queue_max = queue_max
        self.live = False  # set by the broker once payloads published from now on will arrive
        self._on_close = on_close
        # A list, not a deque: it is nearly always empty, and an empty deque is ~0.7 KB.
        self._payloads: list[bytes] = []
        self._gap: Gap | None = None
        self._closed = False
        # A future per wait rather than an asyncio.Event (which holds a deque, ~0.8 KB): a
        # process holds one subscription per connected user.
        self._waiter: asyncio.Future[None] | None = None
        self.direct: Callable[[bytes], bool] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backlog(self) -> int:
        """Entries waiting to be taken (payloads plus a pending Gap): at most queue_max + 1."""
        return len(self._payloads) + (self._gap is not None)

    def push(self, data: bytes) -> None:
        if self._closed:
            return
        # Handled here, a payload costs no wake-up of the consumer, nor the new waiter and
        # coroutine its next wait makes: with 10k subscriptions those live until the next
        # payload, get promoted by the collector and bring full collections on sooner. Only
        # while the consumer is idle, so nothing it has yet to take is overtaken.
        if (self.direct is not None and self._waiter is not None and not self._waiter.done()
                and not self._payloads and self._gap is None and self.direct(data)):
            return
        if len(self._payloads) >= self.queue_max:
            self.mark_gap(OVERFLOW)
        self._payloads.append(data)
        self._wake()

    def mark_gap(self, gap: Gap) -> None:
        if self._closed:
            return
        self._payloads.clear()
        # One marker is enough: whatever the reason, the consumer's answer is the same resync.
        self._gap = self._gap or gap
        self._wake()

    def end(self) -> None:
        """Stop delivery without telling the broker (the broker is the one ending it)."""
        self._closed = True
        self._payloads.clear()
        self._gap = None
        self.direct = None
        self._wake()

    def rebind(self, on_close: Callable[[QueuedSubscription], Awaitable[None]]) -> None:
        """Closing tells `on_close` from now on (the subscription moved to another fan-out)."""
        self._on_close = on_close

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def close(self) -> None:
        """Stop delivery now; idempotent. Payloads still queued are discarded."""
        if self._closed:
            return
        self.end()
        await self._on_close(self)

    def __aiter__(self) -> QueuedSubscription:
        return self

    async def __anext__(self) -> dict[str, Any] | Gap:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._gap is not None:
                gap, self._gap = self._gap, None
                return gap
            if self._payloads:
                return codec.decode(self._payloads.pop(0))
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
