"""The one "approved, unblocked connection" rule (issue 20, item 4): every capability between
a family member and a person (a message, a message with a photo, a gift, typing, a booking,
joining a booked visit, its TURN credentials) answers the same connection state the same way,
with the codes each has always answered, and no module but server/connections.py reads the
connection's status or block to decide it.

Adversaries: a family member whose request is still pending or was denied, a party (either
one) whose contact blocked the connection, and parties trying to go on after staff blocked it,
including by lifting the staff block themselves (a past bug: a party's unblock cleared it).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from server.schema import connections
from tests.conftest import app_client
from tests.integration.test_booking import T0, TODAY, at, book, connection_of
from tests.integration.test_photos import jpeg_with_gps, upload
from tests.support.cast import Cast, cast, send
from tests.support.clock import Clock
from tests.support.helpers import Api, Reply
from tests.support.sockets import open_socket

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("server", "signalling", "billing", "store", "common")
# A decision on a connection's status or block written anywhere: Core, driver SQL or Python.
# Writes (status="approved" as a keyword) and the CHECK constraints are not decisions.
RULE_WRITTEN = re.compile(
    r"""status\s*(==|!=)\s*["']approved|status\s*=\s*'approved'"""
    r"""|blocked_by\s+(IS|is)\b|blocked_by\.(is_|isnot|is_not)\(""")

STATES = ("open", "requested", "denied", "blocked_by_family", "blocked_by_person",
          "blocked_by_staff")


@pytest.fixture
async def api(db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """At 09:10 facility time on a Monday (test_booking's scene): 10:00 is bookable."""
    async with app_client(db_url, tmp_path, clock=Clock(T0)) as client:
        yield Api(client)


def places_deciding(root: Path) -> list[str]:
    """Every line of product code outside server/connections.py that decides on its own
    whether a connection is approved and unblocked."""
    found = []
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            if path == root / "server" / "connections.py" or "migrations" in path.parts:
                continue  # the owner, and the schema's history (a backfill reads blocks)
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if RULE_WRITTEN.search(line.split("#")[0]):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return found


def test_the_rule_is_written_once() -> None:
    assert places_deciding(ROOT) == [], "use connections.closed_because"


def test_the_scan_sees_each_way_the_rule_was_written(tmp_path: Path) -> None:
    """The four ways it was written before issue 20 (driver SQL, Core in a handler, a Python
    check, a negated Python check) are each found, so the test above can fail."""
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "copies.py").write_text(
        '''SQL = " AND c.status = 'approved' AND c.blocked_by IS NULL"\n'''
        '''q = select(c).where(c.status == "approved", c.blocked_by.is_(None))\n'''
        '''if status != "approved":\n'''
        '''    values(status="approved")  # a write, not a decision\n''')
    assert [p.split(":")[1] for p in places_deciding(tmp_path)] == ["1", "2", "3"]


async def _into(api: Api, c: Cast, connection: str, state: str) -> None:
    if state in ("requested", "denied"):
        async with api.ctx.store.write() as conn:
            await conn.execute(update(connections).where(connections.c.id == connection)
                               .values(status=state))
    elif state != "open":
        blocker = {"blocked_by_family": c.family, "blocked_by_person": c.person,
                   "blocked_by_staff": c.staff}[state]
        r = await api.call("POST", f"/connections/{connection}/block", blocker)
        assert r.status == 200 and r.body["connection"]["blocked"] is True, r


def _code(reply: Reply) -> str | int:
    return reply.code if reply.code else reply.status


async def _answers(api: Api, c: Cast, visit_id: str) -> dict[str, str | int]:
    photo = (await upload(api, c.family, jpeg_with_gps())).body["photo_id"]
    sock = await open_socket(api.client, c.person)
    typing = await sock.call("typing", to=c.family.id)
    join = await sock.call("visit.join", visit_id=visit_id)
    await sock.ws.close()
    return {
        "message": _code(await send(api, c.family, c.person)),
        "reply": _code(await send(api, c.person, c.family)),
        "photo": _code(await send(api, c.family, c.person, "look", photo_ids=[photo])),
        "gift": _code(await api.call("POST", "/gifts", c.family,
                                     json={"to": c.person.id, "credits": 10}, key="g1")),
        "typing": typing["error"]["code"] if "error" in typing else "ok",
        "book": _code(await book(api, c.family, await connection_of(api, c.family, c.person),
                                 at(TODAY, "11:00"))),
        "join": join["error"]["code"] if "error" in join else "ok",
        "ice": _code(await api.call("GET", f"/visits/{visit_id}/ice", c.person)),
    }


def expected(state: str) -> dict[str, str | int]:
    if state == "open":  # past the rule: the person has no credits, and the visit booked
        # at 10:00 does not open at 09:10
        return {"message": 201, "reply": "insufficient_credits", "photo": 201, "gift": 201,
                "typing": "ok",
                "book": 201, "join": "too_early", "ice": 200}
    # A booked visit tells a block apart from a connection no longer approved; everything
    # else has always answered not_connected to both.
    visit = "blocked" if state.startswith("blocked") else "not_connected"
    return {"message": "not_connected", "reply": "not_connected", "photo": "not_connected",
            "gift": "not_connected", "typing": "not_connected", "book": "not_connected",
            "join": visit, "ice": visit}


async def test_every_capability_follows_the_connection_state(api: Api) -> None:
    wrong = {}
    for state in STATES:
        c = await cast(api)
        connection = await connection_of(api, c.family, c.person)
        visit = await book(api, c.family, connection, at(TODAY, "10:00"))
        assert visit.status == 201, visit
        await _into(api, c, connection, state)
        got = await _answers(api, c, visit.body["visit"]["id"])
        if got != expected(state):
            wrong[state] = got
    assert not wrong, wrong


async def test_a_staff_block_outlasts_both_parties_unblocking(api: Api) -> None:
    c = await cast(api)
    connection = await connection_of(api, c.family, c.person)
    visit = await book(api, c.family, connection, at(TODAY, "10:00"))
    await _into(api, c, connection, "blocked_by_staff")
    for party in (c.family, c.person):
        r = await api.call("POST", f"/connections/{connection}/unblock", party)
        assert r.status == 403 and r.code == "forbidden", r
    assert await _answers(api, c, visit.body["visit"]["id"]) == expected("blocked_by_staff")
    r = await api.call("POST", f"/connections/{connection}/unblock", c.staff)
    assert r.status == 200 and r.body["connection"]["blocked"] is False, r
    assert await _answers(api, c, visit.body["visit"]["id"]) == expected("open")
