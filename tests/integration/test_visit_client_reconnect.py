"""The reference client survives its server dying (issue 14, item 5): a real `kinwire serve`
on SQLite, a private coturn on loopback, both parties' aiortc clients on that one process.
The adversary: `kill -9` of the process mid-call, restarted on the same port and file (as a
supervisor would). Each client must reconnect to the same URL, rejoin, and start a new
session through the TURN server; frames flow again, the visit goes live again and the meter
bills on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from signalling.visit_client import VisitClient
from tests.conftest import fresh_sqlite
from tests.integration.test_crash import kill, nodes_started, restart, until_ready
from tests.integration.test_presence_crash import debits, until_debits
from tests.integration.test_visit_e2e import MINUTE_S, account_id, visit_now
from tests.support.nodes import make_pair
from tests.support.turn_server import private_coturn

SIZE = dict(width=160, height=120, fps=10)


def lives(client: VisitClient) -> int:
    return sum(1 for kind, _ in client.events if kind == "visit.live")


@pytest.mark.timeout(150)
async def test_the_reference_client_rejoins_a_restarted_server(sqlite_template: Path,
                                                                tmp_path: Path) -> None:
    db = fresh_sqlite(sqlite_template, tmp_path)
    async with private_coturn() as turn, nodes_started(
            db, "", tmp_path, n=1, KINWIRE_VISIT_MINUTE_S=str(MINUTE_S),
            KINWIRE_METER_LEASE_S="1.5", KINWIRE_NODE_LEASE_S="0.9",
            KINWIRE_TURN_SECRET=turn.secret, KINWIRE_TURN_URLS=turn.url) as (node,), \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        family_token, person_token = await make_pair(http, node, node, db)
        family_id = await account_id(http, node, family_token)
        visit_id, _ = await visit_now(db, family_id, record=False)
        family = VisitClient(node.base, family_token, visit_id, loopback_only=True,
                             reconnect_s=60, **SIZE)
        person = VisitClient(node.base, person_token, visit_id, codec="msgpack",
                             loopback_only=True, reconnect_s=60, **SIZE)
        try:
            await family.start()
            await person.start()
            async with asyncio.timeout(40):
                await person.wait_event("visit.live")
            await until_debits(db, visit_id, 1, 3 * MINUTE_S)
            before = {side: (side.pc, lives(side)) for side in (family, person)}
            print(f"--- killed ---\n{kill(node)}")
            paid_at_kill = await debits(db, visit_id)
            killed_at = time.monotonic()
            restart(node)
            await until_ready(http, node)
            ready_s = time.monotonic() - killed_at
            async with asyncio.timeout(45):
                for side in (family, person):
                    await side.wait_for(lambda s=side: s.reconnects >= 1)
                rejoined_s = time.monotonic() - killed_at
                for side in (family, person):
                    old_pc, live = before[side]
                    # a new session, connected, announced live again, and media through it
                    await side.wait_for(lambda s=side, old=old_pc: s.pc is not None
                                        and s.pc is not old and s.connection_state == "connected")
                    await side.wait_for(lambda s=side, n=live: lives(s) > n)
                    frames = side.frames.get("video", 0)
                    await side.wait_for(lambda s=side, f=frames: s.frames.get("video", 0) >= f + 10)
            back_s = time.monotonic() - killed_at
            await until_debits(db, visit_id, paid_at_kill + 1, 3 * MINUTE_S + 3)
            assert not family.closed and not person.closed
            assert family.pc is not None and family.pc.connectionState == "connected"
        finally:
            await family.leave()
            await person.close()
    print(f"restarted in {ready_s:.1f} s, both rejoined {rejoined_s:.1f} s and in a new "
          f"session {back_s:.1f} s after the kill; {paid_at_kill} minutes before, billing on")
