"""Events reference long message bodies instead of copying them (server/events.py), on both
databases.

Adversary: a client that syncs from another process, long after the send (nothing of the
sender's process memory helps it): it must get every body whole, the long ones too, in order,
while the event rows hold each long body zero times."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from server.events import BODY_INLINE_CHARS_MAX, BODY_REF
from server.schema import events
from tests.support.cast import cast, send
from tests.support.helpers import Api
from tests.support.sockets import MSGPACK, open_socket


async def test_long_bodies_are_referenced_and_synced_whole(api: Api, client: TestClient) -> None:
    c = await cast(api, credits=5000)
    short = "short and sweet"
    long = "line of a long letter. " * 1300  # 29,900 characters
    assert len(long) > BODY_INLINE_CHARS_MAX
    for body in (short, long, "x" * BODY_INLINE_CHARS_MAX):
        assert (await send(api, c.family, c.person, body)).status == 201
    async with api.ctx.store.read() as conn:
        stored = [r.data for r in await conn.execute(
            select(events.c.data).where(events.c.type == "message.new"))]
    assert len(stored) == 6, "a message.new for the sender and one for the recipient"
    assert not any(d.get("body") == long for d in stored), "the long body is not copied"
    assert sum(BODY_REF in d for d in stored) == 2
    assert sum(d.get("body") == short for d in stored) == 2
    sock = await open_socket(client, c.person, MSGPACK)
    synced = (await sock.call("sync", since=0))["ok"]["events"]
    bodies = [e["data"]["body"] for e in synced if e["type"] == "message.new"]
    assert bodies == [short, long, "x" * BODY_INLINE_CHARS_MAX]
    assert not any(BODY_REF in e["data"] for e in synced)
