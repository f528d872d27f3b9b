"""A visit join waits until the joiner's socket receives live frames (server/gateway/hub.py,
Hub.wait_live): the peer offers the moment it hears of the join, and a live frame published
before the joiner's broker subscription is up would be lost, leaving the call unconnected (seen
once under load in test_visit_e2e's command-line client test).

Redis here is real, behind a fault proxy that makes every subscription slower than the time a
new socket waits for it: joins and live signals must still work. This does not reproduce the
lost frame itself (with the latency on every link, a publish is delayed as much as the
subscription), only that waiting for the subscription keeps the join working."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import app_client
from tests.integration.test_visit_calls import book_now, until
from tests.support.cast import cast
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import Api
from tests.support.nodes import RedisServer
from tests.support.sockets import MSGPACK, open_socket


async def test_a_join_is_announced_only_once_the_joiner_hears_live_frames(
        db_url: str, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    proxy = await FaultProxy("127.0.0.1", redis.port).start()
    try:
        async with app_client(db_url, tmp_path,
                              redis_url=proxy.url("redis://{host}:{port}/0")) as client:
            c = await cast(Api(client), credits=1000)
            visit_id = await book_now(Api(client), c)
            proxy.latency(110)  # a subscription now takes >= 0.22 s; a new socket waits 0.2 s
            # Both sockets at once, both joins at once: without the wait, the family's arrival
            # is published while the person's subscription is still on its way.
            per, fam = await asyncio.gather(open_socket(client, c.person, MSGPACK),
                                            open_socket(client, c.family))
            joined = await per.call("visit.join", visit_id=visit_id)
            assert joined["ok"]["peer_present"] is False, joined
            joined = await fam.call("visit.join", visit_id=visit_id)
            assert joined["ok"]["peer_present"] is True, joined
            # The person joined first, so its feed must already deliver the family's arrival.
            assert (await until(per, "visit.peer", timeout=5))["data"]["present"] is True
            # And the family, announced to the person, hears the person's live signal.
            reply = await per.call("visit.signal", visit_id=visit_id,
                                   description={"type": "offer", "sdp": "v=0\r\n"})
            assert "ok" in reply, reply
            assert "description" in (await until(fam, "visit.signal", timeout=5))["data"]
            proxy.heal()
    finally:
        await proxy.close()
        redis.stop()
