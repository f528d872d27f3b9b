"""visit.signal trusts a socket's successful join (or a recent check) instead of reading the
visit row per signal (server/gateway/ops.py `_cached`); an end must still stop signals at once,
whether recorded by this process or heard from another on the meters channel."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from server.schema import utcnow, visits
from signalling.meters import CHANNEL
from tests.integration.test_visit_calls import book_now, join_both, until
from tests.support.cast import cast
from tests.support.helpers import Api

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}


async def signal(sock, visit_id: str) -> dict:
    return await sock.call("visit.signal", visit_id=visit_id, description=OFFER)


async def test_a_hang_up_stops_the_peers_signals_at_once(api: Api, client: TestClient) -> None:
    c = await cast(api, credits=500)
    visit_id = await book_now(api, c)
    fam, per = await join_both(client, c, visit_id)
    assert (await signal(fam, visit_id))["ok"]["relayed"] is True  # the check is now cached
    await until(per, "visit.signal")
    assert "ok" in await per.call("visit.leave", visit_id=visit_id)
    reply = await signal(fam, visit_id)
    assert reply.get("error", {}).get("code") == "not_in_call", reply


async def test_an_end_heard_from_another_process_stops_signals(api: Api,
                                                               client: TestClient) -> None:
    c = await cast(api, credits=500)
    visit_id = await book_now(api, c)
    fam, per = await join_both(client, c, visit_id)
    assert (await signal(per, visit_id))["ok"]["relayed"] is True
    await until(fam, "visit.signal")
    # As another process ends a visit: the row, then the notice on the meters channel.
    now = utcnow()
    async with api.ctx.store.write() as conn:
        await conn.execute(visits.update().where(visits.c.id == visit_id).values(
            status="ended", end_reason="staff_ended", ended_at=now, updated_at=now))
    await api.ctx.broker.publish(CHANNEL, {"ended": visit_id})
    for _ in range(100):  # the listener task takes it off the channel
        if visit_id in api.ctx.meters.ended:
            break
        await asyncio.sleep(0.01)
    reply = await signal(per, visit_id)
    assert reply.get("error", {}).get("code") == "not_in_call", reply
