"""What the kiosk shows a person (issue 19, item 1), through the HTTP API on both databases:
who asks to connect (name, the relationship the family gave, when), and the photos of messages
addressed to the person, fetched by a real kiosk session, only once a message is approved.

Adversaries: requests sent all at once (two taps, two tabs); a family member who tries to pass
words to the person through the relationship field (free text would be an unpaid, unreviewed
message), or re-asks while pending to rewrite what the person was told; a person who fetches a
held or rejected photo by its id (guessed or leaked), by the full route and by the thumbnail
route; the next resident on a shared kiosk, whose browser must not be handed the last one's
photos from its cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import app_client
from tests.integration.test_photos import png, upload
from tests.support.cast import cast, send
from tests.support.clock import Clock
from tests.support.helpers import Api, Who
from tests.support.sockets import open_socket

T0 = datetime(2026, 3, 2, 15, 10, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def api(db_url: str, tmp_path: Path, clock: Clock) -> AsyncIterator[Api]:
    async with app_client(db_url, tmp_path, clock=clock) as client:
        yield Api(client)


async def test_a_request_says_who_asks_what_they_are_and_when(api: Api, clock: Clock) -> None:
    c = await cast(api, connected=False)
    sock = await open_socket(api.client, c.person)
    r = await api.call("POST", "/connections", c.family,
                       json={"person_id": c.person.id, "relationship": "parent"})
    assert r.status == 201, r.body
    pushed = await sock.push()
    assert pushed["type"] == "connection.updated"
    for shown in (r.body["connection"], pushed["data"],
                  (await api.call("GET", "/connections", c.person)).body["connections"][0]):
        assert shown["family_name"] == "Fam"
        assert shown["relationship"] == "parent"
        assert shown["requested_at"] == T0.isoformat()
    con_id = r.body["connection"]["id"]

    clock.now = T0 + timedelta(minutes=5)
    again = await api.call("POST", "/connections", c.family,
                           json={"person_id": c.person.id, "relationship": "friend"})
    assert again.body["connection"]["relationship"] == "parent", "pending: nothing rewritten"
    assert again.body["connection"]["requested_at"] == T0.isoformat()

    assert (await api.call("POST", f"/connections/{con_id}/deny", c.person)).status == 200
    clock.now = T0 + timedelta(days=2)
    asked = await api.call("POST", "/connections", c.family,
                           json={"person_id": c.person.id, "relationship": "sibling"})
    assert asked.body["connection"]["status"] == "requested"
    assert asked.body["connection"]["relationship"] == "sibling"
    assert asked.body["connection"]["requested_at"] == clock.now.isoformat(), \
        "a request after a denial is dated when it was made"


async def test_relationship_is_a_code_never_free_text(api: Api) -> None:
    c = await cast(api, connected=False)
    for said in ("Call me at 555-0100", "PARENT", "", 3):
        r = await api.call("POST", "/connections", c.family,
                           json={"person_id": c.person.id, "relationship": said})
        assert r.status == 422 and r.code == "invalid_input", (said, r.body)
    r = await api.call("POST", "/connections", c.family, json={"person_id": c.person.id})
    assert r.status == 201 and r.body["connection"]["relationship"] is None


async def _announced(api: Api, who) -> int:
    from sqlalchemy import func, select

    from server.schema import events

    async with api.ctx.store.read() as conn:
        return (await conn.execute(select(func.count()).select_from(events).where(
            events.c.account_id == who.id, events.c.type == "connection.updated"))).scalar_one()


async def test_requests_sent_all_at_once_make_one_connection(api: Api, clock: Clock) -> None:
    """Two taps, two tabs: eight requests at the same moment, then eight re-requests at once
    after a denial. Each answers the one connection (never a 500 from the pair's unique key),
    and the person is told once each time."""
    c = await cast(api, connected=False)
    said = ("parent", "sibling", "friend", "child") * 2

    async def ask_all() -> list:
        return await asyncio.gather(*(api.call(
            "POST", "/connections", c.family,
            json={"person_id": c.person.id, "relationship": r}) for r in said))

    first = await ask_all()
    assert [r.status for r in first] == [201] * 8, [r.body for r in first]
    assert len({r.body["connection"]["id"] for r in first}) == 1
    assert len({r.body["connection"]["relationship"] for r in first}) == 1
    assert await _announced(api, c.person) == 1
    con_id = first[0].body["connection"]["id"]
    assert (await api.call("POST", f"/connections/{con_id}/deny", c.person)).status == 200
    clock.now = T0 + timedelta(hours=1)
    again = await ask_all()
    assert [r.status for r in again] == [201] * 8, [r.body for r in again]
    assert {r.body["connection"]["status"] for r in again} == {"requested"}
    assert await _announced(api, c.person) == 3, "the request, the denial, one re-request"


async def _status(api: Api, who: Who, path: str) -> tuple[int, str | None]:
    api.client.session.cookie_jar.clear()  # be exactly the bearer, not a cookie of another
    headers = {"Authorization": f"Bearer {who.token}"}
    if who.device:  # a kiosk session works only with its device's token
        headers["X-Device-Token"] = who.device
    async with api.client.get(path, headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("Cache-Control")


async def test_the_kiosk_fetches_approved_photos_only(api: Api) -> None:
    c = await cast(api, credits=1000)  # review_photos is on by default: photos are held
    ids = []
    for _ in range(3):
        photo = (await upload(api, c.family, png((64, 48), "RGB"), "p.png")).body["photo_id"]
        sent = await send(api, c.family, c.person, "look", photo_ids=[photo])
        assert sent.body["message"]["status"] == "held"
        ids.append((photo, sent.body["message"]["id"]))
    (approved, approved_msg), (rejected, rejected_msg), (held, _) = ids
    await api.call("POST", f"/review/{approved_msg}/approve", c.staff)
    await api.call("POST", f"/review/{rejected_msg}/reject", c.staff, json={"reason": "No"})

    inbox = (await api.call("GET", "/messages?folder=inbox", c.person)).body["messages"]
    assert [m["photo_ids"] for m in inbox] == [[approved]], "only the approved one is listed"
    for suffix in ("", "/thumb"):
        status, cache = await _status(api, c.person, f"/api/v1/photos/{approved}{suffix}")
        assert status == 200
        assert cache == "private, no-store", "a shared kiosk keeps no copy for the next person"
        for hidden in (rejected, held):
            assert (await _status(api, c.person,
                                  f"/api/v1/photos/{hidden}{suffix}"))[0] == 404
    # The family's own copy may be cached by the family's own browser.
    assert await _status(api, c.family, f"/api/v1/photos/{approved}") == \
        (200, "private, max-age=3600")
    other = await api.person(c.staff, c.facility)  # another resident, same facility
    assert (await _status(api, other, f"/api/v1/photos/{approved}"))[0] == 404
