"""A visit.join's one read (visit and connection together) and its compiled party UPDATE: the
checks keep their order, the UPDATE stays conditional on the row as read, and the events are
the same as when each was a statement of its own. On both databases."""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from server import events
from server.events import Outbox
from server.schema import connections, utcnow, visits
from signalling import visits as visit_states
from tests.integration.test_visit_calls import book_now
from tests.support.cast import cast
from tests.support.helpers import Api
from tests.support.sockets import open_socket


async def _link(api: Api, family_id: str) -> str:
    async with api.ctx.store.read() as conn:
        return (await conn.execute(select(connections.c.id).where(
            connections.c.family_id == family_id))).scalar_one()


async def _visit_events(api: Api, account_id: str) -> list[events.Event]:
    async with api.ctx.store.read() as conn:
        found = await events.since(conn, account_id, 0, 500)
    return [e for e in found if e.type == "visit.updated"]


async def test_a_join_checks_the_party_then_the_contact_then_the_window(
        api: Api, client: TestClient) -> None:
    c = await cast(api, credits=0)
    later = await book_now(api, c, started_s=-3600)  # starts in an hour
    link = await _link(api, c.family.id)
    assert (await api.call("POST", f"/connections/{link}/block", c.family)).status == 200
    fam = await open_socket(client, c.family)
    # blocked comes before too_early, as when the connection was read on its own
    assert (await fam.call("visit.join", visit_id=later))["error"]["code"] == "blocked"
    stranger = await open_socket(client, await api.family("Stranger"))
    assert (await stranger.call("visit.join", visit_id=later))["error"]["code"] == "not_found"
    assert (await stranger.call("visit.join", visit_id="vis_none"))["error"][
        "code"] == "not_found"
    assert (await api.call("POST", f"/connections/{link}/unblock", c.family)).status == 200
    assert (await fam.call("visit.join", visit_id=later))["error"]["code"] == "too_early"
    async with api.ctx.store.read() as conn:
        row = await visit_states.get(conn, later)
    assert (row.status, row.family_media) == ("scheduled", "absent")


async def test_the_first_join_announces_the_visit_once_to_each_party(
        api: Api, client: TestClient) -> None:
    c = await cast(api, credits=0)
    visit_id = await book_now(api, c)
    fam = await open_socket(client, c.family)
    first = (await fam.call("visit.join", visit_id=visit_id))["ok"]
    assert first["visit"]["status"] == "open" and first["visit"]["family_media"] == "joined"
    for who in (c.family, c.person):
        shown = await _visit_events(api, who.id)
        assert [e.data for e in shown] == [first["visit"]]
    per = await open_socket(client, c.person)
    second = (await per.call("visit.join", visit_id=visit_id))["ok"]
    assert second["peer_present"] is True and second["visit"]["person_media"] == "joined"
    for who in (c.family, c.person):  # open -> open: no second visit.updated
        assert len(await _visit_events(api, who.id)) == 1
    async with api.ctx.store.read() as conn:
        row = await visit_states.get(conn, visit_id)
    assert (row.status, row.family_media, row.person_media) == ("open", "joined", "joined")


async def test_a_party_update_on_a_stale_row_reads_the_row_again(
        api: Api, client: TestClient) -> None:
    c = await cast(api, credits=0)
    visit_id = await book_now(api, c)
    async with api.ctx.store.read() as conn:
        stale = await visit_states.get(conn, visit_id)
    async with api.ctx.store.write() as conn:  # the person joined meanwhile, elsewhere
        await conn.execute(visits.update().where(visits.c.id == visit_id).values(
            status="open", person_media="joined"))
    outbox = Outbox()
    now = utcnow()
    async with api.ctx.store.write() as conn:
        joined = await visit_states.join(conn, outbox, visit_id, c.family.id, now, stale)
    assert joined.peer_present is True
    assert (joined.visit.status, joined.visit.family_media, joined.visit.person_media) == (
        "open", "joined", "joined")
    assert outbox.written == []  # open -> open
    async with api.ctx.store.read() as conn:
        row = await visit_states.get(conn, visit_id)
    assert (row.status, row.family_media, row.person_media) == ("open", "joined", "joined")
    assert row.updated_at == now


async def test_live_and_paused_move_media_changed_at(api: Api, client: TestClient) -> None:
    c = await cast(api, credits=0)
    visit_id = await book_now(api, c)
    t0 = utcnow()
    steps = [(c.family.id, None), (c.person.id, None), (c.family.id, True),
             (c.person.id, True), (c.person.id, False)]
    seen = []
    for n, (who, connected) in enumerate(steps):
        now = t0 + timedelta(seconds=n)
        async with api.ctx.store.write() as conn:
            if connected is None:
                row = (await visit_states.join(conn, Outbox(), visit_id, who, now)).visit
            else:
                row = await visit_states.set_media(conn, Outbox(), visit_id, who, connected,
                                                   now)
        async with api.ctx.store.read() as conn:
            stored = await visit_states.get(conn, visit_id)
        assert (stored.status, stored.media_changed_at, stored.updated_at) == (
            row.status, row.media_changed_at, now)
        seen.append((row.status, row.media_changed_at))
    assert seen == [("open", None), ("open", None), ("open", None),
                    ("live", t0 + timedelta(seconds=3)), ("paused", t0 + timedelta(seconds=4))]
    shown = await _visit_events(api, c.family.id)
    assert [e.data["status"] for e in shown] == ["open", "live", "paused"]
    assert [e.data for e in shown] == [e.data for e in await _visit_events(api, c.person.id)]
