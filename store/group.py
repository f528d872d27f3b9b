"""Group commit: many concurrent writers' work in one transaction, each isolated by a savepoint.

On SQLite every write is a `BEGIN IMMEDIATE ... COMMIT` through the one writer connection, so
concurrent sends queue on the write lock one transaction at a time. `GroupCommit.run(work)`
queues `work` instead; one drain task takes up to `max_batch` queued works and runs them in
ONE transaction:

    BEGIN IMMEDIATE
      SAVEPOINT; work 1; RELEASE        (or ROLLBACK TO: only work 1 is undone)
      SAVEPOINT; work 2; RELEASE
      ...
    COMMIT

and only then resolves each caller's future: with its result, or with the exception its own
work raised. So an ack (and the caller's event signal) never goes out before the commit, a
failing work (insufficient credits, a reused key, a bad photo) undoes only itself, and if the
COMMIT fails every caller of the batch gets the error and none of them was applied.

Works run in order, so a later work sees what an earlier one in the same batch wrote (a
repeated idempotency key finds the first send's row). Batches form by themselves: while one
transaction runs, new works queue, and the next batch takes them all (up to `max_batch`); a
lone work runs without a savepoint. A caller cancelled before its batch starts is skipped;
once started, its work commits with the others (retrying with the same key is then a no-op).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from store import raw

if TYPE_CHECKING:
    from store import Store

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]


class GroupCommit:
    def __init__(self, store: Store, *, max_batch: int) -> None:
        self.store = store
        self.max_batch = max(1, max_batch)
        self._queue: list[tuple[Work, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.batches = 0  # transactions run, for the benchmark's notes and the tests
        self.works = 0

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work(conn)`'s result once it is committed; its exception if it raised."""
        if self.max_batch == 1:
            async with self.store.write() as conn:
                return await work(conn)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((work, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="group-commit")
        return await done

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            await self._task

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                batch = [(work, done) for work, done in batch if not done.done()]
                if batch:
                    await self._commit(batch)
        finally:  # cancelled (shutdown): nobody still queued may wait forever
            for _, done in self._queue:
                done.cancel()
            self._queue.clear()

    async def _commit(self, batch: list[tuple[Work, asyncio.Future]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            async with self.store.write() as conn:
                if len(batch) == 1:
                    outcomes.append((True, await batch[0][0](conn)))
                else:
                    for n, (work, _) in enumerate(batch):
                        outcomes.append(await _isolated(conn, n, work))
        except Exception as exc:  # the transaction (or a lone work) failed: nothing applied
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        except BaseException:  # cancelled at shutdown: nobody learns a result
            for _, done in batch:
                done.cancel()
            raise
        self.batches += 1
        self.works += len(batch)
        for (_, done), (ok, value) in zip(batch, outcomes, strict=True):
            if done.done():
                continue  # its caller went away; the work is committed all the same
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)


async def _isolated(conn: AsyncConnection, n: int, work: Work) -> tuple[bool, Any]:
    """One work inside its own savepoint: an exception rolls back this work only. The savepoint
    is driver SQL (through SQLAlchemy's nested transactions its two statements cost more than a
    send's own inserts on the inline writer)."""
    await raw.run(conn, f"SAVEPOINT g{n}")
    try:
        result = await work(conn)
    except Exception as exc:
        await raw.run(conn, f"ROLLBACK TO g{n}")
        await raw.run(conn, f"RELEASE g{n}")
        return False, exc
    await raw.run(conn, f"RELEASE g{n}")
    return True, result
