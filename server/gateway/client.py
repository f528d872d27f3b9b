"""One open WebSocket: its bounded send queue, its writer task and its command budget.

Frames to a client are encoded by the producer and queued; one writer task per socket, alive
only while frames wait, sends them in order. The queue is bounded: a client that cannot keep up
is closed with 4008 rather than allowed to grow the server's memory (it reconnects later and
resyncs).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from server.auth import Principal
from server.gateway.envelope import JSON, encode

if TYPE_CHECKING:
    from server.gateway.limits import SharedBudget
    from server.gateway.ops import InCall

# The close codes the server sends (docs/API.md, "Close codes"); 1009 (frame too large) is
# aiohttp's own. The client reconnects on all but UNAUTHORISED and REVOKED.
NORMAL = 1000
RESTARTING = 1012  # the process is draining: reconnect now, to another
UNAUTHORISED = 4001  # no or a bad token, or a kiosk session without its device: sign in again
TOO_SLOW = 4008  # its send queue overflowed (a reader that cannot keep up): reconnect later
REVOKED = 4009  # the session was revoked or expired: sign in again
TOO_MANY_CONNECTIONS = 4029  # over KINWIRE_WS_CONNECTIONS_PER_USER_MAX: reconnect later
_CLOSE = object()


class Budget:
    """A token bucket: `per_s` commands a second, bursts of twice that. The hub gives all of
    a user's sockets on this process one Budget, so opening more sockets buys no more."""

    __slots__ = ("_rate", "_stamp", "_tokens")

    def __init__(self, per_s: int) -> None:
        self._rate = per_s
        self._tokens = float(per_s * 2)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._rate * 2.0, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def reserve(self) -> bool:
        """Nothing more to draw on: this bucket is all there is (SharedBudget draws more)."""
        return False


class Client:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, codec: str, *,
                 queue_max: int, commands_per_s: int) -> None:
        self.ws = ws
        self.request = request
        self.codec = codec
        self.principal: Principal | None = None
        self.last_seq = 0  # the highest event seq this socket has been sent
        # (last_seq, monotonic time) of the user's stream as read on attach while the feed was
        # subscribed; lets the first sync answer without a store read (Hub.sync).
        self.attached_head: tuple[int, float] | None = None
        self._visits: set[str] | None = None  # made on first use: most sockets join none
        self._in_call: dict[str, InCall] | None = None  # likewise (see in_call)
        self.closing = False
        # A list rather than an asyncio.Queue (four deques, ~3 KB; an empty list is 56 bytes),
        # and a writer task only while frames wait: idle sockets are many and hold neither
        # (docs/BENCHMARKS.md, "Idle sockets"). The queue is short, so pop(0) is cheap.
        self._queue: list[Any] = []
        self._queue_max = queue_max
        self._writer: asyncio.Task | None = None
        self._write_failed = False  # the connection broke under the writer: stop writing
        self._closer: asyncio.Task | None = None
        # Replaced by the user's shared one on attach where Redis counts commands (limits.py).
        self.budget: Budget | SharedBudget = Budget(commands_per_s)
        self.limit_id: str | None = None  # its id among the user's sockets in Redis, if counted

    @property
    def visits(self) -> set[str]:
        """Visits this socket joined (dropped when it closes)."""
        if self._visits is None:
            self._visits = set()
        return self._visits

    @property
    def in_call(self) -> dict[str, InCall]:
        """Visit id -> what its `visit.signal` needs, set by a
        successful join or check on this socket; dropped with the socket."""
        if self._in_call is None:
            self._in_call = {}
        return self._in_call

    def send(self, frame: dict[str, Any]) -> bool:
        """Queue a frame; False when the socket is closing or was just closed for being slow."""
        return self.send_encoded(encode(self.codec, frame))

    def send_encoded(self, data: str | bytes) -> bool:
        if self.closing:
            return False
        if len(self._queue) >= self._queue_max:
            self.close(TOO_SLOW, "too slow", abandon=True)
            return False
        self._queue.append(data)
        self._notify()
        return True

    @property
    def backlog(self) -> int:
        """Frames queued and not yet written."""
        return len(self._queue)

    def _notify(self) -> None:
        """Make sure a writer is draining the queue."""
        if self._write_failed or (self._writer is not None and not self._writer.done()):
            return
        self._writer = asyncio.create_task(self._write(), name="ws-writer")

    def close(self, code: int, reason: str, *, abandon: bool = False) -> None:
        """Close soon, from any task. Frames already queued go out first, unless `abandon`:
        a client too slow to read them gets none (it resyncs when it reconnects)."""
        if self.closing:
            return
        self.closing = True
        if self.ws.closed:
            # Already closed (the peer closed first, the usual end): nothing can go out, so
            # no writer task and no close to wait on.
            self._queue.clear()
            return
        if abandon:
            self._queue.clear()
            if self._writer is not None:
                self._writer.cancel()
            self._closer = asyncio.create_task(self._close_now(code, reason))
            return
        if len(self._queue) >= self._queue_max:
            if self._writer is not None:
                self._writer.cancel()
            self._closer = asyncio.create_task(self._close_now(code, reason))
            return
        self._queue.append((_CLOSE, code, reason))
        self._notify()

    async def _close_now(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), 1.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            # The peer is not reading: drop the connection instead of waiting on it.
            if self.request.transport is not None:
                self.request.transport.abort()

    async def _write(self) -> None:
        send_text = self.codec == JSON
        while self._queue:  # ends when it is empty; the next frame starts a new writer
            data = self._queue.pop(0)
            if isinstance(data, tuple) and data and data[0] is _CLOSE:
                await self._close_now(data[1], data[2])
                return
            try:
                if send_text:
                    await self.ws.send_str(data)
                else:
                    await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                self._write_failed = True
                return

    async def finish(self, grace_s: float = 1.0) -> None:
        """Let an orderly close frame go out, but never wait long on a peer not reading."""
        for task in (self._writer, self._closer):
            if task is not None and not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), grace_s)
        self.closing = True
        for task in (self._writer, self._closer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
