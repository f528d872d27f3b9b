"""Endings that say what happened (issue 14, item 4), through the real gateway and meter on
both databases: a visit only one party ever joined ends `missed` with nothing billed (it used
to end `time_up`), and the first `visit.tick` carries the balance (it used to carry null)."""

from __future__ import annotations

from pathlib import Path

from server.schema import visits
from tests.conftest import app_client
from tests.integration.test_visit_calls import book_now, connect_media, join_both, until
from tests.support.cast import balance, cast
from tests.support.helpers import Api
from tests.support.sockets import MSGPACK, open_socket


async def test_a_visit_only_one_party_joined_ends_missed_and_costs_nothing(
        db_url: str, tmp_path: Path) -> None:
    async with app_client(db_url, tmp_path, visit_minute_s=0.4, meter_lease_s=1.0) as client:
        api = Api(client)
        c = await cast(api, credits=500)
        visit_id = await book_now(api, c, minutes=1, started_s=57)  # 3 s of window left
        per = await open_socket(client, c.person, MSGPACK)
        assert (await per.call("visit.join", visit_id=visit_id))["ok"]["peer_present"] is False
        # The kiosk alone cannot make it live, whatever it says.
        assert "ok" in await per.call("visit.media", visit_id=visit_id, state="connected")
        ended = await until(per, "visit.ended", timeout=10)
        assert ended["data"]["reason"] == "missed"
        async with api.ctx.store.read() as conn:
            row = (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()
        assert (row.status, row.end_reason) == ("ended", "missed")
        assert await balance(api, c.family) == 500


async def test_the_first_tick_carries_the_balance(db_url: str, tmp_path: Path) -> None:
    async with app_client(db_url, tmp_path, visit_minute_s=5.0, meter_lease_s=1.0) as client:
        api = Api(client)
        c = await cast(api, credits=500)
        visit_id = await book_now(api, c)
        fam, per = await join_both(client, c, visit_id)
        await connect_media(fam, per, visit_id)
        for sock in (fam, per):
            first = (await until(sock, "visit.tick"))["data"]
            assert (first["paid_minutes"], first["balance"]) == (1, 450), first
