"""A feed pushes the events its own process just committed from memory, without reading them
back (server/events.py `Outbox.signal`, server/gateway/hub.py `Feed._kept`), and falls back to
the store whenever memory has a gap: pushes stay complete and in order either way."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server import events
from tests.support.helpers import Api, Who
from tests.support.sockets import JSON, open_socket


async def write(api: Api, who: Who, items: list[tuple[str, dict[str, Any]]],
                *, remembered: bool) -> None:
    """Events for `who` in one transaction, remembered by signal or not (as another process's
    events would be: signalled through the broker, never in this process's memory)."""
    ctx = api.ctx
    outbox = events.Outbox()
    async with ctx.store.write() as conn:
        await outbox.emit_many(conn, [(who.id, kind, data) for kind, data in items], ctx.clock())
    if not remembered:
        outbox.kept.clear()
    await outbox.signal(ctx.broker)


async def test_pushes_come_from_memory_and_from_the_store_after_a_gap(
        api: Api, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    since = events.since

    async def counted(conn, account_id, after, limit):
        reads.append(after)
        return await since(conn, account_id, after, limit)

    monkeypatch.setattr(events, "since", counted)
    fam = await api.family()
    sock = await open_socket(client, fam, JSON)

    await write(api, fam, [("balance", {"balance": 1}), ("balance", {"balance": 2})],
                remembered=True)
    got = [await sock.push() for _ in range(2)]
    assert [f["data"]["balance"] for f in got] == [1, 2]
    assert reads == [], "events this process just wrote were read back from the store"

    # An event memory does not hold (as another process's would be), then
    # remembered ones after it: the feed must not skip it.
    await write(api, fam, [("balance", {"balance": 3})], remembered=False)
    await write(api, fam, [("balance", {"balance": 4}), ("balance", {"balance": 5})],
                remembered=True)
    got += [await sock.push() for _ in range(3)]
    assert [f["data"]["balance"] for f in got] == [1, 2, 3, 4, 5]
    assert [f["seq"] for f in got] == sorted({f["seq"] for f in got})
    assert reads, "the gap was not filled from the store"
    synced = await sock.call("sync", since=0)
    assert [e["data"] for e in synced["ok"]["events"]] == [f["data"] for f in got]
