"""Direct-mode video visits end to end: two real server processes on one PostgreSQL and a
private Redis, two aiortc reference clients (one per process) connecting through a private
coturn on loopback, real ICE/DTLS/SRTP, and the meter billing the connected minutes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from billing import ledger
from server.schema import connections, utcnow, visits
from signalling.visit_client import VisitClient
from store import Store
from store.ids import new_id
from tests.support.nodes import RedisServer, cluster, make_pair, post
from tests.support.turn_server import private_coturn

MINUTE_S = 2.0


async def account_id(http: aiohttp.ClientSession, node: Any, token: str) -> str:
    async with http.get(node.base + "/api/v1/me",
                        headers={"Authorization": f"Bearer {token}"}) as r:
        return (await r.json())["account"]["id"]


async def visit_now(db: str, family_id: str, *, media: str = "direct",
                    record: bool = True) -> tuple[str, str]:
    """A visit whose window is open (booking is tested elsewhere; this test is the call);
    returns (visit id, facility id)."""
    store, now, visit_id = Store(db), utcnow(), new_id("vis")
    try:
        async with store.write() as conn:
            con = (await conn.execute(connections.select().where(
                connections.c.family_id == family_id))).first()
            await conn.execute(visits.insert().values(
                id=visit_id, facility_id=con.facility_id, connection_id=con.id,
                family_id=family_id, person_id=con.person_id, booked_by=family_id,
                start_at=now - timedelta(minutes=1), end_at=now + timedelta(minutes=29),
                blocks=1, minute_price=50, media=media, record=record, status="scheduled",
                created_at=now, updated_at=now))
    finally:
        await store.close()
    return visit_id, con.facility_id


async def debits(db: str, visit_id: str) -> list[ledger.Transfer]:
    store = Store(db)
    try:
        async with store.read() as conn:
            family = (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()
            rows = await ledger.statement(conn, family.family_id, limit=1000)
            assert await ledger.check_invariants(conn) == []
    finally:
        await store.close()
    return sorted((t for t in rows if t.kind == "visit_minute" and t.ref == visit_id),
                  key=lambda t: t.seq)


@asynccontextmanager
async def stack(pg: str, tmp_path: Path, **settings: str) -> AsyncIterator[tuple]:
    """Two server processes on `pg`, a private Redis and a private coturn on loopback;
    yields (nodes, turn, http)."""
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with private_coturn() as turn, cluster(
                pg, redis.url, tmp_path, KINWIRE_VISIT_MINUTE_S=str(MINUTE_S),
                KINWIRE_METER_LEASE_S="1.5", KINWIRE_TURN_SECRET=turn.secret,
                KINWIRE_TURN_URLS=turn.url, **settings) as nodes, \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield nodes, turn, http
    finally:
        redis.stop()


async def start_both(first: VisitClient, second: VisitClient) -> None:
    """Start both parties (in this order); return once each has received 10 video frames,
    within 30 s."""
    await first.start()
    await second.start()
    async with asyncio.timeout(30):
        await first.wait_frames("video", 10)
        await second.wait_frames("video", 10)


def client(node, token: str, visit_id: str, codec: str) -> VisitClient:
    return VisitClient(node.base, token, visit_id, codec=codec, loopback_only=True,
                       width=320, height=240, fps=15)


async def test_a_direct_visit_bills_until_the_balance_runs_out(pg_db: str,
                                                               tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path) as ((a, b), _turn, http):
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        person_id = await account_id(http, b, person_token)
        # Leave the family exactly 120 credits: two minutes at 50, and 20 over.
        async with http.get(a.base + "/api/v1/me",
                            headers={"Authorization": f"Bearer {family_token}"}) as r:
            spare = (await r.json())["balance"] - 120
        status, _ = await post(http, a, "/gifts", family_token,
                               {"to": person_id, "credits": spare},
                               **{"Idempotency-Key": "leave-120"})
        assert status == 201
        visit_id, _ = await visit_now(pg_db, family_id)
        family = client(a, family_token, visit_id, "json")
        person = client(b, person_token, visit_id, "msgpack")
        try:
            await start_both(family, person)
            async with asyncio.timeout(30):
                live_at = asyncio.get_running_loop().time()
                ended = await family.wait_event("visit.ended")
                await person.wait_event("visit.ended")
            lasted = asyncio.get_running_loop().time() - live_at
        finally:
            await family.close()
            await person.close()
        assert ended["reason"] == "balance_exhausted"
        assert family.ended == person.ended == "balance_exhausted"
        assert lasted <= 2 * MINUTE_S + 1.5, "it ends when the third minute would start"
        charged = await debits(pg_db, visit_id)
        assert [t.key for t in charged] == [f"visit:{visit_id}:minute:{k}" for k in (1, 2)]
        assert sum(t.amount for t in charged) == 100
        async with http.get(a.base + "/api/v1/me",
                            headers={"Authorization": f"Bearer {family_token}"}) as r:
            assert (await r.json())["balance"] == 20
        assert family.frames.get("audio", 0) > 0 and person.frames.get("audio", 0) > 0


@pytest.mark.slow
async def test_the_meter_survives_kill_9_of_its_process(pg_db: str, tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path) as ((a, b), _turn, http):
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, _ = await visit_now(pg_db, family_id)
        # The person joins first, on B: B claims the meter. The family is on A.
        person = client(b, person_token, visit_id, "msgpack")
        family = client(a, family_token, visit_id, "json")
        try:
            await start_both(person, family)
            await asyncio.sleep(MINUTE_S * 1.5)  # minutes 1 and 2 paid
            b.proc.send_signal(signal.SIGKILL)
            killed_at = utcnow()
            b.proc.wait()
            await person.close()
            await asyncio.sleep(MINUTE_S * 2)  # nobody bills this: the person is gone
            back_at = utcnow()
            person = client(a, person_token, visit_id, "msgpack")
            await person.start()
            async with asyncio.timeout(30):
                await person.wait_frames("video", 10)
            await asyncio.sleep(MINUTE_S * 2.2)
        finally:
            await family.close()
            await person.close()
        charged = await debits(pg_db, visit_id)
        keys = [t.key for t in charged]
        assert len(keys) == len(set(keys)), "no minute twice"
        assert keys == [f"visit:{visit_id}:minute:{k}" for k in range(1, len(keys) + 1)]
        # Nothing is billed between the kill and the reconnection, beyond the paid minute
        # that was under way when the process died.
        during = [t for t in charged if killed_at + timedelta(seconds=0.5) < t.at < back_at]
        assert during == [], [t.key for t in during]
        after = [t for t in charged if t.at >= back_at]
        assert 1 <= len(after) <= 3, "the survivor took the meter over and bills again"


async def test_the_command_line_visit_client(pg_db: str, tmp_path: Path) -> None:
    import json
    import sys

    async with stack(pg_db, tmp_path) as ((a, b), _turn, http):
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, _ = await visit_now(pg_db, family_id)
        kiosk = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "visit-client", "--url", b.base, "--token",
            person_token, "--visit", visit_id, "--codec", "msgpack", "--seconds", "40",
            "--loopback-only", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        family = client(a, family_token, visit_id, "json")
        try:
            # The kiosk is a new Python process importing aiortc: on a loaded 2-core host its
            # start alone has taken over 10 s, so the clock for the call starts once it joined.
            async with asyncio.timeout(60):
                first = await kiosk.stdout.readline()
            assert first, (await kiosk.stderr.read()).decode()[-2000:]
            await family.start()
            async with asyncio.timeout(30):
                await family.wait_frames("video", 10)
            await asyncio.sleep(1.0)  # let the kiosk side count frames too
            await family.leave()
            rest, err = await asyncio.wait_for(kiosk.communicate(), 30)
            out = first + rest
        finally:
            await family.close()
            if kiosk.returncode is None:
                kiosk.kill()
                await kiosk.wait()
        lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        assert lines[0] == {"joined": "person", "media": "direct"}, err.decode()[-2000:]
        assert lines[-1]["ended"] == "hung_up"
        assert lines[-1]["frames"].get("video", 0) > 5


async def test_a_pause_of_half_the_window_is_not_billed(pg_db: str, tmp_path: Path) -> None:
    """A 16 s window (8 billed minutes of 2 s): the family is gone for half of it."""
    window_s = 16.0
    async with stack(pg_db, tmp_path) as ((a, b), _turn, http):
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, _ = await visit_now(pg_db, family_id)
        store = Store(pg_db)
        async with store.write() as conn:  # shrink the window to end 16 s from now
            await conn.execute(visits.update().where(visits.c.id == visit_id).values(
                end_at=utcnow() + timedelta(seconds=window_s)))
        person = client(b, person_token, visit_id, "msgpack")
        family = client(a, family_token, visit_id, "json")
        try:
            await person.start()
            await family.start()
            async with asyncio.timeout(20):
                await family.wait_frames("video", 5)
            await family.close()  # gone: the socket drops, the meter pauses
            await asyncio.sleep(window_s / 2)
            family = client(a, family_token, visit_id, "json")
            await family.start()
            async with asyncio.timeout(30):
                ended = await person.wait_event("visit.ended")
        finally:
            await family.close()
            await person.close()
        assert ended["reason"] == "time_up"
        async with store.read() as conn:
            row = (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()
        await store.close()
        connected_s = row.meter["connected_s"]
        assert connected_s <= window_s / 2 + 0.5, "the pause was not counted as connected"
        charged = await debits(pg_db, visit_id)
        # DESIGN.md's rule: a minute is paid when connected time reaches the paid time and
        # connected time never runs past it, so m paid minutes cover (m - 1, m] minutes of it.
        m = len(charged)
        assert (m - 1) * MINUTE_S < connected_s <= m * MINUTE_S + 1e-3, (m, connected_s)
        assert sum(t.amount for t in charged) == 50 * len(charged)
        assert len(charged) < window_s / MINUTE_S, "the paused half was not billed"
