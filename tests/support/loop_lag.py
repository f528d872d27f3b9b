"""How late the running event loop wakes: the longest overshoot of a short sleep since a mark.

On a host with more runnable processes than cores (the whole suite on two), a process can go
without a turn for a second or more. A test that times the product (a probe with a deadline)
uses this to tell the product's delay from the host's: a sample taken while the loop itself
was that late is inconclusive, and the test says how many it set aside."""

from __future__ import annotations

import asyncio
import contextlib
import time


class LoopLag:
    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.worst_s = 0.0
        self._task: asyncio.Task | None = None

    def mark(self) -> None:
        """Forget what was seen so far: `worst_s` covers from now."""
        self.worst_s = 0.0

    async def _watch(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.period_s)
            self.worst_s = max(self.worst_s, time.monotonic() - asked - self.period_s)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
