"""The connect path's shortcuts keep their answers exact (docs/BENCHMARKS.md, "Connect"):
- a socket's session is read on the loop on SQLite (Statement.point_read) with the same answer
  as the pool's read, at the expiry boundary, after a revocation and for a disabled account,
  and through the pool when the quick read cannot be served;
- the first sync after attach, answered from the head read on attach, misses no event and
  answers as the store read did (what it lacks then comes as a push)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp.test_utils import TestClient
from sqlalchemy import update

from server import events
from server.auth import principal_for, session_principal, token_hash
from server.schema import accounts, sessions
from store import quickread
from tests.support.helpers import Api
from tests.support.sockets import JSON, open_socket


async def _both(store, token, now):
    async with store.read() as conn:
        slow = await principal_for(conn, token, now)
    return slow, await session_principal(store, token, now)


async def test_quick_session_read_answers_as_the_pool_does(api: Api) -> None:
    store, fam = api.ctx.store, await api.family()
    now = api.ctx.clock()
    slow, quick = await _both(store, fam.token, now)
    assert slow is not None and quick == slow
    expires = slow.expires_at
    assert await _both(store, fam.token, expires - timedelta(microseconds=1)) == (slow, slow)
    assert await _both(store, fam.token, expires) == (None, None)  # expired exactly then
    assert await _both(store, "not-a-token", now) == (None, None)

    async with store.write() as conn:
        await conn.execute(update(accounts).where(accounts.c.id == fam.id).values(disabled=True))
    assert await _both(store, fam.token, now) == (None, None)
    async with store.write() as conn:
        await conn.execute(update(accounts).where(accounts.c.id == fam.id).values(disabled=False))
        await conn.execute(update(sessions).where(sessions.c.token_hash == token_hash(fam.token))
                           .values(revoked_at=now))
    assert await _both(store, fam.token, now) == (None, None)  # revoked: refused at once


async def test_a_quick_read_that_fails_goes_through_the_pool(api: Api) -> None:
    store, fam = api.ctx.store, await api.family()
    pool_reads: list[float] = []
    metric, store.on_wait = store.on_wait, pool_reads.append  # called by each store.read()
    try:
        if store.dialect == "sqlite":
            assert await session_principal(store, fam.token, api.ctx.clock()) is not None
            assert pool_reads == []  # served on the loop
            quickread.connection(store).close()  # any sqlite3 error: not served on the loop
        principal = await session_principal(store, fam.token, api.ctx.clock())
    finally:
        store.on_wait = metric
    assert principal is not None and principal.account_id == fam.id
    assert len(pool_reads) == 1  # through the pool: PostgreSQL always, SQLite when it failed


async def test_first_sync_misses_nothing_written_around_it(api: Api, client: TestClient) -> None:
    fam = await api.family()
    for round_ in range(3):
        sock = await open_socket(client, fam, JSON)
        ctx = api.ctx
        outbox = events.Outbox()
        async with ctx.store.write() as conn:
            await outbox.emit(conn, fam.id, "balance", {"balance": round_}, ctx.clock())
        outbox.kept.clear()  # as another process's event: only the signal reaches the feed
        signal = asyncio.create_task(outbox.signal(ctx.broker))
        since = round_  # what the client had: every earlier round's event
        reply = await sock.call("sync", since=since)
        await signal
        seen = [e["seq"] for e in reply["ok"]["events"]] + [p["seq"] for p in sock.pushes]
        if not seen:  # not in the reply (nothing newer as of attach): it must come as a push
            assert reply["ok"] == {"events": [], "more": False, "seq": since}
            seen.append((await sock.push())["seq"])
        assert set(seen) == {round_ + 1}
        await sock.ws.close()


async def test_a_later_sync_reads_the_store(api: Api, client: TestClient) -> None:
    """Only the first sync uses the head read on attach; a sync after it (a client healing)
    finds an event that no signal announced."""
    fam = await api.family()
    sock = await open_socket(client, fam, JSON)
    assert (await sock.call("sync", since=0))["ok"]["events"] == []
    ctx = api.ctx
    async with ctx.store.write() as conn:  # written, never signalled
        await events.Outbox().emit(conn, fam.id, "balance", {"balance": 7}, ctx.clock())
    reply = await sock.call("sync", since=0)
    assert [e["data"] for e in reply["ok"]["events"]] == [{"balance": 7}]
